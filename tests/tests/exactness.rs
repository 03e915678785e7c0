//! Where pollers are wrong: other namespaces, TIME_WAIT, short requests,
//! restarts, and TCP-only counting. On the eBPF source unless noted.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use test_support::{
    Netns, Server, Sidecar, bpf, eventually,
    expect::{expect_established, expect_matches_ss},
    field, free_port, http, require_ebpf, skip, ss,
};

fn loopback(port: u16) -> SockAddr {
    SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// A stream socket of `protocol` (TCP, MPTCP, SCTP), if the kernel has it.
fn stream(protocol: i32) -> std::io::Result<Socket> {
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::from(protocol)))
}

const IPPROTO_TCP: i32 = 6;

/// Waits until the sidecar's kernel program has counted at least `want`
/// of counter `index` (a `bpf::STAT_*`).
fn wait_for_stat(sidecar: &Sidecar, index: u32, want: u64) {
    eventually(Duration::from_secs(5), || {
        let got = sidecar.program_stat(index);
        (got >= want).then_some(()).ok_or(format!(
            "program counter {index} at {got}, waiting for {want}"
        ))
    });
}

fn start(source: &str, port: u16, refresh: &str) -> Sidecar {
    Sidecar::start(&[
        "--source",
        source,
        "--monitor-port",
        &port.to_string(),
        "--refresh-rate-seconds",
        refresh,
    ])
}

#[test]
fn connections_in_another_namespace_on_the_same_port_change_nothing() {
    require_ebpf!();
    let port = free_port();
    let other = Netns::new("other");
    // 25 connections to the same port number in another namespace, before
    // start: the seeding snapshot must not see them.
    let theirs = other.run(move || {
        let mut s = Server::v4(port);
        s.connect(25);
        s
    });
    // A long tick, so no reconcile can mask a kernel-side filter failure.
    let sidecar = start("ebpf", port, "3600");
    let mut ours = Server::v4(port);
    ours.connect(5);
    expect_established(&sidecar, port, 5);
    // 25 more over there while we watch, then all of theirs closed: each
    // would move our count if the program did not filter by namespace.
    // Each must first reach the program, which sets it aside as another
    // namespace's (at least one state change per connection on their
    // server side); only then does an unchanged count prove anything.
    let seen = sidecar.program_stat(bpf::STAT_OTHER_NETNS);
    let mut theirs = other.run(move || {
        let mut s = theirs;
        s.connect(25);
        s
    });
    wait_for_stat(&sidecar, bpf::STAT_OTHER_NETNS, seen + 25);
    let status = sidecar.status();
    assert_eq!(
        status["active_connections"], 5,
        "after 25 opened elsewhere: {status}"
    );
    let seen = sidecar.program_stat(bpf::STAT_OTHER_NETNS);
    theirs.close_all();
    wait_for_stat(&sidecar, bpf::STAT_OTHER_NETNS, seen + 50);
    let status = sidecar.status();
    assert_eq!(
        status["active_connections"], 5,
        "after 50 closed elsewhere: {status}"
    );
    assert_eq!(ss::count(None, "established", port), 5);
    theirs.shutdown();
    assert_eq!(
        sidecar.status()["listening"],
        true,
        "their listener closing is not ours"
    );
}

#[test]
fn sidecar_in_a_namespace_counts_only_that_namespace() {
    require_ebpf!();
    let port = free_port();
    let ns = Netns::new("pod");
    let mut ours = Server::v4(port);
    ours.connect(10); // noise in the root namespace
    let sidecar = Sidecar::start_in(
        Some(ns.name()),
        &["--source", "ebpf", "--monitor-port", &port.to_string()],
        &[],
    );
    // The sidecar's loopback is the namespace's: query it from inside.
    let sidecar_port = sidecar.port;
    let mut pod = ns.run(move || {
        let mut s = Server::v4(port);
        s.connect(3);
        s
    });
    let status = ns.run(move || http::get(sidecar_port, "/").1);
    assert_eq!(status["source"], "ebpf", "{status}");
    assert_eq!(status["active_connections"], 3, "{status}");
    pod.close_all();
    eventually(Duration::from_secs(5), || {
        let status = ns.run(move || http::get(sidecar_port, "/").1);
        (status["active_connections"] == 0)
            .then_some(())
            .ok_or(format!("{status}"))
    });
    drop(sidecar);
}

/// Where the clients of the TIME_WAIT tests connect from: an address of
/// their own, so that binding one of their ports again (reuse) cannot meet
/// a socket of anything else on this host (a benchmark churning through
/// 127.0.0.1's ephemeral ports made every such bind fail once).
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 47);

/// Server-first closes leave TIME_WAIT on the monitored port.
fn server_first_closes(port: u16, n: usize) -> Vec<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    let mut client_ports = Vec::new();
    for _ in 0..n {
        let mut client = test_support::sockets::connect_from(
            CLIENT.into(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        );
        client_ports.push(client.local_addr().unwrap().port());
        let (server, _) = listener.accept().unwrap();
        drop(server); // server closes first: FIN_WAIT -> TIME_WAIT on our side
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        drop(client);
    }
    client_ports
}

fn waiting_follows_time_wait(source: &str) {
    let port = free_port();
    let sidecar = start(source, port, "1");
    let client_ports = server_first_closes(port, 12);
    expect_matches_ss(
        &sidecar,
        "waiting_connections",
        "time-wait",
        port,
        12,
        Duration::from_secs(3),
    );
    assert_eq!(
        field(&sidecar, "seconds_since_active"),
        0,
        "TIME_WAIT is activity"
    );

    // Early death by reuse: a new SYN from the same client port takes over
    // the TIME_WAIT socket (RFC 6191), which dies without any event.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    let mut reused = Vec::new();
    for &client_port in &client_ports {
        if reused.len() == 4 {
            break;
        }
        let socket = stream(IPPROTO_TCP).unwrap();
        socket.set_reuse_address(true).unwrap();
        // Another socket of this host may have taken the ephemeral port
        // meanwhile (our own status requests, say): skip that one.
        if socket
            .bind(&SockAddr::from(SocketAddr::from((CLIENT, client_port))))
            .is_err()
        {
            continue;
        }
        socket.connect(&loopback(port)).unwrap();
        reused.push((socket, listener.accept().unwrap().0));
    }
    assert_eq!(reused.len(), 4, "could not reuse 4 of 12 client ports");
    expect_matches_ss(
        &sidecar,
        "waiting_connections",
        "time-wait",
        port,
        8,
        Duration::from_secs(3),
    );
    expect_matches_ss(
        &sidecar,
        "active_connections",
        "established",
        port,
        4,
        Duration::from_secs(1),
    );
}

#[test]
fn waiting_equals_ss_time_wait_within_a_tick_including_early_death_ebpf() {
    require_ebpf!();
    waiting_follows_time_wait("ebpf");
}

#[test]
fn waiting_equals_ss_time_wait_including_early_death_sock_diag() {
    waiting_follows_time_wait("sock-diag");
}

#[test]
fn waiting_equals_ss_time_wait_including_early_death_proc() {
    waiting_follows_time_wait("proc");
}

#[test]
fn short_client_closed_requests_count_as_activity() {
    require_ebpf!();
    let port = free_port();
    // Default 10 s tick: only kernel events can see these connections.
    let sidecar = Sidecar::start(&["--source", "ebpf", "--monitor-port", &port.to_string()]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    let server = std::thread::spawn(move || {
        let mut closed = Instant::now();
        for _ in 0..5 {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            while conn.read(&mut buf).unwrap_or(0) > 0 {}
            // The client closed first; the server closes after: no
            // TIME_WAIT on the monitored port.
            drop(conn);
            closed = Instant::now();
        }
        (listener, closed)
    });
    // Each request is activity: at every look, the time since the last
    // one's close bounds seconds_since_active (a whole second of rounding
    // allowed). Were they not, it would count from start, a second more
    // with each request. A loaded machine only makes the bound looser.
    let start = Instant::now();
    for request in 0..5 {
        let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        drop(client);
        let closed = Instant::now();
        // Ask at several moments until the next request, one per second.
        while start.elapsed() < Duration::from_secs(request + 1) {
            std::thread::sleep(Duration::from_millis(150));
            let idle = field(&sidecar, "seconds_since_active");
            let since = closed.elapsed();
            assert!(
                idle <= since.as_secs() + 1,
                "seconds_since_active {idle} {since:?} after request {request} closed"
            );
        }
    }
    let (_listener, server_closed) = server.join().unwrap();
    assert_eq!(
        ss::count(None, "time-wait", port),
        0,
        "client-first close leaves no TIME_WAIT here"
    );
    // Quiet since: it counts up from the last close, as the clock does.
    eventually(Duration::from_secs(20), || {
        let asked = server_closed.elapsed();
        let idle = field(&sidecar, "seconds_since_active");
        let answered = server_closed.elapsed();
        assert!(
            idle + 1 >= asked.as_secs() && idle <= answered.as_secs() + 1,
            "seconds_since_active {idle}, asked {asked:?} after the last close"
        );
        (idle >= 5)
            .then_some(())
            .ok_or(format!("quiet for {idle} s"))
    });
}

fn service_restart(source: &str) {
    let port = free_port();
    let sidecar = start(source, port, "1");
    let mut server = Server::v4(port);
    server.connect(3);
    expect_established(&sidecar, port, 3);
    assert_eq!(sidecar.status()["listening"], true);
    server.shutdown();
    eventually(
        Duration::from_secs(3),
        || match sidecar.status()["listening"].as_bool() {
            Some(false) => Ok(()),
            other => Err(format!("listening {other:?} after stop")),
        },
    );
    expect_established(&sidecar, port, 0);
    let mut server = Server::v4(port);
    assert_eq!(sidecar.status()["listening"], true);
    server.connect(2);
    expect_established(&sidecar, port, 2);
}

#[test]
fn service_restart_flips_listening_and_keeps_counts_exact() {
    require_ebpf!();
    service_restart("ebpf");
}

#[test]
fn service_restart_flips_listening_and_keeps_counts_exact_sock_diag() {
    service_restart("sock-diag");
}

#[test]
fn service_restart_flips_listening_and_keeps_counts_exact_proc() {
    service_restart("proc");
}

#[test]
fn mptcp_connection_level_transitions_are_not_counted_twice() {
    require_ebpf!();
    const IPPROTO_MPTCP: i32 = 262;
    let listener = match stream(IPPROTO_MPTCP) {
        Ok(listener) => listener,
        Err(e) if skip::protocol_missing(&e) => {
            return skip::kernel_lacks("MPTCP (CONFIG_MPTCP or net.mptcp.enabled)");
        }
        Err(e) => panic!("MPTCP socket: {e}"),
    };
    let port = free_port();
    let sidecar = start("ebpf", port, "1");
    listener.bind(&loopback(port)).unwrap();
    listener.listen(16).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let client = stream(IPPROTO_MPTCP).unwrap();
        client.connect(&loopback(port)).unwrap();
        held.push((client, listener.accept().unwrap().0));
    }
    // ss counts the TCP subflows; the MPTCP sockets above them must not add.
    eventually(Duration::from_secs(3), || {
        let (got, truth) = (
            field(&sidecar, "active_connections"),
            ss::count(None, "established", port),
        );
        (got == truth && truth >= 3)
            .then_some(())
            .ok_or(format!("sidecar {got}, ss {truth}"))
    });
    assert_eq!(sidecar.status()["listening"], true);
    held.clear();
    drop(listener);
    expect_established(&sidecar, port, 0);
}

#[test]
fn sctp_is_not_counted() {
    // SCTP sockets fire the same tracepoint; only a kernel with SCTP can
    // show that they are filtered out.
    const IPPROTO_SCTP: i32 = 132;
    let listener = match stream(IPPROTO_SCTP) {
        Ok(listener) => listener,
        Err(e) if skip::protocol_missing(&e) => return skip::kernel_lacks("SCTP"),
        Err(e) => panic!("SCTP socket: {e}"),
    };
    require_ebpf!();
    let port = free_port();
    let sidecar = start("ebpf", port, "1");
    let not_tcp = sidecar.program_stat(bpf::STAT_NOT_TCP);
    listener.bind(&loopback(port)).unwrap();
    listener.listen(4).unwrap();
    let client = stream(IPPROTO_SCTP).unwrap();
    client.connect(&loopback(port)).unwrap();
    let _conn = listener.accept().unwrap();
    // Nothing to count unless the program saw them: wait until it set
    // events on our port aside as not TCP.
    wait_for_stat(&sidecar, bpf::STAT_NOT_TCP, not_tcp + 1);
    let status = sidecar.status();
    assert_eq!(
        (
            status["active_connections"].as_u64(),
            status["listening"].as_bool()
        ),
        (Some(0), Some(false)),
        "{status}"
    );
}

#[test]
fn runtime_source_failure_falls_back_and_healthz_reports_it() {
    require_ebpf!();
    let port = free_port();
    let mut server = Server::v4(port);
    server.connect(4);
    let sidecar = Sidecar::start_in(
        None,
        &["--source", "ebpf", "--monitor-port", &port.to_string()],
        &[("SPAWNER_SIDECAR_FAULT", "ebpf-map-read")],
    );
    let status = sidecar.status();
    assert_eq!(status["source"], "sock-diag", "{status}");
    assert_eq!(status["active_connections"], 4, "{status}");
    let (code, health) = sidecar.get("/healthz");
    assert_eq!(code, 200);
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reason"]
            .as_str()
            .unwrap_or("")
            .contains("ebpf source failed"),
        "{health}"
    );
    assert!(
        sidecar.log().contains("falling back to sock-diag"),
        "{}",
        sidecar.log()
    );
    server.connect(1);
    expect_established(&sidecar, port, 5);
}
