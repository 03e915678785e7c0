//! What a service runs: its own process (ynetd's `command`), or, in
//! hibergate's shape, `start` and `stop` shell commands that act on a
//! backend elsewhere (scale a Deployment, wake a VM) whose target the proxy
//! dials for readiness as for a process.
//!
//! A hook's output goes to the proxy's own stdout and stderr: a hook that
//! leaves something running in the background (`cmd &`) would hold a
//! captured pipe open forever, and the proxy would wait on it.
use std::{process::ExitStatus, time::Duration};

use tokio::process::Command;
use tracing::warn;

use super::{
    child::{self, Child},
    signal::Signal,
    spec::ServiceSpec,
};

pub enum Backend {
    Process(Child),
    /// Started by a `start` hook; `stop` (if any) stops it.
    Remote {
        stop: Option<String>,
    },
}

/// Runs `sh -c script`, killed after `limit`; a one-line error unless it
/// exits 0.
pub async fn run_hook(what: &str, script: &str, limit: Duration) -> Result<(), String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the {what} command: {e}"))?;
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the {what} command failed ({status}): {script}")),
        Ok(Err(e)) => Err(format!("cannot wait for the {what} command: {e}")),
        Err(_) => Err(format!(
            "the {what} command did not finish within {limit:?}: {script}"
        )),
    }
}

impl Backend {
    /// Starts what `spec` names: spawns the command, or runs the `start`
    /// hook to its end (bounded by the clients' `timeout`).
    pub async fn start(spec: &ServiceSpec) -> Result<Self, String> {
        match &spec.start {
            Some(script) => {
                run_hook("start", script, spec.timeout).await?;
                Ok(Self::Remote {
                    stop: spec.stop.clone(),
                })
            }
            None => child::spawn(&spec.command)
                .map(Self::Process)
                .map_err(|e| format!("cannot start {:?}: {e}", spec.command)),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self {
            Self::Process(child) => child.pid(),
            Self::Remote { .. } => None,
        }
    }

    pub fn signal(&self, signal: Signal) {
        if let Self::Process(child) = self {
            child.signal(signal);
        }
    }

    /// A backend elsewhere, started by a `start` command.
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }

    /// Resolves when the process exits; never for a remote backend (the
    /// supervisor learns it is gone from a connection whose target keeps
    /// refusing).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Self::Process(child) => child.wait().await,
            Self::Remote { .. } => std::future::pending().await,
        }
    }

    /// After the process exited unasked: stops what is left of its group
    /// (a background job of a wrapper script), which may hold the port the
    /// next start needs. Nothing to do for a remote backend.
    pub async fn stop_leftovers(&mut self, signal: Signal, timeout: Duration) {
        if let Self::Process(child) = self
            && child.has_leftovers()
        {
            warn!(pid = ?child.pid(), %signal, "the service's leader exited, members of its group did not: stopping them");
            child.stop(signal, timeout).await;
        }
    }

    /// Stops it: the signal to its process group, then SIGKILL to what is
    /// left of the group after `timeout`; or the `stop` hook (bounded by
    /// `timeout`). Says how it went, for the log.
    pub async fn stop(&mut self, signal: Signal, timeout: Duration) -> String {
        match self {
            Self::Process(child) => child
                .stop(signal, timeout)
                .await
                .map_or_else(|| "unknown".to_string(), |s| s.to_string()),
            Self::Remote { stop: None } => "no stop command".to_string(),
            Self::Remote { stop: Some(script) } => match run_hook("stop", script, timeout).await {
                Ok(()) => "stop command done".to_string(),
                Err(e) => {
                    warn!("{e}");
                    e
                }
            },
        }
    }
}
