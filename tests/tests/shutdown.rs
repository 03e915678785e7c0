//! SIGTERM ends the daemon within its shutdown deadline, however many
//! requests are still open: a thousand `/wait-for-idle` calls that would
//! wait ten minutes must not keep a terminating pod alive.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use test_support::{Server, Sidecar, free_port, http};

/// The daemon's deadline (`serve::SHUTDOWN_GRACE`), and what a loaded
/// machine may add to it for starting the exit.
const DEADLINE: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(4);

#[test]
fn sigterm_ends_the_daemon_within_the_deadline_with_1000_drains_open() {
    let port = free_port();
    let mut server = Server::v4(port);
    // A connection that stays: no drain can finish.
    server.connect(1);
    let sidecar = Sidecar::start(&["--source", "sock-diag", "--monitor-port", &port.to_string()]);
    let serve = sidecar.port;
    let mut drains = http::hold_requests(serve, "/wait-for-idle?quiet=1s&timeout=600s", 1000);
    let signalled = Instant::now();
    let status = sidecar.stop();
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took <= DEADLINE + SLACK,
        "SIGTERM to exit took {took:?}, the deadline is {DEADLINE:?}"
    );
    // Each drain was cut, not left hanging: the peer closed it.
    for s in &mut drains {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "a drain connection is still open after exit");
    }
}
