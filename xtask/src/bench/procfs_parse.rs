//! Section "our /proc parser vs the `procfs` crate": the time to count the
//! monitored port's sockets in /proc/net/tcp + tcp6, (a) by the real
//! tracker with `--source proc` (our hand-written parser, asked over one
//! keep-alive connection), (b) by the maintained `procfs` crate, parsing
//! every field of every line, (c) reading both files without parsing, the
//! floor under both. Interleaved a, b, c each round, same namespace.
use std::{
    fmt::{self, Write as _},
    fs,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    time::Instant,
};

use anyhow::{Context as _, bail};
use procfs::net::TcpState;

use super::{
    MONITOR_PORT, SERVE_PORT,
    netns::{bench_ns, within},
    stats::{median, thread_cpu_ns},
    status::Connection,
    tracker::Tracker,
};
use test_support::{netns, procinfo::cpu_ns};

/// Established connections on the monitored port, so both sides count
/// something and can be checked against each other.
const ON_PORT: usize = 100;

pub struct ParseCost {
    pub sockets: usize,
    pub runs: usize,
    pub counted: u64,
    /// Median wall / CPU milliseconds of (a), (b), (c).
    pub ours_wall: f64,
    pub ours_cpu: f64,
    pub crate_wall: f64,
    pub crate_cpu: f64,
    pub read_wall: f64,
    pub read_cpu: f64,
}

pub fn measure(
    bin: &Path,
    counter: &Path,
    sockets: usize,
    runs: usize,
) -> anyhow::Result<ParseCost> {
    let held = within(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, MONITOR_PORT))?;
        let mut held = Vec::new();
        for _ in 0..ON_PORT {
            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, MONITOR_PORT))?;
            held.push((client, listener.accept()?.0));
        }
        Ok((listener, held))
    })?;
    let tracker = Tracker::start(bin, bench_ns(), "proc", "3600")?;
    let pid = tracker.pid();
    let mut api = within(|| Connection::connect(SERVE_PORT))?;
    let mut t = [(); 6].map(|()| Vec::with_capacity(runs));
    let mut counted = 0;
    for _ in 0..runs {
        let (wall, cpu) = (Instant::now(), cpu_ns(pid)?);
        let status = api.get()?;
        t[0].push(wall.elapsed().as_secs_f64() * 1e3);
        t[1].push((cpu_ns(pid)? - cpu) as f64 / 1e6);

        let theirs = count_in_child(counter)?;
        if theirs.count != status.active || status.active != ON_PORT as u64 {
            bail!(
                "tracker counted {}, procfs {}, expected {ON_PORT}",
                status.active,
                theirs.count
            );
        }
        counted = theirs.count;
        t[2].push(theirs.parse_wall_ns as f64 / 1e6);
        t[3].push(theirs.parse_cpu_ns as f64 / 1e6);
        t[4].push(theirs.read_wall_ns as f64 / 1e6);
        t[5].push(theirs.read_cpu_ns as f64 / 1e6);
    }
    drop(tracker);
    drop(held);
    let [
        ours_wall,
        ours_cpu,
        crate_wall,
        crate_cpu,
        read_wall,
        read_cpu,
    ] = t.map(median);
    Ok(ParseCost {
        sockets,
        runs,
        counted,
        ours_wall,
        ours_cpu,
        crate_wall,
        crate_cpu,
        read_wall,
        read_cpu,
    })
}

/// One timing of (b) and (c), as `cargo xtask procfs-count` prints it.
struct ChildTiming {
    count: u64,
    parse_wall_ns: u64,
    parse_cpu_ns: u64,
    read_wall_ns: u64,
    read_cpu_ns: u64,
}

/// Runs the release build of xtask in the namespace for one timing: the
/// `dev` profile `cargo xtask` runs in would make the crate look slow for
/// lack of optimisation, not for what it does.
fn count_in_child(counter: &Path) -> anyhow::Result<ChildTiming> {
    let out = netns::command(Some(bench_ns()), counter)
        .arg(COUNT_COMMAND)
        .output()
        .context("running xtask procfs-count")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("procfs-count printed {text:?}"))?;
    let [
        count,
        parse_wall_ns,
        parse_cpu_ns,
        read_wall_ns,
        read_cpu_ns,
    ] = fields[..]
    else {
        bail!(
            "procfs-count printed {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(ChildTiming {
        count,
        parse_wall_ns,
        parse_cpu_ns,
        read_wall_ns,
        read_cpu_ns,
    })
}

/// The hidden subcommand that [`count_in_child`] runs.
pub const COUNT_COMMAND: &str = "procfs-count";

/// Body of `xtask procfs-count`, run as a whole process in the namespace:
/// counts the monitored port's established sockets with `procfs` and reads
/// both tables raw, printing `count parse_wall parse_cpu read_wall read_cpu`
/// in nanoseconds.
pub fn count_command() -> anyhow::Result<()> {
    let (wall, cpu) = (Instant::now(), thread_cpu_ns());
    let count = count_with_procfs()?;
    let (parse_wall, parse_cpu) = (wall.elapsed().as_nanos(), thread_cpu_ns() - cpu);
    let (wall, cpu) = (Instant::now(), thread_cpu_ns());
    let tables = (fs::read("/proc/net/tcp")?, fs::read("/proc/net/tcp6")?);
    std::hint::black_box(tables);
    let (read_wall, read_cpu) = (wall.elapsed().as_nanos(), thread_cpu_ns() - cpu);
    println!("{count} {parse_wall} {parse_cpu} {read_wall} {read_cpu}");
    Ok(())
}

/// What the tracker answers as `active_connections`, done with `procfs`.
fn count_with_procfs() -> anyhow::Result<u64> {
    let mut count = 0;
    for entries in [procfs::net::tcp()?, procfs::net::tcp6()?] {
        count += entries
            .iter()
            .filter(|e| e.local_address.port() == MONITOR_PORT && e.state == TcpState::Established)
            .count() as u64;
    }
    Ok(count)
}

pub fn report(out: &mut String, rows: &[ParseCost]) -> fmt::Result {
    writeln!(
        out,
        "## 5. Our /proc/net/tcp parser vs the `procfs` crate\n"
    )?;
    writeln!(
        out,
        "Time to count the monitored port's established sockets in `/proc/net/tcp` + `tcp6` ({ON_PORT} of them, among the namespace's idle sockets), interleaved each round in the same namespace: (a) the real tracker, `--source proc` (our parser, `spawner-sidecar/src/source/proc_net.rs`), one `GET /` on a keep-alive connection, its CPU read from its threads' schedstat, so (a) also carries the HTTP answer (~0.1 ms, see section 1); (b) `procfs` 0.18 (`procfs::net::tcp()` and `tcp6()`, then a filter), timed inside a release build of xtask run in the namespace (`xtask procfs-count`, one process per round; start-up not timed); (c) reading both files without parsing, in that same process, the floor under both. Medians; both counts were checked equal every round. (c) runs right after (b) in the same process, so a slightly negative \"CPU above the read\" is run-to-run noise: it means parsing costs less than that noise.\n"
    )?;
    writeln!(
        out,
        "| sockets | runs | counted | (a) ours: wall / CPU | (b) procfs: wall / CPU | (c) read only: wall / CPU | CPU ratio b/a | CPU above the read: ours / procfs |"
    )?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in rows {
        writeln!(
            out,
            "| {} | {} | {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} | {:.2} / {:.2} ms |",
            r.sockets,
            r.runs,
            r.counted,
            r.ours_wall,
            r.ours_cpu,
            r.crate_wall,
            r.crate_cpu,
            r.read_wall,
            r.read_cpu,
            r.crate_cpu / r.ours_cpu,
            r.ours_cpu - r.read_cpu,
            r.crate_cpu - r.read_cpu
        )?;
    }
    writeln!(out)?;
    for r in rows {
        // Below the read's own run-to-run noise, a difference is no cost.
        let parse = |cpu: f64| (cpu - r.read_cpu).max(0.0);
        writeln!(
            out,
            "At {} sockets, producing and reading the two tables costs {:.1} ms of CPU (the kernel formats every socket; `tcp6` also walks every hash bucket); parsing adds about {:.1} ms with ours and {:.1} ms with `procfs`, {:.0} % and {:.0} % of each total. The choice of parser moves the total by {:+.0} %; the read dominates either way.",
            r.sockets,
            r.read_cpu,
            parse(r.ours_cpu),
            parse(r.crate_cpu),
            parse(r.ours_cpu) / r.ours_cpu * 100.0,
            parse(r.crate_cpu) / r.crate_cpu * 100.0,
            (r.crate_cpu / r.ours_cpu - 1.0) * 100.0
        )?;
    }
    Ok(())
}
