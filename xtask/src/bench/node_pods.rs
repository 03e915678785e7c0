//! The node section's pods: fake pods as the node-mode tests make them
//! (`test_support::pods`: a namespace pinned with `ip netns`, a kubelet-style
//! cgroup, and the `pod-server` helper listening on one port inside), made,
//! held and removed by a keeper process (`xtask bench-pods`, hidden).
//!
//! Why a process of their own: a thousand pods are a thousand namespaces,
//! cgroups and processes, and the bench may end any way (an error, Ctrl-C,
//! SIGKILL), where no destructor of ours runs. The keeper runs in a session
//! of its own, so a Ctrl-C at the terminal does not reach it or its pods;
//! it removes every pod as soon as its stdin closes, which happens whenever
//! the bench process is gone, however it ended. Names are
//! `spawner-bench-pod-<bench pid>-<set>-<i>`: apart from the tests'
//! (`ss-pod-*`), from the bench's own `spawner-bench-<pid>` and its `-c*`, and
//! from another bench running at the same time; a keeper that was
//! itself killed leaves its namespaces to the next keeper's sweep. The
//! keeper also deletes the section's loop namespace (`loop_netns`) when it
//! ends, should the bench have been killed before deleting it.
use std::{
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, bail};
use test_support::{FakePod, PodSpec};

const PREFIX: &str = "spawner-bench-pod";
/// Pods made or removed at once: each is mostly waiting for `ip`.
const PARALLEL: usize = 4;
/// The keeper says how far it got every this many pods.
const PROGRESS_EVERY: usize = 100;

/// The node section's own namespace for the loop, named like the pods.
pub fn loop_netns() -> String {
    format!("{PREFIX}-{}-loop", std::process::id())
}

/// One pod, as the keeper made it.
#[derive(Clone, Debug)]
pub struct Pod {
    pub uid: String,
    /// Its namespace's name under /var/run/netns.
    pub netns: String,
    pub inode: u64,
}

/// A keeper and the pods it holds; dropping it removes them (and waits
/// until they are gone, so the next step starts on a clean host).
pub struct Pods {
    keeper: Child,
    pub pods: Vec<Pod>,
}

impl Pods {
    /// `count` pods, each with `pod_server` listening on `port`; `set`
    /// names this group apart from the run's others.
    pub fn create(pod_server: &Path, set: &str, count: usize, port: u16) -> anyhow::Result<Pods> {
        let prefix = format!("{PREFIX}-{}-{set}", std::process::id());
        let mut cmd = Command::new(std::env::current_exe().context("finding xtask itself")?);
        cmd.args([
            "bench-pods",
            "--prefix",
            &prefix,
            "--loop-netns",
            &loop_netns(),
        ])
        .args(["--count", &count.to_string(), "--port", &port.to_string()])
        .arg("--pod-server")
        .arg(pod_server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        // SAFETY: setsid(2) between fork and exec, async-signal-safe; it
        // fails only for a process group leader, which a fresh child is not.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut keeper = cmd.spawn().context("starting the pod keeper")?;
        let stdout = keeper.stdout.take().context("no keeper stdout")?;
        // Owned from here: an error below closes its stdin, so it cleans up.
        let mut pods = Pods {
            keeper,
            pods: Vec::with_capacity(count),
        };
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the pod keeper")?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                ["ready"] => {
                    if pods.pods.len() != count {
                        bail!("the pod keeper made {} of {count} pods", pods.pods.len());
                    }
                    return Ok(pods);
                }
                ["made", n] => progress!("pods {prefix}-*: {n} of {count} made"),
                ["pod", uid, inode, netns] => pods.pods.push(Pod {
                    uid: uid.to_string(),
                    netns: netns.to_string(),
                    inode: inode.parse().context("the keeper's inode")?,
                }),
                _ => bail!("the pod keeper said {line:?}"),
            }
        }
        bail!("the pod keeper ended before its pods were ready (its error is above)")
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        drop(self.keeper.stdin.take());
        let _ = self.keeper.wait();
    }
}

/// `xtask bench-pods`: makes the pods, prints `pod <uid> <inode> <netns>`
/// for each and `ready`, holds them until stdin closes, then removes them,
/// and the bench's `loop_netns` if it is left (a bench ended by a signal
/// drops nothing; one that ends normally has deleted it already).
pub fn keeper(
    prefix: &str,
    loop_netns: &str,
    count: usize,
    port: u16,
    pod_server: &Path,
) -> anyhow::Result<()> {
    sweep_leftovers();
    let pods = make(prefix, count, port, pod_server)?;
    let mut out = io::stdout().lock();
    for pod in &pods {
        writeln!(
            out,
            "pod {} {} {}",
            pod.uid(),
            pod.inode(),
            pod.netns().name()
        )?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    // Whatever ends the bench closes this pipe.
    let _ = io::stdin().read_to_end(&mut Vec::new());
    remove(pods);
    if Path::new("/var/run/netns").join(loop_netns).exists() {
        let _ = Command::new("ip")
            .args(["netns", "del", loop_netns])
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

/// Makes the pods a few at a time; on an error, removes those made.
fn make(prefix: &str, count: usize, port: u16, pod_server: &Path) -> anyhow::Result<Vec<FakePod>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let made = Mutex::new(Vec::with_capacity(count));
    let error = Mutex::new(None);
    let args = [port.to_string()];
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let name = format!("{prefix}-{i}");
                    let pod =
                        FakePod::create_named(PodSpec::default(), &name).and_then(|mut pod| {
                            pod.start_ready(0, pod_server, &args, "listening")?;
                            Ok(pod)
                        });
                    match pod {
                        Ok(pod) => {
                            made.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((i, pod));
                            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_multiple_of(PROGRESS_EVERY) && n < count {
                                let _ = writeln!(io::stdout().lock(), "made {n}");
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            *error.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(format!("pod {name}: {e}"));
                        }
                    }
                }
            });
        }
    });
    let mut made = made.into_inner().unwrap_or_else(|e| e.into_inner());
    made.sort_by_key(|(i, _)| *i);
    let pods: Vec<FakePod> = made.into_iter().map(|(_, pod)| pod).collect();
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        remove(pods);
        bail!(e);
    }
    Ok(pods)
}

/// Drops the pods (processes, cgroups, namespace each) a few at a time.
fn remove(pods: Vec<FakePod>) {
    let pods = Mutex::new(pods);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let pod = pods.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    match pod {
                        Some(pod) => drop(pod),
                        None => break,
                    }
                }
            });
        }
    });
}

/// Deletes the namespaces of keepers whose bench is gone: only a keeper
/// killed itself (SIGKILL) leaves any. Their cgroups are left: empty
/// directories that no tracker reads.
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
