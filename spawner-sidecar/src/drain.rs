//! Draining before a pod stops (the pattern Knative's queue-proxy uses for
//! preStop): wait until the followed ports have had no active or waiting
//! connection for a quiet period, or give up at a timeout.
//!
//! Two doors: `GET /wait-for-idle?quiet=5s&timeout=300s` on the serve port
//! (an `httpGet` preStop hook; the route lives in `http`), and the
//! `wait-idle` subcommand here, which reads the kernel itself (an `exec`
//! preStop hook).
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use crate::{
    activity::Activity,
    app::App,
    clock::{boottime_ns, nanos},
    config::WatchArgs,
    duration::parse_duration,
    runtime::{self, Threads},
    source::{self, SourceKind},
    status::{Status, port_list},
};

/// Longest wait either door accepts: a preStop hook is bounded by the pod's
/// termination grace period anyway.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Quiet period when the caller names none.
pub const DEFAULT_QUIET: Duration = Duration::from_secs(5);
/// Timeout when the caller names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Refuses a quiet period or timeout beyond [`MAX_TIMEOUT`].
pub fn check_wait(value: Duration) -> Result<Duration, String> {
    if value > MAX_TIMEOUT {
        return Err(format!("at most {}s", MAX_TIMEOUT.as_secs()));
    }
    Ok(value)
}

/// How often to look: the eBPF source answers from a map read, the pollers
/// walk every socket of the namespace.
fn poll_interval(kind: SourceKind) -> Duration {
    match kind {
        SourceKind::Ebpf => Duration::from_millis(50),
        SourceKind::SockDiag | SourceKind::Proc => Duration::from_millis(500),
    }
}

/// Whether the wait ended quiet, and the state it ended with.
pub struct Outcome {
    pub quiet: bool,
    pub status: Status,
}

/// How often the eBPF source's TIME_WAIT snapshot is renewed while
/// waiting: its tick may be far longer, and no event reports TIME_WAIT.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Waits until `app`'s ports have been quiet for `quiet` (as far as its
/// activity knows, including what it saw before this call), or `timeout`.
/// Quiet: no open connection (a young one too: a request may be in flight)
/// and no TIME_WAIT that counts as activity.
pub async fn wait_quiet(app: &App, quiet: Duration, timeout: Duration) -> Result<Outcome, String> {
    let deadline = Instant::now() + timeout;
    let quiet_ns = nanos(quiet);
    let interval = poll_interval(app.source.kind());
    let mut snapshot_due = Instant::now();
    loop {
        if app.source.kind() == SourceKind::Ebpf && Instant::now() >= snapshot_due {
            app.refresh("drain").await;
            snapshot_due = Instant::now() + SNAPSHOT_EVERY;
        }
        let observed = app.observe().await?;
        let now_ns = observed.now_ns;
        let status = observed.status(app.source_name());
        let waiting: u64 = observed
            .reading
            .values()
            .map(|r| r.time_wait_total().saturating_sub(r.young_time_wait))
            .sum();
        let busy = status.active_connections + waiting > 0;
        let idle_ns = now_ns.saturating_sub(app.activity.last_active_ns());
        if !busy && idle_ns >= quiet_ns {
            return Ok(Outcome {
                quiet: true,
                status,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Outcome {
                quiet: false,
                status,
            });
        }
        // Wake exactly when the quiet period would be complete, if sooner.
        let until_quiet = Duration::from_nanos(quiet_ns.saturating_sub(idle_ns));
        let nap = if busy {
            interval
        } else {
            interval.min(until_quiet).max(Duration::from_millis(1))
        };
        tokio::time::sleep(nap.min(deadline - now)).await;
    }
}

/// `spawner-sidecar wait-idle`: exit 0 once quiet, 1 at the timeout.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitIdleArgs {
    #[command(flatten)]
    pub watch: WatchArgs,

    /// How long the ports must have had no active or waiting connection
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub quiet_for: Duration,

    /// Give up (exit 1) after this long
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_quiet_timeout)]
    pub timeout: Duration,
}

fn parse_quiet_timeout(text: &str) -> Result<Duration, String> {
    check_wait(parse_duration(text)?)
}

/// Runs the subcommand. It has no history from before it started, so it
/// always waits at least `--quiet-for`.
pub fn wait_idle(args: WaitIdleArgs) -> ExitCode {
    let runtime = match runtime::build(Threads::One) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let Err(e) = args.watch.check() {
        e.exit();
    }
    let started = boottime_ns();
    let options = args.watch.source_options();
    let source = match source::open(args.watch.source, &options) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let app = App::new(
        source,
        Activity::new(started, Duration::ZERO),
        Duration::ZERO,
    );
    let ports = port_list(args.watch.monitor_port.iter().copied());
    match runtime.block_on(wait_quiet(&app, args.quiet_for, args.timeout)) {
        Ok(Outcome { quiet: true, .. }) => {
            eprintln!(
                "idle: no connection on port {ports} for {}",
                humantime::format_duration(args.quiet_for)
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome {
            quiet: false,
            status,
        }) => {
            eprintln!(
                "timeout after {}: port {ports} still has {} active and {} waiting connections",
                humantime::format_duration(args.timeout),
                status.active_connections,
                status.waiting_connections
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
