//! The image (`cargo xtask image`) in a real container with least
//! privilege: no capability but CAP_BPF and CAP_PERFMON, the project's
//! seccomp profile, a read-only root and no writable mount, a non-root user.
//! Ground truth is `ss` in the container's network namespace.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use integration_tests::container::{Container, seccomp_profile};
use test_support::{Server, eventually, free_port, ss};

/// CAP_PERFMON (38) and CAP_BPF (39), as /proc/PID/status prints the set.
const BPF_AND_PERFMON: &str = "000000c000000000";

fn least_privilege(seccomp: Option<&str>, caps: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--cap-drop=all", "--read-only", "--read-only-tmpfs=false"]
        .map(String::from)
        .to_vec();
    args.extend(caps.iter().map(|c| format!("--cap-add={c}")));
    if let Some(profile) = seccomp {
        args.push("--security-opt".into());
        args.push(format!("seccomp={profile}"));
    }
    args
}

fn start(tag: &str, podman_args: &[String], port: u16) -> Container {
    let podman_args: Vec<&str> = podman_args.iter().map(String::as_str).collect();
    Container::start(
        tag,
        &podman_args,
        &[
            "--monitor-port",
            &port.to_string(),
            "--refresh-rate-seconds",
            "1",
        ],
    )
}

/// Waits until the tracker's `field` equals `ss`'s count of `state` in the
/// container's namespace and `want`.
fn expect_matches_ss(c: &Container, field: &str, state: &str, port: u16, want: u64) {
    eventually(Duration::from_secs(5), || {
        let truth = c.ss_count(state, port);
        let (_, status) = c.get("/");
        let got = status[field].as_u64().unwrap_or(u64::MAX);
        if got == truth && truth == want {
            Ok(())
        } else {
            Err(format!(
                "{field}: tracker {got}, ss in the container {truth}, expected {want}; status {status}"
            ))
        }
    });
}

#[test]
fn ebpf_in_a_container_with_only_bpf_and_perfmon_counts_its_own_namespace() {
    let port = free_port();
    // The same port busy in the host's namespace: none of it may be counted.
    let mut host = Server::v4(port);
    host.connect(4);

    let profile = seccomp_profile();
    let c = start(
        "ebpf",
        &least_privilege(Some(&profile), &["BPF", "PERFMON"]),
        port,
    );
    let log = c.logs();
    assert_eq!(
        c.get("/healthz"),
        (200, serde_json::json!({"source": "ebpf", "status": "ok"})),
        "log:\n{log}"
    );
    // Non-root, the two capabilities effective, none ambient: they came from
    // the binary's file capabilities, as under Kubernetes.
    assert!(
        c.proc_status("Uid").starts_with("65532\t"),
        "Uid {}",
        c.proc_status("Uid")
    );
    assert_eq!(c.proc_status("CapEff"), BPF_AND_PERFMON);
    assert_eq!(c.proc_status("CapBnd"), BPF_AND_PERFMON);
    assert_eq!(c.proc_status("CapAmb"), "0000000000000000");
    // Read-only root and no writable scratch mount at all.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid)).unwrap();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (point, options) = (fields[4], fields[5]);
        if point == "/" {
            assert!(
                options.split(',').any(|o| o == "ro"),
                "root mounted {options}"
            );
        }
        assert!(
            !["/tmp", "/run", "/var/tmp"].contains(&point),
            "unexpected scratch mount: {line}"
        );
    }

    let mut server = c.run_in(move || {
        let mut s = Server::dual_stack(port);
        s.connect(6);
        s
    });
    expect_matches_ss(&c, "active_connections", "established", port, 6);
    // IPv4 clients of the dual-stack listener: v4-mapped sockets.
    server = c.run_in(move || {
        server.connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 3);
        server
    });
    expect_matches_ss(&c, "active_connections", "established", port, 9);
    server = c.run_in(move || {
        server.close_server_first();
        server
    });
    expect_matches_ss(&c, "active_connections", "established", port, 0);
    expect_matches_ss(&c, "waiting_connections", "time-wait", port, 9);
    // The host's connections were there all along.
    assert_eq!(ss::count(None, "established", port), 4);
    drop(server);
    drop(host);
}

#[test]
fn without_cap_bpf_the_image_falls_back_to_sock_diag_and_says_so() {
    let port = free_port();
    let profile = seccomp_profile();
    let c = start("no-bpf", &least_privilege(Some(&profile), &[]), port);
    let log = c.logs();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("eBPF source unavailable"))
        .collect();
    assert_eq!(said.len(), 1, "one line on the fallback; log:\n{log}");
    assert!(said[0].contains("sock_diag"), "{}", said[0]);
    assert_eq!(c.proc_status("CapEff"), "0000000000000000");
    assert_eq!(
        c.get("/healthz"),
        (
            200,
            serde_json::json!({"source": "sock-diag", "status": "ok"})
        )
    );

    let server = c.run_in(move || {
        let mut s = Server::v4(port);
        s.connect(5);
        s
    });
    expect_matches_ss(&c, "active_connections", "established", port, 5);
    drop(server);
}

#[test]
fn the_runtimes_default_seccomp_profile_refuses_the_kernel_program() {
    // Why the project ships a profile: podman's default allows bpf(2) only
    // with CAP_SYS_ADMIN, so CAP_BPF alone gets EPERM and the tracker falls
    // back.
    let port = free_port();
    let c = start(
        "default-seccomp",
        &least_privilege(None, &["BPF", "PERFMON"]),
        port,
    );
    let log = c.logs();
    assert!(
        log.lines()
            .any(|l| l.contains("eBPF source unavailable") && l.contains("Operation not permitted")),
        "log:\n{log}"
    );
    assert_eq!(c.proc_status("CapEff"), BPF_AND_PERFMON);
    assert_eq!(c.get("/healthz").1["source"], "sock-diag");
}

#[test]
fn the_classic_sidecars_pre_stop_wait_idle_runs_in_the_image() {
    // deploy/sidecar-classic.yaml's exec hook, with shorter durations.
    let port = free_port();
    let profile = seccomp_profile();
    let c = start(
        "wait-idle",
        &least_privilege(Some(&profile), &["BPF", "PERFMON"]),
        port,
    );
    let wait_idle = |c: &Container| {
        c.exec(&[
            "wait-idle",
            &format!("--monitor-port={port}"),
            "--source=sock-diag",
            "--quiet-for=1s",
            "--timeout=3s",
        ])
    };
    let server = c.run_in(move || {
        let mut s = Server::v4(port);
        s.connect(2);
        s
    });
    let (code, stderr) = wait_idle(&c);
    assert_eq!(
        code,
        Some(1),
        "busy: wait-idle must time out; stderr: {stderr}"
    );
    let mut server = server;
    server.close_all();
    let (code, stderr) = wait_idle(&c);
    assert_eq!(
        code,
        Some(0),
        "idle: wait-idle must succeed; stderr: {stderr}"
    );
    drop(server);
}
