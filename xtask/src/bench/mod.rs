//! `cargo xtask bench`: measures every source side by side in one run and
//! writes the report. Benchmarks, not tests: nothing here asserts a time,
//! and they never run in CI.
//!
//! Everything runs in a network namespace of its own, filled with idle
//! established connections held by helper processes. A full run writes
//! BENCHMARKS.md; a run of some sections only (`--only`) writes
//! `target/bench/BENCHMARKS-partial.md`, so a partial report never replaces
//! the complete one.

/// A `[bench]` progress line with the time since the run started, so a
/// developer sees which step takes long.
macro_rules! progress {
    ($($arg:tt)*) => {
        println!(
            "[bench] {:>6.1}s {}",
            crate::bench::STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(),
            format_args!($($arg)*)
        )
    };
}

mod answer;
mod burst;
mod churn;
mod floor;
mod freshness;
mod kernel_path;
mod musl;
mod netns;
mod node;
mod node_pods;
mod population;
mod procfs_parse;
mod proxy;
mod soak;
mod stats;
mod status;
mod targets;
mod tracker;

use std::{fmt::Write as _, fs, path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;

use crate::build::{self, run_checked, target_dir, workspace_root};
use netns::bench_ns;
use population::Population;
use test_support::Netns;

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

const MONITOR_PORT: u16 = 8080;
const SERVE_PORT: u16 = 7070;
const SOURCES: [&str; 3] = ["ebpf", "sock-diag", "proc"];

/// A part of the report that can be run alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Section {
    /// Cost of one answer per source and population; keep-alive vs a new connection each
    Answer,
    /// Connections/s on the kernel's TCP path: none, one and ten trackers
    KernelPath,
    /// Connection established -> JSON shows it, per source
    Freshness,
    /// Minutes of mixed churn, checkpoints against ss, RSS
    Soak,
    /// Our /proc/net/tcp parser vs the procfs crate
    Procfs,
    /// 1 000 clients at once: latency, and RSS during and after
    Burst,
    /// The glibc build vs the image's static musl build: memory, CPU per answer
    Musl,
    /// Proxy data path: direct vs spawner-sidecar proxy vs systemd-socket-proxyd
    Proxy,
    /// Node mode: one node tracker vs one tracker per pod; 1 000 namespaces followed
    Node,
}

pub struct Options {
    pub quick: bool,
    /// Empty: every section.
    pub only: Vec<Section>,
    pub soak_minutes: Option<f64>,
    /// Other tracker builds to run beside this one in the kernel path.
    pub compare: Vec<(String, PathBuf)>,
}

pub struct Plan {
    sizes: Vec<usize>,
    requests: usize,
    /// Slow sources at many sockets get fewer requests: at most this long
    /// per source and request style.
    answer_budget: Duration,
    /// The idle window of the polling sources (every tick is a full walk).
    idle_seconds: u64,
    /// The eBPF source's: long enough to hold its once-a-minute snapshot,
    /// its largest idle cost, so the figure is the steady one.
    ebpf_idle_seconds: u64,
    rounds: usize,
    loop_seconds: f64,
    trackers: usize,
    freshness_samples: usize,
    freshness_budget: Duration,
    freshness_sockets: usize,
    soak_minutes: f64,
    soak_rate: f64,
    procfs_sizes: Vec<usize>,
    procfs_runs: usize,
    burst_clients: usize,
    compare: Vec<(String, PathBuf)>,
    proxy_bytes: usize,
    proxy_round_trips: usize,
    proxy_connects: usize,
    proxy_idle: usize,
    proxy_wakes: usize,
    /// Namespaces the node section makes followable (the loop's and pods).
    node_namespaces: usize,
    node_idle_seconds: usize,
}

impl Plan {
    fn new(options: &Options) -> Plan {
        if options.quick {
            Plan {
                sizes: vec![10_000],
                requests: 100,
                answer_budget: Duration::from_secs(2),
                idle_seconds: 2,
                ebpf_idle_seconds: 2,
                rounds: 3,
                loop_seconds: 0.5,
                trackers: 10,
                freshness_samples: 50,
                freshness_budget: Duration::from_secs(2),
                freshness_sockets: 10_000,
                soak_minutes: options.soak_minutes.unwrap_or(0.75),
                soak_rate: 1_000.0,
                procfs_sizes: vec![10_000],
                procfs_runs: 10,
                burst_clients: 1_000,
                compare: options.compare.clone(),
                proxy_bytes: 64_000_000,
                proxy_round_trips: 3_000,
                proxy_connects: 300,
                proxy_idle: 10_000,
                proxy_wakes: 10,
                node_namespaces: 100,
                node_idle_seconds: 10,
            }
        } else {
            Plan {
                sizes: vec![1_000, 10_000, 100_000],
                requests: 1_000,
                answer_budget: Duration::from_secs(30),
                idle_seconds: 10,
                ebpf_idle_seconds: 61,
                rounds: 5,
                loop_seconds: 3.0,
                trackers: 10,
                freshness_samples: 200,
                freshness_budget: Duration::from_secs(60),
                freshness_sockets: 10_000,
                soak_minutes: options.soak_minutes.unwrap_or(30.0),
                soak_rate: 1_000.0,
                procfs_sizes: vec![10_000, 100_000],
                procfs_runs: 30,
                burst_clients: 1_000,
                compare: options.compare.clone(),
                proxy_bytes: 500_000_000,
                proxy_round_trips: 20_000,
                proxy_connects: 2_000,
                proxy_idle: 10_000,
                proxy_wakes: 50,
                node_namespaces: 1_000,
                // Two of the once-a-minute snapshots of every namespace.
                node_idle_seconds: 125,
            }
        }
    }

    fn baseline_runs(&self) -> usize {
        (self.requests / 10).max(3)
    }
}

/// Everything one run measured; a section not run stays empty.
#[derive(Default)]
struct Results {
    answers: Vec<answer::AnswerCost>,
    baselines: Vec<answer::Baseline>,
    kernel_path: Option<kernel_path::KernelPath>,
    freshness: Vec<freshness::Freshness>,
    soak: Option<soak::Soak>,
    parse: Vec<procfs_parse::ParseCost>,
    burst: Option<burst::Burst>,
    musl: Option<musl::Comparison>,
    proxy: Option<proxy::ProxyBench>,
    node: Option<node::NodeBench>,
}

pub use node_pods::keeper as pods_keeper;
pub use procfs_parse::count_command as procfs_count;

pub fn run(options: Options) -> anyhow::Result<()> {
    STARTED.get_or_init(std::time::Instant::now);
    let plan = Plan::new(&options);
    let mut sections = options.only.clone();
    sections.sort();
    sections.dedup();
    let partial = !sections.is_empty();
    if !partial {
        sections = <Section as clap::ValueEnum>::value_variants().to_vec();
    }
    let wants = |s: Section| sections.contains(&s);

    let bin = build::release()?;
    let (holder, connloop) = build_helpers()?;
    let counter = if wants(Section::Procfs) {
        Some(build_counter()?)
    } else {
        None
    };
    // Built before the namespace exists: the musl build takes minutes.
    let musl_bin = if wants(Section::Musl) {
        Some(crate::image::static_binary()?)
    } else {
        None
    };
    let machine = machine_line();
    let started = now_utc();
    // The node section makes namespaces of its own; every other one runs in
    // this one.
    let _ns = if sections.iter().any(|s| *s != Section::Node) {
        Some(Netns::create(bench_ns())?)
    } else {
        None
    };
    let mut results = Results::default();

    // Each population is built once and serves every section that wants it.
    let mut sizes: Vec<usize> = Vec::new();
    if wants(Section::Answer) {
        sizes.extend(&plan.sizes);
    }
    if wants(Section::Procfs) {
        sizes.extend(&plan.procfs_sizes);
    }
    if wants(Section::Freshness) {
        sizes.push(plan.freshness_sockets);
    }
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        progress!("populating {size} sockets");
        let population = Population::create(&holder, size)?;
        if wants(Section::Answer) && plan.sizes.contains(&size) {
            for source in SOURCES {
                progress!("answer cost: {size} sockets, source {source}");
                results
                    .answers
                    .push(answer::measure(&bin, source, size, &plan)?);
            }
            progress!("answer cost: {size} sockets, ss and /proc baselines");
            results
                .baselines
                .push(answer::baseline(size, plan.baseline_runs())?);
        }
        if let Some(counter) = &counter
            && plan.procfs_sizes.contains(&size)
        {
            progress!("/proc parsers: {size} sockets, ours vs procfs");
            results.parse.push(procfs_parse::measure(
                &bin,
                counter,
                size,
                plan.procfs_runs,
            )?);
        }
        if wants(Section::Freshness) && size == plan.freshness_sockets {
            for source in SOURCES {
                progress!("freshness: {size} sockets, source {source}");
                results
                    .freshness
                    .push(freshness::measure(&bin, source, size, &plan)?);
            }
        }
        drop(population);
    }
    if wants(Section::KernelPath) {
        results.kernel_path = Some(kernel_path::measure(&bin, &connloop, &plan)?);
    }
    if wants(Section::Burst) {
        progress!("burst: {} clients at once", plan.burst_clients);
        results.burst = Some(burst::measure(&bin, &plan)?);
    }
    if wants(Section::Proxy) {
        progress!("proxy data path: direct, spawner-sidecar proxy, systemd-socket-proxyd");
        let backend = build_echo_backend()?;
        results.proxy = Some(proxy::measure(&bin, &backend, &plan)?);
    }
    if wants(Section::Node) {
        let pod_server = build_pod_server()?;
        results.node = Some(node::measure(&bin, &connloop, &pod_server, &plan)?);
    }
    if wants(Section::Soak) {
        results.soak = Some(soak::measure(&bin, &plan)?);
    }
    if let Some(musl_bin) = &musl_bin {
        results.musl = Some(musl::measure(&bin, musl_bin, &holder, &plan)?);
    }

    let command = command_line(&options);
    let report = render(
        &results, &plan, &sections, partial, &command, &started, &machine,
    )?;
    // Only a complete full run may replace the committed report.
    let path = if partial {
        target_dir().join("bench/BENCHMARKS-partial.md")
    } else if options.quick {
        target_dir().join("bench/BENCHMARKS-quick.md")
    } else {
        workspace_root().join("BENCHMARKS.md")
    };
    fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("{report}");
    progress!("wrote {}", path.display());
    Ok(())
}

fn render(
    results: &Results,
    plan: &Plan,
    sections: &[Section],
    partial: bool,
    command: &str,
    started: &str,
    machine: &str,
) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# Benchmarks\n")?;
    writeln!(out, "Produced by `{command}`, started {started}.")?;
    writeln!(out, "Machine: {machine}\n")?;
    if command.contains("--quick") {
        writeln!(
            out,
            "**Quick run** (`--quick`, for development): fewer sizes, requests, rounds and a short soak. Not a substitute for BENCHMARKS.md.\n"
        )?;
    }
    if partial {
        writeln!(
            out,
            "**Partial run**: only {}. The other sections were not measured; see BENCHMARKS.md (from a full `cargo xtask bench`) for them. Targets below that need a section not run say so.\n",
            names(sections)
        )?;
    }
    writeln!(
        out,
        "The machine is shared (other builds and tests may run at the same time), so absolute figures are noisy; ratios of runs interleaved in one run (B/A, C/A, ours vs procfs) are the steadier ones.\n"
    )?;
    if !results.answers.is_empty() {
        answer::report(&mut out, plan, &results.answers, &results.baselines)?;
        writeln!(out)?;
    }
    if let Some(k) = &results.kernel_path {
        kernel_path::report(&mut out, k)?;
        writeln!(out)?;
    }
    if !results.freshness.is_empty() {
        freshness::report(&mut out, &results.freshness)?;
        writeln!(out)?;
    }
    if let Some(s) = &results.soak {
        soak::report(&mut out, s)?;
        writeln!(out)?;
    }
    if !results.parse.is_empty() {
        procfs_parse::report(&mut out, &results.parse)?;
        writeln!(out)?;
    }
    if let Some(b) = &results.burst {
        burst::report(&mut out, b)?;
        writeln!(out)?;
    }
    if let Some(c) = &results.musl {
        musl::report(&mut out, c)?;
        writeln!(out)?;
    }
    if let Some(p) = &results.proxy {
        proxy::report(&mut out, p)?;
        writeln!(out)?;
    }
    if let Some(n) = &results.node {
        node::report(&mut out, n)?;
        writeln!(out)?;
    }
    targets::report(&mut out, results)?;
    Ok(out)
}

/// hold-connections (the population) and connloop (the TCP path loop).
fn build_helpers() -> anyhow::Result<(PathBuf, PathBuf)> {
    progress!("building helpers");
    run_checked(
        build::cargo().args([
            "build",
            "--release",
            "--package",
            "integration-tests",
            "--bin",
            "hold-connections",
        ]),
        "building hold-connections",
    )?;
    let holder = target_dir().join("release/hold-connections");
    let connloop = target_dir().join("bench/connloop");
    fs::create_dir_all(target_dir().join("bench"))?;
    run_checked(
        Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&connloop)
            .arg(workspace_root().join("xtask/bench/connloop.c")),
        "compiling connloop.c",
    )?;
    Ok((holder, connloop))
}

/// The proxy tests' backend, for the proxy's cold-start figures.
fn build_echo_backend() -> anyhow::Result<PathBuf> {
    run_checked(
        build::cargo().args([
            "build",
            "--release",
            "--package",
            "integration-tests",
            "--bin",
            "echo-backend",
        ]),
        "building echo-backend",
    )?;
    Ok(target_dir().join("release/echo-backend"))
}

/// The node-mode tests' pod process, for the node section's pods.
fn build_pod_server() -> anyhow::Result<PathBuf> {
    run_checked(
        build::cargo().args([
            "build",
            "--release",
            "--package",
            "integration-tests",
            "--bin",
            "pod-server",
        ]),
        "building pod-server",
    )?;
    Ok(target_dir().join("release/pod-server"))
}

/// A release build of xtask itself, for `xtask procfs-count` (see
/// `procfs_parse::count_in_child`).
fn build_counter() -> anyhow::Result<PathBuf> {
    progress!("building xtask in release for the procfs comparison");
    run_checked(
        build::cargo().args(["build", "--release", "--package", "xtask"]),
        "building xtask --release",
    )?;
    Ok(target_dir().join("release/xtask"))
}

fn command_line(options: &Options) -> String {
    let mut command = String::from("cargo xtask bench");
    if options.quick {
        command.push_str(" --quick");
    }
    if !options.only.is_empty() {
        command.push_str(" --only ");
        command.push_str(&names(&options.only));
    }
    if let Some(minutes) = options.soak_minutes {
        command.push_str(&format!(" --soak-minutes {minutes}"));
    }
    for (name, path) in &options.compare {
        command.push_str(&format!(" --compare {name}={}", path.display()));
    }
    command
}

/// Sections as the command line spells them, comma-separated.
fn names(sections: &[Section]) -> String {
    sections
        .iter()
        .filter_map(clap::ValueEnum::to_possible_value)
        .map(|v| v.get_name().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn now_utc() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine_line() -> String {
    let kernel = command_output("uname", &["-r"]);
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("Linux {kernel}, {cores} cores ({cpu})")
}
