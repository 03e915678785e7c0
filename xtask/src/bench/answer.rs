//! Section "cost of one fresh answer": latency, tracker CPU per `GET /`,
//! peak RSS and idle CPU, per source, at each population size; requests
//! both on a new connection each and on one keep-alive connection; and what
//! a user would run instead (`ss`, reading /proc/net/tcp).
use std::{
    fmt::{self, Write as _},
    fs,
    path::Path,
    time::{Duration, Instant},
};

use super::{
    MONITOR_PORT, Plan, SERVE_PORT,
    netns::{bench_ns, within},
    stats::{median, percentile, sorted},
    status::{self, Connection},
    tracker::Tracker,
};
use test_support::{
    procinfo::{Memory, cpu_ns, memory_kb},
    ss,
};

const WARM_UP: usize = 20;

pub struct StyleCost {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_ms_per_request: f64,
}

pub struct AnswerCost {
    pub sockets: usize,
    pub source: &'static str,
    /// A new TCP connection per request, closed by the server.
    pub fresh: StyleCost,
    /// One HTTP/1.1 connection reused for every request.
    pub keep_alive: StyleCost,
    pub peak_rss_mb: f64,
    /// VmRSS after the requests: what the tracker holds once started.
    pub rss_mb: f64,
    pub idle_cpu_percent: f64,
}

/// What a user would reach for instead, at one population size.
pub struct Baseline {
    pub sockets: usize,
    pub ss_ms: f64,
    pub read_proc_ms: f64,
}

#[derive(Clone, Copy)]
enum Style {
    Fresh,
    KeepAlive,
}

pub fn measure(
    bin: &Path,
    source: &'static str,
    sockets: usize,
    plan: &Plan,
) -> anyhow::Result<AnswerCost> {
    // Requests first, with no tick during them (a refresh of an hour), so the
    // CPU per request is the answers' alone; the idle cost is measured on a
    // second tracker at a 1 s refresh.
    let tracker = Tracker::start(bin, bench_ns(), source, "3600")?;
    let fresh = requests(tracker.pid(), plan, Style::Fresh)?;
    let keep_alive = requests(tracker.pid(), plan, Style::KeepAlive)?;
    let peak_rss_mb = memory_kb(tracker.pid(), Memory::PeakRss)? as f64 / 1024.0;
    let rss_mb = memory_kb(tracker.pid(), Memory::Rss)? as f64 / 1024.0;
    drop(tracker);

    let ticking = Tracker::start(bin, bench_ns(), source, "1")?;
    // Start-up is not idle: the eBPF source's first snapshots (the seed,
    // and the one that confirms its correction) come in the first ticks.
    std::thread::sleep(IDLE_SETTLE);
    let window = idle_window(source, plan);
    let idle_start = cpu_ns(ticking.pid())?;
    std::thread::sleep(Duration::from_secs(window));
    let idle = cpu_ns(ticking.pid())? - idle_start;
    Ok(AnswerCost {
        sockets,
        source,
        fresh,
        keep_alive,
        peak_rss_mb,
        rss_mb,
        idle_cpu_percent: idle as f64 / (window as f64 * 1e9) * 100.0,
    })
}

/// How long after start the idle window opens.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

fn idle_window(source: &str, plan: &Plan) -> u64 {
    if source == "ebpf" {
        plan.ebpf_idle_seconds
    } else {
        plan.idle_seconds
    }
}

fn requests(pid: u32, plan: &Plan, style: Style) -> anyhow::Result<StyleCost> {
    let (count, budget) = (plan.requests, plan.answer_budget);
    within(move || {
        let mut keep_alive = match style {
            Style::Fresh => None,
            Style::KeepAlive => Some(Connection::connect(SERVE_PORT)?),
        };
        let mut get = move || match keep_alive.as_mut() {
            Some(connection) => connection.get(),
            None => status::get_once(SERVE_PORT),
        };
        for _ in 0..WARM_UP {
            get()?;
        }
        let cpu_before = cpu_ns(pid)?;
        let budget = Instant::now() + budget;
        let mut latencies = Vec::with_capacity(count);
        while latencies.len() < count && (latencies.len() < WARM_UP || Instant::now() < budget) {
            let t = Instant::now();
            get()?;
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let cpu = cpu_ns(pid)? - cpu_before;
        let latencies = sorted(latencies);
        Ok(StyleCost {
            requests: latencies.len(),
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            cpu_ms_per_request: cpu as f64 / latencies.len() as f64 / 1e6,
        })
    })
}

pub fn baseline(sockets: usize, runs: usize) -> anyhow::Result<Baseline> {
    Ok(Baseline {
        sockets,
        ss_ms: baseline_ss(runs)?,
        read_proc_ms: read_proc(runs)?,
    })
}

fn baseline_ss(runs: usize) -> anyhow::Result<f64> {
    let query = ss::Query::state("established")
        .netns(Some(bench_ns()))
        .port(MONITOR_PORT);
    let mut times = Vec::new();
    for _ in 0..runs.max(3) {
        let t = Instant::now();
        std::hint::black_box(query.count()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Median wall time to read /proc/net/tcp and tcp6 of the bench namespace,
/// without parsing.
pub fn read_proc(runs: usize) -> anyhow::Result<f64> {
    within(move || {
        let mut times = Vec::new();
        for _ in 0..runs.max(3) {
            let t = Instant::now();
            std::hint::black_box(read_proc_once()?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(times))
    })
}

/// Both tables as bytes; through `thread-self`, the only /proc path that
/// follows a thread moved into the namespace (see `test_support::netns::run_in`).
fn read_proc_once() -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    Ok((
        fs::read("/proc/thread-self/net/tcp")?,
        fs::read("/proc/thread-self/net/tcp6")?,
    ))
}

pub fn report(
    out: &mut String,
    plan: &Plan,
    rows: &[AnswerCost],
    baselines: &[Baseline],
) -> fmt::Result {
    writeln!(
        out,
        "## 1. Cost of one fresh answer (`GET /`, {} sequential requests per style, or as many as fit in {} s)\n",
        plan.requests,
        plan.answer_budget.as_secs()
    )?;
    writeln!(
        out,
        "| sockets in namespace | source | p50 latency | p99 latency | tracker CPU per request | peak RSS | RSS after | idle CPU at 1 s refresh |"
    )?;
    writeln!(
        out,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in rows {
        writeln!(
            out,
            "| {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.1} MB | {:.1} MB | {:.2} % |",
            r.sockets,
            r.source,
            r.fresh.p50_ms,
            r.fresh.p99_ms,
            r.fresh.cpu_ms_per_request,
            r.peak_rss_mb,
            r.rss_mb,
            r.idle_cpu_percent
        )?;
    }
    writeln!(
        out,
        "\nThe same tracker, same run, asked two ways: a new TCP connection per request (as above) and one HTTP/1.1 keep-alive connection reused for every request (the response read by Content-Length). The difference is the cost of connection setup and teardown in this namespace.\n"
    )?;
    writeln!(
        out,
        "| sockets | source | requests (new conn / keep-alive) | p50 new conn | p50 keep-alive | p99 new conn | p99 keep-alive | CPU/request new conn | CPU/request keep-alive |"
    )?;
    writeln!(
        out,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in rows {
        let (f, k) = (&r.fresh, &r.keep_alive);
        writeln!(
            out,
            "| {} | {} | {} / {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
            r.sockets,
            r.source,
            f.requests,
            k.requests,
            f.p50_ms,
            k.p50_ms,
            f.p99_ms,
            k.p99_ms,
            f.cpu_ms_per_request,
            k.cpu_ms_per_request
        )?;
    }
    writeln!(
        out,
        "\nWhat a user would reach for instead, same namespace, median of {} runs:\n",
        plan.baseline_runs()
    )?;
    writeln!(
        out,
        "| sockets | `ss -Htan state established '( sport = :{MONITOR_PORT} )'` (whole process, wall) | read `/proc/net/tcp` + `tcp6` (wall, no parsing) |"
    )?;
    writeln!(out, "| ---: | ---: | ---: |")?;
    for b in baselines {
        writeln!(
            out,
            "| {} | {:.3} ms | {:.3} ms |",
            b.sockets, b.ss_ms, b.read_proc_ms
        )?;
    }
    writeln!(out, "\nWhat each figure means:\n")?;
    writeln!(
        out,
        "- *latency*: wall time of one `GET /` from a client in the same namespace (a debug-built xtask), connection setup included for the new-connection style."
    )?;
    writeln!(
        out,
        "- *tracker CPU per request*: the tracker's on-CPU time (sum of its threads' schedstat) over the requests, divided by their number; includes the HTTP server. No refresh tick runs during the requests (`--refresh-rate-seconds 3600`)."
    )?;
    writeln!(
        out,
        "- *peak RSS*: VmHWM of that tracker after all its requests (its highest resident size since it started, loading included); *RSS after*: its VmRSS then, what it holds once started (heap and the pages of its own binary it has touched)."
    )?;
    writeln!(
        out,
        "- *idle CPU*: a second tracker's CPU with no requests at `--refresh-rate-seconds 1` (ticks, snapshots and reconcile), from {} s after it serves (its start-up snapshots are not idle), over {} s for eBPF (so the window holds its once-a-minute snapshot) and {} s for the polling sources (each tick is a full walk).",
        IDLE_SETTLE.as_secs(),
        plan.ebpf_idle_seconds,
        plan.idle_seconds
    )
}
