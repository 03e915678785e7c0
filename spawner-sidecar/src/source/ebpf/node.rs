//! Node mode's source: one kernel program for the whole host, its counts
//! keyed by (network namespace, port), and per namespace the same book and
//! rounds as the per-pod source (`book.rs`, `rounds.rs`), with snapshots
//! taken inside that namespace through a process in it.
//!
//! The kernel makes a key itself on a followed port's first transition in a
//! namespace (and, with `--all-ports`, on any new listener), so a new pod's
//! counts are exact from its first socket; it reports each key it makes in
//! the ring the per-pod mode uses for listeners. Namespaces with sockets
//! from before start are found by one scan of the host's processes.
//!
//! A namespace is gone when no process is in it and no bind mount pins it
//! (`ip netns`, the runtime's `/var/run/netns/cni-*`): then its keys, its
//! per-connection records and its book go, within one refresh.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use spawner_sidecar_common::{
    NODE_PORT_FOLLOWED, NODE_PORT_KEYED, NetnsPort, PortCounts, STAT_EVENTS, STAT_LISTENERS_LOST,
    STAT_NODE_KEYS_FULL, STAT_NODE_NETNS_FULL, STAT_NODE_PORTS_FULL, STAT_SOCKETS_FULL,
};
use tracing::{debug, info, warn};

use super::{
    book::Book,
    connection_ages::{self, SocketMap},
    kernel_log::KernelLog,
    load::{self, Loaded, NodeLimits},
    map_error,
};
use crate::{
    clock::{boottime_ns, nanos},
    lock::lock,
    source::{
        Detail, Follow, Reading, SourceError, SourceHealth, SourceOptions,
        netns::{HostProc, NetnsSnapshotter},
        peers::PeerFilter,
        reconcile::EventCounts,
        snapshot::{self, SnapshotRequest, Snapshotter as _, SocketEntry},
    },
};

/// How long start-up waits for one quiet snapshot per namespace.
const SEED_DEADLINE: Duration = Duration::from_secs(2);
/// However quiet a namespace, a snapshot at least this often (plus up to a
/// minute, by namespace, so they do not all come due in one tick). The
/// per-pod source's minute would cost every namespace a snapshot a minute
/// (~2.5 ms each: the kernel walks its host-wide TCP table for one
/// namespace's sockets); here the net is also pulled whenever the kernel
/// skipped a run (`recursion_misses`), which is what it is there for.
const SAFETY_NET: Duration = Duration::from_secs(600);

/// What node mode needs on top of the per-pod source's options.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub source: SourceOptions,
    pub limits: NodeLimits,
}

/// The node source's own health, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeHealth {
    pub namespaces: u64,
    /// Namespaces found with no process in them to read (pinned only).
    pub unreachable: u64,
    /// Namespaces the kernel could not follow (`--max-namespaces`).
    pub namespaces_overflow: u64,
    /// Ports the kernel could not follow (per-namespace cap or map full).
    pub ports_overflow: u64,
}

/// One followed namespace.
struct Namespace {
    book: Book,
    /// Processes in it, lowest pid first, as of the last scan; the first
    /// one is asked for snapshots and checked for liveness.
    pids: Vec<u32>,
    /// Ports it has a kernel key for.
    keys: BTreeSet<u16>,
    /// Snapshots through `pids[0]`, kept while that process is: it
    /// remembers a refused setns, so a refusal is met once, not per round.
    snapshots: Option<(u32, Arc<NetnsSnapshotter>)>,
}

struct Maps {
    port_bits: Array<MapData, u32>,
    counts: PerCpuHashMap<MapData, NetnsPort, PortCounts>,
    netns_keys: HashMap<MapData, u32, u64>,
    sockets: SocketMap,
    young_closed: HashMap<MapData, u64, u64>,
    stats: PerCpuArray<MapData, u64>,
    reports: RingBuf<MapData>,
    kernel_log: Option<KernelLog>,
}

struct State {
    maps: Maps,
    namespaces: BTreeMap<u32, Namespace>,
    /// Ports whose "keyed" bit is set in `PORT_SLOTS`, by us or by the
    /// program (which reports every key it makes).
    keyed_bits: BTreeSet<u16>,
}

pub struct NodeSource {
    program: Mutex<Option<load::Program>>,
    state: Mutex<State>,
    /// Held for a whole refresh (see the per-pod source).
    refreshing: Mutex<()>,
    host: Arc<HostProc>,
    options: NodeOptions,
    filter: PeerFilter,
    min_age_ns: u64,
    /// Our own namespace: the API's port is not followed there.
    own_netns: u32,
}

impl NodeSource {
    /// Loads and attaches the node program, self-tests it, and finds the
    /// namespaces that already have sockets on the followed ports.
    pub fn open(options: NodeOptions, host: Arc<HostProc>) -> Result<Arc<Self>, SourceError> {
        let (loaded, kernel_log) = super::start(&options.source, Some(options.limits))?;
        let own_netns = load::own_netns_inum()?;
        let Loaded {
            program,
            slots,
            sockets,
            young_closed,
            stats,
            listeners,
            node_counts,
            node_netns,
            ..
        } = loaded;
        let source = Arc::new(NodeSource {
            program: Mutex::new(Some(program)),
            state: Mutex::new(State {
                maps: Maps {
                    port_bits: slots,
                    counts: node_counts,
                    netns_keys: node_netns,
                    sockets,
                    young_closed,
                    stats,
                    reports: listeners,
                    kernel_log,
                },
                namespaces: BTreeMap::new(),
                keyed_bits: BTreeSet::new(),
            }),
            refreshing: Mutex::new(()),
            host,
            filter: options.source.peers.clone(),
            min_age_ns: nanos(options.source.activity_min_age),
            own_netns,
            options,
        });
        {
            let mut state = lock(&source.state);
            for &port in &source.options.source.ports {
                state
                    .maps
                    .port_bits
                    .set(u32::from(port), NODE_PORT_FOLLOWED, 0)
                    .map_err(map_error("PORT_SLOTS"))?;
            }
        }
        source.adopt_existing()?;
        source.seed()?;
        Ok(source)
    }

    /// Follows every namespace that has sockets on the followed ports (or,
    /// with `--all-ports`, listeners) from before start: one scan of the
    /// host's processes and one snapshot per namespace, once.
    fn adopt_existing(&self) -> Result<(), SourceError> {
        let scanned = self.host.scan();
        let request = self.request(&self.options.source.ports);
        let mut adopted = 0;
        for (netns, pids) in scanned {
            let Some(&pid) = pids.first() else { continue };
            let sockets = match NetnsSnapshotter::new(&self.host, pid, netns).snapshot(&request) {
                Ok(sockets) => sockets,
                Err(e) => {
                    debug!(netns, pid, "namespace not read at start: {e}");
                    continue;
                }
            };
            let mut ports: BTreeSet<u16> = sockets
                .iter()
                .map(SocketEntry::port)
                .filter(|p| self.options.source.ports.contains(p))
                .collect();
            if self.options.source.all_ports {
                ports.extend(snapshot::listening_ports(&sockets));
            }
            if ports.is_empty() {
                continue;
            }
            let mut state = lock(&self.state);
            let state = &mut *state;
            let namespace = self.namespace(&mut state.namespaces, netns);
            namespace.pids = pids;
            for port in ports {
                self.add_key(&mut state.maps, netns, namespace, port)?;
                state.keyed_bits.insert(port);
            }
            adopted += 1;
        }
        info!(
            namespaces = adopted,
            "node mode: namespaces with sockets from before start"
        );
        Ok(())
    }

    /// Refreshes until every namespace has had a quiet snapshot, so the
    /// first answers already count sockets from before start.
    fn seed(&self) -> Result<(), SourceError> {
        let deadline = Instant::now() + SEED_DEADLINE;
        loop {
            self.refresh()?;
            let pending = lock(&self.state)
                .namespaces
                .values()
                .filter(|n| !n.pids.is_empty() && !n.book.pending().is_empty())
                .count();
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(
                    pending,
                    "namespaces too busy to seed within {SEED_DEADLINE:?}; retrying every tick"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn request(&self, ports: &[u16]) -> SnapshotRequest {
        SnapshotRequest {
            ports: ports.to_vec(),
            all_listeners: self.options.source.all_ports,
        }
    }

    /// The book of `netns`, made on first sight.
    fn namespace<'a>(
        &self,
        namespaces: &'a mut BTreeMap<u32, Namespace>,
        netns: u32,
    ) -> &'a mut Namespace {
        namespaces.entry(netns).or_insert_with(|| {
            let source = &self.options.source;
            // The API's own port is ours only in our namespace.
            let excluded: &[u16] = if netns == self.own_netns {
                &source.excluded_ports
            } else {
                &[]
            };
            let follow = Follow::new(source.ports.clone(), source.all_ports, excluded)
                .capped_at(self.options.limits.max_ports_per_namespace as usize);
            let mut book = Book::new(follow);
            book.safety_net = SAFETY_NET + Duration::from_secs(u64::from(netns % 60));
            for &port in &source.ports {
                book.track(port);
            }
            debug!(netns, "following a new namespace");
            Namespace {
                book,
                pids: Vec::new(),
                keys: BTreeSet::new(),
                snapshots: None,
            }
        })
    }

    /// Makes the kernel key (namespace, port) from here (sockets found by a
    /// snapshot), as the program would on a transition.
    fn add_key(
        &self,
        maps: &mut Maps,
        netns: u32,
        namespace: &mut Namespace,
        port: u16,
    ) -> Result<(), SourceError> {
        if !namespace.book.follow.ports().contains(&port) && !namespace.book.follow.add(port) {
            return Ok(());
        }
        namespace.book.track(port);
        let key = NetnsPort {
            netns,
            port: u32::from(port),
        };
        let zeroes = per_cpu_zeroes()?;
        // NOEXIST: a key the program made meanwhile has counts already.
        match maps.counts.insert(key, zeroes, 1) {
            Ok(()) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                warn!(netns, port, "no room for a kernel key: {e}");
                namespace.book.follow.remove(port);
                namespace.book.untrack(port);
                return Ok(());
            }
        }
        namespace.keys.insert(port);
        maps.netns_keys
            .insert(netns, namespace.keys.len() as u64, 0)
            .map_err(map_error("NODE_NETNS"))?;
        let bits = maps.port_bits.get(&u32::from(port), 0).unwrap_or(0);
        maps.port_bits
            .set(u32::from(port), bits | NODE_PORT_KEYED, 0)
            .map_err(map_error("PORT_SLOTS"))?;
        Ok(())
    }

    /// Takes the keys the program made since last time into the books.
    fn drain_reports(&self, state: &mut State) {
        let mut reported = Vec::new();
        while let Some(item) = state.maps.reports.next() {
            if let Ok(bytes) = <[u8; 8]>::try_from(&item[..]) {
                let value = u64::from_ne_bytes(bytes);
                reported.push(((value >> 32) as u32, value as u16));
            }
        }
        for (netns, port) in reported {
            state.keyed_bits.insert(port);
            let namespace = self.namespace(&mut state.namespaces, netns);
            namespace.keys.insert(port);
            let followed =
                namespace.book.follow.ports().contains(&port) || namespace.book.follow.add(port);
            if followed {
                namespace.book.track(port);
            } else {
                // Excluded or over the cap: the key goes again.
                namespace.keys.remove(&port);
                let _ = state.maps.counts.remove(&NetnsPort {
                    netns,
                    port: u32::from(port),
                });
            }
        }
    }

    /// Makes sure `netns` is known if the kernel has reported it (for an
    /// answer about a namespace that appeared a moment ago), and finds the
    /// processes of namespaces that have none yet.
    pub fn sync(&self) {
        let mut state = lock(&self.state);
        self.drain_reports(&mut state);
        if state.namespaces.values().any(|n| n.pids.is_empty()) {
            let scanned = self.host.scan();
            for (netns, namespace) in state.namespaces.iter_mut() {
                if namespace.pids.is_empty()
                    && let Some(pids) = scanned.get(netns)
                {
                    namespace.pids = pids.clone();
                }
            }
        }
    }

    /// Whether `netns` is followed (not gone).
    pub fn follows(&self, netns: u32) -> bool {
        lock(&self.state).namespaces.contains_key(&netns)
    }

    /// The followed namespaces and the processes found in each.
    pub fn namespaces(&self) -> BTreeMap<u32, Vec<u32>> {
        lock(&self.state)
            .namespaces
            .iter()
            .map(|(&netns, n)| (netns, n.pids.clone()))
            .collect()
    }

    fn event_counts(
        maps: &Maps,
        netns: u32,
        ports: &[u16],
    ) -> Result<BTreeMap<u16, EventCounts>, SourceError> {
        ports
            .iter()
            .map(|&port| {
                let key = NetnsPort {
                    netns,
                    port: u32::from(port),
                };
                let counts = match maps.counts.get(&key, 0) {
                    Ok(values) => EventCounts::sum(values.iter()),
                    Err(aya::maps::MapError::KeyNotFound) => EventCounts::default(),
                    Err(e) => return Err(map_error("NODE_COUNTS")(e)),
                };
                Ok((port, counts))
            })
            .collect()
    }

    /// One namespace's ports as the kernel has them now. `None` for a
    /// namespace not followed.
    pub fn read(&self, netns: u32, detail: Detail) -> Result<Option<Reading>, SourceError> {
        let mut state = lock(&self.state);
        self.drain_reports(&mut state);
        let Some(namespace) = state.namespaces.get(&netns) else {
            return Ok(None);
        };
        let events = Self::event_counts(&state.maps, netns, &namespace.book.follow.ports())?;
        let mut reading = namespace.book.current(&events);
        if detail.starts {
            let tracked = connection_ages::read(&state.maps.sockets)?;
            let mut starts = connection_ages::starts_by_port(&tracked, netns);
            for (port, r) in reading.iter_mut() {
                r.starts = Some(starts.remove(port).unwrap_or_default());
            }
        }
        Ok(Some(reading))
    }

    /// Every followed namespace's ports, with one read of the
    /// per-connection map for all of them (a scrape of the whole node).
    pub fn read_all(&self, detail: Detail) -> Result<BTreeMap<u32, Reading>, SourceError> {
        let mut state = lock(&self.state);
        self.drain_reports(&mut state);
        let tracked = if detail.starts {
            Some(connection_ages::read(&state.maps.sockets)?)
        } else {
            None
        };
        let mut out = BTreeMap::new();
        for (&netns, namespace) in &state.namespaces {
            let events = Self::event_counts(&state.maps, netns, &namespace.book.follow.ports())?;
            let mut reading = namespace.book.current(&events);
            if let Some(tracked) = &tracked {
                let mut starts = connection_ages::starts_by_port(tracked, netns);
                for (port, r) in reading.iter_mut() {
                    r.starts = Some(starts.remove(port).unwrap_or_default());
                }
            }
            out.insert(netns, reading);
        }
        Ok(out)
    }

    /// The periodic work for every namespace: who is gone, who is new,
    /// snapshots where they can teach something.
    pub fn refresh(&self) -> Result<(), SourceError> {
        let _one_at_a_time = lock(&self.refreshing);
        let targets = self.prune()?;
        let tracked = {
            let state = lock(&self.state);
            connection_ages::read(&state.maps.sockets)?
        };
        for netns in targets {
            if let Err(e) = self.round(netns, &tracked) {
                debug!(netns, "namespace round: {e}");
            }
        }
        self.tidy_port_bits()
    }

    /// The periodic work for one namespace only (a drain waiting on it).
    pub fn refresh_one(&self, netns: u32) -> Result<(), SourceError> {
        let _one_at_a_time = lock(&self.refreshing);
        let tracked = {
            let mut state = lock(&self.state);
            self.drain_reports(&mut state);
            connection_ages::read(&state.maps.sockets)?
        };
        self.round(netns, &tracked)
    }

    /// Drops the namespaces that are gone, finds processes for the rest;
    /// returns the namespaces that can be read.
    fn prune(&self) -> Result<Vec<u32>, SourceError> {
        let mut state = lock(&self.state);
        self.drain_reports(&mut state);
        if let Some(log) = &mut state.maps.kernel_log {
            log.drain();
        }
        let stale: Vec<u32> = state
            .namespaces
            .iter()
            .filter(|&(&netns, n)| {
                n.pids
                    .first()
                    .is_none_or(|&pid| self.host.netns_of(pid) != Some(netns))
            })
            .map(|(&netns, _)| netns)
            .collect();
        if !stale.is_empty() {
            let scanned = self.host.scan();
            let pinned = pinned_namespaces(&self.host);
            for netns in stale {
                match scanned.get(&netns) {
                    Some(pids) => {
                        if let Some(namespace) = state.namespaces.get_mut(&netns) {
                            namespace.pids = pids.clone();
                        }
                    }
                    None if pinned.contains(&netns) => {
                        if let Some(namespace) = state.namespaces.get_mut(&netns) {
                            namespace.pids.clear();
                        }
                    }
                    None => self.forget(&mut state, netns),
                }
            }
            // A namespace's book, maps and strings went back to the
            // allocator: hand what is free back to the kernel, so a node
            // where pods come and go stays at its size.
            crate::malloc::release_freed();
        }
        Ok(state
            .namespaces
            .iter()
            .filter(|(_, n)| !n.pids.is_empty())
            .map(|(&netns, _)| netns)
            .collect())
    }

    /// A namespace is gone: its keys, count and connection records go.
    fn forget(&self, state: &mut State, netns: u32) {
        let Some(namespace) = state.namespaces.remove(&netns) else {
            return;
        };
        for port in &namespace.keys {
            let _ = state.maps.counts.remove(&NetnsPort {
                netns,
                port: u32::from(*port),
            });
        }
        let _ = state.maps.netns_keys.remove(&netns);
        if let Ok(tracked) = connection_ages::read(&state.maps.sockets) {
            for (cookie, record) in tracked {
                if record.netns == netns {
                    let _ = state.maps.sockets.remove(&cookie);
                }
            }
        }
        info!(netns, "namespace gone; no longer followed");
    }

    /// One reconcile round of one namespace, as the per-pod source runs
    /// it, with the snapshot taken inside the namespace.
    fn round(
        &self,
        netns: u32,
        tracked: &[(u64, spawner_sidecar_common::SocketRecord)],
    ) -> Result<(), SourceError> {
        let (ports, before, snapshots) = {
            let mut state = lock(&self.state);
            let state = &mut *state;
            let Some(namespace) = state.namespaces.get_mut(&netns) else {
                return Ok(());
            };
            let Some(&pid) = namespace.pids.first() else {
                return Ok(());
            };
            let snapshots = match &namespace.snapshots {
                Some((owner, snapshots)) if *owner == pid => snapshots.clone(),
                _ => {
                    let snapshots = Arc::new(NetnsSnapshotter::new(&self.host, pid, netns));
                    namespace.snapshots = Some((pid, snapshots.clone()));
                    snapshots
                }
            };
            let ports = namespace.book.follow.ports();
            let before = Self::event_counts(&state.maps, netns, &ports)?;
            let lost = self.lost(&state.maps);
            if !namespace
                .book
                .snapshot_needed(Instant::now(), lost, &before)
            {
                return Ok(());
            }
            (ports, before, snapshots)
        };
        let started = boottime_ns();
        let refused_before = snapshots.fallback_reason().is_some();
        let sockets =
            snapshots
                .snapshot(&self.request(&ports))
                .map_err(|e| SourceError::Snapshot {
                    source: Box::new(e),
                })?;
        if let (false, Some(reason)) = (refused_before, snapshots.fallback_reason()) {
            warn!(netns, "snapshots of this namespace read /proc: {reason}");
        }
        let mut state = lock(&self.state);
        let state = &mut *state;
        let Some(namespace) = state.namespaces.get_mut(&netns) else {
            return Ok(());
        };
        let after = Self::event_counts(&state.maps, netns, &ports)?;
        let mut counted = snapshot::count(&sockets, &ports, &self.filter);
        if self.min_age_ns > 0 {
            let cookies = connection_ages::young_cookies(&state.maps.young_closed)?;
            let young = connection_ages::young_time_wait(&cookies, &sockets, &self.filter);
            for (port, r) in counted.iter_mut() {
                r.young_time_wait = young.get(port).copied().unwrap_or(0);
            }
        }
        let lost = self.lost(&state.maps).unwrap_or(0);
        let listening = snapshot::listening_ports(&sockets);
        let folded = namespace
            .book
            .fold(&ports, &before, &counted, &after, &listening, lost);
        connection_ages::reconcile(
            &mut state.maps.sockets,
            tracked,
            &sockets,
            &folded.quiet,
            &self.filter,
            &connection_ages::Window {
                netns,
                snapshot_ns: started,
                now_ns: boottime_ns(),
            },
        )?;
        for port in folded.added {
            self.add_key(&mut state.maps, netns, namespace, port)?;
            state.keyed_bits.insert(port);
        }
        for port in folded.removed {
            namespace.book.untrack(port);
            if namespace.keys.remove(&port) {
                let _ = state.maps.counts.remove(&NetnsPort {
                    netns,
                    port: u32::from(port),
                });
            }
        }
        // The kernel's count of this namespace's keys, rewritten from ours
        // (its increments are not atomic, and it never decrements).
        let _ = state
            .maps
            .netns_keys
            .insert(netns, namespace.keys.len() as u64, 0);
        Ok(())
    }

    /// Clears the "keyed" bit of ports no namespace has a key for any more
    /// (transitions on them skip the hash lookup again), then takes in the
    /// reports of keys made meanwhile, which set it again.
    fn tidy_port_bits(&self) -> Result<(), SourceError> {
        let mut state = lock(&self.state);
        let keyed: HashSet<u16> = state
            .namespaces
            .values()
            .flat_map(|n| n.keys.iter().copied())
            .collect();
        let cleared: Vec<u16> = state
            .keyed_bits
            .iter()
            .copied()
            .filter(|p| !keyed.contains(p))
            .collect();
        if cleared.is_empty() {
            return Ok(());
        }
        for &port in &cleared {
            let bits = state.maps.port_bits.get(&u32::from(port), 0).unwrap_or(0);
            state
                .maps
                .port_bits
                .set(u32::from(port), bits & !NODE_PORT_KEYED, 0)
                .map_err(map_error("PORT_SLOTS"))?;
            state.keyed_bits.remove(&port);
        }
        self.drain_reports(&mut state);
        let again: BTreeSet<u16> = state
            .namespaces
            .values()
            .flat_map(|n| n.keys.iter().copied())
            .filter(|p| cleared.contains(p))
            .collect();
        for port in again {
            let bits = state.maps.port_bits.get(&u32::from(port), 0).unwrap_or(0);
            state
                .maps
                .port_bits
                .set(u32::from(port), bits | NODE_PORT_KEYED, 0)
                .map_err(map_error("PORT_SLOTS"))?;
            state.keyed_bits.insert(port);
        }
        Ok(())
    }

    /// What the kernel could not tell us: key reports lost and runs skipped.
    /// A change in it makes every namespace take a snapshot.
    fn lost(&self, maps: &Maps) -> Option<u64> {
        let missed = lock(&self.program).as_ref()?.recursion_misses()?;
        Some(Self::stat(maps, STAT_LISTENERS_LOST)? + missed)
    }

    fn stat(maps: &Maps, index: u32) -> Option<u64> {
        let values = maps.stats.get(&index, 0).ok()?;
        Some(values.iter().sum())
    }

    pub fn health(&self) -> (SourceHealth, NodeHealth) {
        let missed = lock(&self.program)
            .as_ref()
            .and_then(load::Program::recursion_misses);
        let state = lock(&self.state);
        let maps = &state.maps;
        let stat = |i| Self::stat(maps, i).unwrap_or(0);
        let source = SourceHealth {
            kernel_events: Self::stat(maps, STAT_EVENTS),
            kernel_missed_events: missed,
            untracked_connections: Self::stat(maps, STAT_SOCKETS_FULL),
            lost_listener_reports: Self::stat(maps, STAT_LISTENERS_LOST),
            corrections: state
                .namespaces
                .values()
                .map(|n| n.book.corrections_total)
                .sum(),
        };
        let node = NodeHealth {
            namespaces: state.namespaces.len() as u64,
            unreachable: state
                .namespaces
                .values()
                .filter(|n| n.pids.is_empty())
                .count() as u64,
            namespaces_overflow: stat(STAT_NODE_NETNS_FULL),
            ports_overflow: stat(STAT_NODE_PORTS_FULL) + stat(STAT_NODE_KEYS_FULL),
        };
        (source, node)
    }

    /// Detaches the program.
    pub fn stop(&self) {
        drop(lock(&self.program).take());
    }
}

fn per_cpu_zeroes() -> Result<PerCpuValues<PortCounts>, SourceError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| SourceError::Io {
        path: "/sys/devices/system/cpu/possible",
        source: e,
    })?;
    PerCpuValues::try_from(vec![PortCounts::default(); cpus]).map_err(|e| {
        SourceError::Unavailable {
            reason: format!("per-CPU values: {e}"),
        }
    })
}

/// Namespaces pinned by a bind mount (`ip netns add`, a runtime's
/// `/var/run/netns/cni-*`), from the host's pid 1 mount table: an nsfs
/// mount's root field reads `net:[<inode>]`. Such a namespace lives on with
/// no process in it.
fn pinned_namespaces(host: &HostProc) -> BTreeSet<u32> {
    // The host's init sees the host's mounts; where it cannot be read, our
    // own mount table (the same one, outside a container).
    for pid in ["1", "self"] {
        let path = host.root().join(pid).join("mountinfo");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return parse_pinned(&text);
        }
    }
    debug!("no mount table readable: no namespace counts as pinned");
    BTreeSet::new()
}

fn parse_pinned(mountinfo: &str) -> BTreeSet<u32> {
    mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|root| root.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_namespaces_come_from_nsfs_mounts() {
        let text = "\
25 1 0:22 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
612 30 0:4 net:[4026532285] /run/netns/blue rw shared:5 - nsfs nsfs rw
613 30 0:4 net:[4026532400] /var/run/netns/cni-1 rw shared:5 - nsfs nsfs rw
614 30 0:4 mnt:[4026532500] /run/other rw shared:5 - nsfs nsfs rw
";
        assert_eq!(
            parse_pinned(text),
            BTreeSet::from([4_026_532_285, 4_026_532_400])
        );
    }
}
