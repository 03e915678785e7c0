//! Waiting for a condition with an upper bound, instead of sleeping for a
//! fixed time and hoping the condition holds by then: on a loaded machine a
//! fixed sleep is either too short (a flaky failure) or longer than needed.

use std::time::{Duration, Instant};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Checks `check` until it returns `Ok`, at most for `timeout`; the error
/// names the bound and the last reason the condition did not hold.
pub fn wait_until<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("not reached within {timeout:?}: {e}"));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`wait_until`] for tests: a condition not reached in time is a failure.
pub fn eventually<T>(timeout: Duration, check: impl FnMut() -> Result<T, String>) -> T {
    wait_until(timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success() {
        let mut calls = 0;
        let got = wait_until(Duration::from_secs(1), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(got, Ok(3));
    }

    #[test]
    fn gives_up_after_the_bound_with_the_last_reason() {
        let started = Instant::now();
        let got: Result<(), String> = wait_until(Duration::from_millis(50), || Err("no".into()));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(got, Err("not reached within 50ms: no".into()));
    }
}
