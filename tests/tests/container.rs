//! The image (`cargo xtask image`) in a real container with least
//! privilege: no capability but CAP_BPF and CAP_PERFMON, the project's
//! seccomp profile, a read-only root and no writable mount, a non-root user.
//! Node mode the way deploy/node-daemonset.yaml runs it: the host's PID
//! namespace, CAP_SYS_ADMIN and CAP_SYS_PTRACE on top, the same profile.
//! Ground truth is `ss` in the container's network namespace.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use integration_tests::container::{BestEffortPod, Container, seccomp_profile};
use test_support::{Server, eventually, free_port, ss};

/// CAP_PERFMON (38) and CAP_BPF (39), as /proc/PID/status prints the set.
const BPF_AND_PERFMON: &str = "000000c000000000";
/// Those two, CAP_SYS_ADMIN (21) and CAP_SYS_PTRACE (19): node mode's.
const NODE_CAPS: &str = "000000c000280000";

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

/// An application container of a pod: the image's own daemon (sock-diag,
/// no capability) is its process, so the pod's namespace has a process in
/// the pod's cgroup, as any container's would. Sockets are made in its
/// namespace by the test.
fn app_container(tag: &str, pod: &BestEffortPod, port: u16) -> Container {
    let mut podman_args = least_privilege(None, &[]);
    podman_args.push(pod.cgroup_parent_arg());
    let podman_args: Vec<&str> = podman_args.iter().map(String::as_str).collect();
    Container::start(
        tag,
        &podman_args,
        &[
            "--source",
            "sock-diag",
            "--monitor-port",
            &port.to_string(),
            "--refresh-rate-seconds",
            "1",
        ],
    )
}

/// The inode of the network namespace a container's process is in.
fn netns_inode(c: &Container) -> u64 {
    let link = std::fs::read_link(format!("/proc/{}/ns/net", c.pid)).unwrap();
    let link = link.to_string_lossy();
    link.strip_prefix("net:[")
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("unexpected namespace link {link}"))
}

/// Node mode's answers for `pod` equal `ss` in the app container's
/// namespace, and `want`: by pod UID, by namespace inode, and the pod's own
/// sidecar (the app container's daemon) agrees.
fn expect_node_matches_ss(
    node: &Container,
    app: &Container,
    pod: &BestEffortPod,
    field: &str,
    state: &str,
    port: u16,
    want: u64,
) {
    let inode = netns_inode(app);
    eventually(Duration::from_secs(10), || {
        let truth = app.ss_count(state, port);
        let (code, by_pod) = node.get(&format!("/pods/{}", pod.uid));
        let (_, by_netns) = node.get(&format!("/netns/{inode}"));
        let (_, own) = app.get("/");
        let got = [&by_pod, &by_netns, &own].map(|s| s[field].as_u64().unwrap_or(u64::MAX));
        if code == 200 && got.iter().all(|g| *g == truth) && truth == want {
            Ok(())
        } else {
            Err(format!(
                "{field}: node /pods/{} {} ({code}), node /netns/{inode} {}, the pod's own sidecar {}, \
                 ss in the pod {truth}, expected {want}; /pods/{}: {by_pod}",
                pod.uid, got[0], got[1], got[2], pod.uid
            ))
        }
    });
}

#[test]
fn node_mode_in_a_container_attributes_two_pods_each_equal_to_ss_in_it() {
    let port = free_port();
    // The same port busy in the host's namespace: no pod's.
    let mut host = Server::v4(port);
    host.connect(2);

    // Dropped last (declared first): the pods' cgroups go once the
    // containers in them are removed.
    let (pod_a, pod_b) = (BestEffortPod::create(), BestEffortPod::create());
    let app_a = app_container("node-app-a", &pod_a, port);
    let app_b = app_container("node-app-b", &pod_b, port);
    // Pod A's connections are there before the node tracker starts: its
    // start-up snapshot must find them.
    let server_a = app_a.run_in(move || {
        let mut s = Server::v4(port);
        s.connect(3);
        s
    });

    let profile = seccomp_profile();
    let mut podman_args = least_privilege(
        Some(&profile),
        &["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"],
    );
    podman_args.extend(
        [
            // hostPID: true. The container's own /proc is then the host
            // pid namespace's: --host-proc keeps its default, /proc.
            "--pid=host",
            "--volume=/sys/kernel/btf:/sys/kernel/btf:ro",
            // A snapshot refused inside a namespace falls back to
            // /proc/<pid>/net at debug level: show it, to prove setns works
            // under the profile.
            "--env=RUST_LOG=info,spawner_sidecar::source::netns=debug",
        ]
        .map(String::from),
    );
    let node_args: Vec<&str> = podman_args.iter().map(String::as_str).collect();
    let node = Container::start(
        "node",
        &node_args,
        &[
            "node",
            "--monitor-port",
            &port.to_string(),
            "--refresh-rate-seconds",
            "1",
        ],
    );
    assert_eq!(
        node.get("/healthz"),
        (200, serde_json::json!({"source": "ebpf", "status": "ok"})),
        "log:\n{}",
        node.logs()
    );
    // Non-root; exactly the four capabilities, from the binary's file
    // capabilities (none ambient), as under Kubernetes.
    assert!(node.proc_status("Uid").starts_with("65532\t"));
    assert_eq!(node.proc_status("CapEff"), NODE_CAPS);
    assert_eq!(node.proc_status("CapBnd"), NODE_CAPS);
    assert_eq!(node.proc_status("CapAmb"), "0000000000000000");

    let server_b = app_b.run_in(move || {
        let mut s = Server::dual_stack(port);
        s.connect(4);
        s.connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 2);
        s
    });
    expect_node_matches_ss(
        &node,
        &app_a,
        &pod_a,
        "active_connections",
        "established",
        port,
        3,
    );
    expect_node_matches_ss(
        &node,
        &app_b,
        &pod_b,
        "active_connections",
        "established",
        port,
        6,
    );

    // Each pod listed once, with its namespace and the QoS class its cgroup
    // path names. podman runs each container's monitor (conmon) in the
    // host's namespace but in the pod's cgroup (`pod<uid>/conmon`), as
    // CRI-O does with `crio-conmon-<id>`: the host's namespace is still
    // no pod's. `containers` stays empty: the leaf is podman's
    // `libpod-<id>`, a name no kubelet runtime writes (the kubelet's
    // runtimes' leaves are node.rs's business).
    let (_, pods) = node.get("/pods");
    for (pod, app) in [(&pod_a, &app_a), (&pod_b, &app_b)] {
        let entries: Vec<&serde_json::Value> = pods["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["pod_uid"] == pod.uid.as_str())
            .collect();
        assert_eq!(entries.len(), 1, "{pods}");
        assert_eq!(entries[0]["netns"], netns_inode(app), "{pods}");
        assert_eq!(entries[0]["qos_class"], "BestEffort", "{pods}");
    }
    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host_netns = host_netns.to_string_lossy();
    assert!(
        !pods["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| format!("net:[{}]", p["netns"]) == host_netns),
        "the host's namespace ({host_netns}) listed as a pod: {pods}"
    );

    let mut server_a = server_a;
    server_a = app_a.run_in(move || {
        server_a.close_server_first();
        server_a
    });
    expect_node_matches_ss(
        &node,
        &app_a,
        &pod_a,
        "active_connections",
        "established",
        port,
        0,
    );
    expect_node_matches_ss(
        &node,
        &app_a,
        &pod_a,
        "waiting_connections",
        "time-wait",
        port,
        3,
    );
    expect_node_matches_ss(
        &node,
        &app_b,
        &pod_b,
        "active_connections",
        "established",
        port,
        6,
    );
    // The host's connections were there all along, in no pod.
    assert_eq!(ss::count(None, "established", port), 2);

    let log = node.logs();
    for refusal in ["sock_diag refused", "sock_diag failed", "read /proc"] {
        assert!(
            !log.contains(refusal),
            "a snapshot inside a pod's namespace fell back to /proc; log:\n{log}"
        );
    }
    drop(node);
    drop((server_a, server_b, app_a, app_b, host));
}
