//! Drain for preStop: `/wait-for-idle` and `wait-idle` return when the last
//! connection has been gone for the quiet period, and give up at the timeout.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use test_support::{Server, Sidecar, binary, eventually, free_port, http, require_ebpf};

fn drain_returns_when_the_last_connection_closes(source: &str) {
    let port = free_port();
    let mut server = Server::v4(port);
    server.connect(2);
    let sidecar = Sidecar::start(&["--source", source, "--monitor-port", &port.to_string()]);
    let serve = sidecar.port;
    let asked = Instant::now();
    let drain = std::thread::spawn(move || {
        let answer = http::get(serve, "/wait-for-idle?quiet=1s&timeout=20s");
        (answer, asked.elapsed())
    });
    // Time for the request to arrive; were it late, the drain would only
    // start quiet, which the bounds below allow for.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !drain.is_finished(),
        "the drain answered while connections were open"
    );
    let closed = asked.elapsed();
    server.close_all();
    let ((code, state), took) = drain.join().unwrap();
    // 200, not the timeout's 503: it answered because the port went quiet.
    assert_eq!(code, 200, "{state}");
    assert_eq!(state["active_connections"], 0, "{state}");
    assert_eq!(state["waiting_connections"], 0, "{state}");
    // Quiet for 1 s after the close; well before the 20 s timeout (pollers
    // look twice a second; the bound leaves room for a loaded machine).
    assert!(
        took >= closed + Duration::from_secs(1) && took < closed + Duration::from_secs(10),
        "closed at {closed:?}, drain answered at {took:?}"
    );
}

#[test]
fn wait_for_idle_returns_once_the_last_connection_has_been_gone_for_quiet_ebpf() {
    require_ebpf!();
    drain_returns_when_the_last_connection_closes("ebpf");
}

#[test]
fn wait_for_idle_returns_once_the_last_connection_has_been_gone_for_quiet_proc() {
    drain_returns_when_the_last_connection_closes("proc");
}

#[test]
fn wait_for_idle_answers_503_with_the_state_at_the_timeout_and_400_on_bad_input() {
    let port = free_port();
    let mut server = Server::v4(port);
    server.connect(1);
    let sidecar = Sidecar::start(&["--source", "sock-diag", "--monitor-port", &port.to_string()]);
    let t = Instant::now();
    let (code, state) = sidecar.get("/wait-for-idle?quiet=1s&timeout=1s");
    assert_eq!(code, 503, "{state}");
    assert_eq!(state["active_connections"], 1, "{state}");
    // At the timeout, not before; the upper bound only tells it from hanging.
    assert!(
        t.elapsed() >= Duration::from_secs(1) && t.elapsed() < Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    for bad in [
        "/wait-for-idle?quiet=forever",
        "/wait-for-idle?timeout=2h",
        "/wait-for-idle?quite=1s",
    ] {
        let (code, body) = sidecar.get(bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    // Already quiet for as long as asked: answers at once, not after
    // waiting the quiet period again (3 s).
    server.close_all();
    eventually(Duration::from_secs(15), || {
        let status = sidecar.status();
        (status["active_connections"] == 0 && status["seconds_since_active"].as_u64() >= Some(3))
            .then_some(())
            .ok_or(format!("not yet quiet for 3 s: {status}"))
    });
    let t = Instant::now();
    let (code, _) = sidecar.get("/wait-for-idle?quiet=3s&timeout=20s");
    assert_eq!(code, 200);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

fn wait_idle(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .arg("wait-idle")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wait_idle_subcommand_exits_0_when_quiet_and_1_at_the_timeout() {
    require_ebpf!();
    let port = free_port();
    let port_text = port.to_string();
    let server = Server::v4(port);
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let accepted = server.listener().accept().unwrap().0;
    let (code, stderr) = wait_idle(&[
        "--monitor-port",
        &port_text,
        "--quiet-for",
        "1s",
        "--timeout",
        "1500ms",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("timeout after 1s 500ms") && stderr.contains("1 active"),
        "{stderr}"
    );

    let started = Instant::now();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        drop(client);
        drop(accepted);
        Instant::now()
    });
    let (code, stderr) = wait_idle(&[
        "--monitor-port",
        &port_text,
        "--quiet-for",
        "1s",
        "--timeout",
        "10s",
    ]);
    let ended = Instant::now();
    let closed = closer.join().unwrap();
    // 0, not the timeout's 1: it ended because the port went quiet.
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr,
        format!("idle: no connection on port {port} for 1s\n"),
        "one line"
    );
    // Quiet for 1 s after the close, which came 1 s or more after start.
    assert!(
        ended >= closed + Duration::from_secs(1),
        "closed at {:?}, exited at {:?}",
        closed - started,
        ended - started
    );
    let (code, stderr) = wait_idle(&["--quiet-for", "eventually"]);
    assert_eq!(code, 2, "{stderr}");
}

/// TIME_WAIT holds a drain on the eBPF source too, where no event reports
/// it: one there at start, and one that appears while `wait-idle` waits.
#[test]
fn time_wait_holds_wait_idle_on_the_ebpf_source() {
    require_ebpf!();
    let port = free_port();
    let port_text = port.to_string();
    let mut server = Server::v4(port);
    server.connect(1);
    server.close_server_first();
    let args = [
        "--source",
        "ebpf",
        "--monitor-port",
        &port_text,
        "--quiet-for",
        "500ms",
        "--timeout",
        "3s",
    ];
    let (code, stderr) = wait_idle(&args);
    assert_eq!(code, 1, "a TIME_WAIT from before start: {stderr}");
    assert!(stderr.contains("1 waiting"), "{stderr}");

    // A fresh port, quiet at start; a server-first close at 1 s.
    let port = free_port();
    let port_text = port.to_string();
    let mut server = Server::v4(port);
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        server.connect(1);
        server.close_server_first();
        server
    });
    let args = [
        "--source",
        "ebpf",
        "--monitor-port",
        &port_text,
        "--quiet-for",
        "1500ms",
        "--timeout",
        "4s",
    ];
    let (code, stderr) = wait_idle(&args);
    let _server = closer.join().unwrap();
    assert_eq!(code, 1, "the TIME_WAIT made during the wait: {stderr}");
    assert!(stderr.contains("1 waiting"), "{stderr}");
}
