//! No drift: 200 000 connection lifecycles on the monitored port as fast as
//! they go (client-first close, server-first close, RST either way, refused
//! connects, connections from before start), then once quiet every count
//! equals `ss` exactly, and the reconcile never had to correct the events.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use test_support::{Netns, Server, Sidecar, eventually, http, require_ebpf, ss};

const LIFECYCLES: usize = 200_000;
const PORT: u16 = 8080;

/// One connection's life, chosen by `i`. Returns whether it connected.
fn lifecycle(listener: &TcpListener, i: usize) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    if i % 5 == 4 {
        // Refused: nothing listens on 127.0.0.2, the kernel answers RST.
        let refused = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 2], PORT)),
            Duration::from_secs(1),
        );
        assert!(refused.is_err(), "connect to 127.0.0.2 should be refused");
        return false;
    }
    let Ok(mut client) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let (mut server, _) = listener.accept().unwrap();
    let mut buf = [0u8; 1];
    match i % 5 {
        0 => {
            drop(client); // client first: CLOSE_WAIT -> LAST_ACK here
            let _ = server.read(&mut buf);
        }
        1 => {
            drop(server); // server first: TIME_WAIT on the monitored port
            let _ = client.read(&mut buf);
        }
        2 => {
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(client); // RST from the client: ESTABLISHED -> CLOSE here
        }
        _ => {
            socket2::SockRef::from(&server)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(server); // RST from us
        }
    }
    true
}

#[test]
fn counts_equal_ss_after_200000_mixed_lifecycles() {
    require_ebpf!();
    // Its own namespace: its own port space and TIME_WAIT table, and no
    // other test's sockets on port 8080.
    let ns = Netns::new("drift");
    let before = ns.run(|| {
        let mut s = Server::v4(PORT);
        s.connect(300);
        s
    });
    let sidecar = Sidecar::start_in(
        Some(ns.name()),
        &[
            "--source",
            "ebpf",
            "--monitor-port",
            &PORT.to_string(),
            "--refresh-rate-seconds",
            "1",
        ],
        &[],
    );
    let port = sidecar.port;
    let started = Instant::now();
    let (held, connected) = ns.run(move || {
        let mut server = before;
        let mut connected = 0;
        for i in 0..LIFECYCLES {
            if i == LIFECYCLES / 2 {
                server.close_all(); // the pre-start connections end mid-run
            }
            connected += usize::from(lifecycle(server.listener(), i));
        }
        let listener = server.listener();
        // A few left open at the end.
        let held: Vec<(TcpStream, TcpStream)> = (0..7)
            .map(|_| {
                let c = TcpStream::connect((Ipv4Addr::LOCALHOST, PORT)).unwrap();
                (c, listener.accept().unwrap().0)
            })
            .collect();
        (held, (connected, server))
    });
    let (connected, _server) = connected;
    println!(
        "{LIFECYCLES} lifecycles ({connected} connected) in {:?}",
        started.elapsed()
    );

    // Quiet now. TIME_WAIT comes from a snapshot: allow one tick. All of it
    // is younger than 60 s, so none expires while we compare.
    let ns_name = ns.name().to_string();
    eventually(Duration::from_secs(5), || {
        let status = ns.run(move || http::get(port, "/").1);
        let truth = (
            ss::count(Some(&ns_name), "established", PORT),
            ss::count(Some(&ns_name), "time-wait", PORT),
            ss::count(Some(&ns_name), "listening", PORT),
        );
        let got = (
            status["active_connections"].as_u64().unwrap_or(u64::MAX),
            status["waiting_connections"].as_u64().unwrap_or(u64::MAX),
            u64::from(status["listening"].as_bool() == Some(true)),
        );
        if got == truth && truth.0 == 7 {
            Ok(())
        } else {
            Err(format!(
                "sidecar (established, time_wait, listening) {got:?}, ss {truth:?}"
            ))
        }
    });
    assert!(
        !sidecar.log().contains("corrected by snapshot"),
        "the kernel program missed events; the snapshot had to repair them:\n{}",
        sidecar.log()
    );
    drop(held);
}
