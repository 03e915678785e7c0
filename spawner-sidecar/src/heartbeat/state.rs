//! Health of each target from its check results: the failure count state
//! machine, and the report `GET /` serves. No I/O here.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::target::Target;

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No check has succeeded yet, and it has not failed `retries + 1`
    /// times in a row either: unknown, so not healthy. Includes "not
    /// checked yet".
    Pending,
    /// The last success has not been followed by `retries + 1` failures.
    Healthy,
    /// At least `retries + 1` consecutive failures, until one success.
    Failing,
}

/// What one check result changed, for logging and exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// First success since start.
    Healthy,
    /// Reached `retries + 1` consecutive failures.
    Failing,
    /// A success after being failing.
    Recovered,
}

/// One target's history, as far as the decision needs it.
#[derive(Debug, Clone)]
pub struct Health {
    retries: u32,
    state: State,
    consecutive_failures: u32,
    checks: u64,
    /// Error of the last check; None when it succeeded.
    last_error: Option<String>,
    /// When the last check finished, and how long it took.
    last_check: Option<(Instant, Duration)>,
}

impl Health {
    pub fn new(retries: u32) -> Health {
        Health {
            retries,
            state: State::Pending,
            consecutive_failures: 0,
            checks: 0,
            last_error: None,
            last_check: None,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Records one finished check. One success makes a target healthy; it
    /// fails at `retries + 1` consecutive failures.
    pub fn record(
        &mut self,
        result: Result<(), String>,
        latency: Duration,
        finished: Instant,
    ) -> Change {
        self.checks = self.checks.saturating_add(1);
        self.last_check = Some((finished, latency));
        let before = self.state;
        match result {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.last_error = None;
                self.state = State::Healthy;
            }
            Err(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(error);
                if self.consecutive_failures > self.retries {
                    self.state = State::Failing;
                }
            }
        }
        match (before, self.state) {
            (State::Pending, State::Healthy) => Change::Healthy,
            (State::Failing, State::Healthy) => Change::Recovered,
            (State::Pending | State::Healthy, State::Failing) => Change::Failing,
            _ => Change::None,
        }
    }

    fn report(&self, uri: &str, now: Instant) -> TargetReport {
        TargetReport {
            uri: uri.to_string(),
            state: self.state,
            healthy: self.state == State::Healthy,
            consecutive_failures: self.consecutive_failures,
            checks: self.checks,
            last_error: self.last_error.clone(),
            seconds_since_last_check: self
                .last_check
                .map(|(at, _)| round3(now.saturating_duration_since(at).as_secs_f64())),
            last_latency_ms: self
                .last_check
                .map(|(_, latency)| round3(latency.as_secs_f64() * 1000.0)),
        }
    }
}

/// Three decimals: microseconds in milliseconds, milliseconds in seconds.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `GET /`'s body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Every target is healthy: the answer is 200, else 503.
    pub healthy: bool,
    /// URIs of the targets that are not healthy (pending or failing).
    pub unhealthy: Vec<String>,
    pub targets: Vec<TargetReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    pub uri: String,
    pub state: State,
    pub healthy: bool,
    pub consecutive_failures: u32,
    /// Checks finished since start.
    pub checks: u64,
    pub last_error: Option<String>,
    /// null before the first check finished.
    pub seconds_since_last_check: Option<f64>,
    /// Duration of the last check, failed ones included.
    pub last_latency_ms: Option<f64>,
}

/// Every target's health, shared by the check tasks and the HTTP server.
/// The lock is held only to copy in or out, never across an await.
#[derive(Clone)]
pub struct Board {
    entries: Arc<Mutex<Vec<(Target, Health)>>>,
}

impl Board {
    pub fn new(targets: &[Target], retries: u32) -> Board {
        let entries = targets
            .iter()
            .map(|t| (t.clone(), Health::new(retries)))
            .collect();
        Board {
            entries: Arc::new(Mutex::new(entries)),
        }
    }

    /// Records a check of target `index`; returns what changed and the
    /// target's consecutive failures.
    pub fn record(
        &self,
        index: usize,
        result: Result<(), String>,
        latency: Duration,
        finished: Instant,
    ) -> (Change, u32) {
        // A panic elsewhere cannot leave a Health half-updated (record does
        // not panic), so a poisoned lock still holds consistent data.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(index) {
            Some((_, health)) => {
                let change = health.record(result, latency, finished);
                (change, health.consecutive_failures())
            }
            None => (Change::None, 0),
        }
    }

    pub fn report(&self, now: Instant) -> Report {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let targets: Vec<TargetReport> = entries
            .iter()
            .map(|(target, health)| health.report(target.uri(), now))
            .collect();
        let unhealthy: Vec<String> = targets
            .iter()
            .filter(|t| !t.healthy)
            .map(|t| t.uri.clone())
            .collect();
        Report {
            healthy: unhealthy.is_empty(),
            unhealthy,
            targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fail(h: &mut Health) -> Change {
        h.record(Err("refused".into()), MS, Instant::now())
    }

    fn pass(h: &mut Health) -> Change {
        h.record(Ok(()), MS, Instant::now())
    }

    #[test]
    fn pending_until_the_first_success() {
        let mut h = Health::new(3);
        assert_eq!(h.state, State::Pending);
        assert_eq!(fail(&mut h), Change::None);
        assert_eq!(h.state, State::Pending, "a failure proves nothing healthy");
        assert_eq!(pass(&mut h), Change::Healthy);
        assert_eq!((h.state, h.consecutive_failures()), (State::Healthy, 0));
    }

    #[test]
    fn fails_at_exactly_retries_plus_one_consecutive_failures() {
        for retries in [0, 1, 3] {
            let mut h = Health::new(retries);
            pass(&mut h);
            for n in 1..=retries {
                assert_eq!(fail(&mut h), Change::None, "retries {retries}, failure {n}");
                assert_eq!(h.state, State::Healthy);
            }
            assert_eq!(fail(&mut h), Change::Failing, "retries {retries}");
            assert_eq!(h.consecutive_failures(), retries + 1);
            assert_eq!(fail(&mut h), Change::None, "reported once");
            assert_eq!(h.state, State::Failing);
        }
    }

    #[test]
    fn never_healthy_target_fails_from_pending() {
        let mut h = Health::new(2);
        assert_eq!(fail(&mut h), Change::None);
        assert_eq!(fail(&mut h), Change::None);
        assert_eq!(fail(&mut h), Change::Failing);
    }

    #[test]
    fn one_success_recovers_and_resets_the_count() {
        let mut h = Health::new(1);
        fail(&mut h);
        fail(&mut h);
        assert_eq!(h.state, State::Failing);
        assert_eq!(pass(&mut h), Change::Recovered);
        assert_eq!((h.state, h.consecutive_failures()), (State::Healthy, 0));
        assert_eq!(fail(&mut h), Change::None, "one failure after recovery");
        assert_eq!(h.state, State::Healthy);
    }

    #[test]
    fn failures_interrupted_by_a_success_do_not_add_up() {
        let mut h = Health::new(2);
        for _ in 0..10 {
            fail(&mut h);
            fail(&mut h);
            pass(&mut h);
        }
        assert_eq!(h.state, State::Healthy);
    }

    fn target(text: &str) -> Target {
        text.parse().expect("target")
    }

    #[test]
    fn report_is_healthy_only_when_every_target_is() {
        let board = Board::new(&[target("tcp://a:1"), target("tcp://b:2")], 0);
        let start = Instant::now();
        let report = board.report(start);
        assert!(!report.healthy);
        assert_eq!(report.unhealthy, ["tcp://a:1", "tcp://b:2"]);
        assert_eq!(report.targets[0].state, State::Pending);
        assert_eq!(report.targets[0].seconds_since_last_check, None);
        assert_eq!(report.targets[0].last_latency_ms, None);

        board.record(0, Ok(()), Duration::from_micros(1500), start);
        let report = board.report(start + Duration::from_millis(2500));
        assert_eq!(report.unhealthy, ["tcp://b:2"], "b is still pending");
        assert_eq!(report.targets[0].seconds_since_last_check, Some(2.5));
        assert_eq!(report.targets[0].last_latency_ms, Some(1.5));

        board.record(1, Ok(()), MS, start);
        assert!(board.report(start).healthy);

        let (change, failures) = board.record(1, Err("refused".into()), MS, start);
        assert_eq!((change, failures), (Change::Failing, 1));
        let report = board.report(start);
        assert!(!report.healthy);
        assert_eq!(report.unhealthy, ["tcp://b:2"]);
        assert_eq!(report.targets[1].last_error.as_deref(), Some("refused"));
        assert_eq!(report.targets[1].checks, 2);
        assert_eq!(report.targets[0].last_error, None);
    }
}
