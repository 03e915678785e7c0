//! Readiness: the service is ready when every `host:port` target accepts a
//! TCP connection. Dials are retried from 1 ms, doubling up to 50 ms apart,
//! so a slow service costs at most twenty dials a second. With a check
//! URL, readiness also needs it to answer 200-399 (the heartbeat's check).
//!
//! The backoff alone sees a port up to 50 ms after it opened (25 ms on
//! average). Where the kernel can say at once, it is asked instead of
//! dialing faster: for a target the tracker follows on the eBPF source
//! ([`Listening::Count`]), the LISTEN count of its port is read every
//! [`LOOK_EVERY`] (a BPF map read) beside the backoff, and a new listener
//! is dialed the moment it appears. The kernel counts the listener as
//! listen(2) marks it LISTEN, a moment before it accepts, so that dial may
//! still be refused: the backoff then starts again from 1 ms.
use std::time::Duration;

use tokio::time::Instant;

use super::{
    address::{Target, join},
    dial::{self, Local},
    spec::CheckUrl,
    tracker::Listening,
};
use crate::heartbeat::check::Checker;

/// Limit of one HTTP readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub const FIRST_RETRY: Duration = Duration::from_millis(1);
const MAX_RETRY: Duration = Duration::from_millis(50);

/// How often the kernel's listener count is read while a start waits.
pub const LOOK_EVERY: Duration = Duration::from_millis(1);

/// The next pause after `pause`: doubled, at most [`MAX_RETRY`].
pub fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_RETRY)
}

/// What made readiness dial the target that accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noticed {
    /// The kernel counted a new listener on its port.
    Listener,
    /// The backoff's turn came.
    Dial,
}

impl Noticed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::Dial => "dial",
        }
    }
}

/// When to dial a target next while a start waits for it.
#[derive(Debug)]
struct Schedule {
    pause: Duration,
    next_dial: Instant,
    /// The last listener count read, if any was.
    seen: u64,
    /// The dial now due is for a new listener.
    for_listener: bool,
}

impl Schedule {
    /// The first dial is due at once.
    fn new(now: Instant) -> Self {
        Self {
            pause: FIRST_RETRY,
            next_dial: now,
            seen: 0,
            for_listener: false,
        }
    }

    fn dial_due(&self, now: Instant) -> bool {
        now >= self.next_dial
    }

    /// A dial at `now` failed: the next after the pause, which doubles.
    fn failed(&mut self, now: Instant) {
        self.next_dial = now + self.pause;
        self.pause = next_pause(self.pause);
        self.for_listener = false;
    }

    /// The kernel counted `count` listeners at `now`. One more than last
    /// time is dialed at once, and the backoff starts again from its
    /// first pause (the new listener may not accept yet).
    fn listeners(&mut self, count: u64, now: Instant) {
        if count > self.seen {
            self.next_dial = now;
            self.pause = FIRST_RETRY;
            self.for_listener = true;
        }
        self.seen = count;
    }

    /// When to wake up next: the next dial, or the next look at the kernel.
    fn wake_at(&self, now: Instant, looking: bool) -> Instant {
        if looking {
            self.next_dial.min(now + LOOK_EVERY)
        } else {
            self.next_dial
        }
    }
}

/// Resolves once every target accepts a connection (probe connections are
/// closed at once). Cancel by dropping: the caller races it with the
/// child's exit. `exec:` targets cannot be probed and are skipped.
/// Probes come from where the service's clients will (`local`: see
/// [`dial::connect`]), so that the tracker does not take them for the pod's.
/// `look` is the kernel's listener count of a target (the tracker's).
/// Returns how the targets were seen to accept: [`Noticed::Dial`] if any
/// was found by the backoff; `None` without a target to dial.
pub async fn wait(
    targets: &[Target],
    check_url: Option<&CheckUrl>,
    local: Option<&Local>,
    look: impl Fn(&Target) -> Listening,
) -> Option<Noticed> {
    let mut noticed = None;
    for target in targets {
        let Target::Host { host, port } = target else {
            continue;
        };
        let this = wait_for(&join(host, *port), local, || look(target)).await;
        if noticed != Some(Noticed::Dial) {
            noticed = Some(this);
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
    noticed
}

/// Until `address` accepts a connection.
async fn wait_for(address: &str, local: Option<&Local>, look: impl Fn() -> Listening) -> Noticed {
    let mut schedule = Schedule::new(Instant::now());
    let mut looking = true;
    loop {
        if looking {
            match look() {
                Listening::Count(n) => schedule.listeners(n, Instant::now()),
                // The source is still loading: it may be there next time.
                Listening::NotYet => {}
                Listening::Unknown => looking = false,
            }
        }
        if schedule.dial_due(Instant::now()) {
            if dial::connect(address, local).await.is_ok() {
                return if schedule.for_listener {
                    Noticed::Listener
                } else {
                    Noticed::Dial
                };
            }
            schedule.failed(Instant::now());
        }
        tokio::time::sleep_until(schedule.wake_at(Instant::now(), looking)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, TcpListener},
        sync::atomic::{AtomicU64, Ordering},
    };

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

    #[test]
    fn without_the_kernel_dials_follow_the_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(s.dial_due(t0), "the first dial is at once");
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            s.failed(now);
            gaps.push((s.wake_at(now, false) - now).as_millis());
            now = s.wake_at(now, false);
            assert!(s.dial_due(now));
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn a_new_listener_is_dialed_at_once_and_restarts_the_backoff() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Schedule::new(t0);
        // Refused for a while: the next dial is 50 ms away.
        let mut now = t0;
        for _ in 0..7 {
            s.failed(now);
            now = s.wake_at(now, false);
        }
        s.failed(now);
        assert_eq!(s.next_dial - now, ms(50));
        // Looking at the kernel wakes every millisecond meanwhile.
        assert_eq!(s.wake_at(now, true) - now, LOOK_EVERY);
        s.listeners(0, now);
        assert!(!s.dial_due(now + ms(1)), "no listener: no dial");
        // The backend's listen(): dialed the same millisecond.
        let listened = now + ms(3);
        s.listeners(1, listened);
        assert!(s.dial_due(listened));
        // Not accepting yet: the backoff starts again from 1 ms.
        s.failed(listened);
        assert_eq!(s.next_dial - listened, FIRST_RETRY);
        // The same listener seen again is not dialed again at once.
        s.listeners(1, listened + ms(1) / 2);
        assert!(!s.dial_due(listened + ms(1) / 2));
    }

    #[test]
    fn a_listener_that_closed_and_came_back_is_dialed_again() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.listeners(1, t0);
        s.failed(t0);
        s.listeners(0, t0);
        let back = t0 + Duration::from_micros(300);
        s.listeners(1, back);
        assert!(s.dial_due(back));
    }

    /// A port of ours that nothing listens on (for now).
    fn closed_port() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// Waits for a port that starts listening 30 ms in, the kernel's
    /// count saying `listening` all along: how it was noticed, and how
    /// often the count was looked at.
    async fn wait_while_it_opens(listening: Listening) -> (Noticed, u64) {
        let port = closed_port();
        let address = format!("127.0.0.1:{port}");
        let looks = AtomicU64::new(0);
        let waited = wait_for(&address, None, || {
            looks.fetch_add(1, Ordering::SeqCst);
            listening
        });
        let opened = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("rebind")
        };
        let (noticed, _listener) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(waited, opened)
        })
        .await
        .expect("ready once it accepts");
        (noticed, looks.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_listener_counted_before_it_accepts_is_dialed_until_it_does() {
        // The kernel counts it from the start; it accepts only later.
        let (noticed, looks) = wait_while_it_opens(Listening::Count(1)).await;
        assert!(looks > 1, "looked while it waited");
        // Counted once, refused, then found by the backoff.
        assert_eq!(noticed, Noticed::Dial);
    }

    #[tokio::test]
    async fn without_a_count_the_wait_dials_alone_and_looks_once() {
        let (noticed, looks) = wait_while_it_opens(Listening::Unknown).await;
        assert_eq!(looks, 1);
        assert_eq!(noticed, Noticed::Dial);
    }
}
