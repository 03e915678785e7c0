//! Idle and active hooks (what hibergate does): run `--on-idle` once the
//! ports have been idle for `--idle-after`, and `--on-active` at the first
//! activity after that. One task runs them one at a time, so two hooks never
//! overlap; the HTTP API keeps answering meanwhile. A hook that fails or
//! times out is logged, counted in `/metrics`, and tried again next check.
//!
//! When: the idle deadline is computed from the last activity to the
//! nanosecond and slept to exactly, so `on-idle` starts within a few
//! milliseconds of `idle-after` after the last activity (a connection that
//! closed, or a TIME_WAIT that ended; TIME_WAIT is seen at most one refresh
//! tick late on the eBPF source). Activity after `on-idle` is looked for
//! every second on the eBPF source and every refresh tick on the pollers.
use std::{process::Stdio, sync::Arc, time::Duration};

use tokio::{io::AsyncReadExt as _, process::Command};
use tracing::{error, info, warn};

use crate::{
    app::App,
    clock::{boottime_ns, nanos},
    lock::lock,
    source::SourceKind,
    status::port_list,
};

/// The hooks as configured.
#[derive(Clone, Debug)]
pub struct Hooks {
    pub idle_after: Duration,
    pub on_idle: Option<String>,
    pub on_active: Option<String>,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for `idle-after` of quiet.
    Active,
    /// `on-idle` ran (at this boot time); waiting for activity.
    Idle { since_ns: u64 },
    /// Activity came after `on-idle`, and `on-active` has yet to succeed.
    Waking,
}

/// Bytes of a hook's stdout and stderr kept for the log.
const OUTPUT_LIMIT: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
enum RunResult {
    Ok,
    Failed,
    Timeout,
}

impl RunResult {
    fn label(&self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::Failed => "failed",
            RunResult::Timeout => "timeout",
        }
    }
}

/// Runs the hooks for as long as the daemon runs.
pub async fn run(app: Arc<App>, hooks: Hooks, tick: Duration) {
    let wake_check = match app.source.kind() {
        SourceKind::Ebpf => tick.min(Duration::from_secs(1)),
        SourceKind::SockDiag | SourceKind::Proc => tick,
    };
    let idle_after_ns = nanos(hooks.idle_after);
    let mut phase = Phase::Active;
    loop {
        let status = match app.status().await {
            Ok(status) => status,
            Err(e) => {
                warn!("hooks: cannot read the source ({e}); trying again next tick");
                tokio::time::sleep(tick).await;
                continue;
            }
        };
        // `status()` recorded this reading: a busy port made `last` now.
        let now = boottime_ns();
        let last = app.activity.last_active_ns();
        let seconds = status.seconds_since_active;
        // `SPAWNER_SIDECAR_PORT`: the ports followed now (`--all-ports`
        // changes them).
        let ports = port_list(status.ports.keys().copied());
        let context = (seconds, ports.as_str());
        let mut failed = false;
        phase = match phase {
            Phase::Active if now.saturating_sub(last) >= idle_after_ns => {
                match run_hook(&app, "on-idle", hooks.on_idle.as_deref(), &hooks, context).await {
                    RunResult::Ok => Phase::Idle { since_ns: now },
                    _ => {
                        failed = true;
                        Phase::Active
                    }
                }
            }
            Phase::Idle { since_ns } if last > since_ns => Phase::Waking,
            other => other,
        };
        if phase == Phase::Waking {
            phase = match run_hook(
                &app,
                "on-active",
                hooks.on_active.as_deref(),
                &hooks,
                context,
            )
            .await
            {
                RunResult::Ok => Phase::Active,
                _ => {
                    failed = true;
                    Phase::Waking
                }
            };
        }
        let nap = match phase {
            // A failed hook is tried again at the next tick, not at once.
            _ if failed => tick,
            // Sleep to the idle deadline exactly, or a tick if it is further.
            Phase::Active => {
                let idle_ns = boottime_ns().saturating_sub(app.activity.last_active_ns());
                let remaining = Duration::from_nanos(idle_after_ns.saturating_sub(idle_ns));
                remaining.clamp(Duration::from_millis(1), tick)
            }
            Phase::Idle { .. } => wake_check,
            Phase::Waking => tick,
        };
        tokio::time::sleep(nap).await;
    }
}

/// Runs one hook (if configured) and records the result; an unconfigured
/// hook is a success that ran nothing.
async fn run_hook(
    app: &App,
    name: &'static str,
    command: Option<&str>,
    hooks: &Hooks,
    (seconds_since_active, ports): (u64, &str),
) -> RunResult {
    let Some(command) = command else {
        info!(
            hook = name,
            seconds_since_active, "{name}: no command configured"
        );
        return RunResult::Ok;
    };
    info!(
        hook = name,
        command, seconds_since_active, ports, "running hook"
    );
    let result = execute(name, command, hooks.timeout, ports, seconds_since_active).await;
    app.count_hook_run(name, result.label());
    result
}

async fn execute(
    name: &str,
    command: &str,
    timeout: Duration,
    ports: &str,
    seconds_since_active: u64,
) -> RunResult {
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("SPAWNER_SIDECAR_PORT", ports)
        .env(
            "SPAWNER_SIDECAR_SECONDS_SINCE_ACTIVE",
            seconds_since_active.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            error!(hook = name, "cannot start /bin/sh: {e}");
            return RunResult::Failed;
        }
    };
    // If this future is dropped (the daemon stops mid-hook), kill_on_drop
    // reaches only the shell; this reaches what the shell started too.
    let mut group = GroupKill(child.id());
    let stdout = Output::capture(child.stdout.take());
    let stderr = Output::capture(child.stderr.take());
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            error!(hook = name, "waiting for the hook failed: {e}");
            return RunResult::Failed;
        }
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            let (out, err) = (stdout.finish().await, stderr.finish().await);
            error!(
                hook = name,
                timeout = %humantime::format_duration(timeout),
                stdout = out,
                stderr = err,
                "hook timed out and was killed; retrying next check"
            );
            return RunResult::Timeout;
        }
    };
    // The shell is done; what it left running in the background (a service
    // `on-active` started, say) is its business and stays.
    group.0 = None;
    let (out, err) = (stdout.finish().await, stderr.finish().await);
    if status.success() {
        info!(hook = name, %status, stdout = out, stderr = err, "hook finished");
        RunResult::Ok
    } else {
        error!(hook = name, %status, stdout = out, stderr = err, "hook failed; retrying next check");
        RunResult::Failed
    }
}

/// One of a hook's output streams, read in the background into a buffer
/// that keeps the first `OUTPUT_LIMIT` bytes (and drains the rest, so the
/// hook never blocks on a full pipe).
struct Output {
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Output {
    fn capture(stream: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>) -> Self {
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = kept.clone();
        let reader = tokio::spawn(async move {
            let Some(mut stream) = stream else {
                return;
            };
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut kept = lock(&sink);
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        });
        Output { kept, reader }
    }

    /// What was read, given a moment after the shell ended: a background
    /// child that inherited the stream would otherwise keep it open for ever.
    async fn finish(mut self) -> String {
        if tokio::time::timeout(Duration::from_millis(200), &mut self.reader)
            .await
            .is_err()
        {
            self.reader.abort();
        }
        let kept = lock(&self.kept);
        String::from_utf8_lossy(&kept).trim().to_string()
    }
}

/// SIGKILL to the hook's process group (its id is the shell's pid).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the process group we created for the hook; if
        // it is gone already, the call fails harmlessly with ESRCH.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Kills the hook's whole process group when dropped, unless disarmed
/// (`.0 = None`) once the shell exited normally.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}
