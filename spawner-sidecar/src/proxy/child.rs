//! The service's process: started in its own process group, so that
//! stopping it reaches what it started too (a shell script's children);
//! stopped with the configured signal, then SIGKILL after a timeout.
//!
//! The group outlives its leader while any member lives (a background job
//! of an `sh -c` wrapper): stopping waits for the whole group, not only for
//! the leader, and what is left after the leader crashed is stopped before
//! the next start, since it may hold the port. Signalling the group after
//! the leader was reaped is safe: a group id is not given to a new group
//! while any member of the old one lives.
use std::{process::ExitStatus, time::Duration};

use tokio::process::{Child as TokioChild, Command};
use tracing::{info, warn};

use super::signal::Signal;

pub struct Child {
    inner: TokioChild,
    /// Process group id (= the leader's pid); `None` once the group was
    /// seen empty after the leader exited (its id may then be reused).
    group: Option<i32>,
    /// The leader's exit, once it was reaped.
    status: Option<ExitStatus>,
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
    Ok(Child {
        inner,
        group,
        status: None,
    })
}

/// First and longest pause between two looks at whether a group is empty
/// (nothing tells when its last member exits).
const FIRST_LOOK: Duration = Duration::from_millis(5);
const MAX_LOOK: Duration = Duration::from_millis(100);
/// How long the members of a SIGKILLed group may take to exit before the
/// proxy goes on without them (a process stuck in the kernel).
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Whether the group has a member that is not a zombie. A zombie holds no
/// port and nothing can stop it; it stays while its new parent does not
/// reap it (a container's PID 1 may never do it), so it must not count.
fn has_live_members(group: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the group has members.
    if unsafe { libc::kill(-group, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and `)`.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(group) && state != Some("Z")
    })
}

impl Child {
    pub fn pid(&self) -> Option<i32> {
        self.group
    }

    /// Sends `signal` to the whole process group (the leader and what is
    /// left of it after the leader exited).
    pub fn signal(&self, signal: Signal) {
        let Some(group) = self.group else { return };
        // SAFETY: kill(2) with a negative pid signals a process group; no
        // memory is passed. The group is ours: created by `process_group(0)`
        // and not yet seen empty (see the module's comment).
        let rc = unsafe { libc::kill(-group, signal.0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                warn!(pid = group, %signal, "cannot signal the service: {e}");
            }
        }
    }

    /// Resolves when the leader exits; cancel-safe. The group may live on.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.inner.wait().await;
        if let Ok(s) = status {
            self.status = Some(s);
        }
        status
    }

    /// After the leader exited: whether members of its group live on.
    pub fn has_leftovers(&self) -> bool {
        self.group.is_some_and(has_live_members)
    }

    /// Resolves once the leader was reaped and no live member is left (the
    /// group's id is then forgotten).
    async fn gone(&mut self) {
        let _ = self.wait().await;
        let Some(group) = self.group else { return };
        let mut pause = FIRST_LOOK;
        while has_live_members(group) {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_LOOK);
        }
        self.group = None;
    }

    /// `signal` to the group, then SIGKILL to it if it still has members
    /// after `timeout`. Also for what is left after the leader exited (an
    /// empty group costs a few system calls). Returns the leader's exit
    /// status.
    pub async fn stop(&mut self, signal: Signal, timeout: Duration) -> Option<ExitStatus> {
        let group = self.group;
        self.signal(signal);
        // A frozen (SIGSTOPped) group only acts on its stop signal once
        // continued; a running one ignores SIGCONT.
        self.signal(Signal::CONT);
        if tokio::time::timeout(timeout, self.gone()).await.is_err() {
            let leader = if self.status.is_some() {
                "the service's leftover processes"
            } else {
                "the service"
            };
            warn!(pid = ?group, ?timeout, %signal, "{leader} ignored the stop signal: SIGKILL");
            self.signal(Signal::KILL);
            match tokio::time::timeout(AFTER_KILL, self.gone()).await {
                Ok(()) => info!(pid = ?group, "the service was killed"),
                Err(_) => {
                    warn!(pid = ?group, after = ?AFTER_KILL, "processes of the service's group are still alive after SIGKILL");
                }
            }
        }
        self.status
    }
}
