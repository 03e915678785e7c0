//! What the tracker leaves in the namespace it watches: its own listener,
//! nothing else. Its start-up self-test connects to ports of its own; a
//! TIME_WAIT left behind would be counted on a monitored port and could stop
//! the application from binding that port for a minute.

use std::process::Command;

use integration_tests::{Netns, Sidecar, ebpf_supported};

#[test]
fn ebpf_start_up_leaves_no_socket_but_its_listener() {
    if let Err(reason) = ebpf_supported() {
        println!("skipping: {reason}");
        return;
    }
    let ns = Netns::new("footprint");
    let sidecar = Sidecar::start_in(Some(&ns.name), &["--source", "ebpf"], &[]);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ss", "-Htan"])
        .output()
        .expect("run ss in the namespace");
    assert!(out.status.success(), "ss failed");
    let sockets = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = sockets.lines().filter(|l| !l.trim().is_empty()).collect();
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
