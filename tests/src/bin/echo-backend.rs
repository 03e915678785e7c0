//! A service for the proxy's tests: echoes what it reads on each port,
//! reports how each connection ended, and records its starts and the
//! signals it gets, so tests can see what the proxy did to it.
//!
//! `echo-backend [--delay DURATION_MS] [--log FILE] [--listened FILE] [--ignore-term] PORT...`
//! (`--listened`: CLOCK_MONOTONIC nanoseconds when the ports opened, for the
//! proxy's cold-start benchmark)
//! - listens on 127.0.0.1:PORT after `--delay` milliseconds (a slow start);
//! - echoes; at the client's EOF writes `<eof>` and shuts down writing (so
//!   a half-close round trip is visible); a line `RESET\n` makes it close
//!   with a reset, a line `CLOSE\n` close first with a FIN (its side then
//!   ends in TIME_WAIT, on its own port);
//! - appends to `--log`: `start PID`, then `eof`/`reset` per connection,
//!   and `signal N` for SIGTERM, SIGINT or SIGHUP (then exits 0), unless
//!   `--ignore-term` makes it ignore SIGTERM (to test the SIGKILL fallback).
#![allow(
    clippy::unwrap_used,
    reason = "a test helper: a panic is a test failure"
)]

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

/// The log's descriptor, for the signal handler (write(2) is
/// async-signal-safe; Rust's file API is not).
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = LOG_FD.load(Ordering::Relaxed);
    let line = match signal {
        libc::SIGTERM => &b"signal 15\n"[..],
        libc::SIGINT => b"signal 2\n",
        _ => b"signal 1\n",
    };
    if fd >= 0 {
        // SAFETY: write(2) of a static buffer to a descriptor we opened.
        unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(0) };
}

fn log(line: &str) {
    let fd = LOG_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let text = format!("{line}\n");
        // SAFETY: write(2) of a live buffer to a descriptor we opened; one
        // call per line, so lines from threads do not interleave (O_APPEND).
        unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    }
}

fn serve(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = stream.write_all(b"<eof>");
                let _ = stream.shutdown(std::net::Shutdown::Write);
                log("eof");
                return;
            }
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                if pending.windows(6).any(|w| w == b"RESET\n") {
                    socket2::SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    log("sent reset");
                    return;
                }
                if pending.windows(6).any(|w| w == b"CLOSE\n") {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    log("closed first");
                    return;
                }
                if pending.len() > 16 {
                    pending.drain(..pending.len() - 16);
                }
                if stream.write_all(&buf[..n]).is_err() {
                    log("write failed");
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                log("reset");
                return;
            }
            Err(e) => {
                log(&format!("error {e}"));
                return;
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut delay = Duration::ZERO;
    let mut ports = Vec::new();
    let mut ignore_term = false;
    let mut listened = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--delay" => delay = Duration::from_millis(args.next().unwrap().parse().unwrap()),
            "--log" => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(args.next().unwrap())
                    .unwrap();
                LOG_FD.store(file.as_raw_fd(), Ordering::Relaxed);
                std::mem::forget(file);
            }
            "--ignore-term" => ignore_term = true,
            "--listened" => listened = Some(args.next().unwrap()),
            port => ports.push(port.parse::<u16>().unwrap()),
        }
    }
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let handler = if signal == libc::SIGTERM && ignore_term {
            libc::SIG_IGN
        } else {
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
        };
        // SAFETY: installs a handler that only calls async-signal-safe
        // functions (write, _exit), or ignores the signal.
        unsafe { libc::signal(signal, handler) };
    }
    log(&format!("start {}", std::process::id()));
    std::thread::sleep(delay);
    // A backlog as deep as the proxy's: a thousand held clients are
    // forwarded at once when it opens.
    let listeners: Vec<TcpListener> = ports
        .iter()
        .map(|p| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_reuse_address(true).unwrap();
            socket
                .bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, *p)).into())
                .unwrap();
            socket.listen(4096).unwrap();
            socket.into()
        })
        .collect();
    if let Some(path) = listened {
        // CLOCK_MONOTONIC is one clock for every process: the benchmark
        // compares it with when its client got the first byte.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        std::fs::write(path, ns.to_string()).unwrap();
    }
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    std::thread::spawn(move || serve(stream));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
