//! Section "soak": the eBPF tracker under mixed churn for many minutes,
//! paused at checkpoints to compare its JSON with `ss` and to read its RSS.
//!
//! At a checkpoint the churn has stopped, so established and listening
//! sockets no longer change and must match `ss` exactly. TIME_WAIT keeps
//! expiring while paused, and the eBPF source takes it from a snapshot once
//! per tick, so it is compared with a bracket instead: `ss` before waiting
//! two ticks, and `ss` after the answer. With no new closes, the count can
//! only fall, so any snapshot taken in between lies inside the bracket.
use std::{
    fmt::{self, Write as _},
    path::Path,
    sync::{
        Arc, Mutex,
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{
    MONITOR_PORT, Plan, SERVE_PORT,
    churn::{Churn, Mix},
    netns::{bench_ns, within},
    status::{self, Status},
    tracker::Tracker,
};
use test_support::{
    procinfo::{Memory, cpu_ns, memory_kb},
    ss,
};

const REFRESH_SECONDS: u64 = 1;
/// Long-lived connections opened before the churn starts.
const HELD_AT_START: usize = 20;
/// Lifecycles on loopback finish within the call; this is margin.
const SETTLE: Duration = Duration::from_millis(300);
/// How often the tracker's RSS is read while the churn runs: checkpoints
/// alone cannot tell a plateau reached early from a slow climb.
const RSS_EVERY: Duration = Duration::from_secs(10);

pub struct Checkpoint {
    pub minute: f64,
    pub lifecycles: u64,
    pub rate: f64,
    pub held: usize,
    pub ss_established: u64,
    pub ss_time_wait: (u64, u64),
    pub ss_listening: bool,
    pub got: Status,
    pub rss_kb: u64,
    /// Lowest and highest VmRSS sampled during the segment before this
    /// checkpoint (none for the start-up checkpoint).
    pub rss_range_kb: Option<(u64, u64)>,
    pub cpu_percent: f64,
    pub corrections: usize,
}

impl Checkpoint {
    pub fn active_drift(&self) -> i64 {
        self.got.active as i64 - self.ss_established as i64
    }

    /// Distance of the tracker's TIME_WAIT count from the `ss` bracket.
    pub fn waiting_drift(&self) -> i64 {
        let (low, high) = self.ss_time_wait;
        let w = self.got.waiting;
        if w < low {
            w as i64 - low as i64
        } else if w > high {
            w as i64 - high as i64
        } else {
            0
        }
    }

    pub fn exact(&self) -> bool {
        self.active_drift() == 0
            && self.waiting_drift() == 0
            && self.got.listening == self.ss_listening
    }
}

pub struct Soak {
    pub minutes: f64,
    pub every_minutes: f64,
    pub rate: f64,
    pub checkpoints: Vec<Checkpoint>,
    pub mix: Mix,
}

impl Soak {
    /// RSS at the last checkpoint minus at the first one under churn (the
    /// start-up checkpoint precedes the first allocations for traffic).
    pub fn rss_growth_kb(&self) -> f64 {
        match (self.checkpoints.get(1), self.checkpoints.last()) {
            (Some(first), Some(last)) => last.rss_kb as f64 - first.rss_kb as f64,
            _ => f64::NAN,
        }
    }

    /// RSS at the last checkpoint minus at the one halfway through: zero
    /// means the growth, if any, stopped in the first half (a plateau).
    pub fn second_half_growth_kb(&self) -> f64 {
        match (self.halfway(), self.checkpoints.last()) {
            (Some(half), Some(last)) if half.minute < last.minute => {
                last.rss_kb as f64 - half.rss_kb as f64
            }
            _ => f64::NAN,
        }
    }

    /// The minute of the halfway checkpoint `second_half_growth_kb` uses.
    pub fn halfway_minute(&self) -> f64 {
        self.halfway().map_or(f64::NAN, |c| c.minute)
    }

    /// The checkpoint under churn nearest to half the soak (checkpoints
    /// land a little after each segment's end, never exactly on it).
    fn halfway(&self) -> Option<&Checkpoint> {
        let half = self.checkpoints.last()?.minute / 2.0;
        self.checkpoints
            .iter()
            .skip(1)
            .min_by(|a, b| (a.minute - half).abs().total_cmp(&(b.minute - half).abs()))
    }
}

/// Reads the tracker's VmRSS every `RSS_EVERY` on its own thread, from
/// `start` until `finish`.
struct RssSampler {
    samples: Arc<Mutex<Vec<u64>>>,
    /// Dropping it wakes the thread, which then stops.
    stop: mpsc::Sender<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = mpsc::channel::<()>();
        let into = samples.clone();
        std::thread::spawn(move || {
            loop {
                // A failed read means the tracker is gone; the checkpoint
                // reports that with a proper error.
                if let Ok(kb) = memory_kb(pid, Memory::Rss)
                    && let Ok(mut v) = into.lock()
                {
                    v.push(kb);
                }
                if stopped.recv_timeout(RSS_EVERY) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
            }
        });
        RssSampler { samples, stop }
    }

    /// Stops sampling; the lowest and highest VmRSS read.
    fn finish(self) -> Option<(u64, u64)> {
        drop(self.stop);
        let taken = std::mem::take(&mut *self.samples.lock().ok()?);
        Some((*taken.iter().min()?, *taken.iter().max()?))
    }
}

pub fn measure(bin: &Path, plan: &Plan) -> anyhow::Result<Soak> {
    let mut churn = within(|| {
        let mut churn = Churn::new()?;
        churn.open_held(HELD_AT_START)?;
        Ok(churn)
    })?;
    let tracker = Tracker::start(bin, bench_ns(), "ebpf", &REFRESH_SECONDS.to_string())?;
    let pid = tracker.pid();
    let every = plan.soak_minutes.min(5.0) / if plan.soak_minutes < 15.0 { 3.0 } else { 1.0 };
    let segments = (plan.soak_minutes / every).round().max(1.0) as usize;
    let started = Instant::now();
    let mut checkpoints = vec![checkpoint(&tracker, &churn, 0.0, f64::NAN, 0.0, None)?];
    for segment in 0..segments {
        progress!(
            "soak segment {}/{segments}: {:.2} min of churn at {:.0} connections/s",
            segment + 1,
            every,
            plan.soak_rate
        );
        let cpu_before = cpu_ns(pid)?;
        let wall = Instant::now();
        let sampler = RssSampler::start(pid);
        let rate = plan.soak_rate;
        let (back, achieved) = within(move || {
            let achieved = churn.segment(Duration::from_secs_f64(every * 60.0), rate)?;
            Ok((churn, achieved))
        })?;
        churn = back;
        let range = sampler.finish();
        std::thread::sleep(SETTLE);
        let cpu = (cpu_ns(pid)? - cpu_before) as f64 / wall.elapsed().as_secs_f64() / 1e7;
        let minute = started.elapsed().as_secs_f64() / 60.0;
        let c = checkpoint(&tracker, &churn, minute, achieved, cpu, range)?;
        progress!(
            "checkpoint: tracker {:?}, ss established {} time-wait {:?} listening {}, RSS {} kB (segment {:?})",
            c.got,
            c.ss_established,
            c.ss_time_wait,
            c.ss_listening,
            c.rss_kb,
            c.rss_range_kb
        );
        checkpoints.push(c);
    }
    Ok(Soak {
        minutes: plan.soak_minutes,
        every_minutes: every,
        rate: plan.soak_rate,
        checkpoints,
        mix: churn.mix,
    })
}

fn checkpoint(
    tracker: &Tracker,
    churn: &Churn,
    minute: f64,
    rate: f64,
    cpu_percent: f64,
    rss_range_kb: Option<(u64, u64)>,
) -> anyhow::Result<Checkpoint> {
    let time_wait_high = ss_count("time-wait")?;
    // Two ticks and a margin: at least one snapshot falls after the first ss.
    std::thread::sleep(Duration::from_millis(2_200 * REFRESH_SECONDS));
    let established = ss_count("established")?;
    let listening = ss_count("listening")?;
    let got = within(|| status::get_once(SERVE_PORT))?;
    let established_after = ss_count("established")?;
    let time_wait_low = ss_count("time-wait")?;
    if established != established_after {
        bail!(
            "established sockets changed during a checkpoint: {established} -> {established_after}"
        );
    }
    Ok(Checkpoint {
        minute,
        lifecycles: churn.mix.total(),
        rate,
        held: churn.held(),
        ss_established: established,
        ss_time_wait: (time_wait_low, time_wait_high),
        ss_listening: listening > 0,
        got,
        rss_kb: memory_kb(tracker.pid(), Memory::Rss)?,
        rss_range_kb,
        cpu_percent,
        corrections: tracker.corrections(),
    })
}

/// Sockets on the monitored port in `state`, by `ss` in the bench namespace.
fn ss_count(state: &str) -> anyhow::Result<u64> {
    Ok(ss::Query::state(state)
        .netns(Some(bench_ns()))
        .port(MONITOR_PORT)
        .count()?)
}

pub fn report(out: &mut String, s: &Soak) -> fmt::Result {
    writeln!(
        out,
        "## 4. Soak: {} minutes of mixed churn on the eBPF source\n",
        s.minutes
    )?;
    writeln!(
        out,
        "Target {:.0} connections/s on the monitored port, each ending one of: client closes first (1/5), server closes first, so TIME_WAIT on the monitored port (2/5), client RST (1/5), server RST (1/5); plus {HELD_AT_START} long-lived connections at the start, of which the 5 oldest close and 10 new open in every segment. Tracker at `--refresh-rate-seconds {REFRESH_SECONDS}`. Every {:.2} minutes the churn pauses and the JSON is compared with `ss` in the same namespace: established and listening exactly; TIME_WAIT within the bracket [`ss` after the answer, `ss` two ticks before it], because it keeps expiring during the pause and the eBPF source takes it from its once-per-tick snapshot.\n",
        s.rate, s.every_minutes
    )?;
    writeln!(
        out,
        "| minute | lifecycles so far | achieved rate | held | active (tracker / ss) | waiting (tracker / ss bracket) | listening (tracker / ss) | drift | tracker VmRSS | VmRSS during the segment (min - max) | tracker CPU in segment | snapshot corrections so far |"
    )?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for c in &s.checkpoints {
        let rate = if c.rate.is_nan() {
            "-".to_string()
        } else {
            format!("{:.0}/s", c.rate)
        };
        writeln!(
            out,
            "| {:.1} | {} | {rate} | {} | {} / {} | {} / [{}, {}] | {} / {} | {} | {} kB | {} | {:.2} % | {} |",
            c.minute,
            c.lifecycles,
            c.held,
            c.got.active,
            c.ss_established,
            c.got.waiting,
            c.ss_time_wait.0,
            c.ss_time_wait.1,
            c.got.listening,
            c.ss_listening,
            if c.exact() {
                "0".to_string()
            } else {
                format!(
                    "active {:+}, waiting {:+}",
                    c.active_drift(),
                    c.waiting_drift()
                )
            },
            c.rss_kb,
            c.rss_range_kb
                .map_or("-".to_string(), |(low, high)| format!("{low} - {high} kB")),
            c.cpu_percent,
            c.corrections
        )?;
    }
    let m = &s.mix;
    writeln!(
        out,
        "\nLifecycles: {} client-first, {} server-first, {} client RST, {} server RST; {} failed to connect or accept. RSS growth from the first checkpoint under churn to the last: {:+.0} kB; over the second half (minute {:.1} to the end): {:+.0} kB. VmRSS is read every {} s during each segment (the min - max column) as well as at each checkpoint. *Snapshot corrections* counts the tracker's `event counts corrected by snapshot` log lines: the per-tick reconcile repairing counts the kernel program got wrong; 0 means the events alone were exact, which the checkpoints could not show by themselves.",
        m.client_first,
        m.server_first,
        m.client_rst,
        m.server_rst,
        m.failed,
        s.rss_growth_kb(),
        s.halfway_minute(),
        s.second_half_growth_kb(),
        RSS_EVERY.as_secs()
    )
}
