//! The image's static musl build against the glibc build: memory and CPU
//! per answer, interleaved in one run. The daemon tunes glibc's malloc
//! (`spawner-sidecar/src/malloc.rs`); under musl that code is compiled out
//! and musl's own allocator runs untuned, so this is what the image pays
//! (or saves) for being static.
use std::{
    fmt::{self, Write as _},
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use test_support::{
    http::KeepAlive,
    procinfo::{Memory, cpu_ns, memory_kb},
    sockets::Holder,
};

use super::{
    MONITOR_PORT, Plan, SERVE_PORT,
    netns::{bench_ns, within},
    stats::median,
    tracker::Tracker,
};

/// Connections held on the monitored port while measuring.
const HELD: usize = 1_000;
/// HTTP clients connected to the tracker at once in the burst.
const BURST: usize = 1_000;

pub struct Build {
    pub name: &'static str,
    /// One value per round.
    pub peak_start_mb: Vec<f64>,
    pub rss_start_mb: Vec<f64>,
    pub cpu_per_answer_us: Vec<f64>,
    pub peak_burst_mb: Vec<f64>,
    pub rss_after_burst_mb: Vec<f64>,
}

pub struct Comparison {
    pub rounds: usize,
    pub requests: usize,
    pub builds: Vec<Build>,
}

/// `hold-connections` holding HELD connections on the monitored port: the
/// accepting side and the connecting side.
fn hold(holder: &Path) -> anyhow::Result<(Holder, Holder)> {
    let count = HELD.to_string();
    let port = MONITOR_PORT.to_string();
    let mut server = Holder::spawn(holder, Some(bench_ns()), &["--serve".into(), port, count])?;
    server.expect_line("listening")?;
    let client = Holder::connect(holder, Some(bench_ns()), MONITOR_PORT, HELD)?;
    server.expect_line(&format!("ready {HELD}"))?;
    Ok((server, client))
}

fn memory_mb(pid: u32, which: Memory) -> anyhow::Result<f64> {
    Ok(memory_kb(pid, which)? as f64 / 1024.0)
}

/// BURST clients connected at once, each sending `GET /` before any is
/// read; returns how many got a 200.
fn burst() -> anyhow::Result<usize> {
    within(|| {
        let streams = (0..BURST)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, SERVE_PORT)))
            .collect::<Result<Vec<_>, _>>()
            .context("opening the burst's connections")?;
        for mut s in &streams {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        }
        let mut ok = 0;
        for s in streams {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut first = String::new();
            BufReader::new(s).read_line(&mut first)?;
            ok += usize::from(first.starts_with("HTTP/1.1 200"));
        }
        Ok(ok)
    })
}

/// The burst needs more descriptors than the default soft limit (1 024).
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own; raising the soft limit
    // to the hard one needs no privilege.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn one_round(bin: &Path, build: &mut Build, requests: usize) -> anyhow::Result<()> {
    let tracker = Tracker::start(bin, bench_ns(), "ebpf", "1")?;
    let pid = tracker.pid();
    std::thread::sleep(Duration::from_secs(1));
    build.peak_start_mb.push(memory_mb(pid, Memory::PeakRss)?);
    build.rss_start_mb.push(memory_mb(pid, Memory::Rss)?);

    let before = cpu_ns(pid)?;
    let active = within(move || {
        let mut conn = KeepAlive::connect(SERVE_PORT)?;
        let mut last = None;
        for _ in 0..requests {
            last = conn.get("/")?.json()?["active_connections"].as_u64();
        }
        Ok(last)
    })?;
    let spent = cpu_ns(pid)? - before;
    build
        .cpu_per_answer_us
        .push(spent as f64 / requests as f64 / 1e3);
    if active != Some(HELD as u64) {
        bail!("{} counted {active:?}, not {HELD} connections", build.name);
    }

    let ok = burst()?;
    if ok != BURST {
        bail!(
            "{}: {ok} of {BURST} burst requests answered 200",
            build.name
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    build.peak_burst_mb.push(memory_mb(pid, Memory::PeakRss)?);
    build.rss_after_burst_mb.push(memory_mb(pid, Memory::Rss)?);
    Ok(())
}

pub fn measure(
    glibc: &Path,
    musl: &Path,
    holder: &Path,
    plan: &Plan,
) -> anyhow::Result<Comparison> {
    raise_open_files();
    let _held = hold(holder)?;
    let bins: [(&'static str, PathBuf); 2] = [
        ("glibc (target/release)", glibc.to_path_buf()),
        ("musl (the image)", musl.to_path_buf()),
    ];
    let mut builds: Vec<Build> = bins
        .iter()
        .map(|(name, _)| Build {
            name,
            peak_start_mb: Vec::new(),
            rss_start_mb: Vec::new(),
            cpu_per_answer_us: Vec::new(),
            peak_burst_mb: Vec::new(),
            rss_after_burst_mb: Vec::new(),
        })
        .collect();
    for round in 1..=plan.rounds {
        for ((name, bin), build) in bins.iter().zip(&mut builds) {
            progress!("glibc vs musl: round {round}/{}, {name}", plan.rounds);
            one_round(bin, build, plan.requests)?;
        }
    }
    Ok(Comparison {
        rounds: plan.rounds,
        requests: plan.requests,
        builds,
    })
}

/// One measured figure of a build.
type Field = fn(&Build) -> &Vec<f64>;

pub fn report(out: &mut String, c: &Comparison) -> fmt::Result {
    writeln!(out, "## glibc build vs the image's static musl build\n")?;
    writeln!(
        out,
        "Same commit, eBPF source, `--refresh-rate-seconds 1`, {HELD} connections held on the monitored port; {} rounds, the two builds alternating. Per round: VmHWM and VmRSS 1 s after start; CPU per answer over {} `GET /` on one keep-alive connection; then {BURST} HTTP clients connected at once, each sending `GET /` before any answer is read (all must get a 200), and VmHWM / VmRSS 2 s later. Medians over the rounds; the last column is musl / glibc.\n",
        c.rounds, c.requests
    )?;
    let [glibc, musl] = &c.builds[..] else {
        return Ok(());
    };
    writeln!(out, "| | {} | {} | musl / glibc |", glibc.name, musl.name)?;
    writeln!(out, "| --- | ---: | ---: | ---: |")?;
    let rows: [(&str, Field, &str); 5] = [
        ("peak after start-up (VmHWM)", |b| &b.peak_start_mb, "MB"),
        ("resident after start-up (VmRSS)", |b| &b.rss_start_mb, "MB"),
        ("CPU per answer", |b| &b.cpu_per_answer_us, "µs"),
        ("peak after the burst (VmHWM)", |b| &b.peak_burst_mb, "MB"),
        (
            "resident 2 s after the burst (VmRSS)",
            |b| &b.rss_after_burst_mb,
            "MB",
        ),
    ];
    for (label, field, unit) in rows {
        let (g, m) = (median(field(glibc).clone()), median(field(musl).clone()));
        writeln!(
            out,
            "| {label} | {g:.1} {unit} | {m:.1} {unit} | {:.2} |",
            m / g
        )?;
    }
    Ok(())
}
