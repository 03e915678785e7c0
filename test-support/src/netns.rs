//! Network namespaces made for one test or one benchmark run (`ip netns`),
//! with loopback up, deleted when their handle drops; commands run in them
//! through `ip netns exec`, and closures on a thread moved into them.

use std::{
    ffi::OsStr,
    io,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
};

pub struct Netns {
    name: String,
}

fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Netns {
    /// Creates namespace `name` afresh (a leftover of an interrupted run is
    /// deleted first) with `lo` up.
    pub fn create(name: &str) -> io::Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_ip(&["netns", "add", name])?;
        // Owned from here, so a failure below deletes it again.
        let ns = Netns {
            name: name.to_string(),
        };
        run_ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace for one test, named after `tag` and this process.
    pub fn new(tag: &str) -> Netns {
        let name = format!("ss-test-{tag}-{}", std::process::id());
        Netns::create(&name).unwrap_or_else(|e| panic!("namespace {name}: {e}"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates live there, wherever they are used afterwards. A panic in
    /// `f` continues in the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = path(&self.name);
        let thread = std::thread::spawn(move || {
            enter(&path).unwrap_or_else(|e| panic!("{e}"));
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Another owner may have deleted it already (the bench's pods
        // keeper deletes the node section's loop namespace).
        if !std::path::Path::new(&path(&self.name)).exists() {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// `program`, run inside namespace `netns` when there is one.
pub fn command(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Runs `f` on a thread moved into namespace `name`; an error if the thread
/// cannot enter it or `f` panics.
///
/// Only that thread moves, so anything reading `/proc/net/...` there must go
/// through `/proc/thread-self/net/...`: `/proc/net` follows `/proc/self`,
/// which is the main thread, still in the first namespace.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = path(name);
    std::thread::spawn(move || {
        enter(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other(format!("a thread in namespace {name} panicked")))?
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &str) -> io::Result<()> {
    let file = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
    // SAFETY: setns(2) on a namespace fd we hold open; it moves only the
    // calling thread, which its caller spawned for this.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("setns into {path}: {e}")));
    }
    Ok(())
}
