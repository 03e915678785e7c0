//! Helpers shared by the black-box tests: start the real binary, talk HTTP
//! to it, hold real sockets, and ask `ss` for the ground truth.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is a test failure"
)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod heartbeat;

/// The binary under test: `cargo xtask test` sets SPAWNER_SIDECAR_BIN to the
/// release build with the kernel program embedded.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPAWNER_SIDECAR_BIN") {
        let bin = PathBuf::from(bin);
        // Tests run from their own crate's directory: anchor relative paths.
        return std::fs::canonicalize(&bin).unwrap_or(bin);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let candidate = root.join("target").join(profile).join("spawner-sidecar");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("no spawner-sidecar binary: run the tests with `cargo xtask test`");
}

/// Whether this kernel can run the eBPF source at all; the eBPF tests skip
/// (and say so) only where it cannot.
pub fn ebpf_supported() -> Result<(), String> {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    Ok(())
}

/// A running sidecar, stopped with SIGTERM when dropped.
pub struct Sidecar {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Starts the binary with `args` (plus a free serve port on loopback)
    /// and waits until it serves.
    pub fn start(args: &[&str]) -> Sidecar {
        Self::start_in(None, args, &[])
    }

    /// As `start`, optionally inside network namespace `netns`, with extra
    /// environment variables.
    pub fn start_in(netns: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.args(["--serve-address", "127.0.0.1", "--serve-port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn spawner-sidecar");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" serving ") {
                    let port = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .map(|a| a.port());
                    let _ = tx.send(port);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(port)) => port,
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "sidecar did not start ({status:?}); log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Sidecar { child, port, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Ids of the BPF programs this sidecar holds (from its fds' fdinfo):
    /// unlike a before/after diff of the host's programs, other processes
    /// loading programs meanwhile cannot confuse it.
    pub fn program_ids(&self) -> Vec<u32> {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        let mut ids: Vec<u32> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("prog_id:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// `GET path` inside the sidecar's namespace (loopback is per namespace,
    /// so a sidecar in another namespace is reached through `ip netns exec`).
    pub fn get(&self, path: &str) -> (u16, Value) {
        http_get(self.port, path)
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.get("/");
        assert_eq!(
            code,
            200,
            "GET / answered {code}: {body}\nlog:\n{}",
            self.log()
        );
        body
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sidecar ignored SIGTERM for 10 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 with extra headers: status code,
/// Content-Type and raw body.
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to sidecar");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, content_type, body.to_string())
}

/// One sample of `/metrics`, as Prometheus's own parser reads it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub family: String,
    /// The family's type: gauge, counter, ...
    pub kind: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses metrics text with the `prometheus_client` Python package (the
/// Prometheus project's client; `cargo xtask test` installs it), in the
/// classic or the OpenMetrics format. Panics on a parse error.
pub fn parse_metrics(text: &str, openmetrics: bool) -> Vec<Sample> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/prom_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(if openmetrics {
            "openmetrics"
        } else {
            "classic"
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (install prometheus-client with `cargo xtask test`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Prometheus parser refused the text:\n{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Sample {
                family: v["family"].as_str().unwrap().to_string(),
                kind: v["type"].as_str().unwrap().to_string(),
                name: v["name"].as_str().unwrap().to_string(),
                labels: v["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                value: v["value"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The value of sample `name` whose labels include all of `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// A TCP connection to `to` from `from` (any local address: all of
/// 127.0.0.0/8 is loopback), so tests can play a peer of their choosing.
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {to} from {from}: {e}"));
    socket.into()
}

/// As `ss_count`, for one address family (`-4` or `-6`; an IPv4-mapped
/// socket is IPv6).
pub fn ss_count_family(state: &str, port: u16, family: &str) -> u64 {
    let filter = format!("( sport = :{port} )");
    let flag = if family == "ipv4" { "-4" } else { "-6" };
    let out = Command::new("ss")
        .args(["-Htan", flag, "state", state, &filter])
        .output()
        .expect("run ss");
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// A minimal HTTP/1.1 GET on 127.0.0.1: status code and JSON body.
pub fn http_get(port: u16, path: &str) -> (u16, Value) {
    let (code, body) = http_request(port, "GET", path);
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: body is not JSON ({e}): {body:?}"));
    (code, json)
}

/// Any method; returns the status code and raw body.
pub fn http_request(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to sidecar");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Number of sockets `ss` reports in `state` with local port `port`, in the
/// current namespace or in `netns`.
pub fn ss_count(netns: Option<&str>, state: &str, port: u16) -> u64 {
    let filter = format!("( sport = :{port} )");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => Command::new("ss"),
    };
    let out = cmd
        .args(["-Htan", "state", state, &filter])
        .output()
        .expect("run ss");
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener holding its accepted connections (and their clients) open.
pub struct Server {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    accepted: Vec<TcpStream>,
    clients: Vec<TcpStream>,
}

impl Server {
    pub fn v4(port: u16) -> Server {
        Self::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
    }

    /// A dual-stack listener on [::]; clients reach it on ::1.
    pub fn dual_stack(port: u16) -> Server {
        Self::bind(
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        )
    }

    fn bind(listen: SocketAddr, connect: SocketAddr) -> Server {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        Server {
            listener: Some(listener),
            addr: connect,
            accepted: Vec::new(),
            clients: Vec::new(),
        }
    }

    pub fn listener(&self) -> &TcpListener {
        self.listener.as_ref().expect("still listening")
    }

    /// Closes the listener and keeps the connections: a service draining.
    pub fn stop_listening(&mut self) {
        self.listener = None;
    }

    /// Opens `n` connections and accepts them.
    pub fn connect(&mut self, n: usize) {
        self.connect_to(self.addr, n);
    }

    pub fn connect_to(&mut self, addr: SocketAddr, n: usize) {
        for _ in 0..n {
            self.clients
                .push(TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}")));
            self.accepted.push(self.listener().accept().unwrap().0);
        }
    }

    /// Opens `n` connections from local address `from` and accepts them.
    pub fn connect_from(&mut self, from: std::net::IpAddr, n: usize) {
        for _ in 0..n {
            self.clients.push(connect_from(from, self.addr));
            self.accepted.push(self.listener().accept().unwrap().0);
        }
    }

    /// Closes every connection, the server side first: each leaves a
    /// TIME_WAIT socket on the server's port.
    pub fn close_server_first(&mut self) {
        for (server, mut client) in self.accepted.drain(..).zip(self.clients.drain(..)) {
            drop(server);
            // Wait for the server's FIN, so the client's close comes second.
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = client.read(&mut [0u8; 1]);
        }
    }

    /// Closes every connection, clients first (no TIME_WAIT on the server).
    pub fn close_all(&mut self) {
        self.clients.clear();
        self.accepted.clear();
    }

    /// Stops listening (and closes everything).
    pub fn shutdown(self) {}
}

/// Polls `check` until it returns Ok or `timeout` passes; the last error
/// becomes the panic message.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("not reached within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Asserts that the sidecar's counts equal `ss`'s and `want`.
pub fn expect_established(sidecar: &Sidecar, port: u16, want: u64) {
    eventually(Duration::from_secs(5), || {
        let truth = ss_count(None, "established", port);
        let status = sidecar.status();
        let got = status["active_connections"].as_u64().unwrap_or(u64::MAX);
        if got == truth && truth == want {
            Ok(())
        } else {
            Err(format!(
                "sidecar says {got}, ss says {truth}, expected {want}; status {status}"
            ))
        }
    });
}

/// Ids of the BPF programs named `name` loaded on the host right now.
pub fn loaded_program_ids(name: &str) -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .collect()
}

/// A network namespace made for one test (`ip netns add`), loopback up,
/// deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("ss-test-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name} failed");
        let up = Command::new("ip")
            .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(up.success(), "bringing lo up in {name} failed");
        Netns { name }
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates live there, wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) on a valid namespace fd; only this thread moves.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `field` of the sidecar's status as a number.
pub fn field(sidecar: &Sidecar, name: &str) -> u64 {
    let status = sidecar.status();
    status[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} missing in {status}"))
}

/// Waits until the sidecar's `field` equals `ss`'s count of `state` and
/// `want`, failing with both values.
pub fn expect_matches_ss(
    sidecar: &Sidecar,
    field_name: &str,
    state: &str,
    port: u16,
    want: u64,
    timeout: Duration,
) {
    eventually(timeout, || {
        let truth = ss_count(None, state, port);
        let got = field(sidecar, field_name);
        if got == truth && truth == want {
            Ok(())
        } else {
            Err(format!(
                "{field_name}: sidecar {got}, ss {truth}, expected {want}"
            ))
        }
    });
}

/// `count` connections to 127.0.0.1:`port` held by a child process (so this
/// process keeps its file descriptors for the accepted ends). The listener
/// must be accepting while this runs.
pub struct ClientProcess {
    child: Child,
}

impl ClientProcess {
    pub fn connect(port: u16, count: usize) -> ClientProcess {
        // Built beside the test binaries (target/<profile>/deps/..).
        let exe = std::env::current_exe()
            .ok()
            .and_then(|t| Some(t.parent()?.parent()?.join("hold-connections")))
            .filter(|p| p.is_file())
            .expect("hold-connections binary next to the tests: run with `cargo xtask test`");
        let mut child = Command::new(exe)
            .args([port.to_string(), count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hold-connections");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            format!("ready {count}"),
            "hold-connections failed"
        );
        ClientProcess { child }
    }

    /// Closes every held connection (client side first).
    pub fn close(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts every connection on `listener` in the background and keeps it.
pub fn accept_all(listener: TcpListener) -> Arc<Mutex<Vec<TcpStream>>> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let sink = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(c) => sink.lock().unwrap().push(c),
                Err(_) => break,
            }
        }
    });
    accepted
}
