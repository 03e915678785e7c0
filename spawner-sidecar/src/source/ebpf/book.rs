//! What an eBPF source knows about the ports of one namespace besides the
//! kernel's counts: which ports it follows, each port's correction from the
//! snapshots, and what the last snapshot established. The per-pod source
//! keeps one book; node mode one per namespace, so both run the same rounds
//! (`rounds.rs`) on the same data.
use std::{collections::BTreeMap, time::Instant};

use tracing::info;

use super::rounds::{self, LastSnapshot};
use crate::source::{
    Follow, Reading,
    reconcile::{Correction, EventCounts},
};

pub struct Book {
    pub follow: Follow,
    pub corrections: BTreeMap<u16, Correction>,
    /// Times a snapshot found a quiet port's counts wrong.
    pub corrections_total: u64,
    /// What the last snapshot established, to tell whether the next one
    /// can teach anything (see `rounds::snapshot_needed`).
    pub last_snapshot: Option<LastSnapshot>,
}

/// What folding one snapshot into a book did.
#[derive(Debug, Default)]
pub struct Folded {
    /// Ports quiet during the snapshot: their counts are exact.
    pub quiet: Vec<u16>,
    /// Ports to start and to stop counting (`--all-ports`).
    pub added: Vec<u16>,
    pub removed: Vec<u16>,
}

impl Book {
    pub fn new(follow: Follow) -> Self {
        Book {
            follow,
            corrections: BTreeMap::new(),
            corrections_total: 0,
            last_snapshot: None,
        }
    }

    /// Starts correcting `port` (its first snapshot seeds it).
    pub fn track(&mut self, port: u16) {
        self.corrections.entry(port).or_default();
    }

    pub fn untrack(&mut self, port: u16) {
        self.corrections.remove(&port);
    }

    /// Ports not yet confirmed by a quiet snapshot.
    pub fn pending(&self) -> Vec<u16> {
        self.corrections
            .iter()
            .filter(|(_, c)| !c.exact)
            .map(|(&p, _)| p)
            .collect()
    }

    /// Whether a snapshot could change anything now.
    pub fn snapshot_needed(
        &self,
        now: Instant,
        listeners_lost: Option<u64>,
        events: &BTreeMap<u16, EventCounts>,
    ) -> bool {
        rounds::snapshot_needed(
            self.last_snapshot.as_ref(),
            now,
            listeners_lost,
            &self.corrections,
            events,
        )
    }

    /// The ports as the kernel has them now: events plus corrections.
    pub fn current(&self, events: &BTreeMap<u16, EventCounts>) -> Reading {
        events
            .iter()
            .map(|(port, e)| {
                let correction = self.corrections.get(port).copied().unwrap_or_default();
                (*port, correction.apply(e))
            })
            .collect()
    }

    /// Folds a snapshot of `ports` (`counted` per port; `listening`: every
    /// port with a listener in it) taken between the event reads `before`
    /// and `after`, and decides which ports to follow next.
    pub fn fold(
        &mut self,
        ports: &[u16],
        before: &BTreeMap<u16, EventCounts>,
        counted: &Reading,
        after: &BTreeMap<u16, EventCounts>,
        listening: &[u16],
        listeners_lost: u64,
    ) -> Folded {
        let folded = rounds::fold_snapshot(&mut self.corrections, before, counted, after);
        for port in &folded.drifted {
            info!(port, "event counts corrected by snapshot");
        }
        self.corrections_total += folded.drifted.len() as u64;
        self.last_snapshot = Some(LastSnapshot::new(
            Instant::now(),
            &folded,
            after,
            listeners_lost,
        ));
        let now = self.current(after);
        let (added, removed) = self.follow.update(listening, &now, ports);
        Folded {
            quiet: folded.quiet,
            added,
            removed,
        }
    }
}
