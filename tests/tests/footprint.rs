//! What the tracker leaves in the namespace it watches: its own listener,
//! nothing else. Its start-up self-test connects to ports of its own; a
//! TIME_WAIT left behind would be counted on a monitored port and could stop
//! the application from binding that port for a minute.

use test_support::{Netns, Sidecar, require_ebpf, ss};

#[test]
fn ebpf_start_up_leaves_no_socket_but_its_listener() {
    require_ebpf!();
    let ns = Netns::new("footprint");
    let sidecar = Sidecar::start_in(Some(ns.name()), &["--source", "ebpf"], &[]);
    let lines = ss::Query::all()
        .netns(Some(ns.name()))
        .lines()
        .expect("ss in the namespace");
    let sockets = lines.join("\n");
    assert!(
        lines.len() == 1
            && lines[0].starts_with("LISTEN")
            && lines[0].contains(&format!(":{} ", sidecar.port)),
        "expected only the tracker's listener on port {}, ss shows:\n{sockets}",
        sidecar.port
    );
    assert!(
        sidecar.log().contains("self-tested"),
        "the self-test ran: {}",
        sidecar.log()
    );
}
