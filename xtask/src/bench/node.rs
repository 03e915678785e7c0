//! Section "node mode" (issue 13): one node tracker (`spawner-sidecar
//! node`, one kernel program for every namespace) against one tracker per
//! pod, and what the node tracker costs with 1 000 namespaces followed.
//!
//! The pods are the node-mode tests' fake pods (`node_pods`): the first
//! `trackers - 1` listen on the monitored port, the rest on `EXTRA_PORT`.
//! With the loop's own namespace, a node tracker following the monitored
//! port follows `trackers` namespaces, one following both ports every
//! namespace; so the two alternate in each round over the same pods, with
//! the kernel-path section's loop and machinery (`kernel_path`):
//! A no tracker, F the no-op program (the floor), B a node tracker
//! following `trackers` namespaces, B' one following all, C `trackers`
//! per-pod trackers (one in the loop's namespace, one in each pod on the
//! monitored port). Then `GET /pods/<uid>` against a node tracker following
//! all, and the idle cost of one at a 1 s refresh.
use std::{
    collections::{BTreeSet, HashSet},
    fmt::{self, Write as _},
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use test_support::{
    Netns,
    http::{self, KeepAlive, Response},
    netns,
    process::Process,
    procinfo::{self, Memory, cpu_ns, memory_kb},
};

use super::{
    MONITOR_PORT, Plan,
    answer::StyleCost,
    floor::Floor,
    kernel_path::{ProgCost, StatsSwitch, connloop_in, running_trackers, spread, with_stats_in},
    node_pods::{self, Pod, Pods},
    stats::{median, percentile, sorted},
    tracker::Tracker,
};

/// The port of the pods beyond the first few: only a node tracker that
/// follows it as well follows them.
const EXTRA_PORT: u16 = 8090;
/// As in the kernel-path section: the ticks cost the same in every round.
const REFRESH: &str = "10";
/// Above the bench's own namespaces plus whatever other tests on this
/// shared host have on the same ports: the default (1 024) could leave the
/// loop's namespace out.
const MAX_NAMESPACES: &str = "4096";
/// A node tracker takes one snapshot of every namespace of the host at start.
const START_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const WARM_UP: usize = 20;
/// A node tracker's first ticks after start can take seconds (`settle`).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// `/pods` and `/metrics` answer for every namespace at once: a few
/// requests show what that costs.
const LIST_REQUESTS: usize = 20;

/// `spawner-sidecar node` serving on 127.0.0.1 of our namespace.
struct NodeTracker {
    process: Process,
    port: u16,
    /// Spawn to serving: the start-up scan and one snapshot per namespace.
    start: Duration,
}

impl NodeTracker {
    fn start(bin: &Path, ports: &str, refresh: &str) -> anyhow::Result<NodeTracker> {
        let mut cmd = Command::new(bin);
        cmd.arg("node")
            .args(["--serve-address", "127.0.0.1", "--serve-port", "0"])
            .args(["--monitor-port", ports, "--refresh-rate-seconds", refresh])
            .args(["--max-namespaces", MAX_NAMESPACES])
            .env("RUST_LOG", "info");
        let spawned = Instant::now();
        let mut process =
            Process::spawn(&mut cmd, Some("[node]")).context("starting the node tracker")?;
        let port = process
            .wait_serving(START_TIMEOUT)
            .context("the node tracker did not start")?;
        let tracker = NodeTracker {
            process,
            port,
            start: spawned.elapsed(),
        };
        // `with_stats` reads the first program the tracker holds: it must
        // be the node program and nothing else.
        let programs: BTreeSet<u32> = procinfo::held_programs(tracker.pid())?
            .iter()
            .map(|p| p.id)
            .collect();
        if programs.len() != 1 {
            bail!("the node tracker holds programs {programs:?}, expected one");
        }
        Ok(tracker)
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = http::send(self.port, "GET", path, &[])?;
        ok(&response, path)?;
        Ok(response.json()?)
    }

    /// Namespaces followed (`GET /netns`), and how many of them are `ours`.
    fn followed(&self, ours: &HashSet<u64>) -> anyhow::Result<Followed> {
        let listed = self.get("/netns")?;
        let inodes: Vec<u64> = listed["namespaces"]
            .as_array()
            .ok_or_else(|| anyhow!("no namespaces in GET /netns"))?
            .iter()
            .filter_map(|n| n["netns"].as_u64())
            .collect();
        Ok(Followed {
            all: inodes.len(),
            ours: inodes.iter().filter(|i| ours.contains(i)).count(),
        })
    }
}

impl Drop for NodeTracker {
    fn drop(&mut self) {
        if let Err(e) = self.process.terminate(STOP_TIMEOUT) {
            eprintln!("[bench] the node tracker did not stop on SIGTERM: {e}");
        }
    }
}

fn ok(response: &Response, path: &str) -> anyhow::Result<()> {
    if response.code != 200 {
        bail!("GET {path} answered {}: {}", response.code, response.body);
    }
    Ok(())
}

/// `pod-server` listening on the monitored port in the loop's namespace,
/// killed when dropped.
struct LoopListener(Child);

impl LoopListener {
    fn start(ns: &str, pod_server: &Path) -> anyhow::Result<LoopListener> {
        let mut child = netns::command(Some(ns), pod_server)
            .arg(MONITOR_PORT.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting pod-server in the loop's namespace")?;
        let stdout = child.stdout.take().context("no pod-server stdout")?;
        // Owned from here: an error below kills it.
        let listener = LoopListener(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "listening" {
            bail!("pod-server in {ns} said {line:?}");
        }
        Ok(listener)
    }
}

impl Drop for LoopListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, Default)]
pub struct Followed {
    /// Every namespace the tracker follows, other tests' included.
    pub all: usize,
    /// Of them, the bench's own.
    pub ours: usize,
}

pub struct Round {
    pub a: f64,
    pub f: f64,
    pub b: f64,
    pub many: f64,
    pub c: f64,
    pub f_ns: f64,
    pub b_ns: f64,
    pub many_ns: f64,
    pub b_followed: Followed,
    pub many_followed: Followed,
    pub b_start: Duration,
    pub many_start: Duration,
    /// Serving to quiet (`settle`).
    pub b_settle: Duration,
    pub many_settle: Duration,
    /// The trackers' own CPU during the throughput run, % of one core:
    /// on two cores, what they do in user space competes with the loop.
    pub b_cpu: f64,
    pub many_cpu: f64,
    pub c_cpu: f64,
}

/// Requests of one kind against a node tracker.
pub struct Requests {
    pub namespaces: usize,
    pub what: String,
    pub cost: StyleCost,
}

/// `GET /pods/<uid>` on a new connection each, then on one keep-alive
/// connection, cycling over `paths`.
fn pod_answers(
    node: &NodeTracker,
    namespaces: usize,
    paths: &[String],
    plan: &Plan,
) -> anyhow::Result<[Requests; 2]> {
    Ok([
        Requests {
            namespaces,
            what: FRESH.into(),
            cost: measure_requests(node, paths, plan.requests, plan, false)?,
        },
        Requests {
            namespaces,
            what: "`GET /pods/<uid>`, one keep-alive connection".into(),
            cost: measure_requests(node, paths, plan.requests, plan, true)?,
        },
    ])
}

const FRESH: &str = "`GET /pods/<uid>`, a new connection each";

pub struct Idle {
    pub seconds: usize,
    /// The tracker's CPU in each second of the window, % of one core.
    pub per_second: Vec<f64>,
    pub mean_percent: f64,
    pub peak_rss_mb: f64,
    pub rss_mb: f64,
    pub start: Duration,
    pub settled: Duration,
}

/// A second of the idle window this busy (% of one core) is part of a pass
/// over every namespace, not of an ordinary tick.
const BUSY_PERCENT: f64 = 10.0;
/// Busy seconds closer than this belong to one pass.
const PASS_GAP: usize = 5;
/// A pass over every namespace keeps a core at least this busy for a
/// second or more; shorter, lower bursts are something else (the shared
/// machine, a namespace snapshotted out of turn).
const PASS_PEAK: f64 = 50.0;

impl Idle {
    pub fn median_percent(&self) -> f64 {
        median(self.per_second.clone())
    }

    /// The once-a-minute snapshot passes seen in the window: runs of busy
    /// seconds less than `PASS_GAP` apart, each as (seconds from its first
    /// busy second to its last, CPU seconds above the median second).
    pub fn passes(&self) -> Vec<(usize, f64)> {
        self.bursts()
            .into_iter()
            .filter(|b| b.2)
            .map(|(seconds, cpu, _)| (seconds, cpu))
            .collect()
    }

    /// Busy stretches that are no pass (no second reached `PASS_PEAK`):
    /// how many seconds, and their CPU seconds above the median.
    pub fn other_busy(&self) -> (usize, f64) {
        self.bursts()
            .into_iter()
            .filter(|b| !b.2)
            .fold((0, 0.0), |(n, cpu), b| (n + b.0, cpu + b.1))
    }

    /// Runs of busy seconds less than `PASS_GAP` apart: (seconds, CPU
    /// seconds above the median second, whether one reached `PASS_PEAK`).
    fn bursts(&self) -> Vec<(usize, f64, bool)> {
        let base = self.median_percent();
        let busy: Vec<usize> = (0..self.per_second.len())
            .filter(|&s| self.per_second[s] >= BUSY_PERCENT)
            .collect();
        let mut passes = Vec::new();
        let mut start = 0;
        for k in 0..busy.len() {
            let last_of_pass = k + 1 == busy.len() || busy[k + 1] - busy[k] >= PASS_GAP;
            if last_of_pass {
                let (first, last) = (busy[start], busy[k]);
                let seconds = &self.per_second[first..=last];
                let excess: f64 = seconds.iter().map(|p| (p - base) / 100.0).sum();
                let pass = seconds.iter().any(|&p| p >= PASS_PEAK);
                passes.push((last - first + 1, excess, pass));
                start = k + 1;
            }
        }
        passes
    }
}

pub struct NodeBench {
    /// Namespaces the bench makes followable: the loop's and the pods'.
    pub namespaces: usize,
    /// B's namespaces, and C's trackers.
    pub trackers: usize,
    pub loop_seconds: f64,
    pub stats_seconds: f64,
    pub rounds: Vec<Round>,
    pub f_over_a: f64,
    pub b_over_a: f64,
    pub many_over_a: f64,
    pub c_over_a: f64,
    pub floor: ProgCost,
    pub b_prog: ProgCost,
    pub many_prog: ProgCost,
    pub c_followed: ProgCost,
    pub c_others: ProgCost,
    pub foreign_trackers: (usize, usize),
    pub requests: Vec<Requests>,
    /// VmHWM and VmRSS of the tracker that answered.
    pub answer_peak_rss_mb: f64,
    pub answer_rss_mb: f64,
    pub idle: Idle,
}

impl NodeBench {
    pub fn b_ns(&self) -> f64 {
        self.b_prog.ns_per_run()
    }

    pub fn many_ns(&self) -> f64 {
        self.many_prog.ns_per_run()
    }

    /// Run time all of C's programs add to one TCP state change.
    pub fn c_total_ns(&self) -> f64 {
        self.c_followed.ns_per_run() + self.c_others.ns_per_run() * (self.trackers - 1) as f64
    }

    /// `GET /pods/<uid>` on a new connection each, every namespace followed.
    pub fn pod_answer(&self) -> Option<&StyleCost> {
        self.answer(self.namespaces, FRESH)
    }

    pub fn answer(&self, namespaces: usize, what: &str) -> Option<&StyleCost> {
        self.requests
            .iter()
            .find(|r| r.namespaces == namespaces && r.what.starts_with(what))
            .map(|r| &r.cost)
    }

    /// Whether B' per event is B's within noise: inside the range of B's
    /// rounds, or within 5 % of B.
    pub fn independent_of_namespaces(&self) -> bool {
        let per_round: Vec<f64> = self.rounds.iter().map(|r| r.b_ns).collect();
        let min = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let max = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let many = self.many_ns();
        (min..=max).contains(&many) || (many / self.b_ns() - 1.0).abs() <= 0.05
    }
}

pub fn measure(
    bin: &Path,
    loop_bin: &Path,
    pod_server: &Path,
    plan: &Plan,
) -> anyhow::Result<NodeBench> {
    let few = plan.trackers - 1;
    let extra = plan.node_namespaces - plan.trackers;
    // The loop's namespace is the section's own: the bench's shared one is
    // not made when this section runs alone, and the pods' keeper deletes
    // this one should the bench be killed before it does.
    let loop_ns = Netns::create(&node_pods::loop_netns())?;
    let ns = loop_ns.name();
    progress!("node: making {few} pods on port {MONITOR_PORT} and {extra} on port {EXTRA_PORT}");
    let first = Pods::create(pod_server, "a", few, MONITOR_PORT)?;
    let rest = Pods::create(pod_server, "b", extra, EXTRA_PORT)?;
    let loop_inode = fs::metadata(format!("/var/run/netns/{ns}"))?.ino();
    let ours_few: HashSet<u64> = first
        .pods
        .iter()
        .map(|p| p.inode)
        .chain([loop_inode])
        .collect();
    let ours_all: HashSet<u64> = ours_few
        .iter()
        .copied()
        .chain(rest.pods.iter().map(|p| p.inode))
        .collect();
    let ports_all = format!("{MONITOR_PORT},{EXTRA_PORT}");

    let stats = StatsSwitch::new();
    stats.set(false)?;
    let stats_seconds = plan.loop_seconds / 2.0;
    let foreign_before = running_trackers();
    let mut rounds = Vec::new();
    let mut floor_cost = ProgCost::default();
    let (mut b_prog, mut many_prog) = (ProgCost::default(), ProgCost::default());
    let (mut c_followed, mut c_others) = (ProgCost::default(), ProgCost::default());
    for round in 0..plan.rounds {
        progress!(
            "node round {}/{}: A, F, B (node tracker, {} namespaces), B' (node tracker, {} namespaces), C ({} per-pod trackers)",
            round + 1,
            plan.rounds,
            plan.trackers,
            plan.node_namespaces,
            plan.trackers
        );
        let a = connloop_in(ns, loop_bin, plan.loop_seconds)?;

        let floor = Floor::attach()?;
        let f = connloop_in(ns, loop_bin, plan.loop_seconds)?;
        let before = floor.stats()?;
        with_stats_in(ns, &stats, &[], loop_bin, stats_seconds)?;
        let after = floor.stats()?;
        drop(floor);
        let f_cost = ProgCost {
            run_ns: after.run_ns - before.run_ns,
            runs: after.runs - before.runs,
        };
        floor_cost.add(f_cost);

        let node = NodeTracker::start(bin, &MONITOR_PORT.to_string(), REFRESH)?;
        let b_settle = settle(&[node.pid()])?;
        let (b, b_cpu) = loop_with_cpu(ns, loop_bin, plan.loop_seconds, &[node.pid()])?;
        let (cost, _) = with_stats_in(ns, &stats, &[node.pid()], loop_bin, stats_seconds)?;
        b_prog.add(cost[0]);
        let b_ns = cost[0].ns_per_run();
        let b_followed = expect_followed(&node, &ours_few)?;
        let b_start = node.start;
        drop(node);

        let node = NodeTracker::start(bin, &ports_all, REFRESH)?;
        let many_settle = settle(&[node.pid()])?;
        let (many, many_cpu) = loop_with_cpu(ns, loop_bin, plan.loop_seconds, &[node.pid()])?;
        let (cost, _) = with_stats_in(ns, &stats, &[node.pid()], loop_bin, stats_seconds)?;
        many_prog.add(cost[0]);
        let many_ns = cost[0].ns_per_run();
        let many_followed = expect_followed(&node, &ours_all)?;
        let many_start = node.start;
        drop(node);

        // All spawned before any is waited for: they load in parallel.
        let mut per_pod = vec![Tracker::spawn(bin, ns, "ebpf", REFRESH)?];
        for pod in &first.pods {
            per_pod.push(Tracker::spawn(bin, &pod.netns, "ebpf", REFRESH)?);
        }
        for tracker in &mut per_pod {
            tracker.wait_ready()?;
        }
        let pids: Vec<u32> = per_pod.iter().map(Tracker::pid).collect();
        settle(&pids)?;
        let (c, c_cpu) = loop_with_cpu(ns, loop_bin, plan.loop_seconds, &pids)?;
        let (cost, _) = with_stats_in(ns, &stats, &pids, loop_bin, stats_seconds)?;
        c_followed.add(cost[0]);
        for other in &cost[1..] {
            c_others.add(*other);
        }
        drop(per_pod);
        rounds.push(Round {
            a,
            f,
            b,
            many,
            c,
            f_ns: f_cost.ns_per_run(),
            b_ns,
            many_ns,
            b_followed,
            many_followed,
            b_start,
            many_start,
            b_settle,
            many_settle,
            b_cpu,
            many_cpu,
            c_cpu,
        });
    }
    let ratio = |x: fn(&Round) -> f64| median(rounds.iter().map(|r| x(r) / r.a).collect());
    let (f_over_a, b_over_a) = (ratio(|r| r.f), ratio(|r| r.b));
    let (many_over_a, c_over_a) = (ratio(|r| r.many), ratio(|r| r.c));
    let foreign_trackers = (foreign_before, running_trackers());

    // Outside the loop's runs its namespace has neither a socket on a
    // followed port nor a process: a pod-server there keeps it followed.
    let _listener = LoopListener::start(ns, pod_server)?;
    let paths = |pods: &[&Pod]| -> Vec<String> {
        pods.iter().map(|p| format!("/pods/{}", p.uid)).collect()
    };
    // The same requests with few namespaces first: what grows with their number.
    progress!(
        "node: GET /pods/<uid>, {} namespaces followed",
        plan.trackers
    );
    let pods: Vec<&Pod> = first.pods.iter().collect();
    let node = NodeTracker::start(bin, &MONITOR_PORT.to_string(), "3600")?;
    expect_followed(&node, &ours_few)?;
    expect_pods(&node, &pods)?;
    settle(&[node.pid()])?;
    let mut requests = Vec::from(pod_answers(&node, plan.trackers, &paths(&pods), plan)?);
    drop(node);

    progress!(
        "node: GET /pods/<uid>, {} namespaces followed",
        plan.node_namespaces
    );
    let pods: Vec<&Pod> = first.pods.iter().chain(&rest.pods).collect();
    let node = NodeTracker::start(bin, &ports_all, "3600")?;
    expect_followed(&node, &ours_all)?;
    expect_pods(&node, &pods)?;
    settle(&[node.pid()])?;
    requests.extend(pod_answers(
        &node,
        plan.node_namespaces,
        &paths(&pods),
        plan,
    )?);
    for path in ["/pods", "/metrics"] {
        requests.push(Requests {
            namespaces: plan.node_namespaces,
            what: format!("`GET {path}` (every namespace at once), keep-alive"),
            cost: measure_requests(&node, &[path.to_string()], LIST_REQUESTS, plan, true)?,
        });
    }
    let answer_peak_rss_mb = memory_kb(node.pid(), Memory::PeakRss)? as f64 / 1024.0;
    let answer_rss_mb = memory_kb(node.pid(), Memory::Rss)? as f64 / 1024.0;
    drop(node);

    progress!(
        "node: idle at --refresh-rate-seconds 1, {} namespaces followed, {} s",
        plan.node_namespaces,
        plan.node_idle_seconds
    );
    let idle = idle(bin, &ports_all, &ours_all, plan.node_idle_seconds)?;
    progress!("node: removing the pods");
    drop(rest);
    drop(first);
    Ok(NodeBench {
        namespaces: plan.node_namespaces,
        trackers: plan.trackers,
        loop_seconds: plan.loop_seconds,
        stats_seconds,
        rounds,
        f_over_a,
        b_over_a,
        many_over_a,
        c_over_a,
        floor: floor_cost,
        b_prog,
        many_prog,
        c_followed,
        c_others,
        foreign_trackers,
        requests,
        answer_peak_rss_mb,
        answer_rss_mb,
        idle,
    })
}

/// Waits until the trackers `pids` have finished settling in: after
/// serving, a tracker's first ticks snapshot every followed namespace again
/// (a correction must be confirmed by a second snapshot before it is
/// trusted), which with many namespaces takes seconds of CPU that would
/// otherwise land in the first loop run. Quiet: under 2 % of a core over
/// half a second.
fn settle(pids: &[u32]) -> anyhow::Result<Duration> {
    const WINDOW: Duration = Duration::from_millis(500);
    let started = Instant::now();
    // Saturating below: a thread that exits takes its CPU time out of the sum.
    let total = || -> anyhow::Result<u64> { pids.iter().map(|&p| Ok(cpu_ns(p)?)).sum() };
    loop {
        let before = total()?;
        std::thread::sleep(WINDOW);
        let busy = total()?.saturating_sub(before) as f64 / WINDOW.as_nanos() as f64;
        if busy < 0.02 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            bail!(
                "trackers {pids:?} still busy ({:.0} % of a core) {SETTLE_TIMEOUT:?} after start",
                busy * 100.0
            );
        }
    }
}

/// A throughput run, and the CPU `pids` spent meanwhile (% of one core).
fn loop_with_cpu(
    ns: &str,
    loop_bin: &Path,
    seconds: f64,
    pids: &[u32],
) -> anyhow::Result<(f64, f64)> {
    let total = || -> anyhow::Result<u64> {
        pids.iter()
            .map(|&p| Ok(cpu_ns(p)?))
            .sum::<anyhow::Result<u64>>()
    };
    let (before, at) = (total()?, Instant::now());
    let rate = connloop_in(ns, loop_bin, seconds)?;
    let cpu = total()?.saturating_sub(before);
    Ok((rate, cpu as f64 / at.elapsed().as_nanos() as f64 * 100.0))
}

/// The tracker's namespaces once every one of `ours` is among them (a
/// namespace is followed from its first transition on a followed port, the
/// loop's from the loop's first), within a few seconds.
fn expect_followed(node: &NodeTracker, ours: &HashSet<u64>) -> anyhow::Result<Followed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let followed = node.followed(ours)?;
        if followed.ours == ours.len() {
            return Ok(followed);
        }
        if Instant::now() > deadline {
            bail!(
                "the node tracker follows {} of the bench's {} namespaces ({} in all)",
                followed.ours,
                ours.len(),
                followed.all
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every pod is attributed, so each `/pods/<uid>` answers 200.
fn expect_pods(node: &NodeTracker, pods: &[&Pod]) -> anyhow::Result<()> {
    let listed = node.get("/pods")?;
    let uids: HashSet<&str> = listed["pods"]
        .as_array()
        .ok_or_else(|| anyhow!("no pods in GET /pods"))?
        .iter()
        .filter_map(|p| p["pod_uid"].as_str())
        .collect();
    let missing = pods
        .iter()
        .filter(|p| !uids.contains(p.uid.as_str()))
        .count();
    if missing > 0 {
        bail!(
            "{missing} of the bench's {} pods are not in GET /pods",
            pods.len()
        );
    }
    let one = node.get(&format!("/pods/{}", pods[0].uid))?;
    // `listening` at the top is every followed port's: each pod listens on one.
    let listens = one["ports"].as_object().is_some_and(|ports| {
        ports
            .values()
            .any(|p| p["listening"].as_bool() == Some(true))
    });
    if one["active_connections"].as_u64().is_none() || !listens {
        bail!(
            "GET /pods/{} is not the sidecar's answer of a listening pod: {one}",
            pods[0].uid
        );
    }
    Ok(())
}

/// `count` requests cycling over `paths` (or as many as fit in the answer
/// budget), after a warm-up: latency and the tracker's CPU per answer.
fn measure_requests(
    node: &NodeTracker,
    paths: &[String],
    count: usize,
    plan: &Plan,
    keep_alive: bool,
) -> anyhow::Result<StyleCost> {
    let mut connection = if keep_alive {
        Some(KeepAlive::connect(node.port)?)
    } else {
        None
    };
    let mut get = |path: &str| -> anyhow::Result<()> {
        let response = match connection.as_mut() {
            Some(c) => c.get(path)?,
            None => http::send(node.port, "GET", path, &[])?,
        };
        ok(&response, path)
    };
    let mut next = paths.iter().cycle();
    for _ in 0..WARM_UP.min(count) {
        get(next.next().context("no paths")?)?;
    }
    let cpu_before = cpu_ns(node.pid())?;
    let budget = Instant::now() + plan.answer_budget;
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count && (latencies.len() < WARM_UP || Instant::now() < budget) {
        let path = next.next().context("no paths")?;
        let t = Instant::now();
        get(path)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = cpu_ns(node.pid())?.saturating_sub(cpu_before);
    let latencies = sorted(latencies);
    Ok(StyleCost {
        requests: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        cpu_ms_per_request: cpu as f64 / latencies.len() as f64 / 1e6,
    })
}

/// A node tracker following every namespace at a 1 s refresh, left alone
/// for `seconds`: its CPU second by second, then its memory.
fn idle(bin: &Path, ports: &str, ours: &HashSet<u64>, seconds: usize) -> anyhow::Result<Idle> {
    let node = NodeTracker::start(bin, ports, "1")?;
    expect_followed(&node, ours)?;
    let pid = node.pid();
    let settled = settle(&[pid])?;
    let mut per_second = Vec::with_capacity(seconds);
    let (window_start, cpu_start) = (Instant::now(), cpu_ns(pid)?);
    let (mut at, mut cpu) = (window_start, cpu_start);
    for i in 1..=seconds {
        let until = window_start + Duration::from_secs(i as u64);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        let (now, cpu_now) = (Instant::now(), cpu_ns(pid)?);
        per_second.push(cpu_now.saturating_sub(cpu) as f64 / (now - at).as_nanos() as f64 * 100.0);
        (at, cpu) = (now, cpu_now);
    }
    let mean_percent =
        cpu.saturating_sub(cpu_start) as f64 / (at - window_start).as_nanos() as f64 * 100.0;
    Ok(Idle {
        seconds,
        per_second,
        mean_percent,
        peak_rss_mb: memory_kb(pid, Memory::PeakRss)? as f64 / 1024.0,
        rss_mb: memory_kb(pid, Memory::Rss)? as f64 / 1024.0,
        start: node.start,
        settled,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn report(out: &mut String, n: &NodeBench) -> fmt::Result {
    let few = n.trackers;
    let many = n.namespaces;
    writeln!(
        out,
        "## Node mode: one tracker for every pod (`spawner-sidecar node`)\n"
    )?;
    writeln!(
        out,
        "{} fake pods as `tests/node.rs` makes them (`test_support::pods`: a namespace pinned with `ip netns`, the process in a kubelet-style cgroup, cgroupfs driver, burstable, v1 `pids` hierarchy; the `pod-server` helper listening inside): {} on the monitored port {MONITOR_PORT} and {} on port {EXTRA_PORT}. With the loop's own namespace, a node tracker following port {MONITOR_PORT} follows {few} namespaces, one following both ports all {many}; the two alternate in every round over the same pods. The pods are made and removed by a process of their own (`xtask bench-pods`), which removes them whenever the bench ends, also on Ctrl-C.\n",
        many - 1,
        few - 1,
        many - few
    )?;
    writeln!(
        out,
        "### On the kernel's TCP path\n\nThe loop of section 2 (`xtask/bench/connloop.c`, {:.1} s per run, in a namespace of the section's own, on port {MONITOR_PORT}), alternating each round: A without a tracker, F the no-op program, B one node tracker following {few} namespaces, B' one node tracker following {many}, C {few} per-pod trackers (one in the loop's namespace, one in each of the {} pods on port {MONITOR_PORT}); each run starts once its trackers are quiet after start-up. Trackers at `--refresh-rate-seconds {REFRESH}`, `kernel.bpf_stats_enabled` off during these runs. Other spawner-sidecar processes on this shared host, whose programs run on the loop's events in every run alike: {} before the rounds, {} after.\n",
        n.loop_seconds,
        few - 1,
        n.foreign_trackers.0,
        n.foreign_trackers.1
    )?;
    writeln!(
        out,
        "| round | A: none (conn/s) | F: no-op (conn/s) | B: node, {few} ns (conn/s) | B': node, {many} ns (conn/s) | C: {few} per-pod (conn/s) | F/A | B/A | B'/A | C/A |"
    )?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for (i, r) in n.rounds.iter().enumerate() {
        writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} |",
            i + 1,
            r.a,
            r.f,
            r.b,
            r.many,
            r.c,
            r.f / r.a,
            r.b / r.a,
            r.many / r.a,
            r.c / r.a
        )?;
    }
    let cpu = |f: fn(&Round) -> f64| {
        let v: Vec<f64> = n.rounds.iter().map(f).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        format!("{:.1} % ({lo:.1} - {hi:.1})", median(v))
    };
    writeln!(
        out,
        "\nMedian ratios: F/A **{:.3}**, B/A **{:.3}** (target ≥ 0.97), B'/A **{:.3}**, C/A **{:.3}**. The trackers' own CPU during those runs (user space: ticks, reconcile; % of one core, median (min - max) over rounds): B {}, B' {}, C (all {few}) {}.\n",
        n.f_over_a,
        n.b_over_a,
        n.many_over_a,
        n.c_over_a,
        cpu(|r| r.b_cpu),
        cpu(|r| r.many_cpu),
        cpu(|r| r.c_cpu)
    )?;
    writeln!(
        out,
        "Program run time from `kernel.bpf_stats_enabled` (run_time_ns / run_cnt, the node tracker's program found among the fds it holds), over a separate {:.1} s loop run per round with statistics on:\n",
        n.stats_seconds
    )?;
    writeln!(
        out,
        "| program | events | ns per event | above the floor | per round: median (min - max) |"
    )?;
    writeln!(out, "| --- | ---: | ---: | ---: | ---: |")?;
    let floor = n.floor.ns_per_run();
    writeln!(
        out,
        "| F: no-op program (the floor) | {} | {floor:.0} | | {} |",
        n.floor.runs,
        spread(n.rounds.iter().map(|r| r.f_ns).collect())
    )?;
    for (name, prog, per_round) in [
        (
            format!("B: node program, {few} namespaces followed"),
            n.b_prog,
            n.rounds.iter().map(|r| r.b_ns).collect::<Vec<_>>(),
        ),
        (
            format!("B': node program, {many} namespaces followed"),
            n.many_prog,
            n.rounds.iter().map(|r| r.many_ns).collect(),
        ),
    ] {
        writeln!(
            out,
            "| {name} | {} | {:.0} | {:.0} | {} |",
            prog.runs,
            prog.ns_per_run(),
            prog.ns_per_run() - floor,
            spread(per_round)
        )?;
    }
    writeln!(
        out,
        "| C: per-pod tracker in the loop's namespace (counts) | {} | {:.0} | {:.0} | |",
        n.c_followed.runs,
        n.c_followed.ns_per_run(),
        n.c_followed.ns_per_run() - floor
    )?;
    writeln!(
        out,
        "| C: each of the {} others (same port, other namespace: rejects), mean | {} | {:.0} | {:.0} | |",
        few - 1,
        n.c_others.runs / (few as u64 - 1).max(1),
        n.c_others.ns_per_run(),
        n.c_others.ns_per_run() - floor
    )?;
    writeln!(
        out,
        "| **C: all {few} per-pod programs, ns added per TCP state change** | | **{:.0}** | | |",
        n.c_total_ns()
    )?;
    let starts = |f: fn(&Round) -> Duration| median(n.rounds.iter().map(|r| secs(f(r))).collect());
    let counts = |f: fn(&Round) -> Followed| {
        let all: Vec<usize> = n.rounds.iter().map(|r| f(r).all).collect();
        let ours = n.rounds.first().map(|r| f(r).ours).unwrap_or(0);
        let (lo, hi) = (
            all.iter().min().copied().unwrap_or(0),
            all.iter().max().copied().unwrap_or(0),
        );
        if lo == hi {
            format!("{lo} (the bench's {ours})")
        } else {
            format!("{lo} - {hi} (the bench's {ours})")
        }
    };
    writeln!(
        out,
        "\nB' against B per event: {:.0} against {:.0} ns ({:+.1} %), B'/A against B/A {:.3} against {:.3}. Namespaces followed, as each node tracker's `GET /netns` listed them after its loop run (other tests on this host follow the same ports): B {}, B' {}. Start-up (spawn to serving: one snapshot of every namespace of the host, one more of each followed one): B {:.1} s, B' {:.1} s; then serving to quiet (the first ticks snapshot every followed namespace once more; the runs start after it): B {:.1} s, B' {:.1} s (medians).\n",
        n.many_ns(),
        n.b_ns(),
        (n.many_ns() / n.b_ns() - 1.0) * 100.0,
        n.many_over_a,
        n.b_over_a,
        counts(|r| r.b_followed),
        counts(|r| r.many_followed),
        starts(|r| r.b_start),
        starts(|r| r.many_start),
        starts(|r| r.b_settle),
        starts(|r| r.many_settle),
    )?;

    writeln!(
        out,
        "### Answers with {many} namespaces followed\n\nOne node tracker following {few} namespaces, then one following all {many} (`--refresh-rate-seconds 3600`: no tick runs during the requests, as in section 1; a `pod-server` listens in the loop's namespace meanwhile, so it is followed too), asked from our namespace; `/pods/<uid>` requests cycle over the pods it follows, each must answer 200. Tracker CPU: its threads' schedstat over the requests, divided by their number.\n"
    )?;
    writeln!(
        out,
        "| namespaces followed | request | requests | p50 latency | p99 latency | tracker CPU per answer |"
    )?;
    writeln!(out, "| ---: | --- | ---: | ---: | ---: | ---: |")?;
    for r in &n.requests {
        writeln!(
            out,
            "| {} | {} | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
            r.namespaces,
            r.what,
            r.cost.requests,
            r.cost.p50_ms,
            r.cost.p99_ms,
            r.cost.cpu_ms_per_request
        )?;
    }
    writeln!(
        out,
        "\nThe tracker following {many}: memory after the requests: peak (VmHWM) {:.1} MB, resident (VmRSS) {:.1} MB.\n",
        n.answer_peak_rss_mb, n.answer_rss_mb
    )?;
    let list = |path: &str| n.answer(many, &format!("`GET {path}`"));
    if let (Some(pods), Some(metrics)) = (list("/pods"), list("/metrics")) {
        writeln!(
            out,
            "`GET /pods` reads every namespace in turn (each through its own answer, as `GET /pods/<uid>` would): {:.1} ms of CPU per answer, {:.0} µs per namespace. `GET /metrics` costs {:.1} ms: one read of every namespace's counts and one of the per-connection map (`SOCKETS`, for the connection ages) per scrape (since commit 01dca73; before it, the map was walked once per namespace: 112 ms here), concurrent scrapes sharing one rendering. A Prometheus scraping every 15 s would cost {:.1} % of a core here.\n",
            pods.cpu_ms_per_request,
            pods.cpu_ms_per_request * 1e3 / many as f64,
            metrics.cpu_ms_per_request,
            metrics.cpu_ms_per_request / 15e3 * 100.0
        )?;
    }

    let i = &n.idle;
    let s = sorted(i.per_second.clone());
    let busy = i.per_second.iter().filter(|&&p| p >= BUSY_PERCENT).count();
    writeln!(
        out,
        "### Idle with {many} namespaces followed\n\nOne node tracker following all {many} at `--refresh-rate-seconds 1`, no requests, its CPU read every second for {} s from when it was quiet after start-up (spawn to serving {:.1} s, serving to quiet {:.1} s). However quiet, every namespace is snapshotted again at least every 10-11 minutes (staggered by namespace) and whenever the kernel skipped a run (before commit 01dca73: every minute, all in one tick: 3.5 ms per namespace, 12.3 % of a core on average); {}.\n",
        i.seconds,
        secs(i.start),
        secs(i.settled),
        if i.seconds >= 660 {
            "the window holds one round of them"
        } else {
            "this window is shorter than that, so it shows the ticks alone"
        }
    )?;
    writeln!(
        out,
        "| mean CPU over the window | median second | busiest second | seconds at ≥ 10 % | peak RSS (VmHWM) | steady RSS (VmRSS at the end) |"
    )?;
    writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
    writeln!(
        out,
        "| {:.2} % | {:.2} % | {:.1} % | {busy} | {:.1} MB | {:.1} MB |",
        i.mean_percent,
        percentile(&s, 0.5),
        s.last().copied().unwrap_or(f64::NAN),
        i.peak_rss_mb,
        i.rss_mb
    )?;
    let passes = i.passes();
    let other = i.other_busy();
    let per_pass: Vec<String> = passes
        .iter()
        .map(|(seconds, cpu)| format!("{cpu:.2} s of CPU over {seconds} s"))
        .collect();
    let mean_pass = passes.iter().map(|(_, cpu)| cpu).sum::<f64>() / passes.len().max(1) as f64;
    if passes.is_empty() {
        writeln!(
            out,
            "\nBetween passes each 1 s tick costs the median second, {:.2} % of a core ({:.0} µs per namespace per tick); no pass fell in this window.\n",
            i.median_percent(),
            i.median_percent() / 100.0 * 1e6 / many as f64,
        )?;
    } else {
        writeln!(
            out,
            "\nRead apart: between those passes each 1 s tick costs the median second, {:.2} % of a core ({:.0} µs per namespace per tick); the passes (busy seconds, ≥ {BUSY_PERCENT} %, less than {PASS_GAP} s apart, one of them ≥ {PASS_PEAK} %) took {} above that median: {:.1} ms per namespace snapshot. Over a minute that is {:.2} % + {:.2} % = {:.2} % of a core. Other busy seconds: {} ({:.2} s of CPU above the median; not attributed).\n",
            i.median_percent(),
            i.median_percent() / 100.0 * 1e6 / many as f64,
            per_pass.join(", "),
            mean_pass / many as f64 * 1e3,
            i.median_percent(),
            mean_pass / 60.0 * 100.0,
            i.median_percent() + mean_pass / 60.0 * 100.0,
            other.0,
            other.1,
        )?;
    }
    writeln!(
        out,
        "Where it goes: each tick checks that each namespace's first process is still in it (a `readlink`), reads every namespace's counts in one blocking task (before commit 01dca73, one task per namespace: 80 % of the tick's CPU was those hand-offs, 67 µs per namespace per tick) and records them in each namespace's activity clock. The safety-net snapshots are `tcp_diag_dump`: a sock_diag dump filters by namespace but walks the host's whole TCP hash table (262 144 buckets on this machine), about 3.5 ms per namespace; `net.ipv4.tcp_child_ehash_entries` set on the host before the pods' namespaces are made (Linux 6.1+) gives each new namespace an established-socket table of its own, which its dump walks instead (a `ss -Htan` in such a namespace, 1 024 buckets, took 6.6-7.2 ms against 15.8-17.0 ms in one sharing the host's table, 200 runs each, 2026-12-02).\n"
    )?;
    writeln!(
        out,
        "CPU per second over the window (% of one core): {}",
        i.per_second
            .iter()
            .map(|p| format!("{p:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}
