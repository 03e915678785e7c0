//! The core exactness checks, self-contained, for a kernel this machine
//! does not run (`cargo xtask test-kernel` boots it in QEMU with this
//! binary, the tracker and busybox in the initramfs; there is no `ss`).
//!
//! `kernel-check --tracker PATH [--port PORT]`: starts the tracker on the
//! eBPF source, then compares its counts with the kernel's own view
//! (`/proc/thread-self/net/tcp` and `tcp6`) for connections from before its
//! start, new ones, closed ones, TIME_WAIT, IPv6 and v4-mapped clients, and
//! the same port in another network namespace. Then node mode
//! (`spawner-sidecar node`): two network namespaces, each with a process
//! holding a listener and connections, one made before the tracker starts
//! and one after; each namespace's answer (`GET /netns/<inode>`) must equal
//! `ss` run in that namespace, through new, closed and TIME_WAIT
//! connections. Prints one line per check, the verifier's instruction count
//! for each program, and exits 1 at the first failure (with the tracker's
//! log).
//!
//! `kernel-check --hold-netns PORT` is the namespaces' process: it moves to
//! a new network namespace, listens on PORT there, and obeys `connect N` and
//! `close-server-first` on stdin (answering `ok`) until stdin closes.
#![allow(
    clippy::unwrap_used,
    reason = "a helper: a panic is its failure report"
)]

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
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
    /// The per-pod daemon on the eBPF source.
    fn start(path: &str, port: u16) -> Tracker {
        Tracker::spawn(path, &[], &["--source", "ebpf"], port)
    }

    /// Node mode: every namespace of this kernel.
    fn start_node(path: &str, port: u16) -> Tracker {
        Tracker::spawn(path, &["node"], &[], port)
    }

    fn spawn(path: &str, mode: &[&str], args: &[&str], port: u16) -> Tracker {
        let mut child = Command::new(path)
            .args(mode)
            .args(args)
            .args(["--monitor-port", &port.to_string()])
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

    print_verifier_counts(&tracker, "per-pod program", &kernel);
    drop(tracker);
    drop(server);

    run_node(tracker_path, port, &kernel);
}

/// The verifier's instruction count of each program `tracker` holds.
/// `what` names the tracker: the kernel keeps 15 characters of a program's
/// name, so `track_tcp_state_node` shows as `track_tcp_state` too.
fn print_verifier_counts(tracker: &Tracker, what: &str, kernel: &str) {
    let ours = tracker.program_ids();
    assert!(!ours.is_empty(), "the tracker holds no BPF program");
    for program in aya::programs::loaded_programs().filter_map(Result::ok) {
        if ours.contains(&program.id()) {
            match program.verified_instruction_count() {
                Some(n) => println!(
                    "[check] verifier: {what}: {} processed {n} instructions (kernel {})",
                    program.name_as_str().unwrap_or("?"),
                    kernel.trim()
                ),
                None => println!("[check] verifier: count not reported (kernel before 5.16)"),
            }
        }
    }
}

/// A `kernel-check --hold-netns` child: a process in a network namespace
/// of its own, holding a listener and its connections.
struct Namespace {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    inode: u64,
}

impl Namespace {
    fn start(port: u16) -> Namespace {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["--hold-netns", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let pid = child.id();
        let mut ns = Namespace {
            child,
            stdin,
            stdout,
            inode: 0,
        };
        ns.expect("ready");
        let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        ns.inode = netns_inode(&link.to_string_lossy()).unwrap();
        ns
    }

    fn expect(&mut self, want: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            want,
            "the namespace's process answered {line:?}"
        );
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.expect("ok");
    }

    /// `ss`'s count of `state` sockets on local port `port` in this
    /// namespace: ss runs from a thread that entered it (a child starts in
    /// its creator thread's namespace).
    fn ss_count(&self, state: &str, port: u16) -> u64 {
        let path = format!("/proc/{}/ns/net", self.child.id());
        let filter = format!("( sport = :{port} )");
        let state = state.to_string();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) on an open namespace fd; only this thread moves.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let out = Command::new("ss")
                .args(["-Htan", "state", &state, &filter])
                .output()
                .unwrap_or_else(|e| panic!("cannot run ss: {e}"));
            assert!(out.status.success(), "ss failed: {out:?}");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count() as u64
        })
        .join()
        .unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn netns_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Node mode's answer for `ns` equals `ss` in it and `want`.
fn check_node(name: &str, ns: &Namespace, field: &str, state: &str, port: u16, want: u64) {
    eventually(Duration::from_secs(15), || {
        let truth = ns.ss_count(state, port);
        let (code, status) = http_get(SERVE_PORT, &format!("/netns/{}", ns.inode));
        let got = status[field].as_u64().unwrap_or(u64::MAX);
        if code == 200 && got == truth && truth == want {
            Ok(())
        } else {
            Err(format!(
                "node, {name}: {field} tracker {got} ({code}), ss in namespace {} {truth}, expected {want}",
                ns.inode
            ))
        }
    });
    println!(
        "[check] ok: node, {name}: namespace {} {field} = {want} = ss there",
        ns.inode
    );
}

fn run_node(tracker_path: &str, port: u16, kernel: &str) {
    // One namespace busy before the tracker starts (its start-up snapshot
    // must find the connections), one made after.
    let mut first = Namespace::start(port);
    first.send("connect 3");
    let started = Instant::now();
    let tracker = Tracker::start_node(tracker_path, port);
    println!(
        "[check] ok: node mode loaded ({:.1}s to serve)",
        started.elapsed().as_secs_f64()
    );
    let (code, health) = http_get(SERVE_PORT, "/healthz");
    assert_eq!((code, &health["source"]), (200, &"ebpf".into()), "{health}");
    let mut second = Namespace::start(port);
    second.send("connect 5");
    assert_ne!(first.inode, second.inode);

    check_node(
        "pre-existing",
        &first,
        "active_connections",
        "established",
        port,
        3,
    );
    check_node(
        "new namespace",
        &second,
        "active_connections",
        "established",
        port,
        5,
    );
    first.send("connect 2");
    check_node(
        "new connections",
        &first,
        "active_connections",
        "established",
        port,
        5,
    );
    second.send("close-server-first");
    check_node(
        "closed, server first",
        &second,
        "active_connections",
        "established",
        port,
        0,
    );
    check_node(
        "TIME_WAIT",
        &second,
        "waiting_connections",
        "time-wait",
        port,
        5,
    );
    check_node(
        "the other one unchanged",
        &first,
        "active_connections",
        "established",
        port,
        5,
    );

    let log = tracker.log();
    assert!(
        !log.contains("read /proc"),
        "a snapshot fell back to /proc; log:\n{log}"
    );
    print_verifier_counts(&tracker, "node program", kernel);
    drop(tracker);
    drop((first, second));
}

/// `--hold-netns PORT`: the namespaces' process (see the module's doc).
fn hold_netns(port: u16) -> ExitCode {
    // SAFETY: unshare(2) at start-up, before this process has other threads.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "kernel-check: unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    if !up.is_ok_and(|s| s.success()) {
        eprintln!("kernel-check: ip link set lo up failed");
        return ExitCode::FAILURE;
    }
    let mut server = Server::v4(port);
    println!("ready");
    for line in std::io::stdin().lines().map_while(Result::ok) {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["connect", n] => match n.parse() {
                Ok(n) => server.connect(n),
                Err(_) => {
                    eprintln!("kernel-check: connect wants a number, not {n:?}");
                    return ExitCode::from(2);
                }
            },
            ["close-server-first"] => server.close_server_first(),
            _ => {
                eprintln!("kernel-check: unknown command {line:?}");
                return ExitCode::from(2);
            }
        }
        println!("ok");
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, port] = args.as_slice()
        && flag == "--hold-netns"
    {
        return match port.parse() {
            Ok(port) => hold_netns(port),
            Err(_) => {
                eprintln!("kernel-check: --hold-netns wants a port number, not {port:?}");
                ExitCode::from(2)
            }
        };
    }
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
