//! One service's shared state: its phase (published to every held client),
//! its load (connections held or forwarded, on all its listeners), and its
//! counters. The supervisor ([`super::supervisor`]) is the only writer of
//! the phase; connections only enter, leave, ask for a start and report a
//! running start whose target refuses them.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{
    dial::Local,
    metrics::ServiceMetrics,
    spec::ServiceSpec,
    tracker::{self, Tracker},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No command: a plain forwarder, always ready.
    Forwarder,
    /// Not running. `last` is the start that ended last (if any);
    /// `failures` counts the starts in a row that died unasked.
    Stopped {
        last: Option<u64>,
        failures: u32,
    },
    /// Start number `start` is waiting for its target to accept.
    Starting {
        start: u64,
    },
    Running {
        start: u64,
    },
    /// Idle with `idle_action: freeze`: SIGSTOPped, thawed by a client.
    Frozen {
        start: u64,
    },
    /// The stop signal was sent to start number `start`; a client now
    /// waits for the next start.
    Stopping {
        start: u64,
    },
    /// The proxy is shutting down: held clients are closed.
    Closed,
}

/// Starts in a row that died before this many failures show as a crash loop.
const CRASHLOOP_FAILURES: u32 = 2;

impl Phase {
    /// The state shown on the status page.
    pub fn name(self) -> &'static str {
        match self {
            Self::Forwarder => "forwarding",
            Self::Stopped { failures, .. } if failures >= CRASHLOOP_FAILURES => "crashloop",
            Self::Stopped { .. } | Self::Closed => "stopped",
            Self::Starting { .. } => "starting",
            Self::Running { .. } => "running",
            Self::Frozen { .. } => "frozen",
            Self::Stopping { .. } => "stopping",
        }
    }
}

/// Connections on any listener of the service, held or forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub active: usize,
    /// When `active` last became 0; `None` while it is not 0.
    pub idle_since: Option<Instant>,
    /// `POST /services/NAME/keepalive`: busy until then, connections or not.
    pub keep_until: Option<Instant>,
}

/// Why a held client was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The start it waited for died before its target accepted.
    StartFailed,
    /// The proxy is shutting down.
    Closed,
}

/// A connection's report: the target of running start `start` kept
/// refusing it (see [`Service::report_refused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub start: u64,
    /// The `host:port` that refused, for the log.
    pub target: String,
}

pub struct Service {
    pub spec: ServiceSpec,
    pub phase: watch::Sender<Phase>,
    /// The last [`Refused`] report; the supervisor acts on one for the
    /// start it runs and ignores older ones.
    pub refused: watch::Sender<Option<Refused>>,
    pub load: watch::Sender<Load>,
    /// A held client asks for a start; the supervisor checks the load, so a
    /// stale permit never starts an unwanted process.
    pub wake: Notify,
    pub metrics: ServiceMetrics,
    /// For a service that can stop for idleness: the pod's own traffic to
    /// its targets holds the stop off, and it dials local IPv4 targets from
    /// the proxy's own address so that its connections are not taken for it.
    pub tracker: Option<Arc<Tracker>>,
    /// When the pending cold start was asked for; the first client to
    /// reach the backend after it takes it and records the duration.
    cold_start_from: Mutex<Option<Instant>>,
    /// The last cold start, in microseconds (0: none yet).
    last_cold_start_us: AtomicU64,
}

impl Service {
    pub fn new(
        spec: ServiceSpec,
        metrics: ServiceMetrics,
        tracker: Option<Arc<Tracker>>,
    ) -> Arc<Self> {
        let tracker = tracker.filter(|_| tracker::wanted(&spec));
        let phase = if spec.is_forwarder() {
            Phase::Forwarder
        } else {
            Phase::Stopped {
                last: None,
                failures: 0,
            }
        };
        Arc::new(Self {
            spec,
            phase: watch::Sender::new(phase),
            refused: watch::Sender::new(None),
            load: watch::Sender::new(Load {
                active: 0,
                idle_since: Some(Instant::now()),
                keep_until: None,
            }),
            wake: Notify::new(),
            metrics,
            tracker,
            cold_start_from: Mutex::new(None),
            last_cold_start_us: AtomicU64::new(0),
        })
    }

    /// Counts a connection until the returned guard drops.
    pub fn enter(self: &Arc<Self>) -> Entry {
        self.load.send_modify(|l| {
            l.active += 1;
            l.idle_since = None;
        });
        Entry {
            service: self.clone(),
        }
    }

    /// Holds until the service is ready to forward, asking for a start
    /// when it is stopped; the running start's number (`None` for a plain
    /// forwarder). Call with an [`Entry`] held.
    ///
    /// A start that ends (fails or dies) after the client arrived fails it:
    /// it must be closed at once, not held through the backoff. Start
    /// numbers tell, since the phase is read only at wake-ups and a start
    /// that fails at once may come and go between two of them.
    pub async fn wait_ready(&self) -> Result<Option<u64>, NotReady> {
        let mut phase = self.phase.subscribe();
        let baseline = match *phase.borrow() {
            Phase::Stopped { last, .. } => last.unwrap_or(0),
            Phase::Starting { start } => start.saturating_sub(1),
            Phase::Running { start } | Phase::Stopping { start } | Phase::Frozen { start } => start,
            Phase::Forwarder | Phase::Closed => 0,
        };
        loop {
            let now = *phase.borrow_and_update();
            match now {
                Phase::Forwarder => return Ok(None),
                Phase::Running { start } => return Ok(Some(start)),
                Phase::Closed => return Err(NotReady::Closed),
                Phase::Stopped {
                    last: Some(last), ..
                } if last > baseline => {
                    return Err(NotReady::StartFailed);
                }
                Phase::Stopped { .. } | Phase::Frozen { .. } => self.wake.notify_one(),
                Phase::Starting { .. } | Phase::Stopping { .. } => {}
            }
            if phase.changed().await.is_err() {
                return Err(NotReady::Closed);
            }
        }
    }

    /// What [`super::dial::connect`] needs: the namespace's addresses when
    /// this service's local targets are dialed from the proxy's own address.
    pub fn dial_local(&self) -> Option<&Local> {
        self.tracker.as_deref().map(Tracker::local)
    }

    /// Whether a client would be forwarded at once.
    pub fn is_ready(&self) -> bool {
        matches!(
            *self.phase.borrow(),
            Phase::Running { .. } | Phase::Forwarder
        )
    }

    /// Keeps the service from an idle stop for `duration` from now (a
    /// longer keepalive already given stays).
    pub fn keep_alive(&self, duration: Duration) {
        let until = Instant::now() + duration;
        self.load.send_modify(|l| {
            l.keep_until = Some(l.keep_until.map_or(until, |k| k.max(until)));
        });
    }

    /// What is left of the last keepalive.
    pub fn kept_alive_for(&self) -> Duration {
        self.load.borrow().keep_until.map_or(Duration::ZERO, |k| {
            k.saturating_duration_since(Instant::now())
        })
    }

    /// Whether start number `start` is still the running one.
    pub fn is_running(&self, start: u64) -> bool {
        *self.phase.borrow() == Phase::Running { start }
    }

    /// Tells the supervisor that the target of running start `start` has
    /// refused dials for [`super::connection::GONE_AFTER`]: the backend is
    /// gone. Said once per start; the supervisor decides.
    pub fn report_refused(&self, start: u64, target: &str) {
        self.refused.send_if_modified(|last| {
            if last.as_ref().is_some_and(|r| r.start >= start) {
                return false;
            }
            *last = Some(Refused {
                start,
                target: target.to_string(),
            });
            true
        });
    }

    /// A start asked for by a client at `requested`: a cold start to time.
    pub fn begin_cold_start(&self, requested: Option<Instant>) {
        *self
            .cold_start_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = requested;
    }

    /// Called when a client's first byte is forwarded: the first after a
    /// cold start ends it.
    pub fn end_cold_start(&self) {
        let from = self
            .cold_start_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(from) = from {
            let took = from.elapsed();
            self.metrics.cold_start.observe(took.as_secs_f64());
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
            self.last_cold_start_us.store(us, Relaxed);
        }
    }

    /// The last cold start's duration, if there was one.
    pub fn last_cold_start(&self) -> Option<Duration> {
        match self.last_cold_start_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// One connection counted in the service's load.
pub struct Entry {
    service: Arc<Service>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.service.load.send_modify(|l| {
            l.active = l.active.saturating_sub(1);
            if l.active == 0 {
                l.idle_since = Some(Instant::now());
            }
        });
    }
}

/// A gauge raised for the guard's life.
pub struct Raised(Gauge);

impl Raised {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repeated_failures_show_as_a_crash_loop() {
        let stopped = |failures| Phase::Stopped {
            last: Some(1),
            failures,
        };
        assert_eq!(stopped(0).name(), "stopped");
        assert_eq!(stopped(1).name(), "stopped");
        assert_eq!(stopped(2).name(), "crashloop");
        assert_eq!(Phase::Starting { start: 3 }.name(), "starting");
    }
}
