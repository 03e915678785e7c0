//! A child process whose stderr is collected line by line with arrival
//! times, which reports the port it serves on (its ` serving ... address=`
//! log line) and which is stopped with SIGTERM: the daemon and the
//! `heartbeat` subcommand under test, and the benchmarks' trackers.

use std::{
    io::{self, BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
    },
    time::{Duration, Instant},
};

/// Stderr lines with their arrival times, and whether stderr has ended.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Instant, String)>>,
    complete: AtomicBool,
}

impl Log {
    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, String)>> {
        // A reader thread that panicked while pushing left the lines as they were.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Process {
    child: Child,
    pub started: Instant,
    /// When the process was seen to have exited.
    pub exited: Option<Instant>,
    log: Arc<Log>,
    serving: Receiver<u16>,
}

/// The port of a ` serving ` line's `address=` field.
fn serving_port(line: &str) -> Option<u16> {
    if !line.contains(" serving ") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
}

impl Process {
    /// Starts `cmd` with stdin and stdout closed and stderr collected. With
    /// `echo`, lines other than INFO ones are also printed to our stderr
    /// with that prefix (warnings of a process nobody else watches).
    pub fn spawn(cmd: &mut Command, echo: Option<&'static str>) -> io::Result<Process> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let started = Instant::now();
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr"))?;
        let log = Arc::new(Log::default());
        let (tx, serving) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = serving_port(&line) {
                    let _ = tx.send(port);
                }
                if let Some(prefix) = echo
                    && !line.contains(" INFO ")
                {
                    eprintln!("{prefix} {line}");
                }
                sink.lines().push((Instant::now(), line));
            }
            sink.complete.store(true, Ordering::SeqCst);
        });
        Ok(Process {
            child,
            started,
            exited: None,
            log,
            serving,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port from the process's first ` serving ` line, within `timeout`.
    /// If none comes, the process is killed and the error carries its log.
    pub fn wait_serving(&mut self, timeout: Duration) -> io::Result<u16> {
        match self.serving.recv_timeout(timeout) {
            Ok(port) => Ok(port),
            Err(_) => {
                let _ = self.child.kill();
                let status = self.child.wait().ok();
                self.wait_log_complete();
                Err(io::Error::other(format!(
                    "no ` serving ` line within {timeout:?} (exit {status:?}); log:\n{}",
                    self.log()
                )))
            }
        }
    }

    /// The log so far, one line per line.
    pub fn log(&self) -> String {
        let lines = self.log.lines();
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        text.join("\n")
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lines()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// When the first line containing `needle` arrived.
    pub fn line_time(&self, needle: &str) -> Option<Instant> {
        self.log
            .lines()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the process ends within `timeout`, with its log
    /// complete; after the timeout it is killed and the error carries its log.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited.get_or_insert_with(Instant::now);
                self.wait_log_complete();
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(io::Error::other(format!(
                    "still running after {timeout:?}; log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then [`Process::wait_exit`].
    pub fn terminate(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            self.exited.get_or_insert_with(Instant::now);
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(io::Error::other)?;
        // SAFETY: kill(2) on our own child, which has not been reaped yet
        // (try_wait above saw it running), so the pid is still its own.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.wait_exit(timeout)
    }

    /// The reader thread sees the end of stderr shortly after the exit.
    fn wait_log_complete(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.log.complete.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_port_reads_the_address_field() {
        let line = "2026-01-01T00:00:00Z  INFO spawner_sidecar: serving address=127.0.0.1:4321 source=ebpf";
        assert_eq!(serving_port(line), Some(4321));
        assert_eq!(serving_port("INFO serving"), None);
        assert_eq!(serving_port("INFO checking address=127.0.0.1:1"), None);
    }

    #[test]
    fn collects_stderr_and_the_exit() {
        let mut p = Process::spawn(
            Command::new("sh").args([
                "-c",
                "echo ' serving address=127.0.0.1:99' >&2; echo two >&2",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(p.wait_serving(Duration::from_secs(5)).unwrap(), 99);
        assert!(p.wait_exit(Duration::from_secs(5)).unwrap().success());
        assert_eq!(p.count("two"), 1);
        assert!(p.line_time("two").is_some());
    }

    #[test]
    fn sigterm_stops_it() {
        let mut p = Process::spawn(Command::new("sleep").arg("30"), None).unwrap();
        let status = p.terminate(Duration::from_secs(5)).unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }
}
