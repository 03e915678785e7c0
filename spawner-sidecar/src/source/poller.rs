//! A source that answers every read with a fresh snapshot (sock_diag or
//! `/proc`), and remembers what it saw of each connection between reads:
//! when it first saw it (its age, as far as a poller can know), how many
//! appeared and vanished (the opened/closed totals), and which TIME_WAIT
//! sockets came from connections it saw mature.
//!
//! What no poller can do: see a connection that opened and closed between
//! two reads. Its ages start at first sight, so they lag the kernel's by up
//! to one read interval; a vanished connection is dated at the read that
//! no longer sees it.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    ConnectionSource, Detail, Follow, Reading, SourceError, SourceKind,
    peers::PeerFilter,
    snapshot::{self, SnapshotRequest, Snapshotter, SocketEntry, SocketState},
};
use crate::{
    clock::{boottime_ns, nanos},
    lock::lock,
};

/// A TIME_WAIT socket lives at most 60 s (`TCP_TIMEWAIT_LEN`); what we know
/// about where one came from is kept a little longer, then dropped.
const TIME_WAIT_MEMORY_NS: u64 = 120 * 1_000_000_000;

type ConnKey = (SocketAddr, SocketAddr);

#[derive(Clone, Copy, Debug)]
struct Conn {
    port: u16,
    first_seen_ns: u64,
    last_seen_ns: u64,
}

impl Conn {
    /// Seen at least `min_age_ns` old: the most a poller can vouch for.
    fn seen_mature(&self, min_age_ns: u64) -> bool {
        self.last_seen_ns.saturating_sub(self.first_seen_ns) >= min_age_ns
    }
}

#[derive(Debug)]
struct PollState {
    follow: Follow,
    /// ESTABLISHED connections (ignored peers left out) seen at the last read.
    conns: HashMap<ConnKey, Conn>,
    /// Per port: (opened, closed) since start.
    totals: BTreeMap<u16, (u64, u64)>,
    /// Connections that vanished while mature, and when: their TIME_WAIT
    /// sockets count as activity.
    mature_closed: HashMap<ConnKey, u64>,
    /// TIME_WAIT sockets already there at the first read (origin unknown:
    /// counted as activity), and when that was.
    initial_time_wait: HashMap<ConnKey, u64>,
    /// Per port, the last read that saw a mature connection vanish.
    last_close_ns: BTreeMap<u16, u64>,
    first_read: bool,
}

pub struct PollingSource {
    snapshots: Arc<dyn Snapshotter>,
    filter: PeerFilter,
    min_age_ns: u64,
    state: Mutex<PollState>,
}

impl PollingSource {
    pub fn new(
        snapshots: Arc<dyn Snapshotter>,
        follow: Follow,
        filter: PeerFilter,
        activity_min_age: Duration,
    ) -> Self {
        PollingSource {
            snapshots,
            filter,
            min_age_ns: nanos(activity_min_age),
            state: Mutex::new(PollState {
                follow,
                conns: HashMap::new(),
                totals: BTreeMap::new(),
                mature_closed: HashMap::new(),
                initial_time_wait: HashMap::new(),
                last_close_ns: BTreeMap::new(),
                first_read: true,
            }),
        }
    }

    fn take_snapshot(&self, state: &mut PollState) -> Result<Vec<SocketEntry>, SourceError> {
        let all_listeners = state.follow.all_ports();
        let mut sockets = self.snapshots.snapshot(&SnapshotRequest {
            ports: state.follow.ports(),
            all_listeners,
        })?;
        if all_listeners {
            let added: Vec<u16> = snapshot::listening_ports(&sockets)
                .into_iter()
                .filter(|&p| state.follow.add(p))
                .collect();
            if !added.is_empty() {
                // New listeners: their connections were not in this dump.
                sockets.extend(self.snapshots.snapshot(&SnapshotRequest {
                    ports: added,
                    all_listeners: false,
                })?);
            }
        }
        Ok(sockets)
    }
}

impl ConnectionSource for PollingSource {
    fn kind(&self) -> SourceKind {
        self.snapshots.kind()
    }

    fn read(&self, _detail: Detail) -> Result<Reading, SourceError> {
        let mut state = lock(&self.state);
        let sockets = self.take_snapshot(&mut state)?;
        let now = boottime_ns();
        let ports = state.follow.ports();
        let mut reading = snapshot::count(&sockets, &ports, &self.filter);
        let state = &mut *state;

        let mut seen: HashMap<ConnKey, Conn> = HashMap::new();
        let mut time_wait: Vec<(u16, ConnKey)> = Vec::new();
        for s in sockets.iter().filter(|s| reading.contains_key(&s.port())) {
            if self.filter.ignores(s.peer.ip()) {
                continue;
            }
            let key = (s.local, s.peer);
            match s.state {
                SocketState::Established => {
                    let known = state.conns.get(&key).copied();
                    if known.is_none() && !state.first_read {
                        state.totals.entry(s.port()).or_default().0 += 1;
                    }
                    let first_seen_ns = known.map_or(now, |c| c.first_seen_ns);
                    seen.insert(
                        key,
                        Conn {
                            port: s.port(),
                            first_seen_ns,
                            last_seen_ns: now,
                        },
                    );
                }
                SocketState::TimeWait => time_wait.push((s.port(), key)),
                SocketState::Listen => {}
            }
        }
        for (key, conn) in state.conns.iter().filter(|(k, _)| !seen.contains_key(*k)) {
            state.totals.entry(conn.port).or_default().1 += 1;
            // Its close happened since the last read; date it now, which
            // errs on the side of "recently active". Whether it was old
            // enough to be activity, only what we saw can tell.
            if conn.seen_mature(self.min_age_ns) {
                if self.min_age_ns > 0 {
                    state.mature_closed.insert(*key, now);
                }
                state.last_close_ns.insert(conn.port, now);
            }
        }
        if state.first_read {
            state.initial_time_wait = time_wait.iter().map(|(_, k)| (*k, now)).collect();
            state.first_read = false;
        }
        let fresh = |&at: &u64| now.saturating_sub(at) < TIME_WAIT_MEMORY_NS;
        state.mature_closed.retain(|_, at| fresh(at));
        state.initial_time_wait.retain(|_, at| fresh(at));
        state.conns = seen;

        let mut starts: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
        for conn in state.conns.values() {
            starts
                .entry(conn.port)
                .or_default()
                .push(conn.first_seen_ns);
        }
        for (port, r) in reading.iter_mut() {
            let (opened, closed) = state.totals.get(port).copied().unwrap_or_default();
            r.opened = opened;
            r.closed = closed;
            r.last_active_ns = state.last_close_ns.get(port).copied();
            let mut s = starts.remove(port).unwrap_or_default();
            s.sort_unstable();
            r.starts = Some(s);
            if self.min_age_ns > 0 {
                r.young_time_wait = time_wait
                    .iter()
                    .filter(|(p, k)| {
                        p == port
                            && !state.mature_closed.contains_key(k)
                            && !state.initial_time_wait.contains_key(k)
                    })
                    .count() as u64;
            }
        }
        if state.follow.all_ports() {
            let listening = snapshot::listening_ports(&sockets);
            let (_, removed) = state.follow.update(&listening, &reading, &ports);
            for port in removed {
                reading.remove(&port);
                state.totals.remove(&port);
                state.last_close_ns.remove(&port);
            }
        }
        Ok(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::snapshot::tests::entry;

    /// Lists whatever the test last put in.
    #[derive(Default)]
    struct World(Mutex<Vec<SocketEntry>>);

    impl World {
        fn set(&self, sockets: &[SocketEntry]) {
            *self.0.lock().expect("lock") = sockets.to_vec();
        }
    }

    impl Snapshotter for World {
        fn kind(&self) -> SourceKind {
            SourceKind::Proc
        }
        fn snapshot(&self, request: &SnapshotRequest) -> Result<Vec<SocketEntry>, SourceError> {
            Ok(self
                .0
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| {
                    request.ports.contains(&s.port())
                        || (request.all_listeners && s.state == SocketState::Listen)
                })
                .copied()
                .collect())
        }
    }

    fn source(min_age: Duration, all: bool) -> (Arc<World>, PollingSource) {
        let world = Arc::new(World::default());
        let source = PollingSource::new(
            world.clone(),
            Follow::new(if all { vec![] } else { vec![8080] }, all, &[]),
            PeerFilter::new(vec!["10.9.0.0/16".parse().expect("cidr")]),
            min_age,
        );
        (world, source)
    }

    fn read(s: &PollingSource) -> Reading {
        s.read(Detail::default()).expect("read")
    }

    use SocketState::*;

    #[test]
    fn counts_appearing_and_vanishing_connections_but_not_the_initial_ones() {
        let a = entry(Established, "127.0.0.1:8080", "127.0.0.1:5000");
        let b = entry(Established, "127.0.0.1:8080", "127.0.0.1:5001");
        let ignored = entry(Established, "127.0.0.1:8080", "10.9.1.1:5002");
        let (world, s) = source(Duration::ZERO, false);
        world.set(&[a, ignored]);
        let r = read(&s);
        assert_eq!((r[&8080].opened, r[&8080].closed), (0, 0));
        assert_eq!(r[&8080].ignored_established, 1);
        world.set(&[a, b, ignored]);
        let r = read(&s);
        assert_eq!((r[&8080].opened, r[&8080].closed), (1, 0));
        assert_eq!(r[&8080].starts.as_ref().map(Vec::len), Some(2));
        world.set(&[b]);
        let r = read(&s);
        assert_eq!((r[&8080].opened, r[&8080].closed), (1, 1));
        assert!(r[&8080].last_active_ns.is_some(), "a close is activity");
    }

    #[test]
    fn time_wait_of_connections_never_seen_mature_is_young() {
        let conn = entry(Established, "127.0.0.1:8080", "127.0.0.1:5000");
        let tw_before = entry(TimeWait, "127.0.0.1:8080", "127.0.0.1:4000");
        let tw_probe = entry(TimeWait, "127.0.0.1:8080", "127.0.0.1:6000");
        let (world, s) = source(Duration::from_secs(3600), false);
        world.set(&[tw_before]);
        assert_eq!(read(&s)[&8080].young_time_wait, 0);
        world.set(&[tw_before, conn]);
        let r = read(&s);
        assert_eq!(
            r[&8080].established_at_least(3_600_000_000_000, boottime_ns()),
            0
        );
        // The probe's TIME_WAIT (never seen established for an hour) is not
        // activity; the one from before start is.
        world.set(&[tw_before, tw_probe]);
        let r = read(&s);
        assert_eq!((r[&8080].time_wait, r[&8080].young_time_wait), ([2, 0], 1));
        assert_eq!(
            r[&8080].last_active_ns, None,
            "a young close is not activity"
        );
    }

    #[test]
    fn all_ports_follows_listeners_as_they_come_and_go() {
        let listen = entry(Listen, "0.0.0.0:9090", "0.0.0.0:0");
        let conn = entry(Established, "127.0.0.1:9090", "127.0.0.1:5000");
        let client = entry(Established, "127.0.0.1:40000", "127.0.0.1:9090");
        let (world, s) = source(Duration::ZERO, true);
        assert!(read(&s).is_empty());
        world.set(&[listen, conn, client]);
        let r = read(&s);
        assert_eq!(
            r.keys().copied().collect::<Vec<_>>(),
            [9090],
            "never the client's port"
        );
        assert_eq!(
            r[&9090].established,
            [1, 0],
            "the new listener's connection"
        );
        world.set(&[conn]);
        let r = read(&s);
        assert_eq!(r[&9090].listeners, 0, "kept while its connection drains");
        world.set(&[]);
        assert!(read(&s).is_empty());
    }
}
