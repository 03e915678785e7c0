//! The core exactness checks, self-contained, for a kernel this machine
//! does not run (`cargo xtask test-kernel` boots it in QEMU with this
//! binary, the tracker and busybox in the initramfs; there is no `ss`).
//!
//! `kernel-check --tracker PATH [--port PORT]`: starts the tracker on the
//! eBPF source, then compares its counts with the kernel's own view
//! (`/proc/thread-self/net/tcp` and `tcp6`) for connections from before its
//! start, new ones, closed ones, TIME_WAIT, IPv6 and v4-mapped clients, and
//! the same port in another network namespace. Prints one line per check,
//! the verifier's instruction count for the program, and exits 1 at the
//! first failure (with the tracker's log).
#![allow(
    clippy::unwrap_used,
    reason = "a helper: a panic is its failure report"
)]

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use test_support::{Server, eventually, http::get as http_get, procinfo::held_programs};

const SERVE_PORT: u16 = 7070;
const TCP_ESTABLISHED: u8 = 0x01;
const TCP_TIME_WAIT: u8 = 0x06;

/// Sockets in `state` on local port `port` in the calling thread's network
/// namespace, from /proc/net/tcp and tcp6 (rows deduplicated: the kernel
/// may print a socket twice across read boundaries).
fn proc_count(state: u8, port: u16) -> u64 {
    let mut rows = BTreeSet::new();
    for file in ["tcp", "tcp6"] {
        let path = format!("/proc/thread-self/net/{file}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(st)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            let lport = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if lport == Some(port) && u8::from_str_radix(st, 16).ok() == Some(state) {
                rows.insert((local.to_string(), remote.to_string()));
            }
        }
    }
    rows.len() as u64
}

struct Tracker {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tracker {
    fn start(path: &str, port: u16) -> Tracker {
        let mut child = Command::new(path)
            .args(["--source", "ebpf", "--monitor-port", &port.to_string()])
            .args([
                "--serve-address",
                "127.0.0.1",
                "--serve-port",
                &SERVE_PORT.to_string(),
            ])
            .args(["--refresh-rate-seconds", "1"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {path}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let tracker = Tracker { child, log };
        // Under emulation (QEMU TCG) parsing the kernel's BTF takes seconds.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !tracker.log().contains(" serving ") {
            if Instant::now() > deadline {
                panic!(
                    "the tracker did not serve within 120 s; log:\n{}",
                    tracker.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        tracker
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Ids of the BPF programs this tracker holds (its fds' fdinfo).
    fn program_ids(&self) -> BTreeSet<u32> {
        held_programs(self.child.id())
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("[check] the tracker's log:\n{}", self.log());
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The tracker's `field` equals the kernel's count of `state` and `want`.
fn check(name: &str, field: &str, state: u8, port: u16, want: u64) {
    eventually(Duration::from_secs(15), || {
        let truth = proc_count(state, port);
        let (_, status) = http_get(SERVE_PORT, "/");
        let got = status[field].as_u64().unwrap_or(u64::MAX);
        if got == truth && truth == want {
            Ok(())
        } else {
            Err(format!(
                "{name}: {field} tracker {got}, /proc/net {truth}, expected {want}"
            ))
        }
    });
    println!("[check] ok: {name}: {field} = {want} = /proc/net/tcp{{,6}}");
}

/// Runs `f` on a thread in a new network namespace with loopback up.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) moves only this thread into a new namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        // A child forked from this thread starts in its namespace.
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(up.is_ok_and(|s| s.success()), "ip link set lo up failed");
        f()
    })
    .join()
    .unwrap()
}

fn run(tracker_path: &str, port: u16) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    println!("[check] kernel {}", kernel.trim());

    // Before the tracker: 3 IPv6 and 2 v4-mapped clients of a dual-stack listener.
    let mut server = Server::dual_stack(port);
    server.connect(3);
    server.connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 2);

    let started = Instant::now();
    let tracker = Tracker::start(tracker_path, port);
    let log = tracker.log();
    assert!(
        log.contains("self-tested"),
        "no self-test line in the log:\n{log}"
    );
    println!(
        "[check] ok: program loaded and self-tested ({:.1}s to serve)",
        started.elapsed().as_secs_f64()
    );
    let (code, health) = http_get(SERVE_PORT, "/healthz");
    assert_eq!((code, &health["source"]), (200, &"ebpf".into()), "{health}");
    println!("[check] ok: /healthz says source ebpf");

    check(
        "pre-existing (IPv6 and v4-mapped)",
        "active_connections",
        TCP_ESTABLISHED,
        port,
        5,
    );
    server.connect(4);
    check("new IPv6", "active_connections", TCP_ESTABLISHED, port, 9);
    server.connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 3);
    check(
        "new v4-mapped",
        "active_connections",
        TCP_ESTABLISHED,
        port,
        12,
    );
    server.close_all();
    check(
        "closed, clients first",
        "active_connections",
        TCP_ESTABLISHED,
        port,
        0,
    );
    server.connect(3);
    server.close_server_first();
    check(
        "closed, server first",
        "active_connections",
        TCP_ESTABLISHED,
        port,
        0,
    );
    check("TIME_WAIT", "waiting_connections", TCP_TIME_WAIT, port, 3);

    // The same port busy in another namespace: the kernel has those
    // connections, the tracker must not count them.
    let (other, other_count) = in_new_netns(move || {
        let mut s = Server::v4(port);
        s.connect(4);
        let n = proc_count(TCP_ESTABLISHED, port);
        (s, n)
    });
    assert_eq!(other_count, 4, "the other namespace's /proc/net/tcp");
    server.connect(2);
    check(
        "another namespace on the same port ignored",
        "active_connections",
        TCP_ESTABLISHED,
        port,
        2,
    );
    drop(other);

    let ours = tracker.program_ids();
    for program in aya::programs::loaded_programs().filter_map(Result::ok) {
        if ours.contains(&program.id()) {
            match program.verified_instruction_count() {
                Some(n) => println!(
                    "[check] verifier: {} processed {n} instructions (kernel {})",
                    program.name_as_str().unwrap_or("?"),
                    kernel.trim()
                ),
                None => println!("[check] verifier: count not reported (kernel before 5.16)"),
            }
        }
    }
    drop(tracker);
    drop(server);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut tracker = None;
    let mut port = 8080;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--tracker", Some(p)) => tracker = Some(p.clone()),
            ("--port", Some(p)) => match p.parse() {
                Ok(p) => port = p,
                Err(_) => {
                    eprintln!("kernel-check: --port wants a port number, not {p:?}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("usage: kernel-check --tracker PATH [--port PORT]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(tracker) = tracker else {
        eprintln!("usage: kernel-check --tracker PATH [--port PORT]");
        return ExitCode::from(2);
    };
    // A failed check panics with its reason; report it as one result line.
    match std::panic::catch_unwind(|| run(&tracker, port)) {
        Ok(()) => {
            println!("[check] all checks passed");
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!("[check] FAILED (reason above)");
            ExitCode::FAILURE
        }
    }
}
