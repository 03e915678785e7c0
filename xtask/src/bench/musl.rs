//! The image's static musl build against the glibc build: memory and CPU
//! per answer, interleaved in one run. The daemon tunes glibc's malloc
//! (`spawner-sidecar/src/malloc.rs`); under musl that code is compiled out
//! and musl's own allocator runs untuned, so this is what the image pays
//! (or saves) for being static.
use std::{
    fmt::{self, Write as _},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use super::{
    MONITOR_PORT, Plan, SERVE_PORT, http,
    netns::{NETNS, in_netns, within},
    stats::median,
    tracker::{Tracker, cpu_ns, memory_mb},
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

/// `hold-connections` pairs holding HELD connections on the monitored port.
struct Held(Vec<Child>);

impl Held {
    fn create(holder: &Path) -> anyhow::Result<Held> {
        let spawn = |args: &[&str]| {
            in_netns(NETNS, holder)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting hold-connections")
        };
        let count = HELD.to_string();
        let port = MONITOR_PORT.to_string();
        let mut held = Held(vec![spawn(&["--serve", &port, &count])?]);
        expect(&mut held.0[0], "listening")?;
        held.0.push(spawn(&[&port, &count])?);
        expect(&mut held.0[1], &format!("ready {HELD}"))?;
        expect(&mut held.0[0], &format!("ready {HELD}"))?;
        Ok(held)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn expect(child: &mut Child, want: &str) -> anyhow::Result<()> {
    let out = child.stdout.as_mut().ok_or_else(|| anyhow!("no stdout"))?;
    // One byte at a time: a buffered reader would swallow the next line.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    if line.trim() != want {
        bail!("hold-connections printed {line:?}, expected {want:?}");
    }
    Ok(())
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
    let tracker = Tracker::start(bin, NETNS, "ebpf", "1")?;
    let pid = tracker.pid();
    std::thread::sleep(Duration::from_secs(1));
    build.peak_start_mb.push(memory_mb(pid, "VmHWM:")?);
    build.rss_start_mb.push(memory_mb(pid, "VmRSS:")?);

    let before = cpu_ns(pid)?;
    let held = within(move || {
        let mut conn = http::KeepAlive::connect(SERVE_PORT)?;
        let mut last = None;
        for _ in 0..requests {
            last = Some(conn.get()?);
        }
        Ok(last)
    })?;
    let spent = cpu_ns(pid)? - before;
    build
        .cpu_per_answer_us
        .push(spent as f64 / requests as f64 / 1e3);
    if held.map(|s| s.active) != Some(HELD as u64) {
        bail!("{} counted {held:?}, not {HELD} connections", build.name);
    }

    let ok = burst()?;
    if ok != BURST {
        bail!(
            "{}: {ok} of {BURST} burst requests answered 200",
            build.name
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    build.peak_burst_mb.push(memory_mb(pid, "VmHWM:")?);
    build.rss_after_burst_mb.push(memory_mb(pid, "VmRSS:")?);
    Ok(())
}

pub fn measure(
    glibc: &Path,
    musl: &Path,
    holder: &Path,
    plan: &Plan,
) -> anyhow::Result<Comparison> {
    raise_open_files();
    let _held = Held::create(holder)?;
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
