//! `seconds_since_active`: how long each followed port has had nothing that
//! counts as activity: no ESTABLISHED and no TIME_WAIT socket (ignored peers
//! left out; with `--activity-min-age`, only connections at least that old,
//! and only TIME_WAIT sockets such connections left).
//!
//! Two inputs: what a reading shows now (busy or not), and the kernel's
//! timestamp of the last activity, which the eBPF source provides. The second
//! is what catches a connection that opened and closed between two reads: it
//! counts as activity at the moment it closed.
use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use crate::{
    clock::nanos,
    lock::lock,
    source::{Detail, PortReading, Reading},
};

const NS: u64 = 1_000_000_000;

/// Idle time of every followed port and of all of them together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Idle {
    pub ports: BTreeMap<u16, u64>,
    /// Seconds since any followed port (including ports no longer followed)
    /// was last active: the smallest of the per-port values.
    pub overall: u64,
}

struct State {
    /// Per port, the last moment a reading showed it busy.
    last_busy_ns: BTreeMap<u16, u64>,
    /// The latest activity on any port, followed now or before.
    last_any_ns: u64,
}

pub struct Activity {
    started_ns: u64,
    min_age_ns: u64,
    state: Mutex<State>,
}

impl Activity {
    pub fn new(started_ns: u64, activity_min_age: Duration) -> Self {
        Activity {
            started_ns,
            min_age_ns: nanos(activity_min_age),
            state: Mutex::new(State {
                last_busy_ns: BTreeMap::new(),
                last_any_ns: started_ns,
            }),
        }
    }

    /// What a reading must carry for `observe` to decide: connection ages
    /// when only connections of a minimum age count.
    pub fn detail(&self) -> Detail {
        Detail {
            starts: self.min_age_ns > 0,
        }
    }

    /// Whether the port has activity right now.
    pub fn busy(&self, r: &PortReading, now_ns: u64) -> bool {
        r.established_at_least(self.min_age_ns, now_ns) > 0
            || r.time_wait_total() > r.young_time_wait
    }

    /// CLOCK_BOOTTIME of the latest activity on any port (or of start),
    /// as of the last `observe`.
    pub fn last_active_ns(&self) -> u64 {
        lock(&self.state).last_any_ns
    }

    /// Records `reading`, taken at `now_ns`, and returns the idle seconds.
    pub fn observe(&self, reading: &Reading, now_ns: u64) -> Idle {
        let mut state = lock(&self.state);
        let mut ports = BTreeMap::new();
        for (&port, r) in reading {
            let mut last = self.started_ns;
            if self.busy(r, now_ns) {
                state.last_busy_ns.insert(port, now_ns);
                last = now_ns;
            } else {
                last = last
                    .max(state.last_busy_ns.get(&port).copied().unwrap_or(0))
                    .max(r.last_active_ns.unwrap_or(0));
            }
            state.last_any_ns = state.last_any_ns.max(last.min(now_ns));
            ports.insert(port, now_ns.saturating_sub(last) / NS);
        }
        // Forget ports no longer followed; their last activity lives on in
        // `last_any_ns`.
        state.last_busy_ns.retain(|p, _| reading.contains_key(p));
        Idle {
            ports,
            overall: now_ns.saturating_sub(state.last_any_ns) / NS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS;

    fn reading(established: u64, time_wait: u64, last_active_ns: Option<u64>) -> Reading {
        Reading::from([(
            8080,
            PortReading {
                established: [established, 0],
                time_wait: [0, time_wait],
                last_active_ns,
                ..Default::default()
            },
        )])
    }

    fn idle(a: &Activity, r: &Reading, now: u64) -> u64 {
        let idle = a.observe(r, now);
        assert_eq!(idle.overall, idle.ports[&8080], "one port: same value");
        idle.overall
    }

    #[test]
    fn counts_from_start_when_nothing_was_seen() {
        let a = Activity::new(100 * S, Duration::ZERO);
        assert_eq!(idle(&a, &reading(0, 0, None), 100 * S), 0);
        assert_eq!(idle(&a, &reading(0, 0, None), 120 * S + S / 2), 20);
    }

    #[test]
    fn is_zero_while_established_or_time_wait() {
        let a = Activity::new(0, Duration::ZERO);
        assert_eq!(idle(&a, &reading(1, 0, None), 50 * S), 0);
        assert_eq!(idle(&a, &reading(0, 3, None), 60 * S), 0);
        assert_eq!(idle(&a, &reading(0, 0, None), 66 * S), 6);
    }

    #[test]
    fn a_connection_closed_between_reads_counts_at_its_close() {
        let a = Activity::new(0, Duration::ZERO);
        assert_eq!(idle(&a, &reading(0, 0, None), 10 * S), 10);
        // The kernel saw a 10 ms connection close at 19.5 s.
        assert_eq!(idle(&a, &reading(0, 0, Some(19 * S + S / 2)), 20 * S), 0);
        assert_eq!(idle(&a, &reading(0, 0, Some(19 * S + S / 2)), 26 * S), 6);
    }

    #[test]
    fn kernel_stamp_older_than_last_busy_read_does_not_go_back() {
        let a = Activity::new(0, Duration::ZERO);
        a.observe(&reading(2, 0, Some(5 * S)), 30 * S);
        assert_eq!(idle(&a, &reading(0, 0, Some(5 * S)), 34 * S), 4);
    }

    #[test]
    fn young_connections_and_their_time_wait_are_not_activity() {
        let a = Activity::new(0, Duration::from_secs(5));
        assert_eq!(a.detail(), Detail { starts: true });
        let mut r = reading(1, 2, None);
        let port = r.get_mut(&8080).expect("port");
        port.starts = Some(vec![18 * S]);
        port.young_time_wait = 2;
        assert_eq!(idle(&a, &r, 20 * S), 20, "a 2 s old connection is not yet");
        assert_eq!(idle(&a, &r, 23 * S), 0, "at 5 s old it is");
        let port = r.get_mut(&8080).expect("port");
        port.young_time_wait = 1;
        port.starts = Some(vec![]);
        port.established = [0, 0];
        assert_eq!(idle(&a, &r, 30 * S), 0, "one TIME_WAIT from a mature one");
    }

    #[test]
    fn overall_remembers_ports_no_longer_followed() {
        let a = Activity::new(0, Duration::ZERO);
        let two = Reading::from([
            (80, PortReading::default()),
            (
                443,
                PortReading {
                    established: [1, 0],
                    ..Default::default()
                },
            ),
        ]);
        let idle = a.observe(&two, 10 * S);
        assert_eq!(
            (idle.ports[&80], idle.ports[&443], idle.overall),
            (10, 0, 0)
        );
        // 443 is gone (its listener and connections); 80 never was active.
        let idle = a.observe(&Reading::from([(80, PortReading::default())]), 14 * S);
        assert_eq!((idle.ports[&80], idle.overall), (14, 4));
        assert_eq!(a.observe(&Reading::new(), 15 * S).overall, 5);
    }
}
