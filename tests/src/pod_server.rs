//! The `pod-server` helper (`src/bin/pod-server.rs`) as the process of a
//! fake pod, and the connections a test makes to it from inside the pod's
//! namespace: held ones (ESTABLISHED), ones the server closes first (a
//! TIME_WAIT socket on its port), and short ones ended every way.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use test_support::{FakePod, sockets};

/// The helper cargo builds beside the tests.
pub fn exe() -> PathBuf {
    sockets::helper_beside_tests("pod-server")
}

/// Starts `pod-server PORTS` as a process of container `container` of
/// `pod`, and waits until it listens.
pub fn start(pod: &mut FakePod, container: usize, ports: &[u16]) -> u32 {
    let args: Vec<String> = ports.iter().map(u16::to_string).collect();
    pod.start_ready(container, exe(), &args, "listening")
        .unwrap_or_else(|e| panic!("pod-server {args:?} in pod {}: {e}", pod.uid()))
}

/// Opens `n` connections to 127.0.0.1:`port` in the pod and keeps them
/// open (the pod holds them): `n` ESTABLISHED sockets on `port`.
pub fn connect(pod: &mut FakePod, port: u16, n: usize) {
    let streams = pod.netns().run(move || {
        (0..n)
            .map(|_| {
                TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"))
            })
            .collect::<Vec<_>>()
    });
    pod.hold(streams);
}

/// `n` connections to `port` in the pod, each closed by the server first:
/// `n` TIME_WAIT sockets on `port`.
pub fn close_server_first(pod: &FakePod, port: u16, n: usize) {
    let uid = pod.uid().to_string();
    pod.netns().run(move || {
        for _ in 0..n {
            closed_by_server(port).unwrap_or_else(|e| panic!("pod {uid}, port {port}: {e}"));
        }
    });
}

/// Connects, asks the server to close first, waits for its FIN and closes.
fn closed_by_server(port: u16) -> io::Result<()> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.write_all(b"q")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    if s.read(&mut [0u8; 1])? != 0 {
        return Err(io::Error::other("the server sent data instead of closing"));
    }
    // Our ACK of the server's FIN leaves from a softirq on one CPU, our FIN
    // from this thread on another, and loopback queues per CPU: the ACK
    // can arrive after the FIN. The TIME_WAIT socket then answers that
    // stale ACK, our closed port answers with a reset, and the reset kills
    // the TIME_WAIT (net.ipv4.tcp_rfc1337 = 0). Measured here: about 1
    // connection in 400 without this pause (nstat: TcpOutRsts), none in
    // 3 600 with it.
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}

/// One short connection to `port` from the calling thread (which must be
/// in the pod's namespace), ended the way `i` picks: the client first, the
/// server first (TIME_WAIT on `port`), a reset from the client, or both at
/// once (either side may keep the TIME_WAIT).
pub fn short_connection(port: u16, i: usize) -> io::Result<()> {
    match i % 4 {
        0 => drop(TcpStream::connect((Ipv4Addr::LOCALHOST, port))?),
        1 => closed_by_server(port)?,
        2 => {
            let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
            sockets::reset_on_close(&s)?;
        }
        _ => TcpStream::connect((Ipv4Addr::LOCALHOST, port))?.write_all(b"q")?,
    }
    Ok(())
}
