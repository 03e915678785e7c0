//! Which ports are followed: the `--monitor-port` ones always, and with
//! `--all-ports` every port that has a LISTEN socket in the namespace, kept
//! while its accepted connections drain after the listener went away.
//! Client sockets have no listener on their ephemeral port, so they are never
//! followed, and at most `MAX_FOLLOWED` ports are, so the port set (and the
//! metric labels) stays bounded on every source.
use std::collections::BTreeSet;

use spawner_sidecar_common::MAX_PORTS;
use tracing::warn;

use super::Reading;

/// As many ports as the kernel program has slots for, on every source.
pub const MAX_FOLLOWED: usize = MAX_PORTS as usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follow {
    fixed: Vec<u16>,
    all_ports: bool,
    /// Never followed by discovery: the daemon's own HTTP port, which
    /// whoever polls the tracker would otherwise keep "active".
    excluded: BTreeSet<u16>,
    current: BTreeSet<u16>,
    /// At most this many ports (`MAX_FOLLOWED`; node mode: per namespace).
    max: usize,
    /// Whether the cap was hit (and said so) already.
    capped: bool,
}

impl Follow {
    pub fn new(fixed: Vec<u16>, all_ports: bool, excluded: &[u16]) -> Self {
        let current = fixed.iter().copied().collect();
        Follow {
            fixed,
            all_ports,
            excluded: excluded.iter().copied().collect(),
            current,
            max: MAX_FOLLOWED,
            capped: false,
        }
    }

    /// The same, following at most `max` ports (node mode's
    /// `--max-ports-per-namespace`); the fixed ones always.
    pub fn capped_at(mut self, max: usize) -> Self {
        self.max = max.min(MAX_FOLLOWED);
        self
    }

    pub fn all_ports(&self) -> bool {
        self.all_ports
    }

    pub fn ports(&self) -> Vec<u16> {
        self.current.iter().copied().collect()
    }

    fn room(&mut self, port: u16) -> bool {
        if self.current.len() < self.max {
            return true;
        }
        if !self.capped {
            warn!(
                port,
                "already following {} ports; more listeners are not followed", self.max
            );
            self.capped = true;
        }
        false
    }

    /// Starts following `port` (a new listener); true if it was not yet.
    pub fn add(&mut self, port: u16) -> bool {
        self.all_ports
            && !self.excluded.contains(&port)
            && !self.current.contains(&port)
            && self.room(port)
            && self.current.insert(port)
    }

    /// Forgets `port` (the source could not follow it), so that a later
    /// snapshot still listing it adds it again.
    pub fn remove(&mut self, port: u16) {
        self.current.remove(&port);
    }

    /// After a snapshot of `snapshot_ports`: follow every port listening
    /// now, keep those with connections left, drop the rest. A port followed
    /// since the snapshot began is not judged by it. Returns (added, removed).
    pub fn update(
        &mut self,
        listening: &[u16],
        reading: &Reading,
        snapshot_ports: &[u16],
    ) -> (Vec<u16>, Vec<u16>) {
        if !self.all_ports {
            return (Vec::new(), Vec::new());
        }
        let has_connections = |p: &u16| {
            reading
                .get(p)
                .is_some_and(|r| r.established_total() + r.time_wait_total() + r.ignored() > 0)
        };
        let removed: Vec<u16> = self
            .current
            .iter()
            .copied()
            .filter(|p| {
                snapshot_ports.contains(p)
                    && !self.fixed.contains(p)
                    && !listening.contains(p)
                    && !has_connections(p)
            })
            .collect();
        for port in &removed {
            self.current.remove(port);
        }
        let mut added = Vec::new();
        for &port in listening {
            if self.add(port) {
                added.push(port);
            }
        }
        (added, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::PortReading;

    #[test]
    fn fixed_ports_only_without_all_ports() {
        let mut f = Follow::new(vec![8080], false, &[]);
        assert!(!f.add(9090));
        assert_eq!(
            f.update(&[9090], &Reading::new(), &[8080]),
            (vec![], vec![])
        );
        assert_eq!(f.ports(), [8080]);
    }

    #[test]
    fn follows_listeners_and_keeps_draining_ports() {
        let mut f = Follow::new(vec![], true, &[7070]);
        assert_eq!(
            f.update(&[80, 443, 7070], &Reading::new(), &[]),
            (vec![80, 443], vec![]),
            "never our own port"
        );
        assert!(!f.add(7070));
        // 443's listener is gone but a connection drains; 80 is gone entirely.
        let draining = Reading::from([(
            443,
            PortReading {
                established: [1, 0],
                ..Default::default()
            },
        )]);
        assert_eq!(f.update(&[], &draining, &[80, 443]), (vec![], vec![80]));
        assert_eq!(f.ports(), [443]);
        assert_eq!(f.update(&[], &Reading::new(), &[443]), (vec![], vec![443]));
        assert!(f.add(8080) && !f.add(8080));
    }

    #[test]
    fn a_port_followed_after_the_snapshot_began_is_not_dropped_by_it() {
        let mut f = Follow::new(vec![], true, &[]);
        assert!(f.add(9090), "reported by the kernel meanwhile");
        assert_eq!(f.update(&[], &Reading::new(), &[]), (vec![], vec![]));
        assert_eq!(f.ports(), [9090]);
        assert_eq!(
            f.update(&[], &Reading::new(), &[9090]),
            (vec![], vec![9090])
        );
    }

    #[test]
    fn follows_at_most_max_followed_ports_and_retries_removed_ones() {
        let mut f = Follow::new(vec![], true, &[]);
        let many: Vec<u16> = (1..=(MAX_FOLLOWED as u16 + 10)).collect();
        let (added, _) = f.update(&many, &Reading::new(), &[]);
        assert_eq!(added.len(), MAX_FOLLOWED);
        assert!(!f.add(60_000));
        f.remove(1);
        assert!(f.add(60_000), "room again");
    }
}
