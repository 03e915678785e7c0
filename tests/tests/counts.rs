//! Counts against `ss`: connections opened before start, after start, and
//! closed, on the eBPF source and on the /proc source.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::time::Duration;

use test_support::{
    Server, Sidecar, eventually, expect::expect_established, free_port, require_ebpf, ss,
};

fn before_during_and_after(source: &str) {
    let port = free_port();
    let mut server = Server::v4(port);
    server.connect(50);
    let sidecar = Sidecar::start(&[
        "--source",
        source,
        "--monitor-port",
        &port.to_string(),
        "--refresh-rate-seconds",
        "1",
    ]);
    assert_eq!(sidecar.status()["source"], source);
    expect_established(&sidecar, port, 50);
    assert_eq!(sidecar.status()["listening"], true);

    server.connect(25);
    expect_established(&sidecar, port, 75);
    let status = sidecar.status();
    assert_eq!(status["seconds_since_active"], 0, "{status}");
    assert_eq!(
        status["listening"], true,
        "accepting must not look like the listener closing: {status}"
    );

    server.close_all();
    expect_established(&sidecar, port, 0);
    // Clients closed first: TIME_WAIT sits on their side, not on ours.
    assert_eq!(ss::count(None, "time-wait", port), 0);
    assert_eq!(sidecar.status()["waiting_connections"], 0);

    server.shutdown();
    eventually(
        Duration::from_secs(5),
        || match sidecar.status()["listening"].as_bool() {
            Some(false) => Ok(()),
            other => Err(format!("listening is {other:?} after the listener closed")),
        },
    );
    assert!(sidecar.stop().success());
}

#[test]
fn ebpf_counts_connections_from_before_start_and_after_and_closed() {
    require_ebpf!();
    before_during_and_after("ebpf");
}

#[test]
fn proc_counts_connections_from_before_start_and_after_and_closed() {
    before_during_and_after("proc");
}

#[test]
fn sock_diag_counts_connections_from_before_start_and_after_and_closed() {
    before_during_and_after("sock-diag");
}

#[test]
fn auto_picks_ebpf_where_the_kernel_allows() {
    require_ebpf!();
    let sidecar = Sidecar::start(&["--monitor-port", &free_port().to_string()]);
    assert_eq!(
        sidecar.status()["source"],
        "ebpf",
        "log:\n{}",
        sidecar.log()
    );
}

#[test]
fn counts_ipv6_and_ipv4_mapped_connections_on_dual_stack_listener() {
    require_ebpf!();
    for source in ["ebpf", "sock-diag", "proc"] {
        let port = free_port();
        let mut server = Server::dual_stack(port);
        let sidecar = Sidecar::start(&["--source", source, "--monitor-port", &port.to_string()]);
        server.connect(3);
        server.connect_to(([127, 0, 0, 1], port).into(), 2);
        expect_established(&sidecar, port, 5);
        assert_eq!(sidecar.status()["listening"], true, "{source}");
        server.close_all();
        expect_established(&sidecar, port, 0);
        assert_eq!(sidecar.status()["listening"], true, "{source}");
    }
}
