//! The command line as a user meets it: defaults, environment, bad input,
//! errors that name their cause, HTTP routing and graceful shutdown.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, TcpListener},
    process::Command,
    time::Duration,
};

use test_support::{Sidecar, binary, bpf, eventually, free_port, http, require_ebpf};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_version_and_help_with_the_seed_defaults() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("spawner-sidecar "), "{out}");
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for expected in [
        "--monitor-port",
        "[default: 8080]",
        "--refresh-rate-seconds",
        "[default: 10]",
        "--serve-port",
        "[default: 7070]",
        "SPAWNER_SIDECAR_MONITOR_PORT",
    ] {
        assert!(out.contains(expected), "help lacks {expected}:\n{out}");
    }
}

#[test]
fn bad_values_exit_2_with_clap_error() {
    for args in [
        &["--monitor-port", "0"][..],
        &["--monitor-port", "99999"],
        &["--refresh-rate-seconds", "-1"],
        &["--serve-port", "x"],
        &["--source", "nope"],
        &["--no-such-flag"],
    ] {
        let (code, _, err) = run(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
    let (code, _, err) = run(&[], &[("SPAWNER_SIDECAR_MONITOR_PORT", "eighty")]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn busy_serve_port_is_one_line_naming_the_port_and_exit_1() {
    let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (code, _, err) = run(&["--serve-port", &port, "--source", "proc"], &[]);
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: cannot listen on") && lines[0].contains(&port),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn ebpf_that_cannot_load_is_one_line_and_exit_1() {
    let (code, _, err) = run(
        &[
            "--serve-port",
            "0",
            "--source",
            "ebpf",
            "--kernel-btf",
            "/nonexistent/vmlinux",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "error: eBPF source unavailable: kernel BTF: cannot read /nonexistent/vmlinux"
        ),
        "{err}"
    );
}

#[test]
fn auto_falls_back_to_sock_diag_with_a_warning() {
    let sidecar = Sidecar::start(&[
        "--kernel-btf",
        "/nonexistent/vmlinux",
        "--monitor-port",
        &free_port().to_string(),
    ]);
    assert_eq!(sidecar.status()["source"], "sock-diag");
    let log = sidecar.log();
    assert!(
        log.contains("WARN")
            && log.contains("eBPF source unavailable")
            && log.contains("/nonexistent/vmlinux"),
        "{log}"
    );
}

#[test]
fn flags_come_from_the_environment_and_flags_win() {
    let port = free_port();
    let sidecar = Sidecar::start_in(
        None,
        &[],
        &[
            ("SPAWNER_SIDECAR_MONITOR_PORT", &port.to_string()),
            ("SPAWNER_SIDECAR_SOURCE", "proc"),
        ],
    );
    assert_eq!(sidecar.status()["source"], "proc");
    assert!(
        sidecar.log().contains(&format!("monitor_port={port}")),
        "{}",
        sidecar.log()
    );
    drop(sidecar);
    let sidecar = Sidecar::start_in(
        None,
        &["--source", "proc"],
        &[("SPAWNER_SIDECAR_SOURCE", "ebpf")],
    );
    assert_eq!(sidecar.status()["source"], "proc");
}

#[test]
fn routes_404_405_and_healthz_on_the_real_server() {
    let sidecar = Sidecar::start(&[
        "--source",
        "proc",
        "--monitor-port",
        &free_port().to_string(),
    ]);
    let status = sidecar.status();
    let keys: Vec<&String> = status.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "active_connections",
            "waiting_connections",
            "seconds_since_active",
            "listening",
            "seconds_inactive",
            "source",
            "ignored_connections",
            "ports"
        ],
        "field order"
    );
    assert_eq!(status["seconds_inactive"], status["seconds_since_active"]);
    assert_eq!(sidecar.get("/status").0, 200);
    assert_eq!(
        sidecar.get("/healthz"),
        (200, serde_json::json!({"status": "ok", "source": "proc"}))
    );
    assert_eq!(http::request(sidecar.port, "GET", "/metricz").0, 404);
    assert_eq!(http::request(sidecar.port, "POST", "/").0, 405);
    assert_eq!(http::request(sidecar.port, "DELETE", "/status").0, 405);
}

#[test]
fn sigterm_exits_0_and_leaves_no_program_attached() {
    require_ebpf!();
    let sidecar = Sidecar::start(&[
        "--source",
        "ebpf",
        "--monitor-port",
        &free_port().to_string(),
    ]);
    let ours = sidecar.program_ids();
    assert_eq!(ours.len(), 1, "exactly one program held by the sidecar");
    assert!(bpf::loaded_program_ids("track_tcp_state").contains(&ours[0]));
    let log_before_stop = sidecar.log();
    let status = sidecar.stop();
    assert!(status.success(), "exit {status:?}; log:\n{log_before_stop}");
    // The kernel frees a program once its last reference is gone (RCU).
    eventually(Duration::from_secs(5), || {
        if bpf::loaded_program_ids("track_tcp_state").contains(&ours[0]) {
            Err(format!("program {} still loaded after exit", ours[0]))
        } else {
            Ok(())
        }
    });
}

#[test]
fn subcommands_do_not_read_the_daemons_variables() {
    // The daemon's variables are set in the container; a bad one must not
    // break `wait-idle` or `heartbeat` run there.
    let bad = [("SPAWNER_SIDECAR_REFRESH_RATE_SECONDS", "often")];
    let port = free_port().to_string();
    let (code, _, err) = run(
        &[
            "wait-idle",
            "--monitor-port",
            &port,
            "--quiet-for",
            "0s",
            "--source",
            "proc",
        ],
        &bad,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &[
            "heartbeat",
            "-c",
            "tcp://127.0.0.1:1",
            "-r",
            "0",
            "-i",
            "100ms",
        ],
        &bad,
    );
    assert_eq!(
        code, 1,
        "a closed port fails the check, not the variable: {err}"
    );
    let (code, _, err) = run(&[], &bad);
    assert_eq!(code, 2, "the daemon still refuses it: {err}");
}
