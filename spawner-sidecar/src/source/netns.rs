//! Other network namespaces, reached through a process in each: which
//! processes are in which namespace (a `/proc` of the host's pid namespace,
//! `--host-proc`), and snapshots of one namespace's sockets.
//!
//! A sock_diag socket lists the sockets of the namespace it was created in
//! (`sk_net` is set at creation), so a short-lived thread enters the
//! namespace with setns(2), creates the socket and ends; the dump then runs
//! on the calling thread, as Inspektor Gadget does for its per-namespace
//! iterators. The socket is closed after each snapshot: an open socket holds
//! its namespace, which would outlive the pod. Where setns or netlink is
//! refused (no CAP_SYS_ADMIN, no sock_diag), the process's own
//! `/proc/<pid>/net/tcp{,6}` is read instead.
use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use tracing::debug;

use super::{
    Family, SourceError, SourceKind, proc_net,
    snapshot::{SnapshotRequest, Snapshotter, SocketEntry},
    sock_diag,
};

/// `statfs(2)` type of a procfs (`include/uapi/linux/magic.h`).
const PROC_SUPER_MAGIC: i128 = 0x9fa0;

/// The processes of the host, through a mounted procfs of its pid namespace.
#[derive(Clone, Debug)]
pub struct HostProc {
    root: PathBuf,
    /// The host's own network namespace: that of its first processes.
    host_netns: Option<u32>,
}

impl HostProc {
    /// `root` after checking that it is a procfs this process can read
    /// namespaces from; the error says what is missing in one line.
    pub fn open(root: &Path) -> Result<HostProc, SourceError> {
        let shown = root.display();
        let unusable = |why: String| SourceError::Unavailable {
            reason: format!("{shown} is not a usable /proc: {why}"),
        };
        let meta = std::fs::metadata(root).map_err(|e| unusable(e.to_string()))?;
        if !meta.is_dir() {
            return Err(unusable("not a directory".into()));
        }
        let kind = filesystem_type(root).map_err(|e| unusable(format!("statfs: {e}")))?;
        if kind != PROC_SUPER_MAGIC {
            return Err(unusable(format!(
                "filesystem type {kind:#x}, not proc (mount the host's /proc there)"
            )));
        }
        // `self` resolves only where this process is visible, i.e. when that
        // procfs belongs to our pid namespace or an ancestor of it.
        std::fs::read_link(root.join("self")).map_err(|e| {
            unusable(format!(
                "{shown}/self: {e} (a /proc of a pid namespace this process is not in)"
            ))
        })?;
        // Reading the namespace link of a process with more capabilities
        // than ours takes ptrace read access (CAP_SYS_PTRACE): the first
        // processes (init, kthreadd) are such processes. Either will do:
        // an init may forbid it for itself (not dumpable), and in a nested
        // node (kind) pid 2 is no kernel thread.
        let mut host = HostProc {
            root: root.to_path_buf(),
            host_netns: None,
        };
        host.host_netns = match host.netns_link(1) {
            Ok(netns) => Some(netns),
            Err(e) => Some(host.netns_link(2).map_err(|_| {
                unusable(format!(
                    "{shown}/1/ns/net: {e}, and {shown}/2/ns/net neither \
                     (reading other processes' namespaces needs CAP_SYS_PTRACE)"
                ))
            })?),
        };
        Ok(host)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The inode of the host's network namespace (its pid 1's, or pid 2's
    /// where pid 1 forbids reading it), known since [`HostProc::open`].
    pub fn host_netns(&self) -> Option<u32> {
        self.host_netns
    }

    /// The inode of `pid`'s network namespace; `None` once it has exited
    /// (a zombie has no namespaces left) or when it cannot be read.
    pub fn netns_of(&self, pid: u32) -> Option<u32> {
        self.netns_link(pid).ok()
    }

    /// Every process by network namespace inode, pids ascending, in one
    /// pass over the numeric entries of the root. Only processes are listed
    /// (thread-group leaders): a thread that entered a namespace alone is
    /// not found. Processes that exit meanwhile are left out.
    pub fn scan(&self) -> BTreeMap<u32, Vec<u32>> {
        let mut found: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(netns) = self.netns_of(pid) {
                found.entry(netns).or_default().push(pid);
            }
        }
        for pids in found.values_mut() {
            pids.sort_unstable();
        }
        found
    }

    /// The text of `pid`'s `cgroup` file, for [`crate::cgroup::pod_of`].
    pub fn cgroup_of(&self, pid: u32) -> Option<String> {
        std::fs::read_to_string(self.pid_path(pid, "cgroup")).ok()
    }

    fn pid_path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(format!("{pid}/{file}"))
    }

    /// `readlink <root>/<pid>/ns/net`, `net:[4026531840]`: no open, no stat.
    fn netns_link(&self, pid: u32) -> io::Result<u32> {
        let link = std::fs::read_link(self.pid_path(pid, "ns/net"))?;
        parse_netns_link(link.as_os_str().as_bytes()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected link {}", link.display()),
            )
        })
    }
}

fn parse_netns_link(link: &[u8]) -> Option<u32> {
    let inode = link.strip_prefix(b"net:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inode).ok()?.parse().ok()
}

fn filesystem_type(path: &Path) -> io::Result<i128> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs(2) with a NUL-terminated path we own and a zeroed
    // struct it fills; zero is a valid value for every field of it.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call's duration.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is signed on glibc, unsigned on musl: i128 holds both.
    Ok(i128::from(stat.f_type))
}

/// Snapshots of one network namespace, through process `pid` in it.
pub struct NetnsSnapshotter {
    host: HostProc,
    pid: u32,
    netns: u32,
    /// Why netlink cannot be used here, once setns or the socket was
    /// refused for good (no capability, no kernel support): every snapshot
    /// reads `/proc` from then on.
    refused: OnceLock<String>,
}

/// Why entering the namespace did not give a socket.
enum Refusal {
    /// It will not work next time either: fall back for good.
    Lasting(String),
    /// This time only (a thread could not start, memory): fall back once.
    Passing(String),
}

impl NetnsSnapshotter {
    pub fn new(host: &HostProc, pid: u32, netns: u32) -> NetnsSnapshotter {
        NetnsSnapshotter {
            host: host.clone(),
            pid,
            netns,
            refused: OnceLock::new(),
        }
    }

    /// Why snapshots read `/proc` instead of sock_diag, once they do.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.refused.get().map(String::as_str)
    }

    /// Snapshots read `/proc` only, as after a refused setns.
    #[cfg(test)]
    fn proc_only(self) -> NetnsSnapshotter {
        let _ = self.refused.set("forced by a test".into());
        self
    }

    fn left(&self) -> SourceError {
        SourceError::ProcessLeft {
            pid: self.pid,
            netns: self.netns,
        }
    }

    /// A sock_diag socket created inside the namespace. The namespace file
    /// is opened and checked here, so whatever the pid does afterwards the
    /// thread enters exactly that namespace.
    fn socket(&self) -> Result<Result<Socket, Refusal>, SourceError> {
        let path = self.host.pid_path(self.pid, "ns/net");
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.left()),
            Err(source) => return Err(SourceError::Read { path, source }),
        };
        let inode = file
            .metadata()
            .map_err(|source| SourceError::Read { path, source })?
            .ino();
        if inode != u64::from(self.netns) {
            return Err(self.left()); // exited and its pid reused, or moved
        }
        let netns = self.netns;
        let entered = std::thread::Builder::new()
            .name("netns-socket".into())
            .spawn(move || enter_and_open(&file, netns));
        Ok(match entered.map(|thread| thread.join()) {
            Ok(Ok(socket)) => socket,
            Ok(Err(_)) => Err(Refusal::Passing("the thread entering it panicked".into())),
            Err(e) => Err(Refusal::Passing(format!("starting a thread: {e}"))),
        })
    }

    /// The process's `net/tcp{,6}`: they show the namespace the process is
    /// in when read, so it is checked again afterwards.
    fn read_proc(&self, request: &SnapshotRequest) -> Result<Vec<SocketEntry>, SourceError> {
        let mut out = Vec::new();
        let mut failed = None;
        for (file, family) in [("net/tcp", Family::V4), ("net/tcp6", Family::V6)] {
            let path = self.host.pid_path(self.pid, file);
            if let Err(source) = proc_net::read_table(&path, family, request, &mut out) {
                failed = Some(SourceError::Read { path, source });
                break;
            }
        }
        if self.host.netns_of(self.pid) != Some(self.netns) {
            return Err(self.left());
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// On a thread of its own, which ends right after: setns(2) moves only the
/// calling thread, and that thread must not run anything else afterwards.
fn enter_and_open(file: &File, netns: u32) -> Result<Socket, Refusal> {
    // SAFETY: setns(2) on an open namespace fd; it changes only this
    // thread's network namespace, and this thread ends after the socket.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        let reason = format!("setns into network namespace {netns}: {e}");
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => Refusal::Lasting(format!("{reason} (needs CAP_SYS_ADMIN)")),
            _ => Refusal::Passing(reason),
        });
    }
    Socket::new(NETLINK_SOCK_DIAG).map_err(|e| {
        let reason = format!("a sock_diag socket in network namespace {netns}: {e}");
        match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT) => {
                Refusal::Lasting(reason)
            }
            _ => Refusal::Passing(reason),
        }
    })
}

impl Snapshotter for NetnsSnapshotter {
    /// sock-diag; proc once netlink was refused for good.
    fn kind(&self) -> SourceKind {
        match self.refused.get() {
            Some(_) => SourceKind::Proc,
            None => SourceKind::SockDiag,
        }
    }

    fn snapshot(&self, request: &SnapshotRequest) -> Result<Vec<SocketEntry>, SourceError> {
        if self.refused.get().is_some() {
            return self.read_proc(request);
        }
        let dumped = match self.socket()? {
            Ok(mut socket) => sock_diag::connect(&mut socket)
                .and_then(|()| sock_diag::snapshot_on(&mut socket, request))
                .map_err(|e| e.to_string()),
            Err(Refusal::Lasting(reason)) => {
                debug!(netns = self.netns, %reason, "sock_diag refused; reading /proc from now on");
                let _ = self.refused.set(reason);
                return self.read_proc(request);
            }
            Err(Refusal::Passing(reason)) => Err(reason),
        };
        dumped.or_else(|reason| {
            debug!(netns = self.netns, %reason, "sock_diag failed; reading /proc this time");
            self.read_proc(request)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{SocketAddr, TcpListener, TcpStream},
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::source::{snapshot::SocketState, sock_diag::SockDiag};

    #[test]
    fn reads_namespace_links() {
        assert_eq!(parse_netns_link(b"net:[4026531840]"), Some(4026531840));
        for bad in [
            &b"mnt:[4026531840]"[..],
            b"net:[]",
            b"net:[x1]",
            b"net:[4294967296]",
            b"net:4026531840",
            b"net:[4026531840",
        ] {
            assert_eq!(
                parse_netns_link(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("ss-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn scan_groups_processes_by_namespace_and_skips_the_rest() {
        // A /proc-shaped tree: namespace links are symlinks to `net:[N]`.
        let tree = Scratch::new("fake-proc");
        let link = |pid: &str, target: &str| {
            let ns = tree.0.join(pid).join("ns");
            std::fs::create_dir_all(&ns).expect("mkdir");
            std::os::unix::fs::symlink(target, ns.join("net")).expect("symlink");
        };
        link("30", "net:[100]");
        link("1", "net:[100]");
        link("9", "net:[100]");
        link("7", "net:[200]");
        link("5", "mnt:[100]"); // not a network namespace link
        link("abc", "net:[300]"); // not a pid
        std::fs::create_dir_all(tree.0.join("12")).expect("mkdir"); // exited meanwhile
        std::os::unix::fs::symlink("1", tree.0.join("self")).expect("symlink");
        std::fs::write(tree.0.join("1/cgroup"), "0::/init.scope\n").expect("write");
        let host = HostProc {
            root: tree.0.clone(),
            host_netns: None,
        };
        let found = host.scan();
        assert_eq!(
            found,
            BTreeMap::from([(100, vec![1, 9, 30]), (200, vec![7])])
        );
        assert_eq!(host.netns_of(7), Some(200));
        assert_eq!(host.netns_of(12), None);
        assert_eq!(host.netns_of(5), None);
        assert_eq!(host.cgroup_of(1).as_deref(), Some("0::/init.scope\n"));
        assert_eq!(host.cgroup_of(7), None);
        assert_eq!(host.root(), tree.0);
    }

    #[test]
    fn open_refuses_what_is_not_a_readable_proc() {
        let scratch = Scratch::new("not-proc");
        let file = scratch.0.join("file");
        std::fs::write(&file, "").expect("write");
        let cases = [
            (scratch.0.join("missing"), "No such file"),
            (file, "not a directory"),
            (scratch.0.clone(), "not proc"),
        ];
        for (path, why) in cases {
            let error = HostProc::open(&path).expect_err("not a proc").to_string();
            assert!(
                error.starts_with(&format!("{} is not a usable /proc: ", path.display()))
                    && error.contains(why)
                    && !error.contains('\n'),
                "{error}"
            );
        }
        let host = HostProc::open(Path::new("/proc")).expect("this machine's /proc");
        assert!(host.netns_of(std::process::id()).is_some());
        // This machine's init forbids it (not dumpable); kthreadd does not.
        assert!(host.netns_of(1).is_some() || host.netns_of(2).is_some());
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// A namespace made with `ip netns` and a process that sits in it,
    /// both gone when dropped, also when the test fails.
    struct Namespace {
        name: String,
        inode: u32,
        child: Option<Child>,
    }

    impl Namespace {
        fn new(tag: &str, host: &HostProc) -> Namespace {
            let name = format!("ss-unit-{tag}-{}", std::process::id());
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", &name]);
            let mut ns = Namespace {
                name,
                inode: 0,
                child: None,
            };
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
            let meta = std::fs::metadata(format!("/var/run/netns/{}", ns.name)).expect("netns");
            ns.inode = u32::try_from(meta.ino()).expect("inode");
            // `ip netns exec` enters and execs, so the pid is sleep's.
            let child = Command::new("ip")
                .args(["netns", "exec", &ns.name, "sleep", "600"])
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn a process in the namespace");
            let pid = child.id();
            ns.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while host.netns_of(pid) != Some(ns.inode) {
                assert!(
                    Instant::now() < deadline,
                    "process {pid} never entered {}",
                    ns.name
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            ns
        }

        fn pid(&self) -> u32 {
            self.child.as_ref().expect("child").id()
        }

        /// Runs `f` on a thread inside: the sockets it makes live there.
        fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let file = File::open(format!("/var/run/netns/{}", self.name)).expect("open netns");
            std::thread::spawn(move || {
                // SAFETY: setns(2) on an open namespace fd, moving only this
                // thread, which exists for `f` alone.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }
    }

    impl Drop for Namespace {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn listing(entries: &[SocketEntry]) -> Vec<String> {
        let mut keys: Vec<String> = entries
            .iter()
            .map(|e| format!("{:?} {:?} {} {}", e.state, e.family, e.local, e.peer))
            .collect();
        keys.sort();
        keys
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// This process's CPU time, all threads (the setns thread's too).
    fn cpu_time() -> Duration {
        // SAFETY: getrusage(2) fills the zeroed struct we own; zero is a
        // valid value for every field.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above, the pointer is valid for the call.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
        let time = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).expect("secs"))
                + Duration::from_micros(u64::try_from(t.tv_usec).expect("usecs"))
        };
        time(usage.ru_utime) + time(usage.ru_stime)
    }

    /// Median wall time of `runs` calls, and the mean CPU time of one, in
    /// microseconds. A measurement to report, not a bound to assert.
    fn cost_us(runs: usize, mut f: impl FnMut()) -> (u128, u128) {
        let cpu = cpu_time();
        let mut times: Vec<u128> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_micros()
            })
            .collect();
        let cpu = (cpu_time() - cpu).as_micros() / runs as u128;
        times.sort_unstable();
        (times[runs / 2], cpu)
    }

    #[test]
    fn snapshots_one_namespace_through_a_process_in_it() {
        let host = HostProc::open(Path::new("/proc")).expect("/proc");
        let ns = Namespace::new("netns-snap", &host);
        let pid = ns.pid();
        let port = free_port(); // free here, used only inside the namespace

        // Inside: v4 and v6 listeners, a connection to each, and one
        // closed server-side first, which leaves the server in TIME_WAIT.
        type Held = (
            Vec<TcpListener>,
            Vec<TcpStream>,
            Vec<(SocketState, SocketAddr, SocketAddr)>,
        );
        let (_listeners, _streams, expected): Held = ns.run(move || {
            let mut held = (Vec::new(), Vec::new(), Vec::new());
            for (ip, any) in [("127.0.0.1", "0.0.0.0:0"), ("::1", "[::]:0")] {
                let listener = TcpListener::bind((ip, port)).expect("listen inside");
                let local = listener.local_addr().expect("addr");
                let client = TcpStream::connect(local).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                held.2
                    .push((SocketState::Listen, local, any.parse().expect("any")));
                let peer = client.local_addr().expect("addr");
                held.2.push((SocketState::Established, local, peer));
                held.0.push(listener);
                held.1.extend([client, server]);
            }
            let listener = &held.0[0];
            let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            let peer = client.local_addr().expect("addr");
            drop(server);
            drop(client);
            held.2.push((
                SocketState::TimeWait,
                listener.local_addr().expect("addr"),
                peer,
            ));
            held
        });
        let expected: Vec<String> = {
            let mut keys: Vec<String> = expected
                .iter()
                .map(|(state, local, peer)| {
                    let family = if local.is_ipv4() {
                        Family::V4
                    } else {
                        Family::V6
                    };
                    format!("{state:?} {family:?} {local} {peer}")
                })
                .collect();
            keys.sort();
            keys
        };

        let scan = host.scan();
        let pids = scan.get(&ns.inode).expect("the namespace is listed");
        assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
        assert!(pids.is_sorted());
        assert_eq!(host.netns_of(pid), Some(ns.inode));
        assert!(host.cgroup_of(pid).is_some_and(|c| c.contains("::")));

        let request = SnapshotRequest {
            ports: vec![port],
            all_listeners: false,
        };
        let netlink = NetnsSnapshotter::new(&host, pid, ns.inode);
        // The TIME_WAIT socket appears once the client's close is through.
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = loop {
            let seen = listing(&netlink.snapshot(&request).expect("netlink snapshot"));
            if seen == expected || Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(seen, expected);
        assert_eq!(netlink.kind(), SourceKind::SockDiag);
        assert_eq!(netlink.fallback_reason(), None);

        // Every listener plus the port's connections: four dumps on one socket.
        let all = SnapshotRequest {
            ports: vec![port],
            all_listeners: true,
        };
        assert_eq!(
            listing(&netlink.snapshot(&all).expect("snapshot")),
            expected
        );

        let proc = NetnsSnapshotter::new(&host, pid, ns.inode).proc_only();
        assert_eq!(
            listing(&proc.snapshot(&request).expect("proc snapshot")),
            expected
        );
        assert_eq!(proc.kind(), SourceKind::Proc);
        assert_eq!(proc.fallback_reason(), Some("forced by a test"));

        let here = SockDiag.snapshot(&request).expect("own namespace");
        assert_eq!(
            listing(&here),
            Vec::<String>::new(),
            "port {port} is busy only inside"
        );

        let netlink_us = cost_us(100, || {
            netlink.snapshot(&request).expect("snapshot");
        });
        let enter_us = cost_us(100, || {
            assert!(matches!(netlink.socket(), Ok(Ok(_))));
        });
        let proc_us = cost_us(100, || {
            proc.snapshot(&request).expect("snapshot");
        });
        let here_us = cost_us(100, || {
            SockDiag.snapshot(&request).expect("snapshot");
        });
        eprintln!(
            "one snapshot, us (median wall of 100, mean CPU): setns thread + sock_diag \
             {netlink_us:?} (of which the thread, setns and socket {enter_us:?}), \
             /proc/<pid>/net/tcp{{,6}} {proc_us:?}, \
             sock_diag in our own namespace {here_us:?}"
        );
    }

    #[test]
    fn a_process_gone_or_elsewhere_is_an_error() {
        let host = HostProc::open(Path::new("/proc")).expect("/proc");
        let mut ns = Namespace::new("netns-gone", &host);
        let pid = ns.pid();
        let request = SnapshotRequest {
            ports: vec![free_port()],
            all_listeners: false,
        };
        let left = |result: Result<Vec<SocketEntry>, SourceError>, netns: u32| match result {
            Err(SourceError::ProcessLeft { pid: p, netns: n }) => {
                assert_eq!((p, n), (pid, netns));
            }
            other => panic!("expected ProcessLeft, got {other:?}"),
        };

        // Alive, but not in the namespace asked for.
        let ours = host.netns_of(std::process::id()).expect("our namespace");
        left(
            NetnsSnapshotter::new(&host, pid, ours).snapshot(&request),
            ours,
        );
        left(
            NetnsSnapshotter::new(&host, pid, ours)
                .proc_only()
                .snapshot(&request),
            ours,
        );

        let netlink = NetnsSnapshotter::new(&host, pid, ns.inode);
        let proc = NetnsSnapshotter::new(&host, pid, ns.inode).proc_only();
        netlink.snapshot(&request).expect("alive");
        let mut child = ns.child.take().expect("child");
        child.kill().expect("kill");
        // A zombie first (not reaped yet), then no process at all.
        let deadline = Instant::now() + Duration::from_secs(5);
        while host.netns_of(pid).is_some() {
            assert!(Instant::now() < deadline, "{pid} still has a namespace");
            std::thread::sleep(Duration::from_millis(5));
        }
        left(netlink.snapshot(&request), ns.inode);
        left(proc.snapshot(&request), ns.inode);
        child.wait().expect("reap");
        left(netlink.snapshot(&request), ns.inode);
        left(proc.snapshot(&request), ns.inode);
        assert!(!host.scan().values().any(|pids| pids.contains(&pid)));
        let message = netlink.snapshot(&request).expect_err("gone").to_string();
        assert_eq!(
            message,
            format!("process {pid} left network namespace {}", ns.inode)
        );
    }
}
