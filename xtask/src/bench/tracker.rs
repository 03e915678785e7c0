//! A tracker under test (the release binary, run in a namespace), and what
//! the benchmarks read about it from /proc: CPU time, memory, and its BPF
//! program's run-time statistics.
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::{
    MONITOR_PORT, SERVE_PORT, http,
    netns::{in_netns, within_ns},
};

/// What the tracker logs when the reconcile had to repair the event counts
/// (`spawner-sidecar/src/source/ebpf.rs`): a sign the kernel program missed
/// events.
const CORRECTION_LOG: &str = "corrected by snapshot";

pub struct Tracker {
    child: Child,
    ns: String,
    corrections: Arc<AtomicUsize>,
}

impl Tracker {
    /// Starts a tracker in `ns` and waits until it answers.
    pub fn start(bin: &Path, ns: &str, source: &str, refresh: &str) -> anyhow::Result<Tracker> {
        let mut tracker = Tracker::spawn(bin, ns, source, refresh)?;
        tracker.wait_ready()?;
        Ok(tracker)
    }

    /// Starts a tracker in `ns` without waiting, so several can load their
    /// programs at once. It logs at info level so that snapshot corrections
    /// can be counted; info lines are not echoed.
    pub fn spawn(bin: &Path, ns: &str, source: &str, refresh: &str) -> anyhow::Result<Tracker> {
        let mut child = in_netns(ns, bin)
            .args(["--source", source])
            .args(["--monitor-port", &MONITOR_PORT.to_string()])
            .args(["--serve-address", "127.0.0.1"])
            .args(["--serve-port", &SERVE_PORT.to_string()])
            .args(["--refresh-rate-seconds", refresh])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the tracker")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let corrections = Arc::new(AtomicUsize::new(0));
        let counter = corrections.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(CORRECTION_LOG) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if !line.contains(" INFO ") {
                    eprintln!("[tracker] {line}");
                }
            }
        });
        Ok(Tracker {
            child,
            ns: ns.to_string(),
            corrections,
        })
    }

    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if within_ns(&self.ns, || http::get_once(SERVE_PORT)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline || self.child.try_wait()?.is_some() {
                bail!("tracker in {} did not start", self.ns);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many times the tracker logged a snapshot correction so far.
    pub fn corrections(&self) -> usize {
        self.corrections.load(Ordering::Relaxed)
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // SIGTERM, so it detaches and exits the way it does in production.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Sum of the process's threads' on-CPU nanoseconds.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that exited between the listing and the read ran no more.
        let Ok(stat) = fs::read_to_string(&path) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("unexpected {}: {stat:?}", path.display()))?;
    }
    Ok(total)
}

/// A `VmHWM:` / `VmRSS:` line of /proc/PID/status, in MB.
pub fn memory_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    Ok(memory_kb(pid, field)? as f64 / 1024.0)
}

/// A `VmHWM:` / `VmRSS:` line of /proc/PID/status, in kB as the kernel
/// gives it.
pub fn memory_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// run_time_ns and run_cnt of the tracker's BPF program, from its fdinfo
/// (non-zero only while `kernel.bpf_stats_enabled` is 1).
pub fn prog_stats(pid: u32) -> anyhow::Result<(u64, u64)> {
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = fs::read_to_string(fd?.path()).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if info.contains("prog_tag:")
            && let (Some(t), Some(c)) = (field("run_time_ns:"), field("run_cnt:"))
        {
            return Ok((t, c));
        }
    }
    bail!("no BPF program fd in tracker {pid}")
}
