//! Idle and active hooks with real shell commands writing real files: when
//! they fire, what they are told, one at a time, and what happens when one
//! fails or hangs.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use test_support::{Netns, Server, Sidecar, eventually, free_port, prometheus, require_ebpf};

/// A directory of this test process for the hooks to write into.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spawner-hooks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `path` has `n` lines; returns when that was first seen.
fn wait_lines(path: &Path, n: usize, timeout: Duration) -> Instant {
    eventually(timeout, || {
        let got = lines(path);
        (got.len() >= n).then(Instant::now).ok_or(format!(
            "{} has {} lines, want {n}",
            path.display(),
            got.len()
        ))
    })
}

#[test]
fn on_idle_after_the_idle_time_and_on_active_at_the_next_connection_ebpf() {
    require_ebpf!();
    let dir = scratch("cycle");
    let (idle, active, overlap) = (dir.join("idle"), dir.join("active"), dir.join("overlap"));
    // Each hook holds a lock directory for 300 ms: a second hook running at
    // the same time would find it taken and say so.
    let guard = format!(
        "mkdir {lock} 2>/dev/null || echo overlap >> {overlap}; sleep 0.3; rmdir {lock}",
        lock = dir.join("lock").display(),
        overlap = overlap.display()
    );
    let on_idle = format!(
        "{guard}; echo \"$SPAWNER_SIDECAR_PORT $SPAWNER_SIDECAR_SECONDS_SINCE_ACTIVE\" >> {}",
        idle.display()
    );
    // The hook notes when it started (epoch ns), before the lock's sleep.
    let on_active = format!("date +%s%N >> {}; {guard}", active.display());
    let port = free_port();
    let server = Server::v4(port);
    let started = Instant::now();
    let sidecar = Sidecar::start(&[
        "--source",
        "ebpf",
        "--monitor-port",
        &port.to_string(),
        "--refresh-rate-seconds",
        "10",
        "--idle-after",
        "2s",
        "--on-idle",
        &on_idle,
        "--on-active",
        &on_active,
    ]);
    // Idle since start: on-idle 2 s after start, exactly once. Not before
    // 2 s from the spawn; and from its `serving` line, which it logs after
    // starting its clock, free of a loaded machine's start-up delay.
    let fired = wait_lines(&idle, 1, Duration::from_secs(10));
    let serving = sidecar.line_time(" serving ").expect("a serving line");
    let after = fired.duration_since(started);
    let after_serving = fired.duration_since(serving);
    assert!(
        after >= Duration::from_secs(2) && after_serving < Duration::from_millis(3500),
        "on-idle {after:?} after the spawn, {after_serving:?} after serving"
    );
    assert_eq!(lines(&idle), [format!("{port} 2")]);
    assert!(lines(&active).is_empty());

    // A short connection wakes it, within a second, once.
    let t = Instant::now();
    let connected_at = epoch_ns();
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let accepted = server.listener().accept().unwrap().0;
    drop(client);
    drop(accepted);
    wait_lines(&active, 1, Duration::from_secs(3));
    let started_at: u128 = lines(&active)[0].parse().unwrap();
    let delay = Duration::from_nanos((started_at.saturating_sub(connected_at)) as u64);
    assert!(
        delay < Duration::from_millis(1300),
        "on-active started {delay:?} after the connection"
    );
    // And 2 s after that connection, idle again: a second cycle.
    let again = wait_lines(&idle, 2, Duration::from_secs(5));
    assert!(again.duration_since(t) >= Duration::from_secs(2));
    // Counted once it has exited (it writes its line first).
    eventually(Duration::from_secs(5), || {
        let ok = prometheus::sample(
            &sidecar.metrics(),
            "spawner_sidecar_hook_runs_total",
            &[("hook", "on-idle"), ("result", "ok")],
        );
        (ok == Some(2.0))
            .then_some(())
            .ok_or(format!("on-idle runs counted ok: {ok:?}"))
    });
    // Each hook once: no third run follows the second cycle.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines(&idle).len(), 2);
    assert_eq!(lines(&active).len(), 1);
    assert!(lines(&overlap).is_empty(), "two hooks ran at once");
    let log = sidecar.log();
    assert!(log.contains("hook finished"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_hook_is_logged_counted_and_retried_and_a_hung_one_killed() {
    let dir = scratch("fail");
    let port = free_port();
    let marker = dir.join("ran");
    let sidecar = Sidecar::start(&[
        "--source",
        "proc",
        "--monitor-port",
        &port.to_string(),
        "--refresh-rate-seconds",
        "1",
        "--idle-after",
        "1s",
        "--on-idle",
        // Each run notes when it started (epoch ns).
        &format!(
            "date +%s%N >> {}; echo no-luck >&2; exit 3",
            marker.display()
        ),
    ]);
    // Tried again and again, each a tick (1 s) after the last one failed,
    // not at once: the gaps have a floor, and load only widens them.
    wait_lines(&marker, 4, Duration::from_secs(15));
    let starts: Vec<u128> = lines(&marker).iter().map(|l| l.parse().unwrap()).collect();
    for pair in starts.windows(2) {
        let gap = Duration::from_nanos((pair[1].saturating_sub(pair[0])) as u64);
        // Less than the tick only by how much later `date` started in the
        // first run than in the second.
        assert!(
            gap >= Duration::from_millis(800),
            "tried again {gap:?} after a failure: {starts:?}"
        );
    }
    eventually(Duration::from_secs(5), || {
        let failed = prometheus::sample(
            &sidecar.metrics(),
            "spawner_sidecar_hook_runs_total",
            &[("hook", "on-idle"), ("result", "failed")],
        );
        (failed >= Some(3.0))
            .then_some(())
            .ok_or(format!("failed runs counted: {failed:?}"))
    });
    let log = sidecar.log();
    assert!(
        log.contains("hook failed") && log.contains("no-luck"),
        "{log}"
    );
    // The tracker kept serving throughout.
    assert_eq!(sidecar.status()["source"], "proc");
    drop(sidecar);

    // A hook that hangs is killed at the timeout, with what it started.
    let tag = format!("{}.25", 4000 + std::process::id() % 1000);
    let sidecar = Sidecar::start(&[
        "--source",
        "proc",
        "--monitor-port",
        &port.to_string(),
        "--refresh-rate-seconds",
        "1",
        "--idle-after",
        "1s",
        "--hook-timeout",
        "500ms",
        "--on-idle",
        &format!("sleep {tag} & wait"),
    ]);
    eventually(Duration::from_secs(6), || {
        let samples = sidecar.metrics();
        prometheus::sample(
            &samples,
            "spawner_sidecar_hook_runs_total",
            &[("hook", "on-idle"), ("result", "timeout")],
        )
        .filter(|&n| n >= 2.0)
        .ok_or("fewer than two timeouts".to_string())
    });
    assert!(sidecar.log().contains("hook timed out and was killed"));
    drop(sidecar);
    let wanted = format!("sleep\0{tag}\0");
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let cmdline = std::fs::read(path.join("cmdline")).ok()?;
            (cmdline == wanted.as_bytes()).then(|| path.display().to_string())
        })
        .collect();
    assert!(
        survivors.is_empty(),
        "the hook's children survived: {survivors:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hook may start a service in the background (`on-active` bringing the
/// app back); it must outlive the hook, and its open output must not make
/// the hook look hung.
#[test]
fn a_process_a_hook_starts_in_the_background_outlives_it() {
    let dir = scratch("background");
    let pidfile = dir.join("pid");
    let sidecar = Sidecar::start(&[
        "--source",
        "proc",
        "--monitor-port",
        &free_port().to_string(),
        "--refresh-rate-seconds",
        "1",
        "--idle-after",
        "500ms",
        "--hook-timeout",
        "3s",
        "--on-idle",
        &format!("sleep 60 & echo $! > {}", pidfile.display()),
    ]);
    let pid: u32 = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or("no pid yet".to_string())
    });
    eventually(Duration::from_secs(3), || {
        sidecar
            .log()
            .contains("hook finished")
            .then_some(())
            .ok_or(sidecar.log())
    });
    assert!(!sidecar.log().contains("timed out"), "{}", sidecar.log());
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the background process died with the hook"
    );
    // SAFETY: kill(2) on the process the hook started, to clean up.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--all-ports`, the hooks are told the ports followed when they run.
#[test]
fn hooks_are_told_the_ports_found_under_all_ports() {
    let dir = scratch("all-ports");
    let told = dir.join("told");
    let ns = Netns::new("hook-ports");
    let service = ns.run(|| Server::v4(9191));
    let sidecar = Sidecar::start_in(
        Some(ns.name()),
        &[
            "--source",
            "sock-diag",
            "--all-ports",
            "--refresh-rate-seconds",
            "1",
            "--idle-after",
            "1s",
            "--on-idle",
            &format!("echo \"$SPAWNER_SIDECAR_PORT\" >> {}", told.display()),
        ],
        &[],
    );
    wait_lines(&told, 1, Duration::from_secs(6));
    assert_eq!(lines(&told), ["9191"]);
    drop((sidecar, service));
    let _ = std::fs::remove_dir_all(&dir);
}
