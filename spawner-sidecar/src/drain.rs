//! Draining before a pod stops (the pattern Knative's queue-proxy uses for
//! preStop): wait until the followed ports have had no active or waiting
//! connection for a quiet period, or give up at a timeout.
//!
//! Two doors: `GET /wait-for-idle?quiet=5s&timeout=300s` on the serve port
//! (an `httpGet` preStop hook), and the `wait-idle` subcommand, which reads
//! the kernel itself (an `exec` preStop hook).
use std::{
    collections::HashMap,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use tracing::warn;

use crate::{
    activity::{Activity, boottime_ns},
    config::WatchArgs,
    duration::parse_duration,
    http::{App, AppState},
    source::{self, SourceKind},
    status::Status,
};

/// Longest wait either door accepts: a preStop hook is bounded by the pod's
/// termination grace period anyway.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

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
pub async fn wait_quiet(
    app: &Arc<App>,
    quiet: Duration,
    timeout: Duration,
) -> Result<Outcome, String> {
    let deadline = Instant::now() + timeout;
    let quiet_ns = u64::try_from(quiet.as_nanos()).unwrap_or(u64::MAX);
    let interval = poll_interval(app.source.kind());
    let mut snapshot_due = Instant::now();
    loop {
        if app.source.kind() == SourceKind::Ebpf && Instant::now() >= snapshot_due {
            let source = app.source.clone();
            match tokio::task::spawn_blocking(move || source.refresh()).await {
                Ok(Err(e)) => warn!("drain: refreshing the snapshot: {e}"),
                Err(e) => warn!("drain: refresh task failed: {e}"),
                Ok(Ok(())) => {}
            }
            snapshot_due = Instant::now() + SNAPSHOT_EVERY;
        }
        let reading = app.read(app.activity.detail()).await?;
        let now_ns = boottime_ns();
        let status = Status::observe(&reading, &app.activity, now_ns, app.source.kind().as_str());
        let waiting: u64 = reading
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

fn query_duration(
    query: &HashMap<String, String>,
    key: &str,
    default: Duration,
) -> Result<Duration, String> {
    let Some(text) = query.get(key) else {
        return Ok(default);
    };
    let value = parse_duration(text).map_err(|e| format!("{key}: {e}"))?;
    if value > MAX_TIMEOUT {
        return Err(format!("{key}: at most {}s", MAX_TIMEOUT.as_secs()));
    }
    Ok(value)
}

/// `GET /wait-for-idle?quiet=5s&timeout=300s`: 200 with the final state once
/// quiet, 503 with the state at the timeout, 400 on a bad parameter.
pub async fn wait_for_idle(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "quiet" | "timeout"))
    {
        return bad_request(format!(
            "unknown parameter {unknown:?}; use quiet and timeout"
        ));
    }
    let (quiet, timeout) = match (
        query_duration(&query, "quiet", Duration::from_secs(5)),
        query_duration(&query, "timeout", Duration::from_secs(300)),
    ) {
        (Ok(q), Ok(t)) => (q, t),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    match wait_quiet(&app, quiet, timeout).await {
        Ok(Outcome {
            quiet: true,
            status,
        }) => Json(status).into_response(),
        Ok(Outcome {
            quiet: false,
            status,
        }) => (StatusCode::SERVICE_UNAVAILABLE, Json(status)).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error, "source": app.source.kind().as_str() })),
        )
            .into_response(),
    }
}

fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
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
    let value = parse_duration(text)?;
    if value > MAX_TIMEOUT {
        return Err(format!("at most {}s", MAX_TIMEOUT.as_secs()));
    }
    Ok(value)
}

/// Runs the subcommand. It has no history from before it started, so it
/// always waits at least `--quiet-for`.
pub fn wait_idle(args: WaitIdleArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
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
    let app = Arc::new(App::new(
        source,
        Activity::new(started, Duration::ZERO),
        Duration::ZERO,
    ));
    let ports = crate::hooks::port_list(args.watch.monitor_port.iter().copied());
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
