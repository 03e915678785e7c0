//! Many sockets: started while 10 000 connections exist, the first answer is
//! already exact, on every source.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, TcpListener},
    time::{Duration, Instant},
};

use test_support::{Sidecar, eventually, free_port, require_ebpf, sockets, ss};

const EXISTING: u64 = 10_000;

fn first_answer_is_exact(source: &str) {
    let port = free_port();
    let accepted = sockets::accept_all(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap());
    let clients = sockets::Holder::connect(
        &sockets::hold_connections_beside_tests(),
        None,
        port,
        EXISTING as usize,
    )
    .unwrap();
    eventually(Duration::from_secs(20), || {
        let n = accepted.lock().unwrap().len() as u64;
        (n == EXISTING).then_some(()).ok_or(format!("{n} accepted"))
    });
    assert_eq!(ss::count(None, "established", port), EXISTING);

    let started = Instant::now();
    let sidecar = Sidecar::start(&["--source", source, "--monitor-port", &port.to_string()]);
    let status = sidecar.status();
    // Reported, not asserted: timing belongs to the benchmarks.
    println!("{source}: first answer {:?} after spawn", started.elapsed());
    assert_eq!(status["source"], source);
    assert_eq!(
        status["active_connections"],
        EXISTING,
        "first answer: {status}\nlog:\n{}",
        sidecar.log()
    );
    assert_eq!(status["listening"], true);

    clients.close();
    accepted.lock().unwrap().clear();
    eventually(Duration::from_secs(10), || {
        let (got, truth) = (
            sidecar.status()["active_connections"].as_u64(),
            ss::count(None, "established", port),
        );
        (got == Some(0) && truth == 0)
            .then_some(())
            .ok_or(format!("sidecar {got:?}, ss {truth}"))
    });
}

#[test]
fn first_answer_exact_with_10000_existing_connections_ebpf() {
    require_ebpf!();
    first_answer_is_exact("ebpf");
}

#[test]
fn first_answer_exact_with_10000_existing_connections_sock_diag() {
    first_answer_is_exact("sock-diag");
}

#[test]
fn first_answer_exact_with_10000_existing_connections_proc() {
    first_answer_is_exact("proc");
}
