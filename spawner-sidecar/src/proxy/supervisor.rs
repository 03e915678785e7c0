//! The one task per service that starts, watches and stops its process:
//! stopped -> starting -> running -> stopping -> stopped, with crashes
//! (an exit nobody asked for, or a running start's target that a
//! connection reports refusing) backing off before the next start.
//!
//! Starts happen only here, so however many clients ask, one process runs.
//! Decisions that need no clock or process (the backoff) are pure functions
//! tested below; the rest is proven by the black-box tests.
use std::{process::ExitStatus, sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use super::{
    address::Target,
    backend::Backend,
    connection::GONE_AFTER,
    ready,
    service::{Phase, Refused, Service},
    signal::Signal,
    spec::IdleAction,
    tracker::Listening,
};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A start that stayed up this long clears the failure count: a crash
/// after it is a new problem, not part of a loop.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Pause before the next start after `failures` failed starts in a row.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// Failed starts in a row, and when the next start may begin.
struct Failures {
    count: u32,
    retry_at: Instant,
}

impl Failures {
    /// One more failed start, which had run for `ran` (a start that stayed
    /// up [`STABLE_AFTER`] is a new problem: the count starts over). Returns
    /// the pause before the next start.
    fn add(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_AFTER {
            self.count = 0;
        }
        self.count += 1;
        let pause = backoff(self.count);
        self.retry_at = Instant::now() + pause;
        pause
    }
}

/// Shows start `start` as over, after `failures` failed starts in a row.
fn stopped(service: &Service, start: u64, failures: u32) {
    service.phase.send_replace(Phase::Stopped {
        last: Some(start),
        failures,
    });
}

/// Why a start did not become ready.
enum Unready {
    Exited(std::io::Result<ExitStatus>),
    /// Not ready within the service's `timeout`.
    Late,
}

/// How a running service ended.
enum End {
    Exited(std::io::Result<ExitStatus>),
    /// A connection found its target refusing for
    /// [`super::connection::GONE_AFTER`]; the `host:port`.
    Refused(String),
    Idle,
    Shutdown,
}

pub async fn supervise(service: Arc<Service>, mut shutdown: watch::Receiver<bool>) {
    if service.spec.is_forwarder() {
        return;
    }
    let name = service.spec.name.as_str();
    let targets: Vec<Target> = service
        .spec
        .routes
        .iter()
        .map(|r| r.target.clone())
        .collect();
    let mut failures = Failures {
        count: 0,
        retry_at: Instant::now(),
    };
    let mut start = 0u64;
    let mut reason = service.spec.auto_start.then_some("auto-start");
    loop {
        if reason.is_none() {
            tokio::select! {
                () = service.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            if service.load.borrow().active == 0 {
                continue;
            }
            reason = Some("connection");
            service.begin_cold_start(Some(Instant::now()));
        }
        tokio::select! {
            () = tokio::time::sleep_until(failures.retry_at) => {}
            _ = shutdown.changed() => break,
        }
        start += 1;
        let started = Instant::now();
        service.phase.send_replace(Phase::Starting { start });
        match reason {
            Some("auto-start") => service.metrics.starts_auto.inc(),
            _ => service.metrics.starts_connection.inc(),
        };
        info!(service = name, reason = reason.unwrap_or(""), start, command = ?service.spec.command, start_command = service.spec.start, "starting");
        reason = None;
        let started_backend = tokio::select! {
            started = Backend::start(&service.spec) => started,
            _ = shutdown.changed() => break,
        };
        let mut process = match started_backend {
            Ok(p) => p,
            Err(e) => {
                let pause = failures.add(Duration::ZERO);
                warn!(service = name, start, failures = failures.count, backoff = ?pause, "{e}");
                stopped(&service, start, failures.count);
                continue;
            }
        };
        let look = |target: &Target| match &service.tracker {
            Some(tracker) => tracker.listeners(name, target),
            None => Listening::Unknown,
        };
        // Clients are held `timeout`: a start not ready by then serves none
        // of them, and unbounded it would stay `starting` for good (a
        // command that never listens; a start command whose backend never
        // opens).
        let ready_by = started + service.spec.timeout;
        let ready = tokio::select! {
            ready = async {
                let dialed = ready::wait(&targets, service.spec.check_url.as_ref(), service.dial_local(), look);
                let noticed = tokio::time::timeout_at(ready_by, dialed).await.map_err(|_| Unready::Late)?;
                tokio::time::sleep(service.spec.wait_after_start).await;
                Ok(noticed)
            } => ready,
            status = process.wait() => Err(Unready::Exited(status)),
            _ = shutdown.changed() => {
                stop(&service, &mut process, start).await;
                break;
            }
        };
        let noticed = match ready {
            Ok(noticed) => noticed,
            Err(unready) => {
                let pause = failures.add(Duration::ZERO);
                match unready {
                    Unready::Exited(status) => {
                        warn!(service = name, start, failures = failures.count, backoff = ?pause,
                              "exited before it was ready: {}", describe(&status));
                        stopped(&service, start, failures.count);
                        // Its clients are failed first; the next start waits.
                        process
                            .stop_leftovers(service.spec.stop_signal, service.spec.stop_timeout)
                            .await;
                    }
                    Unready::Late => {
                        warn!(service = name, start, failures = failures.count, backoff = ?pause,
                              timeout = ?service.spec.timeout, "not ready within the timeout: stopping it");
                        stop(&service, &mut process, start).await;
                        stopped(&service, start, failures.count);
                    }
                }
                continue;
            }
        };
        let took = started.elapsed();
        // `noticed`: whether the kernel's listener count or the dial
        // backoff found the targets open.
        info!(service = name, start, pid = ?process.pid(), ?took,
              noticed = noticed.map_or("-", ready::Noticed::as_str), "ready");
        service.phase.send_replace(Phase::Running { start });
        let mut ran_at = Instant::now();
        let end = loop {
            let end = tokio::select! {
                status = process.wait() => End::Exited(status),
                target = refused(&service, start) => End::Refused(target),
                () = idle(&service, ran_at) => End::Idle,
                _ = shutdown.changed() => End::Shutdown,
            };
            if let End::Idle = end {
                // The new phase first, then the count: a client that entered
                // before this sees the count; one after sees the phase and
                // waits instead of dialing a dying or frozen service.
                let freeze = service.spec.idle_action == IdleAction::Freeze;
                service.phase.send_replace(if freeze {
                    Phase::Frozen { start }
                } else {
                    Phase::Stopping { start }
                });
                if service.load.borrow().active > 0 {
                    service.phase.send_replace(Phase::Running { start });
                    continue;
                }
                if freeze {
                    match frozen(&service, &mut process, &mut shutdown, start).await {
                        None => {
                            ran_at = Instant::now();
                            continue;
                        }
                        Some(end) => break end,
                    }
                }
            }
            break end;
        };
        match end {
            End::Exited(status) => {
                let pause = failures.add(ran_at.elapsed());
                warn!(service = name, start, failures = failures.count, backoff = ?pause,
                      "exited: {}", describe(&status));
                stopped(&service, start, failures.count);
                process
                    .stop_leftovers(service.spec.stop_signal, service.spec.stop_timeout)
                    .await;
            }
            End::Refused(target) => {
                // As a crash: the start has ended, whether or not a process
                // of ours still runs. A backend elsewhere has no exit to
                // notice; a process that closed its port serves nobody and
                // would hold every client until the timeout. Stopped (the
                // stop signal to its group, or the stop command) so the next
                // start does not meet what is left of it.
                let pause = failures.add(ran_at.elapsed());
                let why = if process.is_remote() {
                    "the target refuses connections: the backend is gone"
                } else {
                    "the target refuses connections while the process runs: stopping it"
                };
                warn!(service = name, start, failures = failures.count, backoff = ?pause,
                      target, refused_for = ?GONE_AFTER, "{why}");
                stop(&service, &mut process, start).await;
                stopped(&service, start, failures.count);
            }
            End::Idle => {
                info!(service = name, start, stop_after = ?service.spec.stop_after, "idle: stopping");
                stop(&service, &mut process, start).await;
                failures.count = 0;
                stopped(&service, start, 0);
            }
            End::Shutdown => {
                stop(&service, &mut process, start).await;
                break;
            }
        }
    }
    service.phase.send_replace(Phase::Closed);
}

/// Freezes the process group (SIGSTOP) until a client or a keepalive
/// needs it, then thaws it (SIGCONT) and returns `None`; or how it ended
/// meanwhile. A keepalive is for work that is not inbound traffic, which a
/// frozen process cannot do; the idle timer then holds it up until the
/// keepalive's end.
async fn frozen(
    service: &Service,
    process: &mut Backend,
    shutdown: &mut watch::Receiver<bool>,
    start: u64,
) -> Option<End> {
    let name = service.spec.name.as_str();
    // Subscribed before the SIGSTOP: a keepalive given meanwhile is seen.
    let mut load = service.load.subscribe();
    process.signal(Signal::STOP);
    info!(service = name, start, stop_after = ?service.spec.stop_after, "idle: frozen (SIGSTOP)");
    let why = loop {
        let kept = load
            .borrow_and_update()
            .keep_until
            .is_some_and(|until| until > Instant::now());
        if kept {
            break "a keepalive";
        }
        tokio::select! {
            () = service.wake.notified() => {
                if service.load.borrow().active == 0 {
                    continue;
                }
                service.begin_cold_start(Some(Instant::now()));
                break "a connection";
            }
            // Connections come and go, keepalives arrive: looked at above.
            // The sender lives in `service`, so this never ends in an error.
            _ = load.changed() => {}
            status = process.wait() => return Some(End::Exited(status)),
            _ = shutdown.changed() => return Some(End::Shutdown),
        }
    };
    process.signal(Signal::CONT);
    service.metrics.starts_thaw.inc();
    service.phase.send_replace(Phase::Running { start });
    info!(service = name, start, "thawed (SIGCONT) for {why}");
    None
}

/// Resolves with the target when a connection reports that running start
/// `start`'s target keeps refusing (a report for an older start is stale).
async fn refused(service: &Service, start: u64) -> String {
    let mut reports = service.refused.subscribe();
    let report = reports
        .wait_for(|r| r.as_ref().is_some_and(|r| r.start == start))
        .await
        .ok()
        .and_then(|r| r.as_ref().map(|r: &Refused| r.target.clone()));
    match report {
        Some(target) => target,
        // The sender lives in `service`: not reached.
        None => std::future::pending().await,
    }
}

async fn stop(service: &Service, process: &mut Backend, start: u64) {
    service.phase.send_replace(Phase::Stopping { start });
    let status = process
        .stop(service.spec.stop_signal, service.spec.stop_timeout)
        .await;
    info!(service = service.spec.name, signal = %service.spec.stop_signal, "stopped: {status}");
}

/// When an idle service may be stopped: `stop_after` after its last
/// connection closed (counted from the start at the earliest), not before
/// `min_online` after the start, nor before a keepalive's end.
pub fn stop_at(
    idle_since: Instant,
    ran_at: Instant,
    stop_after: Duration,
    min_online: Duration,
    keep_until: Option<Instant>,
) -> Instant {
    let at = (idle_since.max(ran_at) + stop_after).max(ran_at + min_online);
    keep_until.map_or(at, |k| at.max(k))
}

/// How often the tracker is read while the pod's own traffic is what keeps
/// an idle service up: the kernel's stamps make the eBPF source exact
/// whenever it is read; the polling sources see only what is open when
/// they look.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Resolves once the service may be stopped for idleness (see
/// [`stop_at`]); never without `stop_after`. When that moment comes, the
/// tracker has its say: the pod's own connections to the targets' ports
/// hold the stop until `stop_after` after their last activity.
async fn idle(service: &Service, ran_at: Instant) {
    let Some(stop_after) = service.spec.stop_after else {
        return std::future::pending().await;
    };
    let mut load = service.load.subscribe();
    // Logged once per stretch of holding.
    let mut held = false;
    loop {
        let now = *load.borrow_and_update();
        let Some(since) = now.idle_since else {
            held = false;
            if load.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        };
        let mut at = stop_at(
            since,
            ran_at,
            stop_after,
            service.spec.min_online,
            now.keep_until,
        );
        if Instant::now() >= at {
            let until = match &service.tracker {
                Some(tracker) => tracker
                    .last_active(&service.spec.name)
                    .await
                    .map(|last| last + stop_after),
                None => None,
            };
            match until {
                Some(until) if until > Instant::now() => {
                    if !held {
                        held = true;
                        info!(
                            service = service.spec.name,
                            "idle through the proxy, but the pod's own connections to its target are active: not stopping yet"
                        );
                    }
                    at = until.min(Instant::now() + LOOK_EVERY);
                }
                // Unless a client came (and maybe went) while reading.
                _ if !load.has_changed().unwrap_or(false) => return,
                _ => continue,
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            changed = load.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_up_to_30s() {
        let ms: Vec<u128> = (0..=12).map(|f| backoff(f).as_millis()).collect();
        assert_eq!(
            ms,
            [
                0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn the_stop_waits_for_stop_after_min_online_and_keepalive() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Idle since 5 s after a start at 0: stop_after counts from there.
        assert_eq!(stop_at(t0 + s(5), t0, s(10), s(0), None), t0 + s(15));
        // Idle since before the start (auto-start): counted from the start.
        assert_eq!(stop_at(t0, t0 + s(3), s(10), s(0), None), t0 + s(13));
        // A burst, a pause: min_online holds it up.
        assert_eq!(stop_at(t0 + s(1), t0, s(2), s(60), None), t0 + s(60));
        // A keepalive later than both wins.
        assert_eq!(
            stop_at(t0 + s(1), t0, s(2), s(0), Some(t0 + s(90))),
            t0 + s(90)
        );
    }
}
