//! Network namespaces for the benchmarks: the bench namespace itself, plus
//! the extra ones the kernel-path section gives each additional tracker (one
//! per simulated pod). Each is deleted when its handle drops.
use std::{
    fs,
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

use crate::build::run_checked;

/// The namespace every benchmark runs in; nothing else on the machine uses it.
pub const NETNS: &str = "spawner-bench";

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` afresh (a leftover from an interrupted run is deleted
    /// first) with `lo` up.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_checked(
            Command::new("ip").args(["netns", "add", name]),
            "ip netns add",
        )?;
        let ns = Netns {
            name: name.to_string(),
        };
        run_checked(
            Command::new("ip").args(["netns", "exec", name, "ip", "link", "set", "lo", "up"]),
            "lo up",
        )?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `program` run inside namespace `ns`.
pub fn in_netns(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Runs `f` on a thread moved into the bench namespace.
///
/// Only that thread moves, so anything reading `/proc/net/...` there must go
/// through `/proc/thread-self/net/...`: `/proc/net` follows `/proc/self`,
/// which is the main thread, still in the host's namespace.
pub fn within<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    within_ns(NETNS, f)
}

/// Runs `f` on a thread moved into namespace `ns`.
pub fn within_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("bench thread panicked"))?
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on a namespace fd we hold open; it moves only this
    // thread, which is ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns into {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
