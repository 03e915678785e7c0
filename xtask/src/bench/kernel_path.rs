//! Section "cost on the kernel's TCP path": a connect/accept/RST loop on
//! loopback (`xtask/bench/connloop.c`) run without a tracker (A), with only
//! the kernel object's no-op program attached (F: the floor), with one
//! tracker (B), with each `--compare` build of the tracker in turn (B'), and
//! with ten attached at once (C: one sidecar per pod on a node), alternating
//! A F B B' C each round; then the programs' own run time from
//! `kernel.bpf_stats_enabled`.
//!
//! In C the first tracker follows the loop's port in the loop's namespace;
//! the others follow the same port number, each in a namespace of its own,
//! so their programs take the full filter path and reject on the namespace,
//! which is what the other pods' sidecars do with a node's traffic.
use std::{
    fmt::{self, Write as _},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::{
    MONITOR_PORT, Plan,
    floor::Floor,
    netns::bench_ns,
    stats::median,
    tracker::{Tracker, prog_stats},
};
use test_support::{Netns, netns};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Fixed per run, so the ticks cost the same in every round; the snapshot
/// of a nearly empty namespace is cheap.
const REFRESH: &str = "10";

/// One program's run time and run count over a measurement.
#[derive(Clone, Copy, Default)]
pub struct ProgCost {
    pub run_ns: u64,
    pub runs: u64,
}

impl ProgCost {
    pub fn add(&mut self, other: ProgCost) {
        self.run_ns += other.run_ns;
        self.runs += other.runs;
    }

    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            f64::NAN
        } else {
            self.run_ns as f64 / self.runs as f64
        }
    }
}

pub struct Round {
    pub a: f64,
    /// Only the no-op program attached.
    pub f: f64,
    pub b: f64,
    /// One per `--compare` build, in order.
    pub compared: Vec<f64>,
    pub c: f64,
    /// ns per event of F's, B's and each compared program in this round's
    /// statistics run: their spread shows the noise within one run.
    pub f_ns: f64,
    pub b_ns: f64,
    pub compared_ns: Vec<f64>,
}

/// Another build of the tracker run beside this one (`--compare`).
pub struct Compared {
    pub name: String,
    pub bin: PathBuf,
    pub prog: ProgCost,
    pub over_a: f64,
}

pub struct KernelPath {
    pub trackers: usize,
    pub loop_seconds: f64,
    pub stats_seconds: f64,
    pub rounds: Vec<Round>,
    pub f_over_a: f64,
    pub b_over_a: f64,
    pub c_over_a: f64,
    /// The no-op program of F.
    pub floor: ProgCost,
    pub compared: Vec<Compared>,
    /// The one program of B.
    pub b_prog: ProgCost,
    /// C's program in the loop's namespace.
    pub c_followed: ProgCost,
    /// C's other programs, summed.
    pub c_others: ProgCost,
    /// Connections the stats runs of B made, to turn events into events
    /// per connection.
    pub b_stats_connections: f64,
    /// Trackers of other people on this shared host, before and after the
    /// rounds: their programs run on our loop's events in A, B and C alike.
    pub foreign_trackers: (usize, usize),
}

impl KernelPath {
    /// Mean run time of one of C's other programs per event.
    pub fn other_ns(&self) -> f64 {
        self.c_others.ns_per_run()
    }

    /// Run time all of C's programs add to one TCP state change: each
    /// program runs once per event, so their per-run means add up.
    pub fn c_total_ns(&self) -> f64 {
        self.c_followed.ns_per_run() + self.other_ns() * (self.trackers - 1) as f64
    }

    pub fn events_per_connection(&self) -> f64 {
        self.b_prog.runs as f64 / self.b_stats_connections
    }
}

/// Puts `kernel.bpf_stats_enabled` back as it was when dropped.
pub struct StatsSwitch {
    before: String,
}

impl StatsSwitch {
    pub fn new() -> StatsSwitch {
        StatsSwitch {
            before: fs::read_to_string(STATS_SYSCTL).unwrap_or_else(|_| "0".into()),
        }
    }

    pub fn set(&self, on: bool) -> anyhow::Result<()> {
        fs::write(STATS_SYSCTL, if on { "1" } else { "0" })
            .context("writing kernel.bpf_stats_enabled")
    }
}

impl Drop for StatsSwitch {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SYSCTL, self.before.trim());
    }
}

pub fn measure(bin: &Path, loop_bin: &Path, plan: &Plan) -> anyhow::Result<KernelPath> {
    let others: Vec<Netns> = (1..plan.trackers)
        .map(|i| Netns::create(&format!("{}-c{i}", bench_ns())))
        .collect::<std::io::Result<_>>()?;
    let stats = StatsSwitch::new();
    // Throughput runs with statistics off: they add two clock reads to
    // every program run and would inflate B and C.
    stats.set(false)?;
    let stats_seconds = plan.loop_seconds / 2.0;
    let mut result = KernelPath {
        trackers: plan.trackers,
        loop_seconds: plan.loop_seconds,
        stats_seconds,
        rounds: Vec::new(),
        f_over_a: f64::NAN,
        b_over_a: f64::NAN,
        c_over_a: f64::NAN,
        floor: ProgCost::default(),
        compared: plan
            .compare
            .iter()
            .map(|(name, bin)| Compared {
                name: name.clone(),
                bin: bin.clone(),
                prog: ProgCost::default(),
                over_a: f64::NAN,
            })
            .collect(),
        b_prog: ProgCost::default(),
        c_followed: ProgCost::default(),
        c_others: ProgCost::default(),
        b_stats_connections: 0.0,
        foreign_trackers: (running_trackers(), 0),
    };
    for round in 0..plan.rounds {
        progress!(
            "kernel path round {}/{}: A, F, B,{} C ({} trackers)",
            round + 1,
            plan.rounds,
            result
                .compared
                .iter()
                .map(|c| format!(" {},", c.name))
                .collect::<String>(),
            plan.trackers
        );
        let a = connloop(loop_bin, plan.loop_seconds)?;

        let floor = Floor::attach()?;
        let f = connloop(loop_bin, plan.loop_seconds)?;
        let before = floor.stats()?;
        let (_, _) = with_stats(&stats, &[], loop_bin, stats_seconds)?;
        let after = floor.stats()?;
        let f_cost = ProgCost {
            run_ns: after.run_ns - before.run_ns,
            runs: after.runs - before.runs,
        };
        result.floor.add(f_cost);
        drop(floor);

        let one = Tracker::start(bin, bench_ns(), "ebpf", REFRESH)?;
        let b = connloop(loop_bin, plan.loop_seconds)?;
        let (cost, rate) = with_stats(&stats, &[one.pid()], loop_bin, stats_seconds)?;
        result.b_prog.add(cost[0]);
        let b_ns = cost[0].ns_per_run();
        result.b_stats_connections += rate * stats_seconds;
        drop(one);

        let mut compared = Vec::new();
        let mut compared_ns = Vec::new();
        for other in &mut result.compared {
            let tracker = Tracker::start(&other.bin, bench_ns(), "ebpf", REFRESH)?;
            compared.push(connloop(loop_bin, plan.loop_seconds)?);
            let (cost, _) = with_stats(&stats, &[tracker.pid()], loop_bin, stats_seconds)?;
            other.prog.add(cost[0]);
            compared_ns.push(cost[0].ns_per_run());
        }

        // All spawned before any is waited for: they load in parallel.
        let mut ten = vec![Tracker::spawn(bin, bench_ns(), "ebpf", REFRESH)?];
        for ns in &others {
            ten.push(Tracker::spawn(bin, ns.name(), "ebpf", REFRESH)?);
        }
        for tracker in &mut ten {
            tracker.wait_ready()?;
        }
        let c = connloop(loop_bin, plan.loop_seconds)?;
        let pids: Vec<u32> = ten.iter().map(Tracker::pid).collect();
        let (cost, _) = with_stats(&stats, &pids, loop_bin, stats_seconds)?;
        result.c_followed.add(cost[0]);
        for other in &cost[1..] {
            result.c_others.add(*other);
        }
        drop(ten);
        result.rounds.push(Round {
            a,
            f,
            b,
            compared,
            c,
            f_ns: f_cost.ns_per_run(),
            b_ns,
            compared_ns,
        });
    }
    result.foreign_trackers.1 = running_trackers();
    result.f_over_a = median(result.rounds.iter().map(|r| r.f / r.a).collect());
    for (i, other) in result.compared.iter_mut().enumerate() {
        other.over_a = median(result.rounds.iter().map(|r| r.compared[i] / r.a).collect());
    }
    result.b_over_a = median(result.rounds.iter().map(|r| r.b / r.a).collect());
    result.c_over_a = median(result.rounds.iter().map(|r| r.c / r.a).collect());
    Ok(result)
}

/// One loop run with statistics on; each program's run time and count over
/// it, and the loop's rate.
pub fn with_stats(
    stats: &StatsSwitch,
    pids: &[u32],
    loop_bin: &Path,
    seconds: f64,
) -> anyhow::Result<(Vec<ProgCost>, f64)> {
    with_stats_in(bench_ns(), stats, pids, loop_bin, seconds)
}

/// As [`with_stats`], the loop in namespace `ns`.
pub fn with_stats_in(
    ns: &str,
    stats: &StatsSwitch,
    pids: &[u32],
    loop_bin: &Path,
    seconds: f64,
) -> anyhow::Result<(Vec<ProgCost>, f64)> {
    stats.set(true)?;
    let before: Vec<(u64, u64)> = pids
        .iter()
        .map(|&p| prog_stats(p))
        .collect::<Result<_, _>>()?;
    let rate = connloop_in(ns, loop_bin, seconds);
    let after: Vec<(u64, u64)> = pids
        .iter()
        .map(|&p| prog_stats(p))
        .collect::<Result<_, _>>()?;
    stats.set(false)?;
    let costs = before
        .iter()
        .zip(&after)
        .map(|(b, a)| ProgCost {
            run_ns: a.0 - b.0,
            runs: a.1 - b.1,
        })
        .collect();
    Ok((costs, rate?))
}

/// spawner-sidecar processes on the host; called while none of ours runs.
pub fn running_trackers() -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "spawner-sidecar")
        })
        .count()
}

pub fn connloop(connloop: &Path, seconds: f64) -> anyhow::Result<f64> {
    connloop_in(bench_ns(), connloop, seconds)
}

/// The loop in namespace `ns`: connections per second.
pub fn connloop_in(ns: &str, connloop: &Path, seconds: f64) -> anyhow::Result<f64> {
    let out = netns::command(Some(ns), connloop)
        .args([MONITOR_PORT.to_string(), seconds.to_string()])
        .output()
        .context("running connloop")?;
    if !out.status.success() {
        bail!("connloop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("connloop output")
}

pub fn report(out: &mut String, k: &KernelPath) -> fmt::Result {
    writeln!(out, "## 2. Cost on the kernel's TCP path\n")?;
    writeln!(
        out,
        "connect/accept/RST-close loop on loopback (`xtask/bench/connloop.c`) on the monitored port, {:.1} s per run, alternating each round: A without a tracker, B with one tracker following the loop's port, C with {} trackers attached at once (one in the loop's namespace; {} more following the same port number, each in a namespace of its own, as the sidecars of other pods on one node would). `kernel.bpf_stats_enabled` is off during these runs.\n",
        k.loop_seconds,
        k.trackers,
        k.trackers - 1
    )?;
    writeln!(
        out,
        "Other spawner-sidecar processes on this shared host (other developers' tests), whose programs run on the loop's events in A, B and C alike: {} before the rounds, {} after.\n",
        k.foreign_trackers.0, k.foreign_trackers.1
    )?;
    writeln!(
        out,
        "F: only the kernel object's no-op program (`tcp_state_floor`) attached, by the bench itself: what any program costs on this tracepoint.{}\n",
        k.compared
            .iter()
            .map(|c| format!(
                " {}: the tracker built from `{}` (`--compare`), one at a time like B.",
                c.name,
                c.bin.display()
            ))
            .collect::<String>()
    )?;
    let names: String = k
        .compared
        .iter()
        .map(|c| format!(" {} (conn/s) |", c.name))
        .collect();
    let ratios: String = k
        .compared
        .iter()
        .map(|c| format!(" {}/A |", c.name))
        .collect();
    writeln!(
        out,
        "| round | A: none (conn/s) | F: no-op (conn/s) | B: 1 tracker (conn/s) |{names} C: {} trackers (conn/s) | F/A | B/A |{ratios} C/A |",
        k.trackers
    )?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: |{} ---: | ---: | ---: |{} ---: |",
        " ---: |".repeat(k.compared.len()),
        " ---: |".repeat(k.compared.len())
    )?;
    for (i, r) in k.rounds.iter().enumerate() {
        let rates: String = r.compared.iter().map(|x| format!(" {x:.0} |")).collect();
        let over_a: String = r
            .compared
            .iter()
            .map(|x| format!(" {:.3} |", x / r.a))
            .collect();
        writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} |{rates} {:.0} | {:.3} | {:.3} |{over_a} {:.3} |",
            i + 1,
            r.a,
            r.f,
            r.b,
            r.c,
            r.f / r.a,
            r.b / r.a,
            r.c / r.a
        )?;
    }
    let compared: String = k
        .compared
        .iter()
        .map(|c| format!(", {}/A **{:.3}**", c.name, c.over_a))
        .collect();
    writeln!(
        out,
        "\nMedian ratios: F/A **{:.3}**, B/A **{:.3}**{compared}, C/A **{:.3}** (target B/A ≥ 0.98).\n",
        k.f_over_a, k.b_over_a, k.c_over_a
    )?;
    writeln!(
        out,
        "Program run time from `kernel.bpf_stats_enabled` (run_time_ns / run_cnt per program), over a separate {:.1} s loop run per round with statistics on, trackers still attached:\n",
        k.stats_seconds
    )?;
    writeln!(
        out,
        "| program | events | ns per event | above the floor | per round: median (min - max) |"
    )?;
    writeln!(out, "| --- | ---: | ---: | ---: | ---: |")?;
    let floor = k.floor.ns_per_run();
    writeln!(
        out,
        "| F: no-op program (the floor) | {} | {:.0} | | {} |",
        k.floor.runs,
        floor,
        spread(k.rounds.iter().map(|r| r.f_ns).collect())
    )?;
    writeln!(
        out,
        "| B: the one tracker | {} | {:.0} | {:.0} | {} |",
        k.b_prog.runs,
        k.b_prog.ns_per_run(),
        k.b_prog.ns_per_run() - floor,
        spread(k.rounds.iter().map(|r| r.b_ns).collect())
    )?;
    for (i, c) in k.compared.iter().enumerate() {
        writeln!(
            out,
            "| {}: `{}` | {} | {:.0} | {:.0} | {} |",
            c.name,
            c.bin.display(),
            c.prog.runs,
            c.prog.ns_per_run(),
            c.prog.ns_per_run() - floor,
            spread(k.rounds.iter().map(|r| r.compared_ns[i]).collect())
        )?;
    }
    writeln!(
        out,
        "| C: tracker in the loop's namespace (counts) | {} | {:.0} | {:.0} | |",
        k.c_followed.runs,
        k.c_followed.ns_per_run(),
        k.c_followed.ns_per_run() - floor
    )?;
    writeln!(
        out,
        "| C: each of the {} others (same port, other namespace: rejects), mean | {} | {:.0} | {:.0} | |",
        k.trackers - 1,
        k.c_others.runs / (k.trackers as u64 - 1).max(1),
        k.other_ns(),
        k.other_ns() - floor
    )?;
    writeln!(
        out,
        "| **C: all {} programs, ns added per TCP state change** | | **{:.0}** | | |",
        k.trackers,
        k.c_total_ns()
    )?;
    let per_conn = k.events_per_connection();
    let median_conn_ns =
        |f: fn(&Round) -> f64| median(k.rounds.iter().map(|r| 1e9 / f(r) - 1e9 / r.a).collect());
    writeln!(
        out,
        "\nHow it scales: every program attached to `inet_sock_set_state` runs on every TCP state change of the host, whatever namespace or port it follows, so the kernel-side cost grows linearly with the number of trackers on a node: about {:.0} ns per change per tracker whose namespace does not match, {:.0} ns for the one that counts. One connection of this loop makes {:.1} state changes (both ends), so {} trackers add about {:.0} ns of program time per connection. The loop itself says: per connection, B took {:.0} ns and C {:.0} ns longer than A (median over rounds; this includes the trampoline and cache effects that run_time_ns does not see).",
        k.other_ns(),
        k.c_followed.ns_per_run(),
        per_conn,
        k.trackers,
        k.c_total_ns() * per_conn,
        median_conn_ns(|r| r.b),
        median_conn_ns(|r| r.c),
    )
}

/// "median (min - max)" of per-round figures.
pub fn spread(values: Vec<f64>) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({min:.0} - {max:.0})", median(values))
}
