//! `spawner-sidecar heartbeat` as a user meets it: the real binary against
//! real listeners on loopback (open, closed, hanging), HTTP servers that
//! answer 200, 302, 500, nothing, or trickle, and an HTTPS server whose
//! certificate a test CA made at run time signed.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, TcpListener},
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::heartbeat::{Behaviour, HangingPort, Heartbeat, HttpServer, TlsServer};
use serde_json::Value;
use test_support::{binary, eventually, free_port, http, sockets};

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

/// The last line on stderr: the one that says why the process exited.
fn last_line(hb: &Heartbeat) -> String {
    hb.log().lines().last().unwrap_or_default().to_string()
}

/// Waits until `GET /` answers `code`; returns the body.
fn expect_answer(port: u16, code: u16, hb: &Heartbeat) -> Value {
    eventually(Duration::from_secs(5), || {
        let (got, body) = http::get(port, "/");
        if got == code {
            Ok(body)
        } else {
            Err(format!(
                "GET / answered {got}, expected {code}: {body}\nlog:\n{}",
                hb.log()
            ))
        }
    })
}

#[test]
fn help_lists_every_flag_with_its_default_and_variable() {
    let (code, out, _) = run(&["heartbeat", "--help"], &[]);
    assert_eq!(code, 0);
    for expected in [
        "-c, --connect <URI>",
        "-t, --timeout <DURATION>",
        "[default: 1s]",
        "-i, --interval <DURATION>",
        "[default: 5s]",
        "-r, --retries <N>",
        "[default: 3]",
        "-s, --server",
        "-p, --port <PORT>",
        "[default: 9999]",
        "--address <ADDRESS>",
        "[default: 0.0.0.0]",
        "--ca-file <PATH>",
        "SPAWNER_SIDECAR_HEARTBEAT_CONNECT",
        "SPAWNER_SIDECAR_HEARTBEAT_TIMEOUT",
        "SPAWNER_SIDECAR_HEARTBEAT_INTERVAL",
        "SPAWNER_SIDECAR_HEARTBEAT_RETRIES",
        "SPAWNER_SIDECAR_HEARTBEAT_SERVER",
        "SPAWNER_SIDECAR_HEARTBEAT_PORT",
        "SPAWNER_SIDECAR_HEARTBEAT_ADDRESS",
        "SPAWNER_SIDECAR_HEARTBEAT_CA_FILE",
    ] {
        assert!(
            out.contains(expected),
            "heartbeat --help lacks {expected}:\n{out}"
        );
    }
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("heartbeat") && out.contains("--monitor-port"),
        "{out}"
    );
}

#[test]
fn bad_input_exits_2_with_one_error_line() {
    let port = free_port().to_string();
    let tcp = format!("tcp://127.0.0.1:{port}");
    for (args, names) in [
        (vec!["heartbeat"], "--connect"),
        (
            vec!["heartbeat", "-c", "ftp://127.0.0.1:21"],
            "unsupported scheme",
        ),
        (vec!["heartbeat", "-c", "tcp://127.0.0.1"], "has no port"),
        (vec!["heartbeat", "-c", "tcp://127.0.0.1:0"], "invalid port"),
        (vec!["heartbeat", "-c", "http://h:99999/"], "invalid port"),
        (vec!["heartbeat", "-c", "localhost:80"], "missing scheme"),
        (
            vec!["heartbeat", "-c", &tcp, "-t", "soon"],
            "invalid duration",
        ),
        (
            vec!["heartbeat", "-c", &tcp, "-t", "1.5"],
            "invalid duration",
        ),
        (vec!["heartbeat", "-c", &tcp, "-i", "0"], "zero"),
        (vec!["heartbeat", "-c", &tcp, "-i", "0ms"], "zero"),
        (vec!["heartbeat", "-c", &tcp, "-r", "many"], "--retries"),
        (vec!["heartbeat", "-c", &tcp, "-p", "70000"], "--port"),
        (
            vec!["heartbeat", "-c", &tcp, "--ca-file", "/nonexistent.pem"],
            "/nonexistent.pem",
        ),
        (
            vec!["--monitor-port", "1", "heartbeat", "-c", &tcp],
            "heartbeat",
        ),
    ] {
        let (code, _, err) = run(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error:") && err.contains(names),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (code, _, err) = run(
        &["heartbeat"],
        &[("SPAWNER_SIDECAR_HEARTBEAT_CONNECT", "tcp://nowhere")],
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn closed_port_exits_1_after_exactly_retries_plus_one_checks() {
    let port = free_port();
    let uri = format!("tcp://127.0.0.1:{port}");
    let mut hb = Heartbeat::spawn(&["-c", &uri, "-i", "200ms", "-r", "2", "-t", "500ms"], &[]);
    let status = hb.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", hb.log());
    assert_eq!(hb.count("check failed"), 3, "{}", hb.log());
    for n in 1..=3 {
        assert_eq!(
            hb.count(&format!("consecutive_failures={n} ")),
            1,
            "{}",
            hb.log()
        );
    }
    // Checks at 0, 200 and 400 ms: not sooner, not much later.
    let since_spawn = hb.exited() - hb.started();
    let since_start = hb.exit_after_line(" checking ");
    assert!(since_spawn >= Duration::from_millis(400), "{since_spawn:?}");
    assert!(since_start < Duration::from_secs(2), "{since_start:?}");
    let last = last_line(&hb);
    assert!(
        last.starts_with(&format!(
            "error: {uri} failed 3 consecutive checks: connecting to 127.0.0.1:{port}: "
        )) && last.contains("refused"),
        "{last}"
    );
    assert!(!hb.log().contains("panicked"));
}

#[test]
fn keeps_running_while_healthy_one_connection_per_check_and_sigterm_exits_0() {
    let open = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let _accepted = sockets::accept_all(open.try_clone().unwrap());
    let ok = HttpServer::start(Behaviour::Answer, 200);
    let redirect = HttpServer::start(Behaviour::Answer, 302);
    let tcp = format!("tcp://localhost:{}", open.local_addr().unwrap().port());
    let mut hb = Heartbeat::spawn(
        &[
            "-c",
            &tcp,
            "-c",
            &ok.url("/health?x=1"),
            "-c",
            &redirect.url("/"),
            "-i",
            "100ms",
            "-r",
            "0",
        ],
        &[],
    );
    // Ten checks of each (1 s at the 100 ms interval; longer if loaded).
    eventually(Duration::from_secs(15), || {
        let counts = (ok.requests().len(), redirect.requests().len());
        (counts.0 >= 10 && counts.1 >= 10)
            .then_some(())
            .ok_or(format!(
                "checks so far (200, 302): {counts:?}\n{}",
                hb.log()
            ))
    });
    assert!(hb.is_running(), "exited while healthy:\n{}", hb.log());
    assert_eq!(hb.count("check failed"), 0, "{}", hb.log());
    assert_eq!(hb.count("target healthy"), 3, "{}", hb.log());
    for server in [&ok, &redirect] {
        let requests = server.requests();
        // Every check opened its own connection and asked to close it.
        assert!(server.connections() >= requests.len());
        assert!(server.connections() <= requests.len() + 1);
        for head in &requests {
            let lower = head.to_ascii_lowercase();
            assert!(lower.contains("\r\nconnection: close\r\n"), "{head}");
            assert!(lower.contains("\r\nhost: 127.0.0.1:"), "{head}");
        }
    }
    assert!(ok.requests()[0].starts_with("GET /health?x=1 HTTP/1.1\r\n"));
    // The 302 was not followed (to port 1, which would have failed).
    let status = hb.terminate();
    assert_eq!(status.code(), Some(0), "{}", hb.log());
}

#[test]
fn hanging_tcp_port_fails_at_the_timeout() {
    let hanging = HangingPort::new();
    let uri = format!("tcp://127.0.0.1:{}", hanging.port);
    let mut hb = Heartbeat::spawn(&["-c", &uri, "-t", "500ms", "-r", "0", "-i", "100ms"], &[]);
    let status = hb.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", hb.log());
    // Not before the timeout, and within a second after it.
    let since_spawn = hb.exited() - hb.started();
    let since_start = hb.exit_after_line(" checking ");
    assert!(since_spawn >= Duration::from_millis(500), "{since_spawn:?}");
    assert!(
        since_start < Duration::from_millis(1500),
        "{since_start:?}\n{}",
        hb.log()
    );
    assert_eq!(
        last_line(&hb),
        format!("error: {uri} failed 1 consecutive check: timed out after 500ms connecting")
    );
}

#[test]
fn http_500_is_a_failure() {
    let broken = HttpServer::start(Behaviour::Answer, 500);
    let uri = broken.url("/");
    let mut hb = Heartbeat::spawn(&["-c", &uri, "-i", "100ms", "-r", "1"], &[]);
    let status = hb.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", hb.log());
    assert_eq!(hb.count("check failed"), 2, "{}", hb.log());
    assert_eq!(
        last_line(&hb),
        format!("error: {uri} failed 2 consecutive checks: HTTP status 500 Internal Server Error")
    );
}

#[test]
fn http_server_that_never_answers_or_trickles_fails_at_the_timeout() {
    for (behaviour, phase) in [
        (Behaviour::Silent, "waiting for the response headers"),
        (Behaviour::Trickle, "waiting for the response headers"),
    ] {
        let server = HttpServer::start(behaviour, 200);
        let uri = server.url("/");
        let mut hb = Heartbeat::spawn(&["-c", &uri, "-t", "700ms", "-r", "0"], &[]);
        let status = hb.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(1), "{}", hb.log());
        let since_spawn = hb.exited() - hb.started();
        let since_start = hb.exit_after_line(" checking ");
        assert!(
            since_spawn >= Duration::from_millis(700),
            "{since_spawn:?}\n{}",
            hb.log()
        );
        assert!(
            since_start < Duration::from_millis(1700),
            "{since_start:?}\n{}",
            hb.log()
        );
        assert_eq!(
            last_line(&hb),
            format!("error: {uri} failed 1 consecutive check: timed out after 700ms {phase}")
        );
    }
}

#[test]
fn https_is_healthy_with_the_ca_trusted_and_fails_untrusted_or_for_another_name() {
    let tls = TlsServer::start();
    let good = format!("https://localhost:{}/", tls.port);
    let wrong_name = format!("https://127.0.0.1:{}/", tls.port);

    // Trusted through --ca-file; the certificate names localhost, not the IP.
    let (hb, port) = Heartbeat::serve(
        &[
            "-c",
            &good,
            "-c",
            &wrong_name,
            "--ca-file",
            tls.ca_file(),
            "-i",
            "200ms",
            "-r",
            "0",
        ],
        &[],
    );
    let body = eventually(Duration::from_secs(5), || {
        let (code, body) = http::get(port, "/");
        let states = (
            body["targets"][0]["state"].clone(),
            body["targets"][1]["state"].clone(),
        );
        if code == 503 && states == ("healthy".into(), "failing".into()) {
            Ok(body)
        } else {
            Err(format!("{code} {body}\n{}", hb.log()))
        }
    });
    assert_eq!(body["unhealthy"], serde_json::json!([wrong_name]));
    let error = body["targets"][1]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("TLS handshake with 127.0.0.1:")
            && error.contains("certificate not valid for name"),
        "{error}"
    );
    drop(hb);

    // Trusted through SSL_CERT_FILE (which replaces the system's roots).
    // Every check is a full handshake: a resumed session would skip the
    // certificate.
    let (served_before, _) = tls.served();
    let (hb, port) = Heartbeat::serve(
        &["-c", &good, "-i", "100ms"],
        &[("SSL_CERT_FILE", tls.ca_file())],
    );
    let body = expect_answer(port, 200, &hb);
    assert_eq!(body["targets"][0]["state"], "healthy");
    eventually(Duration::from_secs(3), || match tls.served() {
        (served, _) if served >= served_before + 5 => Ok(()),
        other => Err(format!("served {other:?}")),
    });
    assert_eq!(tls.served().1, 0, "checks resumed TLS sessions");
    drop(hb);

    // Not trusted: the system's roots do not know the test CA.
    let mut hb = Heartbeat::spawn(&["-c", &good, "-r", "0"], &[]);
    assert_eq!(
        hb.wait_exit(Duration::from_secs(5)).code(),
        Some(1),
        "{}",
        hb.log()
    );
    let last = last_line(&hb);
    assert!(
        last.starts_with(&format!(
            "error: {good} failed 1 consecutive check: TLS handshake with "
        )) && last.contains("invalid peer certificate: UnknownIssuer"),
        "{last}"
    );
    assert!(tls.connections() >= 3);
}

#[test]
fn server_is_503_while_a_target_is_pending_with_per_target_json() {
    let open = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let _accepted = sockets::accept_all(open.try_clone().unwrap());
    let tcp = format!("tcp://127.0.0.1:{}", open.local_addr().unwrap().port());
    let silent = HttpServer::start(Behaviour::Silent, 200);
    let slow = silent.url("/");
    // The silent target's first check takes the whole 3 s timeout.
    let (hb, port) = Heartbeat::serve(&["-c", &tcp, "-c", &slow, "-t", "3s", "-i", "200ms"], &[]);
    let body = eventually(Duration::from_secs(2), || {
        let (code, body) = http::get(port, "/");
        if code == 503 && body["targets"][0]["state"] == "healthy" {
            Ok(body)
        } else {
            Err(format!("{code} {body}\n{}", hb.log()))
        }
    });
    assert_eq!(body["healthy"], false);
    assert_eq!(body["unhealthy"], serde_json::json!([slow]));
    let tcp_report = &body["targets"][0];
    assert_eq!(tcp_report["uri"], tcp);
    assert_eq!(tcp_report["healthy"], true);
    assert_eq!(tcp_report["consecutive_failures"], 0);
    assert_eq!(tcp_report["last_error"], Value::Null);
    assert!(
        tcp_report["seconds_since_last_check"].as_f64().unwrap() < 1.0,
        "{body}"
    );
    assert!(
        tcp_report["last_latency_ms"].as_f64().unwrap() < 100.0,
        "{body}"
    );
    let pending = &body["targets"][1];
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["healthy"], false);
    assert_eq!(pending["checks"], 0);
    assert_eq!(pending["last_error"], Value::Null);
    assert_eq!(pending["seconds_since_last_check"], Value::Null);
    assert_eq!(pending["last_latency_ms"], Value::Null);
}

#[test]
fn server_flips_to_503_on_failure_and_back_to_200_on_recovery() {
    let dependency = HttpServer::start(Behaviour::Answer, 200);
    let uri = dependency.url("/ready");
    let (mut hb, port) =
        Heartbeat::serve(&["-c", &uri, "-i", "100ms", "-r", "2", "-t", "500ms"], &[]);
    let body = expect_answer(port, 200, &hb);
    assert_eq!(body["healthy"], true);
    assert_eq!(body["unhealthy"], serde_json::json!([]));
    assert_eq!(body["targets"][0]["state"], "healthy");

    dependency.set_status(500);
    let failed_at = Instant::now();
    let body = expect_answer(port, 503, &hb);
    // Three failures at 100 ms intervals, not one.
    assert!(failed_at.elapsed() >= Duration::from_millis(150), "{body}");
    let target = &body["targets"][0];
    assert_eq!(target["state"], "failing");
    assert_eq!(target["consecutive_failures"], 3);
    assert_eq!(
        target["last_error"],
        "HTTP status 500 Internal Server Error"
    );
    assert_eq!(body["unhealthy"], serde_json::json!([uri]));

    dependency.set_status(204);
    let body = expect_answer(port, 200, &hb);
    assert_eq!(body["targets"][0]["consecutive_failures"], 0);
    assert_eq!(body["targets"][0]["last_error"], Value::Null);
    // The answer can come before the log line has reached our reader.
    eventually(Duration::from_secs(5), || {
        match hb.count("target recovered") {
            1 => Ok(()),
            n => Err(format!("{n} \"target recovered\" lines: {}", hb.log())),
        }
    });

    assert_eq!(http::request(port, "GET", "/healthz").0, 404);
    assert_eq!(http::request(port, "POST", "/").0, 405);
    assert_eq!(http::request(port, "DELETE", "/").0, 405);
    assert_eq!(hb.terminate().code(), Some(0), "{}", hb.log());
}

#[test]
fn tcp_target_recovers_when_its_listener_comes_back() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port_number = listener.local_addr().unwrap().port();
    let uri = format!("tcp://127.0.0.1:{port_number}");
    let (hb, port) = Heartbeat::serve(&["-c", &uri, "-i", "100ms", "-r", "1"], &[]);
    expect_answer(port, 200, &hb);
    drop(listener);
    let body = expect_answer(port, 503, &hb);
    assert!(
        body["targets"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{body}"
    );
    let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port_number)).unwrap();
    expect_answer(port, 200, &hb);
}

#[test]
fn flags_come_from_the_environment_and_flags_win() {
    let a = HttpServer::start(Behaviour::Answer, 200);
    let b = HttpServer::start(Behaviour::Answer, 301);
    let (hb, port) = Heartbeat::serve(
        &["-r", "0"],
        &[
            (
                "SPAWNER_SIDECAR_HEARTBEAT_CONNECT",
                &format!("{},{}", a.url("/"), b.url("/b")),
            ),
            ("SPAWNER_SIDECAR_HEARTBEAT_INTERVAL", "100ms"),
            ("SPAWNER_SIDECAR_HEARTBEAT_RETRIES", "7"),
            ("SPAWNER_SIDECAR_HEARTBEAT_PORT", "1"),
        ],
    );
    let body = expect_answer(port, 200, &hb);
    let uris: Vec<&str> = body["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris, [a.url("/"), b.url("/b")]);
    // Flags win: --port 0 (from serve) over PORT=1, -r 0 over RETRIES=7.
    assert!(hb.log().contains("retries=0"), "{}", hb.log());
    assert!(hb.log().contains("interval=100ms"), "{}", hb.log());
    drop(hb);

    // The server switch and its address from the environment too.
    let mut hb = Heartbeat::spawn(
        &["-c", &a.url("/")],
        &[
            ("SPAWNER_SIDECAR_HEARTBEAT_SERVER", "true"),
            ("SPAWNER_SIDECAR_HEARTBEAT_ADDRESS", "127.0.0.1"),
            ("SPAWNER_SIDECAR_HEARTBEAT_PORT", "0"),
        ],
    );
    let port = hb.wait_serving();
    expect_answer(port, 200, &hb);
}

#[test]
fn busy_server_port_is_one_line_and_exit_1() {
    let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let target = format!("tcp://127.0.0.1:{port}");
    let (code, _, err) = run(
        &[
            "heartbeat",
            "-s",
            "--address",
            "127.0.0.1",
            "-p",
            &port,
            "-c",
            &target,
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!("error: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}
