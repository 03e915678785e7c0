//! Activity filters: `--ignore-peer` leaves a network out of every count and
//! of activity; `--activity-min-age` keeps counting young connections but
//! does not call them (or their TIME_WAIT) activity.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use test_support::{Server, Sidecar, eventually, field, free_port, require_ebpf, sockets, ss};

const PROBER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn ignore_peer(source: &str) {
    let (v4, dual) = (free_port(), free_port());
    let ports = format!("{v4},{dual}");
    let sidecar = Sidecar::start(&[
        "--source",
        source,
        "--monitor-port",
        &ports,
        "--ignore-peer",
        "127.0.0.2/32,::1/128",
        "--refresh-rate-seconds",
        "1",
    ]);
    let v4_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, v4));
    let listener = TcpListener::bind(v4_addr).unwrap();
    // A probe from 127.0.0.2, the same to a dual-stack listener (its peer
    // is ::ffff:127.0.0.2), and one real client.
    let mut probe = sockets::connect_from(PROBER, v4_addr);
    let probe_accepted = listener.accept().unwrap().0;
    let mapped = Server::dual_stack(dual);
    let probe_mapped = sockets::connect_from(PROBER, SocketAddr::from((Ipv4Addr::LOCALHOST, dual)));
    let probe_mapped_accepted = mapped.listener().accept().unwrap().0;
    // And an IPv6 peer (::1), matched as such.
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let probe_v6 = sockets::connect_from(v6, SocketAddr::new(v6, dual));
    let probe_v6_accepted = mapped.listener().accept().unwrap().0;
    let real = TcpStream::connect(v4_addr).unwrap();
    let real_accepted = listener.accept().unwrap().0;
    eventually(Duration::from_secs(5), || {
        let status = sidecar.status();
        let truth = ss::count(None, "established", v4) + ss::count(None, "established", dual);
        (truth == 4 && status["active_connections"] == 1 && status["ignored_connections"] == 3)
            .then_some(())
            .ok_or(format!(
                "ss {truth}: {status}\nss: {}\nlog:\n{}",
                ss::listing("established", &[v4, dual]),
                sidecar.log()
            ))
    });
    // Only the real client was activity: once it is gone (client first, no
    // TIME_WAIT here), the probes still open do not keep the port active.
    // (Pollers date the close at their next read: up to a 1 s tick late.)
    drop(real);
    drop(real_accepted);
    // Were the probes activity, seconds_since_active would stay at 0.
    eventually(Duration::from_secs(10), || {
        let status = sidecar.status();
        (status["active_connections"] == 0
            && status["ignored_connections"] == 3
            && status["seconds_since_active"].as_u64() >= Some(2))
        .then_some(())
        .ok_or(format!("ignored peers are not activity: {status}"))
    });
    // A probe's TIME_WAIT (server closed first) is ignored too.
    drop(probe_accepted);
    let _ = probe.read(&mut [0u8; 1]);
    drop(probe);
    eventually(Duration::from_secs(3), || {
        let status = sidecar.status();
        let tw = ss::count(None, "time-wait", v4);
        (tw == 1 && status["waiting_connections"] == 0 && status["ignored_connections"] == 3)
            .then_some(())
            .ok_or(format!("ss time-wait {tw}: {status}"))
    });
    assert!(field(&sidecar, "seconds_since_active") >= 2);
    drop((
        probe_mapped,
        probe_mapped_accepted,
        probe_v6,
        probe_v6_accepted,
    ));
}

#[test]
fn ignored_peers_are_counted_apart_and_are_not_activity_ebpf() {
    require_ebpf!();
    ignore_peer("ebpf");
}

#[test]
fn ignored_peers_are_counted_apart_and_are_not_activity_sock_diag() {
    ignore_peer("sock-diag");
}

#[test]
fn ignored_peers_are_counted_apart_and_are_not_activity_proc() {
    ignore_peer("proc");
}

/// A kubelet `httpGet`-style probe: connect, the server answers and closes
/// first, leaving TIME_WAIT on the monitored port.
fn probe_closed_by_server(server: &Server, port: u16) {
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let accepted = server.listener().accept().unwrap().0;
    drop(accepted);
    let _ = client.read(&mut [0u8; 1]);
}

/// A client-first 10 ms connection (a TCP probe).
fn probe_closed_by_client(server: &Server, port: u16) {
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let accepted = server.listener().accept().unwrap().0;
    std::thread::sleep(Duration::from_millis(10));
    drop(client);
    drop(accepted);
}

#[test]
fn young_connections_and_their_time_wait_are_not_activity_ebpf() {
    require_ebpf!();
    let port = free_port();
    let server = Server::v4(port);
    let sidecar = Sidecar::start(&[
        "--source",
        "ebpf",
        "--monitor-port",
        &port.to_string(),
        "--activity-min-age",
        "1s",
        "--refresh-rate-seconds",
        "1",
    ]);
    for _ in 0..5 {
        probe_closed_by_client(&server, port);
        probe_closed_by_server(&server, port);
        std::thread::sleep(Duration::from_millis(400));
    }
    // Counted, but not activity: idle since start, 2+ s ago.
    eventually(Duration::from_secs(3), || {
        let status = sidecar.status();
        let tw = ss::count(None, "time-wait", port);
        (tw == 5 && status["waiting_connections"] == 5)
            .then_some(())
            .ok_or(format!("ss time-wait {tw}: {status}"))
    });
    let idle = field(&sidecar, "seconds_since_active");
    assert!(idle >= 2, "probes are not activity: {idle}");

    // A longer connection is activity once 1 s old, and its TIME_WAIT
    // (server closes first) keeps it so.
    let (mut client, accepted) = young_then_old(&sidecar, &server, port);
    drop(accepted);
    let _ = client.read(&mut [0u8; 1]);
    drop(client);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        field(&sidecar, "seconds_since_active"),
        0,
        "its TIME_WAIT is activity"
    );
}

/// A connection to `port` seen not to be activity while under 1 s old,
/// then seen to be once older. The first is only known from an answer that
/// came back within 1 s of the connect; on a machine too loaded for that,
/// the connection is reset and the check made again on a new one.
fn young_then_old(sidecar: &Sidecar, server: &Server, port: u16) -> (TcpStream, TcpStream) {
    for _ in 0..3 {
        eventually(Duration::from_secs(10), || {
            let idle = field(sidecar, "seconds_since_active");
            (idle >= 2).then_some(()).ok_or(format!("idle {idle} s"))
        });
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let accepted = server.listener().accept().unwrap().0;
        let opened = Instant::now();
        let idle = field(sidecar, "seconds_since_active");
        if opened.elapsed() < Duration::from_millis(900) {
            assert!(
                idle >= 2,
                "a connection under 1 s old is activity: idle {idle}"
            );
            eventually(Duration::from_secs(5), || {
                let idle = field(sidecar, "seconds_since_active");
                (idle == 0)
                    .then_some(())
                    .ok_or(format!("{:?} old and still idle {idle}", opened.elapsed()))
            });
            return (client, accepted);
        }
        sockets::reset_on_close(&client).unwrap();
    }
    panic!("three answers in a row took 0.9 s or more: cannot tell a young connection");
}

#[test]
fn young_connections_are_not_activity_proc() {
    young_connections_on_a_poller("proc");
}

#[test]
fn young_connections_are_not_activity_sock_diag() {
    young_connections_on_a_poller("sock-diag");
}

fn young_connections_on_a_poller(source: &str) {
    let port = free_port();
    let server = Server::v4(port);
    let sidecar = Sidecar::start(&[
        "--source",
        source,
        "--monitor-port",
        &port.to_string(),
        "--activity-min-age",
        "1s",
        "--refresh-rate-seconds",
        "1",
    ]);
    // A probe the poller sees (it asks while it is open) but never as old.
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let accepted = server.listener().accept().unwrap().0;
    assert_eq!(field(&sidecar, "active_connections"), 1);
    drop(accepted);
    let mut client = client;
    let _ = client.read(&mut [0u8; 1]);
    drop(client);
    // Were its TIME_WAIT activity, seconds_since_active would stay at 0.
    eventually(Duration::from_secs(10), || {
        let status = sidecar.status();
        (status["waiting_connections"] == 1 && status["seconds_since_active"].as_u64() >= Some(2))
            .then_some(())
            .ok_or(format!(
                "a young connection's TIME_WAIT is not activity: {status}"
            ))
    });
    // One the poller sees for more than 1 s is.
    let _held = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let _accepted = server.listener().accept().unwrap().0;
    // A poller dates a connection from when it first sees it: now.
    assert!(field(&sidecar, "seconds_since_active") >= 2, "first sight");
    let seen = Instant::now();
    eventually(Duration::from_secs(10), || {
        let idle = field(&sidecar, "seconds_since_active");
        (idle == 0)
            .then_some(())
            .ok_or(format!("seen for {:?}, still idle {idle}", seen.elapsed()))
    });
}
