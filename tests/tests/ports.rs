//! Several ports and `--all-ports`: per-port fields equal `ss`, the top
//! level aggregates, and listeners are followed as they come and go.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;
use test_support::{
    Netns, Server, Sidecar, eventually, free_port, http, prometheus, require_ebpf, ss,
};

fn port_field(status: &Value, port: u16, field: &str) -> Value {
    status["ports"][port.to_string()][field].clone()
}

fn several_ports(source: &str, comma_separated: bool) {
    let (a, b) = (free_port(), free_port());
    let mut on_a = Server::v4(a);
    on_a.connect(3);
    let mut on_b = Server::dual_stack(b);
    on_b.connect(2);
    on_b.connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, b)), 1);
    let joined = format!("{a},{b}");
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let mut args = vec!["--source", source, "--refresh-rate-seconds", "1"];
    if comma_separated {
        args.extend(["--monitor-port", &joined]);
    } else {
        args.extend(["--monitor-port", &a_text, "--monitor-port", &b_text]);
    }
    let sidecar = Sidecar::start(&args);
    eventually(Duration::from_secs(5), || {
        let status = sidecar.status();
        let (truth_a, truth_b) = (
            ss::count(None, "established", a),
            ss::count(None, "established", b),
        );
        let got = (
            port_field(&status, a, "active_connections"),
            port_field(&status, b, "active_connections"),
            status["active_connections"].clone(),
        );
        if (truth_a, truth_b) == (3, 3) && got == (3.into(), 3.into(), 6.into()) {
            Ok(())
        } else {
            Err(format!("ss {truth_a}/{truth_b}; sidecar {status}"))
        }
    });
    let status = sidecar.status();
    assert_eq!(status["listening"], true, "{status}");
    assert_eq!(
        status["ports"].as_object().unwrap().len(),
        2,
        "exactly the two ports: {status}"
    );

    // A's listener goes: A is not listening, so not every port is.
    on_a.close_all();
    on_a.shutdown();
    eventually(Duration::from_secs(5), || {
        let status = sidecar.status();
        let wanted = (false.into(), true.into(), false.into(), 3.into());
        let got = (
            port_field(&status, a, "listening"),
            port_field(&status, b, "listening"),
            status["listening"].clone(),
            status["active_connections"].clone(),
        );
        (got == wanted).then_some(()).ok_or(format!("{status}"))
    });
    drop(on_b);
}

#[test]
fn several_ports_each_equal_ss_and_the_top_level_sums_ebpf() {
    require_ebpf!();
    several_ports("ebpf", false);
}

#[test]
fn several_ports_each_equal_ss_and_the_top_level_sums_sock_diag() {
    several_ports("sock-diag", true);
}

#[test]
fn several_ports_each_equal_ss_and_the_top_level_sums_proc() {
    several_ports("proc", false);
}

/// `GET path` on a sidecar inside `ns`.
fn status_in(ns: &Netns, port: u16) -> Value {
    ns.run(move || http::get(port, "/").1)
}

fn all_ports(source: &str) {
    let ns = Netns::new(&format!("all-{source}"));
    let sidecar = Sidecar::start_in(
        Some(ns.name()),
        &[
            "--source",
            source,
            "--all-ports",
            "--refresh-rate-seconds",
            "1",
        ],
        &[],
    );
    let serve = sidecar.port;
    let status = status_in(&ns, serve);
    // The sidecar's own HTTP listener is one of the namespace too, but one
    // it must not follow: polling the tracker is not activity.
    assert_eq!(
        status["ports"],
        serde_json::json!({}),
        "no port at first: {status}"
    );

    // A new service appears after start; two clients connect to it.
    let port = 9090;
    let mut service = ns.run(move || {
        let mut s = Server::v4(port);
        s.connect(2);
        s
    });
    eventually(Duration::from_secs(5), || {
        let status = status_in(&ns, serve);
        let ports: Vec<String> = status["ports"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        if ports == [port.to_string()] && port_field(&status, port, "active_connections") == 2 {
            Ok(())
        } else {
            Err(format!("client ephemeral ports must not appear: {status}"))
        }
    });

    // Its listener closes while the connections drain: still followed.
    service.stop_listening();
    eventually(Duration::from_secs(5), || {
        let status = status_in(&ns, serve);
        (port_field(&status, port, "listening") == false
            && port_field(&status, port, "active_connections") == 2)
            .then_some(())
            .ok_or(format!("draining port must stay: {status}"))
    });
    // Once drained, the port is no longer followed.
    service.close_all();
    eventually(Duration::from_secs(5), || {
        let status = status_in(&ns, serve);
        status["ports"]
            .get(port.to_string())
            .is_none()
            .then_some(())
            .ok_or(format!("drained port must go: {status}"))
    });
    drop(sidecar);
}

#[test]
fn all_ports_follows_listeners_as_they_come_and_go_ebpf() {
    require_ebpf!();
    all_ports("ebpf");
}

#[test]
fn all_ports_follows_listeners_as_they_come_and_go_sock_diag() {
    all_ports("sock-diag");
}

#[test]
fn all_ports_follows_listeners_as_they_come_and_go_proc() {
    all_ports("proc");
}

/// On the eBPF source a new listener is followed as soon as the kernel
/// program reports it: a 10 ms connection 200 ms after `listen()` is seen.
#[test]
fn all_ports_sees_a_short_connection_right_after_a_new_listener_ebpf() {
    require_ebpf!();
    let ns = Netns::new("all-quick");
    // A long tick: only the kernel's report can get the port followed.
    let sidecar = Sidecar::start_in(
        Some(ns.name()),
        &[
            "--source",
            "ebpf",
            "--all-ports",
            "--refresh-rate-seconds",
            "3600",
        ],
        &[],
    );
    let serve = sidecar.port;
    let port = 7777;
    let service = ns.run(move || {
        let s = Server::v4(port);
        std::thread::sleep(Duration::from_millis(200));
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let accepted = s.listener().accept().unwrap().0;
        std::thread::sleep(Duration::from_millis(10));
        drop(client);
        drop(accepted);
        s
    });
    let metrics = ns.run(move || http::get_with(serve, "/metrics", &[]).body);
    let samples = prometheus::parse(&metrics, false);
    let port_text = port.to_string();
    let labels = [("port", port_text.as_str())];
    assert_eq!(
        prometheus::sample(
            &samples,
            "spawner_sidecar_connections_opened_total",
            &labels
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        prometheus::sample(
            &samples,
            "spawner_sidecar_connections_closed_total",
            &labels
        ),
        Some(1.0),
        "{metrics}"
    );
    drop(service);
}
