//! `/metrics` as Prometheus reads it: parsed by the Prometheus project's own
//! parser in both formats, checked against `ss` per port, state and family;
//! long-lived connections across the age boundary; opened/closed counters.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use test_support::{
    Server, Sidecar, eventually, free_port, http, prometheus, require_ebpf,
    ss::{self, Family},
};

const OPENMETRICS: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

fn scrape(sidecar: &Sidecar, openmetrics: bool) -> Vec<prometheus::Sample> {
    let headers: &[(&str, &str)] = if openmetrics {
        &[("Accept", OPENMETRICS)]
    } else {
        &[]
    };
    let response = http::get_with(sidecar.port, "/metrics", headers);
    let (code, content_type, body) = (
        response.code,
        response.header("content-type").unwrap_or_default(),
        &response.body,
    );
    assert_eq!(code, 200, "{body}");
    let want = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    assert_eq!(content_type, want);
    prometheus::parse(body, openmetrics)
}

fn metrics_equal_ss(source: &str) {
    let (a, b) = (free_port(), free_port());
    let mut on_a = Server::v4(a);
    on_a.connect(2);
    on_a.close_server_first(); // 2 TIME_WAIT on a
    on_a.connect(3);
    let mut on_b = Server::dual_stack(b);
    on_b.connect(2);
    on_b.connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, b)), 1); // IPv4-mapped: ipv6
    let ports = format!("{a},{b}");
    let sidecar = Sidecar::start(&[
        "--source",
        source,
        "--monitor-port",
        &ports,
        "--refresh-rate-seconds",
        "1",
    ]);
    for openmetrics in [false, true] {
        eventually(Duration::from_secs(5), || {
            let samples = scrape(&sidecar, openmetrics);
            let mut wrong = Vec::new();
            for port in [a, b] {
                for (state, ss_state) in
                    [("established", "established"), ("time_wait", "time-wait")]
                {
                    for family in ["ipv4", "ipv6"] {
                        let truth =
                            ss::count_family(ss_state, port, Family::from_label(family).unwrap())
                                as f64;
                        let port_text = port.to_string();
                        let got = prometheus::sample(
                            &samples,
                            "spawner_sidecar_connections",
                            &[("port", &port_text), ("state", state), ("family", family)],
                        );
                        if got != Some(truth) {
                            wrong.push(format!("{port} {state} {family}: {got:?}, ss {truth}"));
                        }
                    }
                }
            }
            wrong.is_empty().then_some(()).ok_or(wrong.join("; "))
        });
        let samples = scrape(&sidecar, openmetrics);
        let a_text = a.to_string();
        assert_eq!(
            prometheus::sample(&samples, "spawner_sidecar_listening", &[("port", &a_text)]),
            Some(1.0)
        );
        assert_eq!(
            prometheus::sample(
                &samples,
                "spawner_sidecar_source_info",
                &[("source", source)]
            ),
            Some(1.0)
        );
        assert!(
            prometheus::sample(
                &samples,
                "spawner_sidecar_connections_opened_total",
                &[("port", &a_text)]
            )
            .is_some()
        );
    }
    // The expected shape, so a test that passes proves something.
    assert_eq!(ss::count_family("time-wait", a, Family::Ipv4), 2);
    assert_eq!(ss::count_family("established", b, Family::Ipv6), 3);
}

#[test]
fn metrics_parsed_by_prometheus_equal_ss_per_port_state_and_family_ebpf() {
    require_ebpf!();
    metrics_equal_ss("ebpf");
}

#[test]
fn metrics_parsed_by_prometheus_equal_ss_per_port_state_and_family_sock_diag() {
    metrics_equal_ss("sock-diag");
}

#[test]
fn metrics_parsed_by_prometheus_equal_ss_per_port_state_and_family_proc() {
    metrics_equal_ss("proc");
}

fn long_lived(sidecar: &Sidecar, port: u16) -> f64 {
    let port = port.to_string();
    prometheus::sample(
        &scrape(sidecar, false),
        "spawner_sidecar_long_lived_connections",
        &[("port", &port)],
    )
    .unwrap()
}

/// `long_lived` now, checked against the clock: no connection counts before
/// it can be 2 s old. `opened` holds, per connection, an instant no later
/// than the tracker could date it from. A slow machine only makes the
/// bound looser, never wrong.
fn long_lived_checked(sidecar: &Sidecar, port: u16, opened: &[Instant]) -> f64 {
    let got = long_lived(sidecar, port);
    let possible = opened
        .iter()
        .filter(|o| o.elapsed() >= Duration::from_secs(2))
        .count() as f64;
    assert!(
        got <= possible,
        "{got} long-lived, but only {possible} can be 2 s old (opened {:?} ago)",
        opened.iter().map(Instant::elapsed).collect::<Vec<_>>()
    );
    got
}

fn long_lived_across_the_boundary(source: &str) {
    let port = free_port();
    let mut server = Server::v4(port);
    server.connect(1); // from before start: dated from the start at best
    let mut opened = vec![Instant::now()];
    let sidecar = Sidecar::start(&[
        "--source",
        source,
        "--monitor-port",
        &port.to_string(),
        "--min-connection-age",
        "2s",
        "--refresh-rate-seconds",
        "1",
    ]);
    opened.extend([Instant::now(); 2]);
    server.connect(2);
    // A scrape right away: the pollers' first sight of the two new ones.
    long_lived_checked(&sidecar, port, &opened);
    std::thread::sleep(Duration::from_secs(1));
    opened.push(Instant::now());
    server.connect(1);
    long_lived_checked(&sidecar, port, &opened);
    for (want, which) in [
        (3.0, "the one from before start and the two opened at 0 s"),
        (4.0, "and the one from 1 s"),
    ] {
        eventually(Duration::from_secs(10), || {
            let got = long_lived_checked(&sidecar, port, &opened);
            (got >= want)
                .then_some(())
                .ok_or(format!("{got} long-lived, waiting for {which}"))
        });
    }
    assert_eq!(long_lived_checked(&sidecar, port, &opened), 4.0);
    assert_eq!(ss::count(None, "established", port), 4);
}

#[test]
fn long_lived_counts_connections_once_they_are_old_enough_ebpf() {
    require_ebpf!();
    long_lived_across_the_boundary("ebpf");
}

#[test]
fn long_lived_counts_connections_once_they_are_old_enough_proc() {
    long_lived_across_the_boundary("proc");
}

#[test]
fn long_lived_counts_connections_once_they_are_old_enough_sock_diag() {
    long_lived_across_the_boundary("sock-diag");
}

#[test]
fn opened_and_closed_counters_see_connections_between_scrapes_ebpf() {
    require_ebpf!();
    let port = free_port();
    let server = Server::v4(port);
    let sidecar = Sidecar::start(&["--source", "ebpf", "--monitor-port", &port.to_string()]);
    let port_text = port.to_string();
    let counters = |sidecar: &Sidecar| {
        let samples = scrape(sidecar, true);
        let get = |name| prometheus::sample(&samples, name, &[("port", &port_text)]).unwrap();
        (
            get("spawner_sidecar_connections_opened_total"),
            get("spawner_sidecar_connections_closed_total"),
        )
    };
    let before = counters(&sidecar);
    for _ in 0..5 {
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let accepted = server.listener().accept().unwrap().0;
        drop(client);
        drop(accepted);
    }
    let after = counters(&sidecar);
    assert_eq!((after.0 - before.0, after.1 - before.1), (5.0, 5.0));
}
