//! Section "freshness": how long after a connection is established the
//! JSON shows it, per source.
//!
//! A client in the bench namespace connects to a listener on the monitored
//! port; the clock starts when `connect()` returns (on loopback the
//! handshake's last ACK is processed inside that call, so the server side is
//! established by then at the latest). It then polls `GET /` on one
//! keep-alive connection until `active_connections` grows. The connection is
//! reset (no TIME_WAIT) and the count must drop back before the next sample.
use std::{
    fmt::{self, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    MONITOR_PORT, Plan, SERVE_PORT,
    netns::{bench_ns, within},
    stats::{percentile, sorted},
    status::Connection,
    tracker::Tracker,
};
use test_support::sockets::reset_on_close;

/// A sample that has not shown up by then counts as missed.
const GIVE_UP: Duration = Duration::from_secs(5);

pub struct Freshness {
    pub source: &'static str,
    pub sockets: usize,
    pub samples: usize,
    pub missed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Polls per sample, median: 1 means the first answer already showed it.
    pub polls_p50: f64,
    /// Median time of one poll (one keep-alive answer).
    pub poll_ms: f64,
}

pub fn measure(
    bin: &Path,
    source: &'static str,
    sockets: usize,
    plan: &Plan,
) -> anyhow::Result<Freshness> {
    // The listener exists before the tracker starts, as a pod's server does.
    let listener = within(|| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, MONITOR_PORT))
            .context("listening on the monitored port")
    })?;
    // The default refresh: freshness must not depend on a short one.
    let tracker = Tracker::start(bin, bench_ns(), source, "10")?;
    let samples = plan.freshness_samples;
    let budget = plan.freshness_budget;
    let result = within(move || {
        let mut api = Connection::connect(SERVE_PORT)?;
        let base = api.get()?.active;
        let (mut delays, mut polls, mut poll_times, mut missed) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        let deadline = Instant::now() + budget;
        while delays.len() + missed < samples && (delays.len() < 10 || Instant::now() < deadline) {
            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, MONITOR_PORT))?;
            let t0 = Instant::now();
            let mut n = 0;
            loop {
                let t = Instant::now();
                let status = api.get()?;
                poll_times.push(t.elapsed().as_secs_f64() * 1e3);
                n += 1;
                if status.active > base {
                    delays.push(t0.elapsed().as_secs_f64() * 1e3);
                    polls.push(f64::from(n));
                    break;
                }
                if t0.elapsed() > GIVE_UP {
                    missed += 1;
                    break;
                }
            }
            let (server, _) = listener.accept()?;
            reset_on_close(&client)?;
            drop(client);
            drop(server);
            let t = Instant::now();
            while api.get()?.active != base {
                if t.elapsed() > GIVE_UP {
                    bail!("{source}: the count did not drop back to {base} after a reset");
                }
            }
        }
        let delays = sorted(delays);
        Ok(Freshness {
            source,
            sockets,
            samples: delays.len(),
            missed,
            p50_ms: percentile(&delays, 0.5),
            p99_ms: percentile(&delays, 0.99),
            max_ms: delays.last().copied().unwrap_or(f64::NAN),
            polls_p50: percentile(&sorted(polls), 0.5),
            poll_ms: percentile(&sorted(poll_times), 0.5),
        })
    });
    drop(tracker);
    result
}

pub fn report(out: &mut String, rows: &[Freshness]) -> fmt::Result {
    writeln!(
        out,
        "## 3. Freshness: connection established -> JSON shows it\n"
    )?;
    if let Some(first) = rows.first() {
        writeln!(
            out,
            "{} idle sockets in the namespace; default refresh (10 s). Per sample: connect to the monitored port, start the clock when `connect()` returns, poll `GET /` on one keep-alive connection as fast as answers come until `active_connections` grows; then reset the connection and wait for the count to drop back.\n",
            first.sockets
        )?;
    }
    writeln!(
        out,
        "| source | samples | missed (> {} s) | p50 | p99 | max | polls per sample (median) | one poll (median) |",
        GIVE_UP.as_secs()
    )?;
    writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in rows {
        writeln!(
            out,
            "| {} | {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.0} | {:.3} ms |",
            r.source, r.samples, r.missed, r.p50_ms, r.p99_ms, r.max_ms, r.polls_p50, r.poll_ms
        )?;
    }
    writeln!(
        out,
        "\nWhat the figure includes: every source reads its counts at request time, so the delay is bounded by the polling itself: at least one whole answer (request, source read, response), plus whatever remained of the answer in flight when the connection was established. A figure close to one or two polls means the source itself adds nothing; the eBPF program has counted the connection before `connect()` returns."
    )
}
