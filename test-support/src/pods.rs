//! Pods as a kubelet leaves them on a node, without a kubelet: a network
//! namespace (`ip netns`) and processes in it, each placed in a container's
//! cgroup at the path the kubelet and the container runtimes write: the
//! cgroupfs or the systemd driver, a QoS class, in one hierarchy (a cgroup
//! v1 controller's, `name=systemd`, or the v2 unified one). Pod UIDs are
//! random v4 UUIDs and container ids random, so pods of tests running in
//! parallel never meet.
//!
//! Dropping a pod (also while a test panics) closes the sockets the test
//! holds in it, kills its processes, removes its cgroups leaf first and
//! deletes its namespace: the pod is gone as a deleted pod is.
//! The memory hierarchy is never touched: processes here already sit in a
//! memory cgroup of the machine's own setup.

use std::{
    ffi::{CStr, CString, OsStr},
    fs,
    io::{self, Read as _},
    net::TcpStream,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::{Netns, netns};

/// Where the hierarchies are mounted (hybrid: v1 controllers beside `unified`).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a killed process may take to leave its cgroup.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime that names a container's scope under the systemd driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
}

impl Runtime {
    fn scope_prefix(self) -> &'static str {
        match self {
            Runtime::Containerd => "cri-containerd",
            Runtime::Crio => "crio",
            Runtime::Docker => "docker",
        }
    }
}

/// The kubelet's cgroup driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `kubepods/burstable/pod<uid>/<container id>`.
    Cgroupfs,
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`.
    Systemd(Runtime),
}

/// The pod's QoS class: guaranteed pods sit directly under `kubepods`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The class as Kubernetes spells it (`status.qosClass`).
    pub fn class_name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }

    fn level(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// The hierarchy the pod's processes are placed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// A v1 hierarchy by its directory under /sys/fs/cgroup: a controller
    /// (`pids`, `cpu`) or `systemd` (the named `name=systemd` one).
    V1(&'static str),
    /// The v2 hierarchy at /sys/fs/cgroup/unified.
    Unified,
}

impl Hierarchy {
    fn mount(self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(match self {
            Hierarchy::V1(dir) => dir,
            Hierarchy::Unified => "unified",
        })
    }

    /// Whether `line` of /proc/PID/cgroup (`ID:CONTROLLERS:PATH`) is this
    /// hierarchy's; its path if so.
    fn path_in(self, line: &str) -> Option<&str> {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let ours = match self {
            Hierarchy::Unified => id == "0" && controllers.is_empty(),
            Hierarchy::V1("systemd") => controllers == "name=systemd",
            Hierarchy::V1(dir) => controllers.split(',').any(|c| c == dir),
        };
        ours.then_some(path)
    }
}

/// How a pod is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub driver: Driver,
    pub qos: Qos,
    pub hierarchy: Hierarchy,
    /// How many containers (each its own cgroup; processes come later).
    pub containers: usize,
}

impl Default for PodSpec {
    fn default() -> Self {
        PodSpec {
            driver: Driver::Cgroupfs,
            qos: Qos::Burstable,
            hierarchy: Hierarchy::V1("pids"),
            containers: 1,
        }
    }
}

/// The pod's cgroup below a hierarchy's root, outermost component first
/// (`kubepods`, the QoS level if any, the pod's own).
pub fn pod_cgroup(driver: Driver, qos: Qos, uid: &str) -> Vec<String> {
    let mut parts = Vec::new();
    match driver {
        Driver::Cgroupfs => {
            parts.push("kubepods".to_string());
            parts.extend(qos.level().map(str::to_string));
            parts.push(format!("pod{uid}"));
        }
        Driver::Systemd(_) => {
            // The systemd driver nests slices whose names repeat their
            // parents', and writes the UID with underscores (systemd
            // reserves '-' as the slice separator).
            parts.push("kubepods.slice".to_string());
            let prefix = match qos.level() {
                Some(level) => {
                    parts.push(format!("kubepods-{level}.slice"));
                    format!("kubepods-{level}")
                }
                None => "kubepods".to_string(),
            };
            parts.push(format!("{prefix}-pod{}.slice", uid.replace('-', "_")));
        }
    }
    parts
}

/// A container's directory inside its pod's cgroup.
pub fn container_leaf(driver: Driver, id: &str) -> String {
    match driver {
        Driver::Cgroupfs => id.to_string(),
        Driver::Systemd(runtime) => format!("{}-{id}.scope", runtime.scope_prefix()),
    }
}

/// The path /proc/PID/cgroup shows for a process of container `id`.
pub fn cgroup_path(driver: Driver, qos: Qos, uid: &str, id: &str) -> String {
    let mut parts = pod_cgroup(driver, qos, uid);
    parts.push(container_leaf(driver, id));
    format!("/{}", parts.join("/"))
}

/// Process `pid`'s path in `hierarchy`, from /proc/PID/cgroup.
pub fn cgroup_of(pid: u32, hierarchy: Hierarchy) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| hierarchy.path_in(l))
        .map(str::to_string)
        .ok_or_else(|| {
            io::Error::other(format!(
                "no {hierarchy:?} line in /proc/{pid}/cgroup:\n{text}"
            ))
        })
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random version-4 UUID, as the API server gives pods.
pub fn uuid_v4() -> io::Result<String> {
    let mut hex: Vec<char> = random_hex(16)?.chars().collect();
    // Version 4 in the 13th digit; the variant (10xx) in the 17th.
    hex[12] = '4';
    hex[16] = ['8', '9', 'a', 'b'][hex[16].to_digit(16).unwrap_or(0) as usize % 4];
    let hex: String = hex.into_iter().collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// A random 64-hex-digit container id, as containerd, CRI-O and docker make them.
pub fn container_id() -> io::Result<String> {
    random_hex(32)
}

pub struct Container {
    pub id: String,
    /// Its cgroup directory in the pod's hierarchy.
    dir: PathBuf,
    children: Vec<Child>,
}

/// A pod: a namespace, and containers whose processes run in it. See the
/// module's documentation for what dropping it does.
pub struct FakePod {
    uid: String,
    spec: PodSpec,
    inode: u64,
    containers: Vec<Container>,
    /// The pod's cgroup, then its parents up to (not including) the
    /// hierarchy's root: removed in that order, the shared parents only
    /// when no other pod uses them.
    dirs: Vec<PathBuf>,
    /// Sockets the test keeps in the namespace. Closed before the pod is
    /// deleted: a socket keeps its namespace alive.
    held: Vec<TcpStream>,
    /// Declared last, so dropped after everything above is gone.
    netns: Netns,
}

/// Tells apart the namespaces of the pods of one test process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl FakePod {
    /// A pod with its namespace and its containers' cgroups, no process yet.
    pub fn create(spec: PodSpec) -> io::Result<FakePod> {
        let name = format!(
            "ss-pod-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        FakePod::create_named(spec, &name)
    }

    /// As [`FakePod::create`], its namespace named `name`: the benchmarks
    /// name theirs apart from the tests' (`ss-pod-*`), and a namespace of
    /// that name left by an interrupted run is replaced.
    pub fn create_named(spec: PodSpec, name: &str) -> io::Result<FakePod> {
        if spec.hierarchy == Hierarchy::V1("memory") {
            return Err(io::Error::other(
                "the memory hierarchy belongs to the machine's own setup: pick another",
            ));
        }
        let uid = uuid_v4()?;
        let netns = Netns::create(name)?;
        let inode = fs::metadata(format!("/var/run/netns/{name}"))?.ino();
        let root = spec.hierarchy.mount();
        let pod_dir = root.join(pod_cgroup(spec.driver, spec.qos, &uid).join("/"));
        let dirs: Vec<PathBuf> = pod_dir
            .ancestors()
            .take_while(|d| *d != root)
            .map(Path::to_path_buf)
            .collect();
        // Owned from here: a failure below removes what was made.
        let mut pod = FakePod {
            uid,
            spec,
            inode,
            containers: Vec::new(),
            dirs,
            held: Vec::new(),
            netns,
        };
        create_dir_all_racing(&pod_dir)?;
        for _ in 0..spec.containers {
            let id = container_id()?;
            let dir = pod_dir.join(container_leaf(spec.driver, &id));
            fs::create_dir(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
            pod.containers.push(Container {
                id,
                dir,
                children: Vec::new(),
            });
        }
        Ok(pod)
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn spec(&self) -> PodSpec {
        self.spec
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The namespace's inode number, as `/proc/PID/ns/net` links name it.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The container ids, in the order the containers were made.
    pub fn container_ids(&self) -> Vec<String> {
        self.containers.iter().map(|c| c.id.clone()).collect()
    }

    /// The path /proc/PID/cgroup shows for processes of container `index`.
    pub fn cgroup_path(&self, index: usize) -> String {
        cgroup_path(
            self.spec.driver,
            self.spec.qos,
            &self.uid,
            &self.containers[index].id,
        )
    }

    /// A command for `program` as a process of container `index`: in the
    /// pod's namespace (`ip netns exec`, which executes it in place), and in
    /// the container's cgroup from before it executes anything, so no one
    /// ever sees it outside the pod. The caller adds arguments and spawns
    /// it; the pod kills it when dropped.
    pub fn command(&self, index: usize, program: impl AsRef<OsStr>) -> Command {
        let procs = self.containers[index].dir.join("cgroup.procs");
        let procs = CString::new(procs.as_os_str().as_bytes()).expect("a cgroup path has no NUL");
        let mut cmd = netns::command(Some(self.netns.name()), program);
        // SAFETY: the hook runs in the forked child before exec and only
        // makes async-signal-safe calls (open, write, close) on memory it
        // owns; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || join_cgroup(&procs));
        }
        cmd
    }

    /// Starts `program ARGS` as a process of container `index`, its stdin a
    /// pipe the pod holds (a helper may end when it closes: when the test
    /// process is gone) and its stdout piped; returns its pid.
    pub fn start(
        &mut self,
        index: usize,
        program: impl AsRef<OsStr>,
        args: &[String],
    ) -> io::Result<u32> {
        let program = program.as_ref();
        let child = self
            .command(index, program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "starting {} in pod {}: {e}",
                        program.to_string_lossy(),
                        self.uid
                    ),
                )
            })?;
        let pid = child.id();
        self.containers[index].children.push(child);
        Ok(pid)
    }

    /// As [`FakePod::start`], then waits for the process's first line on
    /// stdout and checks it is `ready`.
    pub fn start_ready(
        &mut self,
        index: usize,
        program: impl AsRef<OsStr>,
        args: &[String],
        ready: &str,
    ) -> io::Result<u32> {
        let pid = self.start(index, program, args)?;
        let child = self.containers[index]
            .children
            .last_mut()
            .expect("just started");
        let stdout = child.stdout.as_mut().expect("piped stdout");
        // Byte by byte: nothing past the line is consumed.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line);
        if line.trim() != ready {
            return Err(io::Error::other(format!(
                "process {pid} in pod {} said {line:?}, expected {ready:?}",
                self.uid
            )));
        }
        Ok(pid)
    }

    /// Keeps `streams` (sockets in this pod's namespace) open until
    /// [`FakePod::release`] or the pod's end.
    pub fn hold(&mut self, streams: impl IntoIterator<Item = TcpStream>) {
        self.held.extend(streams);
    }

    /// Hands back the held sockets (dropping them closes them).
    pub fn release(&mut self) -> Vec<TcpStream> {
        std::mem::take(&mut self.held)
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.held.clear();
        for container in &mut self.containers {
            if let Err(e) = remove_container(container) {
                eprintln!("pod {}: {e}", self.uid);
            }
        }
        for (i, dir) in self.dirs.iter().enumerate() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                // A parent another pod still uses (or removed already).
                Err(_) if i > 0 => {}
                Err(e) => eprintln!("pod {}: rmdir {}: {e}", self.uid, dir.display()),
            }
        }
        // The namespace goes when `netns` drops, after this.
    }
}

/// Kills every process in the container's cgroup (its own children and
/// whatever else a test started there), then removes the cgroup.
fn remove_container(container: &mut Container) -> io::Result<()> {
    for child in &mut container.children {
        let _ = child.kill();
    }
    for child in &mut container.children {
        let _ = child.wait();
    }
    let procs = container.dir.join("cgroup.procs");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let pids: Vec<i32> = match fs::read_to_string(&procs) {
            Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if pids.is_empty() {
            match fs::remove_dir(&container.dir) {
                Ok(()) => return Ok(()),
                // Exiting processes can hold it a moment after they left cgroup.procs.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("rmdir {}: {e}", container.dir.display()),
                    ));
                }
            }
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid the kernel just listed in this
            // cgroup; at worst it has exited and the call fails harmlessly.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "processes still in {} after {EXIT_TIMEOUT:?}",
                container.dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `mkdir -p dir`, retried: a pod of a parallel test may remove a shared
/// parent (`kubepods/burstable`) between our mkdir of it and of its child.
fn create_dir_all_racing(dir: &Path) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        match fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 20 => attempts += 1,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("mkdir -p {}: {e}", dir.display()),
                ));
            }
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs` (writing 0 names the writer, in v1 and v2 alike). Runs between
/// fork and exec: system calls only.
fn join_cgroup(procs: &CStr) -> io::Result<()> {
    // SAFETY: `procs` is a NUL-terminated path alive for the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: one byte from a static buffer to the fd opened above.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let error = io::Error::last_os_error();
    // SAFETY: closing the fd opened above, used by nothing else.
    unsafe { libc::close(fd) };
    if written == 1 { Ok(()) } else { Err(error) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8e3c1f0a-2b4d-4c6e-9f10-a1b2c3d4e5f6";

    #[test]
    fn paths_are_the_kubelets_for_each_driver_and_qos() {
        let id = "ab".repeat(32);
        assert_eq!(
            cgroup_path(Driver::Cgroupfs, Qos::Burstable, UID, &id),
            format!("/kubepods/burstable/pod{UID}/{id}")
        );
        assert_eq!(
            cgroup_path(Driver::Cgroupfs, Qos::Guaranteed, UID, &id),
            format!("/kubepods/pod{UID}/{id}")
        );
        assert_eq!(
            cgroup_path(
                Driver::Systemd(Runtime::Containerd),
                Qos::BestEffort,
                UID,
                &id
            ),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8e3c1f0a_2b4d_4c6e_9f10_a1b2c3d4e5f6.slice/cri-containerd-{id}.scope"
            )
        );
        assert_eq!(
            cgroup_path(Driver::Systemd(Runtime::Crio), Qos::Guaranteed, UID, &id),
            format!(
                "/kubepods.slice/kubepods-pod8e3c1f0a_2b4d_4c6e_9f10_a1b2c3d4e5f6.slice/crio-{id}.scope"
            )
        );
        assert!(
            cgroup_path(Driver::Systemd(Runtime::Docker), Qos::Burstable, UID, &id)
                .ends_with(&format!("/docker-{id}.scope"))
        );
    }

    #[test]
    fn uuids_are_version_4_and_ids_64_hex() {
        let uuid = uuid_v4().unwrap();
        let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
        assert_eq!(&uuid[14..15], "4", "{uuid}");
        assert!("89ab".contains(&uuid[19..20]), "{uuid}");
        assert_ne!(uuid, uuid_v4().unwrap());
        let id = container_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }

    #[test]
    fn finds_each_hierarchys_line() {
        let proc_cgroup = "9:name=systemd:/a\n4:memory:/m\n2:cpu,cpuacct:/c\n8:pids:/p\n0::/u\n";
        let find = |h: Hierarchy| proc_cgroup.lines().find_map(|l| h.path_in(l));
        assert_eq!(find(Hierarchy::V1("systemd")), Some("/a"));
        assert_eq!(find(Hierarchy::V1("cpu")), Some("/c"));
        assert_eq!(find(Hierarchy::V1("pids")), Some("/p"));
        assert_eq!(find(Hierarchy::Unified), Some("/u"));
    }

    /// Every driver, QoS class and hierarchy: the process is in the pod's
    /// namespace and /proc/PID/cgroup shows the container's path; after the
    /// drop, the process, the cgroups and the namespace are gone.
    #[test]
    fn processes_sit_in_the_pods_cgroup_and_namespace_until_the_drop() {
        let drivers = [
            Driver::Cgroupfs,
            Driver::Systemd(Runtime::Containerd),
            Driver::Systemd(Runtime::Crio),
            Driver::Systemd(Runtime::Docker),
        ];
        let hierarchies = [
            Hierarchy::V1("pids"),
            Hierarchy::V1("cpu"),
            Hierarchy::V1("systemd"),
            Hierarchy::Unified,
        ];
        let qos = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort];
        for (i, driver) in drivers.into_iter().enumerate() {
            for (j, qos) in qos.into_iter().enumerate() {
                let spec = PodSpec {
                    driver,
                    qos,
                    hierarchy: hierarchies[(i + j) % hierarchies.len()],
                    containers: 2,
                };
                let mut pod = FakePod::create(spec).unwrap();
                let pids: Vec<u32> = (0..2)
                    .map(|c| pod.start(c, "sleep", &["60".to_string()]).unwrap())
                    .collect();
                let container_dirs: Vec<PathBuf> =
                    pod.containers.iter().map(|c| c.dir.clone()).collect();
                for (c, &pid) in pids.iter().enumerate() {
                    // In the cgroup from the start, before `ip` runs.
                    assert_eq!(
                        cgroup_of(pid, spec.hierarchy).unwrap(),
                        pod.cgroup_path(c),
                        "{spec:?}"
                    );
                    // `ip netns exec` enters the namespace, then executes
                    // the program in place: the pid becomes sleep's.
                    crate::eventually(Duration::from_secs(5), || {
                        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                            .map_err(|e| e.to_string())?;
                        (comm.trim() == "sleep")
                            .then_some(())
                            .ok_or(format!("pid {pid} is still {comm:?}"))
                    });
                    let ns = fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino();
                    assert_eq!(ns, pod.inode(), "{spec:?}: pid {pid} in another namespace");
                }
                let name = pod.netns().name().to_string();
                let pod_dir = pod.dirs[0].clone();
                drop(pod);
                for pid in pids {
                    assert!(
                        !Path::new(&format!("/proc/{pid}")).exists(),
                        "pid {pid} lives on"
                    );
                }
                for dir in container_dirs.iter().chain([&pod_dir]) {
                    assert!(!dir.exists(), "{} left behind", dir.display());
                }
                assert!(!Path::new(&format!("/var/run/netns/{name}")).exists());
            }
        }
    }

    #[test]
    fn a_process_the_test_started_itself_is_killed_with_the_pod() {
        let pod = FakePod::create(PodSpec {
            hierarchy: Hierarchy::Unified,
            ..PodSpec::default()
        })
        .unwrap();
        // Through `command`, not `start`: the pod does not hold this child.
        let mut child = pod.command(0, "sleep").arg("60").spawn().unwrap();
        assert_eq!(
            cgroup_of(child.id(), Hierarchy::Unified).unwrap(),
            pod.cgroup_path(0)
        );
        drop(pod);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn a_panicking_test_leaves_nothing_behind() {
        let made = std::sync::Mutex::new(None);
        let result = std::panic::catch_unwind(|| {
            let mut pod = FakePod::create(PodSpec::default()).unwrap();
            let pid = pod.start(0, "sleep", &["60".to_string()]).unwrap();
            *made.lock().unwrap() =
                Some((pid, pod.dirs[0].clone(), pod.netns().name().to_string()));
            panic!("mid-test");
        });
        assert!(result.is_err());
        let (pid, dir, name) = made.lock().unwrap().take().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} lives on"
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(!Path::new(&format!("/var/run/netns/{name}")).exists());
    }

    #[test]
    fn the_memory_hierarchy_is_refused() {
        let spec = PodSpec {
            hierarchy: Hierarchy::V1("memory"),
            ..PodSpec::default()
        };
        assert!(FakePod::create(spec).is_err());
    }
}
