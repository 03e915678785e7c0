//! Readiness: the service is ready when every `host:port` target accepts a
//! TCP connection. Dials are retried from 1 ms, doubling up to 50 ms apart,
//! so a fast service is seen within about a millisecond of opening its
//! port and a slow one costs at most twenty dials a second. With a check
//! URL, readiness also needs it to answer 200-399 (the heartbeat's check).
use std::time::Duration;

use super::{
    address::{Target, join},
    dial::{self, Local},
    spec::CheckUrl,
};
use crate::heartbeat::check::Checker;

/// Limit of one HTTP readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub const FIRST_RETRY: Duration = Duration::from_millis(1);
const MAX_RETRY: Duration = Duration::from_millis(50);

/// The next pause after `pause`: doubled, at most [`MAX_RETRY`].
pub fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_RETRY)
}

/// Resolves once every target accepts a connection (probe connections are
/// closed at once). Cancel by dropping: the caller races it with the
/// child's exit. `exec:` targets cannot be probed and are skipped.
/// Probes come from where the service's clients will (`local`: see
/// [`dial::connect`]), so that the tracker does not take them for the pod's.
pub async fn wait(targets: &[Target], check_url: Option<&CheckUrl>, local: Option<&Local>) {
    for target in targets {
        let Target::Host { host, port } = target else {
            continue;
        };
        let address = join(host, *port);
        let mut pause = FIRST_RETRY;
        loop {
            if dial::connect(&address, local).await.is_ok() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = next_pause(pause);
        }
    }
    if let Some(url) = check_url {
        let checker = Checker::new(CHECK_TIMEOUT, None);
        let mut pause = FIRST_RETRY;
        while checker.check(url).await.is_err() {
            tokio::time::sleep(pause).await;
            pause = next_pause(pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_one_millisecond_up_to_fifty() {
        let mut pause = FIRST_RETRY;
        let mut seen = vec![pause];
        for _ in 0..8 {
            pause = next_pause(pause);
            seen.push(pause);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [1, 2, 4, 8, 16, 32, 50, 50, 50]);
    }
}
