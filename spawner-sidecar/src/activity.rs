//! `seconds_since_active`: how long each followed port has had neither an
//! ESTABLISHED nor a TIME_WAIT socket.
//!
//! Two inputs: what a reading shows now (busy or not), and the kernel's
//! timestamp of the last ESTABLISHED entry or exit, which the eBPF source
//! provides. The second is what catches a connection that opened and closed
//! between two reads: it counts as activity at the moment it closed.
use std::{collections::BTreeMap, sync::Mutex};

use crate::source::Reading;

/// CLOCK_BOOTTIME in nanoseconds: the clock `bpf_ktime_get_boot_ns()` uses,
/// so kernel and daemon timestamps compare directly.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every kernel this program can load on (2.6.39+), so this cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct Activity {
    started_ns: u64,
    /// Per port, the last moment a reading showed it busy.
    last_busy_ns: Mutex<BTreeMap<u16, u64>>,
}

impl Activity {
    pub fn new(started_ns: u64) -> Self {
        Activity {
            started_ns,
            last_busy_ns: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records `reading`, taken at `now_ns`, and returns per port the whole
    /// seconds since it was last active (0 while it is).
    pub fn observe(&self, reading: &Reading, now_ns: u64) -> BTreeMap<u16, u64> {
        let mut last_busy = self.last_busy_ns.lock().unwrap_or_else(|e| e.into_inner());
        reading
            .iter()
            .map(|(&port, r)| {
                if r.busy() {
                    last_busy.insert(port, now_ns);
                    return (port, 0);
                }
                let last = [
                    Some(self.started_ns),
                    last_busy.get(&port).copied(),
                    r.last_active_ns,
                ]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(self.started_ns);
                (port, now_ns.saturating_sub(last) / 1_000_000_000)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::PortReading;

    const S: u64 = 1_000_000_000;

    fn reading(established: u64, time_wait: u64, last_active_ns: Option<u64>) -> Reading {
        Reading::from([(
            8080,
            PortReading {
                established_v4: established,
                time_wait,
                last_active_ns,
                ..Default::default()
            },
        )])
    }

    #[test]
    fn counts_from_start_when_nothing_was_seen() {
        let a = Activity::new(100 * S);
        assert_eq!(a.observe(&reading(0, 0, None), 100 * S)[&8080], 0);
        assert_eq!(a.observe(&reading(0, 0, None), 120 * S + S / 2)[&8080], 20);
    }

    #[test]
    fn is_zero_while_established_or_time_wait() {
        let a = Activity::new(0);
        assert_eq!(a.observe(&reading(1, 0, None), 50 * S)[&8080], 0);
        assert_eq!(a.observe(&reading(0, 3, None), 60 * S)[&8080], 0);
        assert_eq!(a.observe(&reading(0, 0, None), 66 * S)[&8080], 6);
    }

    #[test]
    fn a_connection_closed_between_reads_counts_at_its_close() {
        let a = Activity::new(0);
        assert_eq!(a.observe(&reading(0, 0, None), 10 * S)[&8080], 10);
        // The kernel saw a 10 ms connection close at 19.5 s.
        assert_eq!(
            a.observe(&reading(0, 0, Some(19 * S + S / 2)), 20 * S)[&8080],
            0
        );
        assert_eq!(
            a.observe(&reading(0, 0, Some(19 * S + S / 2)), 26 * S)[&8080],
            6
        );
    }

    #[test]
    fn kernel_stamp_older_than_last_busy_read_does_not_go_back() {
        let a = Activity::new(0);
        a.observe(&reading(2, 0, Some(5 * S)), 30 * S);
        assert_eq!(a.observe(&reading(0, 0, Some(5 * S)), 34 * S)[&8080], 4);
    }

    #[test]
    fn boottime_is_monotonic() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(a > 0 && b >= a);
    }
}
