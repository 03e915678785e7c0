//! Which ports are followed: the `--monitor-port` ones always, and with
//! `--all-ports` every port that has a LISTEN socket in the namespace, kept
//! while its accepted connections drain after the listener went away.
//! Client sockets have no listener on their ephemeral port, so they are never
//! followed and the port set (and metric labels) stays bounded.
use std::collections::BTreeSet;

use super::Reading;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follow {
    fixed: Vec<u16>,
    all_ports: bool,
    /// Never followed by discovery: the daemon's own HTTP port, which
    /// whoever polls the tracker would otherwise keep "active".
    excluded: BTreeSet<u16>,
    current: BTreeSet<u16>,
}

impl Follow {
    pub fn new(fixed: Vec<u16>, all_ports: bool, excluded: &[u16]) -> Self {
        let current = fixed.iter().copied().collect();
        Follow {
            fixed,
            all_ports,
            excluded: excluded.iter().copied().collect(),
            current,
        }
    }

    pub fn all_ports(&self) -> bool {
        self.all_ports
    }

    pub fn ports(&self) -> Vec<u16> {
        self.current.iter().copied().collect()
    }

    /// Starts following `port` (a new listener); true if it was not yet.
    pub fn add(&mut self, port: u16) -> bool {
        self.all_ports && !self.excluded.contains(&port) && self.current.insert(port)
    }

    /// After a snapshot: follow every port listening now, keep those with
    /// connections left, drop the rest. Returns (added, removed).
    pub fn update(&mut self, listening: &[u16], reading: &Reading) -> (Vec<u16>, Vec<u16>) {
        if !self.all_ports {
            return (Vec::new(), Vec::new());
        }
        let mut next: BTreeSet<u16> = self.fixed.iter().copied().collect();
        next.extend(listening.iter().filter(|p| !self.excluded.contains(p)));
        next.extend(self.current.iter().copied().filter(|p| {
            reading
                .get(p)
                .is_some_and(|r| r.established_total() + r.time_wait_total() + r.ignored() > 0)
        }));
        let added = next.difference(&self.current).copied().collect();
        let removed = self.current.difference(&next).copied().collect();
        self.current = next;
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
        assert_eq!(f.update(&[9090], &Reading::new()), (vec![], vec![]));
        assert_eq!(f.ports(), [8080]);
    }

    #[test]
    fn follows_listeners_and_keeps_draining_ports() {
        let mut f = Follow::new(vec![], true, &[7070]);
        assert_eq!(
            f.update(&[80, 443, 7070], &Reading::new()),
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
        assert_eq!(f.update(&[], &draining), (vec![], vec![80]));
        assert_eq!(f.ports(), [443]);
        assert_eq!(f.update(&[], &Reading::new()), (vec![], vec![443]));
        assert!(f.add(8080) && !f.add(8080));
    }
}
