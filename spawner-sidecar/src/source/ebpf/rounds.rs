//! The eBPF source's reconcile rounds as pure decisions over plain data:
//! whether a tick needs a snapshot at all, how one snapshot corrects every
//! port's event counts, and which corrections may stick (let later ticks
//! skip the snapshot). The source feeds them map reads and snapshots; these
//! functions touch neither, so each case that once needed a fix has a unit
//! test here.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::source::{
    Reading,
    reconcile::{Correction, EventCounts, Outcome},
};

/// However quiet the ports, a snapshot at least this often: the safety net
/// for events the kernel skipped (`recursion_misses`), which move no counter.
pub const SNAPSHOT_AT_LEAST_EVERY: Duration = Duration::from_secs(60);

/// What the last snapshot established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastSnapshot {
    pub at: Instant,
    /// Per port, its transition counter, where the port was quiet and the
    /// snapshot confirmed the correction the one before it had set.
    pub transitions: BTreeMap<u16, u64>,
    /// The program's count of listener reports it could not deliver, then.
    pub listeners_lost: u64,
}

/// Whether a snapshot could change anything. It cannot when every port was
/// quiet and exact at the last one, with the correction the one before had
/// set (`LastSnapshot::transitions`), had no TIME_WAIT then (a TIME_WAIT
/// socket appears only after a close, which is a transition), and has had
/// no transition since; nor could listeners have been missed. This is what
/// keeps an idle tracker's ticks from walking every socket of a busy node.
pub fn snapshot_needed(
    last: Option<&LastSnapshot>,
    now: Instant,
    at_least_every: Duration,
    listeners_lost: Option<u64>,
    corrections: &BTreeMap<u16, Correction>,
    events: &BTreeMap<u16, EventCounts>,
) -> bool {
    let Some(last) = last else {
        return true;
    };
    if now.saturating_duration_since(last.at) >= at_least_every
        || listeners_lost != Some(last.listeners_lost)
    {
        return true;
    }
    corrections.iter().any(|(port, correction)| {
        !correction.exact
            || correction.time_wait_total() > 0
            || events.get(port).map(|e| e.transitions) != last.transitions.get(port).copied()
    })
}

/// What folding one snapshot into the corrections did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Ports that were quiet during the snapshot: their counts are exact.
    pub quiet: Vec<u16>,
    /// Quiet ports whose correction this snapshot confirmed unchanged: only
    /// these may skip later snapshots. A correction computed while a close
    /// was half done (the program has counted it, the socket's state is
    /// stored just after) is off by one, and must meet a second snapshot
    /// before the tracker stops looking.
    pub stable: Vec<u16>,
    /// Quiet ports whose exact correction had to change: events were missed.
    pub drifted: Vec<u16>,
}

/// Folds a snapshot (`counted`, per port) taken between the event reads
/// `before` and `after` into each followed port's correction.
pub fn fold_snapshot(
    corrections: &mut BTreeMap<u16, Correction>,
    before: &BTreeMap<u16, EventCounts>,
    counted: &Reading,
    after: &BTreeMap<u16, EventCounts>,
) -> Folded {
    let mut folded = Folded::default();
    for (port, correction) in corrections.iter_mut() {
        let (Some(b), Some(s), Some(a)) = (before.get(port), counted.get(port), after.get(port))
        else {
            continue;
        };
        let previous = *correction;
        match correction.update(b, s, a) {
            Outcome::Reconciled { drift } => {
                folded.quiet.push(*port);
                if *correction == previous {
                    folded.stable.push(*port);
                }
                if drift {
                    folded.drifted.push(*port);
                }
            }
            Outcome::Busy => {}
        }
    }
    folded
}

impl LastSnapshot {
    /// The record of a snapshot taken `at`, after which the event counters
    /// read `after`.
    pub fn new(
        at: Instant,
        folded: &Folded,
        after: &BTreeMap<u16, EventCounts>,
        listeners_lost: u64,
    ) -> Self {
        LastSnapshot {
            at,
            transitions: folded
                .stable
                .iter()
                .filter_map(|p| Some((*p, after.get(p)?.transitions)))
                .collect(),
            listeners_lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::PortReading;

    const PORT: u16 = 8080;

    fn events(established: i64, transitions: u64) -> BTreeMap<u16, EventCounts> {
        BTreeMap::from([(
            PORT,
            EventCounts {
                established: [established, 0],
                listening: 1,
                transitions,
                ..Default::default()
            },
        )])
    }

    fn snapshot(established: u64, time_wait: u64) -> Reading {
        Reading::from([(
            PORT,
            PortReading {
                established: [established, 0],
                time_wait: [time_wait, 0],
                listeners: 1,
                ..Default::default()
            },
        )])
    }

    fn followed() -> BTreeMap<u16, Correction> {
        BTreeMap::from([(PORT, Correction::default())])
    }

    /// One whole round as the source runs it: decide, snapshot, fold,
    /// record. Returns whether a snapshot was taken.
    fn round(
        state: &mut (BTreeMap<u16, Correction>, Option<LastSnapshot>),
        now: Instant,
        before: &BTreeMap<u16, EventCounts>,
        counted: &Reading,
        after: &BTreeMap<u16, EventCounts>,
    ) -> bool {
        let (corrections, last) = state;
        if !snapshot_needed(
            last.as_ref(),
            now,
            SNAPSHOT_AT_LEAST_EVERY,
            Some(0),
            corrections,
            before,
        ) {
            return false;
        }
        let folded = fold_snapshot(corrections, before, counted, after);
        *last = Some(LastSnapshot::new(now, &folded, after, 0));
        true
    }

    #[test]
    fn the_first_round_always_takes_a_snapshot() {
        assert!(snapshot_needed(
            None,
            Instant::now(),
            SNAPSHOT_AT_LEAST_EVERY,
            Some(0),
            &followed(),
            &events(0, 0)
        ));
    }

    #[test]
    fn a_correction_sticks_only_after_two_agreeing_snapshots() {
        // Commit 8f02f31: a snapshot taken mid-close (the program counted
        // the close, the socket's state not yet stored) sets a correction
        // that is off by one. Skipping after that one snapshot left the
        // count wrong for up to a minute.
        let t0 = Instant::now();
        let mut state = (followed(), None);
        let quiet = events(2, 5);
        // Mid-close: events say 2, the snapshot still lists 3.
        assert!(round(&mut state, t0, &quiet, &snapshot(3, 0), &quiet));
        assert_eq!(state.0[&PORT].apply(&quiet[&PORT]).established[0], 3);
        assert!(
            state.1.as_ref().is_some_and(|l| l.transitions.is_empty()),
            "first correction is not yet stable"
        );
        // The next tick must look again, and corrects it.
        let t1 = t0 + Duration::from_secs(1);
        assert!(round(&mut state, t1, &quiet, &snapshot(2, 0), &quiet));
        assert_eq!(state.0[&PORT].apply(&quiet[&PORT]).established[0], 2);
        // Still changed by that snapshot: not stable yet.
        let t2 = t1 + Duration::from_secs(1);
        assert!(round(&mut state, t2, &quiet, &snapshot(2, 0), &quiet));
        // Two agreeing snapshots: now the quiet port skips.
        let t3 = t2 + Duration::from_secs(1);
        assert!(!round(&mut state, t3, &quiet, &snapshot(99, 0), &quiet));
        assert_eq!(state.0[&PORT].apply(&quiet[&PORT]).established[0], 2);
    }

    #[test]
    fn a_transition_since_the_last_snapshot_needs_a_new_one() {
        let t0 = Instant::now();
        let mut state = (followed(), None);
        let quiet = events(1, 2);
        round(&mut state, t0, &quiet, &snapshot(1, 0), &quiet);
        round(&mut state, t0, &quiet, &snapshot(1, 0), &quiet);
        let (corrections, last) = &state;
        assert!(!snapshot_needed(
            last.as_ref(),
            t0,
            SNAPSHOT_AT_LEAST_EVERY,
            Some(0),
            corrections,
            &quiet
        ));
        assert!(snapshot_needed(
            last.as_ref(),
            t0,
            SNAPSHOT_AT_LEAST_EVERY,
            Some(0),
            corrections,
            &events(0, 3)
        ));
    }

    #[test]
    fn time_wait_keeps_snapshots_coming_until_it_is_gone() {
        // No event reports a TIME_WAIT socket's end: only snapshots see it.
        let t0 = Instant::now();
        let mut state = (followed(), None);
        let quiet = events(0, 4);
        round(&mut state, t0, &quiet, &snapshot(0, 1), &quiet);
        assert!(round(&mut state, t0, &quiet, &snapshot(0, 1), &quiet));
        assert!(round(&mut state, t0, &quiet, &snapshot(0, 0), &quiet));
        assert_eq!(state.0[&PORT].apply(&quiet[&PORT]).time_wait, [0, 0]);
        // Gone, and the correction changed with it: once more to confirm.
        assert!(round(&mut state, t0, &quiet, &snapshot(0, 0), &quiet));
        assert!(!round(&mut state, t0, &quiet, &snapshot(0, 7), &quiet));
    }

    #[test]
    fn a_busy_port_keeps_its_correction_and_is_not_quiet() {
        let mut corrections = followed();
        let folded = fold_snapshot(
            &mut corrections,
            &events(0, 1),
            &snapshot(50, 0),
            &events(1, 2),
        );
        assert_eq!(folded, Folded::default());
        assert!(!corrections[&PORT].exact);
        assert!(snapshot_needed(
            Some(&LastSnapshot::new(
                Instant::now(),
                &folded,
                &events(1, 2),
                0
            )),
            Instant::now(),
            SNAPSHOT_AT_LEAST_EVERY,
            Some(0),
            &corrections,
            &events(1, 2)
        ));
    }

    #[test]
    fn drift_is_reported_only_for_an_exact_correction_that_changed() {
        let mut corrections = followed();
        let e = events(5, 6);
        let first = fold_snapshot(&mut corrections, &e, &snapshot(5, 0), &e);
        assert!(first.drifted.is_empty(), "seeding is not drift");
        let missed = fold_snapshot(&mut corrections, &e, &snapshot(4, 0), &e);
        assert_eq!(missed.drifted, [PORT]);
        assert!(missed.stable.is_empty());
    }

    #[test]
    fn lost_listener_reports_or_a_minute_force_a_snapshot() {
        let t0 = Instant::now();
        let mut state = (followed(), None);
        let quiet = events(0, 1);
        round(&mut state, t0, &quiet, &snapshot(0, 0), &quiet);
        round(&mut state, t0, &quiet, &snapshot(0, 0), &quiet);
        let (corrections, last) = &state;
        let last = last.as_ref();
        assert!(!snapshot_needed(
            last,
            t0,
            SNAPSHOT_AT_LEAST_EVERY,
            Some(0),
            corrections,
            &quiet
        ));
        assert!(snapshot_needed(
            last,
            t0,
            SNAPSHOT_AT_LEAST_EVERY,
            Some(1),
            corrections,
            &quiet
        ));
        assert!(snapshot_needed(
            last,
            t0,
            SNAPSHOT_AT_LEAST_EVERY,
            None,
            corrections,
            &quiet
        ));
        let later = t0 + SNAPSHOT_AT_LEAST_EVERY;
        assert!(snapshot_needed(
            last,
            later,
            SNAPSHOT_AT_LEAST_EVERY,
            Some(0),
            corrections,
            &quiet
        ));
    }

    #[test]
    fn a_port_missing_from_a_read_is_left_alone() {
        let mut corrections = followed();
        let folded = fold_snapshot(
            &mut corrections,
            &BTreeMap::new(),
            &snapshot(3, 0),
            &events(0, 0),
        );
        assert_eq!(folded, Folded::default());
        assert_eq!(corrections[&PORT], Correction::default());
    }
}
