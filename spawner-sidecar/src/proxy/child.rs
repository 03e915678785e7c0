//! The service's process: started in its own process group, so that
//! stopping it reaches what it started too (a shell script's children);
//! stopped with the configured signal, then SIGKILL after a timeout.
use std::{process::ExitStatus, time::Duration};

use tokio::process::{Child as TokioChild, Command};
use tracing::{info, warn};

use super::signal::Signal;

pub struct Child {
    inner: TokioChild,
    /// Process group id (= the leader's pid); `None` once it was reaped.
    group: Option<i32>,
}

/// Starts `command` (program and arguments) in a new process group.
pub fn spawn(command: &[String]) -> std::io::Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let inner = Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        // If the proxy dies without stopping it, the service dies too:
        // nothing else would ever stop it.
        .kill_on_drop(true)
        .spawn()?;
    let group = inner.id().and_then(|pid| i32::try_from(pid).ok());
    Ok(Child { inner, group })
}

impl Child {
    pub fn pid(&self) -> Option<i32> {
        self.group
    }

    /// Sends `signal` to the whole process group.
    pub fn signal(&self, signal: Signal) {
        let Some(group) = self.group else { return };
        // SAFETY: kill(2) with a negative pid signals a process group; no
        // memory is passed. The group is ours: created by `process_group(0)`
        // and not yet reaped (`group` is cleared once `wait` returns).
        let rc = unsafe { libc::kill(-group, signal.0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                warn!(pid = group, %signal, "cannot signal the service: {e}");
            }
        }
    }

    /// Resolves when the leader exits; cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.inner.wait().await;
        if status.is_ok() {
            self.group = None;
        }
        status
    }

    /// `signal`, then SIGKILL to the group if the leader has not exited
    /// after `timeout`. Returns the exit status.
    pub async fn stop(&mut self, signal: Signal, timeout: Duration) -> Option<ExitStatus> {
        let group = self.group;
        self.signal(signal);
        // A frozen (SIGSTOPped) group only acts on its stop signal once
        // continued; a running one ignores SIGCONT.
        self.signal(Signal::CONT);
        match tokio::time::timeout(timeout, self.inner.wait()).await {
            Ok(status) => {
                self.group = None;
                status.ok()
            }
            Err(_) => {
                warn!(pid = ?group, ?timeout, %signal, "the service ignored the stop signal: SIGKILL");
                self.signal(Signal::KILL);
                let status = self.wait().await.ok();
                info!(pid = ?group, "the service was killed");
                status
            }
        }
    }
}
