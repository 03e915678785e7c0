//! Joins event-fed counts with periodic snapshots, without a race.
//!
//! The kernel program only sees transitions that happen after it attached,
//! and no event reports TIME_WAIT. So every tick the eBPF source takes a
//! snapshot (a polling source) and, per port, reads the event counters just
//! before and just after it. If the port's transition counter did not move,
//! the snapshot and the event counts describe the same moment, and
//! `correction = snapshot - events` is exact; the answer is then
//! `events + correction`, which stays exact as events keep arriving. A port
//! that was busy during the snapshot keeps its old correction and is retried
//! next tick. This seeds sockets that existed before start and repairs any
//! event the program could not count, with no per-socket state.
use spawner_sidecar_common::PortCounts;

use super::PortReading;

/// One port's event-fed counts, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// By `Family::index`.
    pub established: [i64; 2],
    pub ignored: i64,
    pub listening: i64,
    pub transitions: u64,
    pub opened: u64,
    pub closed: u64,
    pub last_active_ns: u64,
}

impl EventCounts {
    /// Sums per-CPU values: counts add up, the last activity is the latest.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a PortCounts>) -> Self {
        per_cpu
            .into_iter()
            .fold(Self::default(), |acc, c| EventCounts {
                established: [
                    acc.established[0] + c.established_v4,
                    acc.established[1] + c.established_v6,
                ],
                ignored: acc.ignored + c.ignored,
                listening: acc.listening + c.listening,
                transitions: acc.transitions + c.transitions,
                opened: acc.opened + c.opened,
                closed: acc.closed + c.closed,
                last_active_ns: acc.last_active_ns.max(c.last_active_ns),
            })
    }
}

/// What to add to one port's event counts to get the kernel's real counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Correction {
    established: [i64; 2],
    ignored: i64,
    listening: i64,
    /// TIME_WAIT as of the last snapshot (no event reports it).
    time_wait: [u64; 2],
    ignored_time_wait: u64,
    young_time_wait: u64,
    /// Whether a quiet snapshot has been taken since start.
    pub exact: bool,
}

/// What one reconcile round did to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The port was quiet; the correction now matches the snapshot.
    Reconciled {
        /// The correction changed after it was first set: events were
        /// missed, or the snapshot saw something the events did not.
        drift: bool,
    },
    /// Transitions happened during the snapshot; try again next round.
    Busy,
}

impl Correction {
    /// TIME_WAIT sockets of the port at the last snapshot, of any peer.
    pub fn time_wait_total(&self) -> u64 {
        self.time_wait.iter().sum::<u64>() + self.ignored_time_wait
    }

    /// The port as the kernel has it now, given fresh event counts.
    pub fn apply(&self, events: &EventCounts) -> PortReading {
        let clamp = |v: i64| u64::try_from(v).unwrap_or(0);
        PortReading {
            established: [
                clamp(events.established[0] + self.established[0]),
                clamp(events.established[1] + self.established[1]),
            ],
            time_wait: self.time_wait,
            ignored_established: clamp(events.ignored + self.ignored),
            ignored_time_wait: self.ignored_time_wait,
            listeners: clamp(events.listening + self.listening),
            young_time_wait: self.young_time_wait,
            last_active_ns: (events.last_active_ns != 0).then_some(events.last_active_ns),
            opened: events.opened,
            closed: events.closed,
            starts: None,
        }
    }

    /// Folds in a snapshot taken between the event reads `before` and `after`.
    pub fn update(
        &mut self,
        before: &EventCounts,
        snapshot: &PortReading,
        after: &EventCounts,
    ) -> Outcome {
        // TIME_WAIT only ever comes from snapshots: take it even from a busy
        // one, it is at most one tick old either way.
        self.time_wait = snapshot.time_wait;
        self.ignored_time_wait = snapshot.ignored_time_wait;
        self.young_time_wait = snapshot.young_time_wait;
        if before.transitions != after.transitions {
            return Outcome::Busy;
        }
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let next = Correction {
            established: [
                signed(snapshot.established[0]) - after.established[0],
                signed(snapshot.established[1]) - after.established[1],
            ],
            ignored: signed(snapshot.ignored_established) - after.ignored,
            listening: signed(snapshot.listeners) - after.listening,
            exact: true,
            ..*self
        };
        let drift = self.exact && next != *self;
        *self = next;
        Outcome::Reconciled { drift }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(v4: i64, listening: i64, transitions: u64) -> EventCounts {
        EventCounts {
            established: [v4, 0],
            listening,
            transitions,
            ..Default::default()
        }
    }

    fn snapshot(v4: u64, listeners: u64, time_wait: u64) -> PortReading {
        PortReading {
            established: [v4, 0],
            listeners,
            time_wait: [time_wait, 0],
            ..Default::default()
        }
    }

    #[test]
    fn seeds_sockets_that_existed_before_attach() {
        let mut c = Correction::default();
        // 50 connections and a listener existed; the program saw none of them.
        let quiet = events(0, 0, 0);
        assert_eq!(
            c.update(&quiet, &snapshot(50, 1, 0), &quiet),
            Outcome::Reconciled { drift: false }
        );
        assert_eq!(c.apply(&quiet).established[0], 50);
        // 25 more arrive as events; 75 closes later everything is gone.
        assert_eq!(c.apply(&events(25, 0, 25)).established[0], 75);
        let r = c.apply(&events(-50, 0, 100));
        assert_eq!((r.established[0], r.listeners), (0, 1));
    }

    #[test]
    fn keeps_old_correction_when_port_was_busy_during_snapshot() {
        let mut c = Correction::default();
        let quiet = events(0, 1, 1);
        c.update(&quiet, &snapshot(10, 1, 2), &quiet);
        // A connection opened mid-snapshot: the snapshot may or may not
        // include it, so it is not trusted for the counts.
        let outcome = c.update(&events(0, 1, 1), &snapshot(99, 1, 3), &events(1, 1, 2));
        assert_eq!(outcome, Outcome::Busy);
        let r = c.apply(&events(1, 1, 2));
        assert_eq!(r.established[0], 11);
        assert_eq!(
            r.time_wait,
            [3, 0],
            "TIME_WAIT is taken from every snapshot"
        );
    }

    #[test]
    fn reports_drift_when_events_were_missed() {
        let mut c = Correction::default();
        let e = events(5, 1, 6);
        assert_eq!(
            c.update(&e, &snapshot(5, 1, 0), &e),
            Outcome::Reconciled { drift: false }
        );
        assert_eq!(
            c.update(&e, &snapshot(5, 1, 0), &e),
            Outcome::Reconciled { drift: false }
        );
        // One close was never seen by the program.
        assert_eq!(
            c.update(&e, &snapshot(4, 1, 0), &e),
            Outcome::Reconciled { drift: true }
        );
        assert_eq!(c.apply(&e).established[0], 4);
    }

    #[test]
    fn never_reports_negative_counts() {
        let c = Correction::default();
        let r = c.apply(&events(-3, -1, 4));
        assert_eq!((r.established[0], r.listeners), (0, 0));
    }

    #[test]
    fn sums_per_cpu_values_and_takes_latest_activity() {
        let cpu0 = PortCounts {
            established_v4: 3,
            transitions: 4,
            last_active_ns: 100,
            ..Default::default()
        };
        let cpu1 = PortCounts {
            established_v4: -1,
            established_v6: 2,
            transitions: 5,
            last_active_ns: 90,
            ..Default::default()
        };
        let sum = EventCounts::sum([&cpu0, &cpu1]);
        assert_eq!(
            (sum.established, sum.transitions, sum.last_active_ns),
            ([2, 2], 9, 100)
        );
    }
}
