//! A pod's process for the node-mode tests (`test_support::pods::FakePod`):
//! it listens, holds every connection it accepts, and closes one first
//! when the peer asks, so a test makes ESTABLISHED and TIME_WAIT sockets on
//! the pod's port from inside the pod's namespace, owned by a process in
//! the pod's cgroups as a real server's would be.
//!
//! `pod-server [PORT...]`: listens on 0.0.0.0:PORT for each PORT (none: it
//! only holds the pod's place, as a second container) and prints
//! `listening`. A connection is held until its peer sends `q` (we close
//! first: our socket ends in TIME_WAIT once the peer closes too) or closes
//! (or resets) it. Exits when its stdin closes: the test that started it is gone.
#![allow(
    clippy::unwrap_used,
    reason = "a helper: a panic is its failure report"
)]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let mut listeners = Vec::new();
    for arg in std::env::args().skip(1) {
        let Ok(port) = arg.parse::<u16>() else {
            eprintln!("usage: pod-server [PORT...]");
            return ExitCode::from(2);
        };
        match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("error: cannot listen on port {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for listener in listeners {
        std::thread::spawn(move || serve(listener));
    }
    println!("listening");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    ExitCode::SUCCESS
}

fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                // Out of threads: the connection closes, which ss shows.
                let _ = std::thread::Builder::new().spawn(move || hold(stream));
            }
            Err(e) => {
                eprintln!("pod-server: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Holds `stream` until the peer sends `q`, closes or resets; then closes
/// it here.
fn hold(mut stream: TcpStream) {
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        if byte[0] == b'q' {
            close_first(stream);
            return;
        }
    }
}

/// Sends our FIN first and closes once the peer's FIN came: the socket
/// goes FIN_WAIT2 -> TIME_WAIT while we still hold it, not as an orphan
/// (which, the kernel's tcp_rcv_state_process says, can lose a FIN that
/// arrives at that moment).
fn close_first(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let mut rest = [0u8; 64];
    while let Ok(n) = stream.read(&mut rest) {
        if n == 0 {
            break;
        }
    }
}
