//! The HTTP front door under clients that misbehave or crowd in: a
//! connection that never sends a request, or idles between requests, is
//! closed after the header timeout; `/wait-for-idle` waiters beyond the cap
//! get a 503 that says so.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use test_support::{Server, Sidecar, eventually, free_port, http};

/// The daemon's `serve::HEADER_TIMEOUT`, and how long past it a loaded
/// machine may take to close.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const SLACK: Duration = Duration::from_secs(10);

/// Reads until the peer closes; panics if it is still open after `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("still open after {:?}: {e}", start.elapsed()),
        }
    }
}

#[test]
fn silent_and_idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let sidecar = Sidecar::start(&["--source", "sock-diag"]);
    let port = sidecar.port;
    // One that connects and never sends.
    let silent = std::thread::spawn(move || {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        closed_within(&mut s, HEADER_TIMEOUT + SLACK)
    });
    // One that asks once on a keep-alive connection, then idles.
    let idle = std::thread::spawn(move || {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        closed_within(&mut s, HEADER_TIMEOUT + SLACK)
    });
    let silent = silent.join().unwrap();
    let idle = idle.join().unwrap();
    assert!(
        silent >= HEADER_TIMEOUT - Duration::from_millis(500),
        "closed too soon: {silent:?}"
    );
    assert!(
        idle >= HEADER_TIMEOUT - Duration::from_millis(500),
        "closed too soon: {idle:?}"
    );
    // Still serving others.
    assert_eq!(http::request(port, "GET", "/healthz").0, 200);
}

#[test]
fn wait_for_idle_beyond_the_cap_is_a_503_that_says_so() {
    const CAP: usize = 1024;
    let port = free_port();
    let mut server = Server::v4(port);
    server.connect(1);
    let sidecar = Sidecar::start(&["--source", "sock-diag", "--monitor-port", &port.to_string()]);
    let serve = sidecar.port;
    let mut waiters = http::hold_requests(serve, "/wait-for-idle?quiet=1s&timeout=600s", CAP);
    // Once every slot is taken, one more is refused at once, and says why.
    let (code, body) = eventually(Duration::from_secs(30), || {
        let (code, body) = http::request(serve, "GET", "/wait-for-idle?quiet=1s&timeout=1s");
        if body.contains("too many waiters") {
            Ok((code, body))
        } else {
            Err(format!("{code} {body}"))
        }
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&CAP.to_string()), "{body}");
    // A slot freed is a slot usable: that request waits (and times out with
    // the state) instead of being refused.
    drop(waiters.pop());
    let (code, body) = eventually(Duration::from_secs(30), || {
        let (code, body) = http::request(serve, "GET", "/wait-for-idle?quiet=1s&timeout=1s");
        if body.contains("too many waiters") {
            Err(body)
        } else {
            Ok((code, body))
        }
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"active_connections\":1"), "{body}");
    drop(waiters);
}

/// Every answer is one small write: the accepted connection has
/// TCP_NODELAY (from the listener), read from the daemon's own descriptor.
#[test]
fn an_accepted_connection_has_tcp_nodelay() {
    let sidecar = Sidecar::start(&["--source", "sock-diag"]);
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, sidecar.port)).unwrap();
    let ours = stream.local_addr().unwrap();
    let found = eventually(Duration::from_secs(5), || {
        let sockets = test_support::sockets::connected_sockets_of(sidecar.pid())
            .map_err(|e| e.to_string())?;
        sockets
            .into_iter()
            .find(|s| s.peer == ours)
            .ok_or_else(|| format!("no accepted socket for {ours} yet"))
    });
    assert!(found.nodelay, "{found:?}");
}
