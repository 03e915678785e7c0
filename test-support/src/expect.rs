//! Assertions the black-box tests share: the sidecar's counts against
//! `ss`'s, waited for within a bound.

use std::time::Duration;

use crate::{
    sidecar::{Sidecar, field},
    ss,
    wait::eventually,
};

/// Waits until the sidecar's `active_connections` equals `ss`'s count of
/// established sockets on `port` and `want`, failing with all three.
pub fn expect_established(sidecar: &Sidecar, port: u16, want: u64) {
    eventually(Duration::from_secs(5), || {
        let truth = ss::count(None, "established", port);
        let status = sidecar.status();
        let got = status["active_connections"].as_u64().unwrap_or(u64::MAX);
        if got == truth && truth == want {
            Ok(())
        } else {
            Err(format!(
                "sidecar says {got}, ss says {truth}, expected {want}; status {status}"
            ))
        }
    });
}

/// Waits until the sidecar's `field_name` equals `ss`'s count of `state`
/// on `port` and `want`, failing with all three.
pub fn expect_matches_ss(
    sidecar: &Sidecar,
    field_name: &str,
    state: &str,
    port: u16,
    want: u64,
    timeout: Duration,
) {
    eventually(timeout, || {
        let truth = ss::count(None, state, port);
        let got = field(sidecar, field_name);
        if got == truth && truth == want {
            Ok(())
        } else {
            Err(format!(
                "{field_name}: sidecar {got}, ss {truth}, expected {want}"
            ))
        }
    });
}
