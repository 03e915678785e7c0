//! A tracker under test: the release binary run in a namespace on the
//! bench's fixed ports, and the run-time statistics of its BPF program.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use test_support::{
    procinfo,
    sidecar::{Launch, Sidecar},
};

use super::{MONITOR_PORT, SERVE_PORT};

/// What the tracker logs when the reconcile had to repair the event counts
/// (`spawner-sidecar/src/source/ebpf`): a sign the kernel program missed
/// events.
const CORRECTION_LOG: &str = "corrected by snapshot";

pub struct Tracker {
    sidecar: Sidecar,
    ns: String,
}

impl Tracker {
    /// Starts a tracker in `ns` and waits until it serves.
    pub fn start(bin: &Path, ns: &str, source: &str, refresh: &str) -> anyhow::Result<Tracker> {
        let mut tracker = Tracker::spawn(bin, ns, source, refresh)?;
        tracker.wait_ready()?;
        Ok(tracker)
    }

    /// Starts a tracker in `ns` without waiting, so several can load their
    /// programs at once. It logs at info level so that snapshot corrections
    /// can be counted; only the other lines are echoed.
    pub fn spawn(bin: &Path, ns: &str, source: &str, refresh: &str) -> anyhow::Result<Tracker> {
        let monitor_port = MONITOR_PORT.to_string();
        let launch = Launch {
            bin: bin.to_path_buf(),
            netns: Some(ns),
            serve_port: SERVE_PORT,
            args: vec![
                "--source".into(),
                source.into(),
                "--monitor-port".into(),
                monitor_port,
                "--refresh-rate-seconds".into(),
                refresh.into(),
            ],
            env: Vec::new(),
            echo: Some("[tracker]"),
        };
        Ok(Tracker {
            sidecar: Sidecar::spawn(&launch).context("starting the tracker")?,
            ns: ns.to_string(),
        })
    }

    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.sidecar
            .wait_serving()
            .with_context(|| format!("tracker in {} did not start", self.ns))
    }

    pub fn pid(&self) -> u32 {
        self.sidecar.pid()
    }

    /// How many times the tracker logged a snapshot correction so far.
    pub fn corrections(&self) -> usize {
        self.sidecar.count(CORRECTION_LOG)
    }
}

/// run_time_ns and run_cnt of the tracker's BPF program, from its fdinfo
/// (non-zero only while `kernel.bpf_stats_enabled` is 1).
pub fn prog_stats(pid: u32) -> anyhow::Result<(u64, u64)> {
    procinfo::held_programs(pid)?
        .iter()
        .find_map(|p| Some((p.run_time_ns?, p.run_cnt?)))
        .ok_or_else(|| anyhow!("no BPF program fd in tracker {pid}"))
}
