//! Section "burst": what a crowd does to the HTTP front door. 1 000 clients
//! send `GET /` at the same moment (each on its own connection, released
//! together by a barrier), then 1 000 `/wait-for-idle` requests wait at
//! once; latency percentiles of the first, the tracker's resident size
//! sampled throughout (its peak during the bursts, not the load-time
//! VmHWM), and how far it is from the baseline 10 s after.
use std::{
    fmt::{self, Write as _},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use test_support::procinfo::{Memory, memory_kb};

use super::{
    Plan, SERVE_PORT,
    netns::{bench_ns, within},
    stats::{percentile, sorted},
    tracker::Tracker,
};

pub struct Burst {
    pub clients: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: usize,
    pub waiter_errors: usize,
    pub baseline_mb: f64,
    pub peak_mb: f64,
    pub after_10s_mb: f64,
}

pub fn measure(bin: &Path, plan: &Plan) -> anyhow::Result<Burst> {
    let tracker = Tracker::start(bin, bench_ns(), "ebpf", "3600")?;
    let pid = tracker.pid();
    std::thread::sleep(Duration::from_secs(1));
    let baseline_kb = memory_kb(pid, Memory::Rss)?;

    // The resident size every 10 ms while the bursts run.
    let stop = Arc::new(AtomicBool::new(false));
    let peak_kb = Arc::new(AtomicU64::new(baseline_kb));
    let sampler = {
        let (stop, peak_kb) = (stop.clone(), peak_kb.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kb) = memory_kb(pid, Memory::Rss) {
                    peak_kb.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let clients = plan.burst_clients;
    let gets = within(move || Ok(all_at_once(clients, "/")))?;
    let waits = within(move || Ok(all_at_once(clients, "/wait-for-idle?quiet=1s&timeout=2s")))?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    std::thread::sleep(Duration::from_secs(10));
    let after_kb = memory_kb(pid, Memory::Rss)?;
    drop(tracker);

    let latencies = sorted(gets.latencies_ms);
    Ok(Burst {
        clients,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        errors: gets.errors,
        waiter_errors: waits.errors,
        baseline_mb: baseline_kb as f64 / 1024.0,
        peak_mb: peak_kb.load(Ordering::Relaxed) as f64 / 1024.0,
        after_10s_mb: after_kb as f64 / 1024.0,
    })
}

struct Outcome {
    latencies_ms: Vec<f64>,
    errors: usize,
}

/// `clients` threads, released together, each sending one request on a
/// connection of its own and reading the whole answer (the server closes:
/// `Connection: close`). A latency is connect to last byte.
fn all_at_once(clients: usize, path: &str) -> Outcome {
    let barrier = Arc::new(Barrier::new(clients));
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (barrier, request) = (barrier.clone(), request.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let answered = (|| -> std::io::Result<bool> {
                        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, SERVE_PORT))?;
                        stream.write_all(request.as_bytes())?;
                        let mut answer = Vec::new();
                        stream.read_to_end(&mut answer)?;
                        Ok(answer.starts_with(b"HTTP/1.1 200")
                            || answer.starts_with(b"HTTP/1.1 503"))
                    })();
                    (
                        start.elapsed().as_secs_f64() * 1e3,
                        matches!(answered, Ok(true)),
                    )
                })
        })
        .collect();
    let mut outcome = Outcome {
        latencies_ms: Vec::with_capacity(clients),
        errors: 0,
    };
    for thread in threads {
        match thread.map(|t| t.join()) {
            Ok(Ok((ms, true))) => outcome.latencies_ms.push(ms),
            _ => outcome.errors += 1,
        }
    }
    outcome
}

pub fn report(out: &mut String, burst: &Burst) -> fmt::Result {
    writeln!(
        out,
        "## Burst: {} clients at once (`GET /`, then `/wait-for-idle`), eBPF source\n",
        burst.clients
    )?;
    writeln!(
        out,
        "{} threads released together by a barrier, each on its own connection (connect to last byte), then as many `/wait-for-idle?quiet=1s&timeout=2s` at once. The tracker's resident size is sampled every 10 ms from before the first burst to the end of the second (its peak here is the bursts', not the load's); \"after\" is VmRSS 10 s after the second burst.\n",
        burst.clients
    )?;
    writeln!(
        out,
        "| p50 | p99 | max | failed GET / | failed waits | RSS before | RSS peak during | RSS 10 s after |"
    )?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    writeln!(
        out,
        "| {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {:.1} MB | {:.1} MB | {:.1} MB |\n",
        burst.p50_ms,
        burst.p99_ms,
        burst.max_ms,
        burst.errors,
        burst.waiter_errors,
        burst.baseline_mb,
        burst.peak_mb,
        burst.after_10s_mb
    )
}
