//! The eBPF source: loads the kernel program, checks its offsets against
//! sockets of our own, and answers from the BPF maps. An answer costs one
//! map read per followed port, whatever the number of sockets on the host
//! (plus one batched read of the per-connection map when ages are asked for:
//! that grows with the connections on the followed ports only).
//!
//! TIME_WAIT and sockets that existed before attach come from a snapshot
//! once per tick (see `reconcile.rs`, `rounds.rs`, `connection_ages.rs`). With `--all-ports`, the
//! program reports new listeners through a ring buffer, which a thread of
//! ours waits on, so a new port is followed within moments, not a tick.
mod batch;
mod book;
mod bpf_commands;
mod connection_ages;
pub mod kernel_btf;
mod kernel_log;
mod listener_watch;
pub mod load;
pub mod node;
mod rounds;
mod selftest;
mod slots;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use spawner_sidecar_common::{PortCounts, STAT_EVENTS, STAT_LISTENERS_LOST, STAT_SOCKETS_FULL};
use tracing::{info, warn};

use self::{
    book::Book,
    connection_ages::SocketMap,
    kernel_log::KernelLog,
    load::{LoadOptions, Loaded},
    slots::Slots,
};
use super::{
    ConnectionSource, Detail, Reading, SourceError, SourceHealth, SourceKind, SourceOptions,
    peers::PeerFilter,
    reconcile::EventCounts,
    snapshot::{self, SnapshotRequest, Snapshotter},
};
use crate::{
    clock::{boottime_ns, nanos},
    lock::lock,
};

/// How long start-up waits for one quiet snapshot per port.
const SEED_DEADLINE: Duration = Duration::from_secs(1);
/// The environment variable the tests use to inject a run-time failure.
const FAULT_ENV: &str = "SPAWNER_SIDECAR_FAULT";

/// Maps and bookkeeping, changed together under one lock. Never held across
/// a snapshot: those take milliseconds.
struct Inner {
    slot_map: Array<MapData, u32>,
    counts: PerCpuArray<MapData, PortCounts>,
    sockets: SocketMap,
    young_closed: aya::maps::HashMap<MapData, u64, u64>,
    stats: PerCpuArray<MapData, u64>,
    listeners: RingBuf<MapData>,
    /// The program's aya-log lines, drained every refresh (`None` where
    /// the ring could not be opened).
    kernel_log: Option<KernelLog>,
    book: Book,
    slots: Slots,
}

pub struct EbpfSource {
    /// Owns the attached program: dropping it detaches. `None` once stopped.
    program: Mutex<Option<load::Program>>,
    inner: Mutex<Inner>,
    /// Held for a whole `refresh`: the tick and the listener thread both
    /// refresh, and two interleaved rounds would judge ports by each
    /// other's snapshots.
    refreshing: Mutex<()>,
    /// Set by `stop`: the listener thread ends.
    stopped: AtomicBool,
    snapshots: Arc<dyn Snapshotter>,
    filter: PeerFilter,
    min_age_ns: u64,
    /// Our namespace: the per-connection map's records carry it.
    netns: u32,
    /// Test hook (`SPAWNER_SIDECAR_FAULT=ebpf-map-read`): after start-up,
    /// every map read fails, to exercise the run-time fallback for real.
    fail_map_reads: AtomicBool,
}

pub(super) fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> SourceError {
    move |source| SourceError::Map { map, source }
}

/// Loads the program (node mode's with `node`), fills in the ignored peers,
/// attaches it and self-tests it on sockets of our own namespace; then
/// drops the listener reports the self-test made. Both sources start so.
fn start(
    options: &SourceOptions,
    node: Option<load::NodeLimits>,
) -> Result<(Loaded, Option<KernelLog>), SourceError> {
    let mut loaded = load::load(&LoadOptions {
        kernel_btf: options.kernel_btf.clone(),
        max_sockets: options.max_tracked_connections,
        activity_min_age: options.activity_min_age,
        ignore_peers: !options.peers.is_empty(),
        all_ports: options.all_ports,
        node,
    })?;
    for net in options.peers.nets() {
        let (prefix, data) = net.trie_key();
        loaded
            .ignored_peers
            .insert(&aya::maps::lpm_trie::Key::new(prefix, data), 1, 0)
            .map_err(map_error("IGNORED_PEERS"))?;
    }
    let mut kernel_log = match KernelLog::open(loaded.program.fd()) {
        Ok(log) => Some(log),
        Err(e) => {
            warn!("the kernel program's log lines will not be shown: {e}");
            None
        }
    };
    loaded.attach()?;
    let tested = selftest::run(&mut loaded.slots, &loaded.selftest, load::own_netns_inum()?);
    // What the program read on the self-test port, whatever the verdict.
    if let Some(log) = &mut kernel_log {
        log.drain();
    }
    tested?;
    // The self-test's own listeners were reported too (a key each in node
    // mode): drop every report so far. A real socket made meanwhile is in
    // the seeding snapshot.
    while loaded.listeners.next().is_some() {}
    Ok((loaded, kernel_log))
}

impl EbpfSource {
    /// Loads and attaches the program, self-tests it, follows the ports and
    /// seeds their counts from `snapshots`.
    pub fn open(
        options: &SourceOptions,
        snapshots: Arc<dyn Snapshotter>,
    ) -> Result<Arc<Self>, SourceError> {
        let (loaded, kernel_log) = start(options, None)?;
        let netns = loaded.config.netns_inum;

        let Loaded {
            program,
            slots: slot_map,
            counts,
            sockets,
            young_closed,
            stats,
            listeners,
            ..
        } = loaded;
        let source = Arc::new(EbpfSource {
            program: Mutex::new(Some(program)),
            refreshing: Mutex::new(()),
            stopped: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                slot_map,
                counts,
                sockets,
                young_closed,
                stats,
                listeners,
                kernel_log,
                book: Book::new(options.follow()),
                slots: Slots::new(),
            }),
            snapshots,
            filter: options.peers.clone(),
            min_age_ns: nanos(options.activity_min_age),
            netns,
            fail_map_reads: false.into(),
        });
        {
            let mut inner = lock(&source.inner);
            for port in inner.book.follow.ports() {
                source.follow(&mut inner, port)?;
            }
        }
        source.seed()?;
        if options.all_ports {
            listener_watch::spawn(Arc::downgrade(&source));
        }
        if std::env::var(FAULT_ENV).is_ok_and(|v| v == "ebpf-map-read") {
            warn!("{FAULT_ENV}=ebpf-map-read: every eBPF map read will now fail");
            source.fail_map_reads.store(true, Ordering::Relaxed);
        }
        Ok(source)
    }

    fn follow(&self, inner: &mut Inner, port: u16) -> Result<(), SourceError> {
        if inner.slots.follow(port, &mut inner.slot_map)? {
            inner.book.track(port);
        } else {
            warn!(
                port,
                "every slot of the kernel program is taken; port not followed for now"
            );
            // Forgotten, so that a later snapshot still listing it retries.
            inner.book.follow.remove(port);
        }
        Ok(())
    }

    fn unfollow(&self, inner: &mut Inner, port: u16) -> Result<(), SourceError> {
        inner.slots.unfollow(port, &mut inner.slot_map)?;
        inner.book.untrack(port);
        Ok(())
    }

    /// Reconciles until every port has had one quiet snapshot, so the first
    /// answer already counts sockets that existed before start.
    fn seed(&self) -> Result<(), SourceError> {
        let deadline = Instant::now() + SEED_DEADLINE;
        loop {
            self.refresh()?;
            let pending = lock(&self.inner).book.pending();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(
                    ?pending,
                    "ports too busy to seed within {SEED_DEADLINE:?}; retrying every tick"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn check_fault(&self) -> Result<(), SourceError> {
        if self.fail_map_reads.load(Ordering::Relaxed) {
            return Err(SourceError::Unavailable {
                reason: format!("BPF map PORT_COUNTS: read failed ({FAULT_ENV})"),
            });
        }
        Ok(())
    }

    fn event_counts(&self, inner: &Inner) -> Result<BTreeMap<u16, EventCounts>, SourceError> {
        self.check_fault()?;
        inner
            .slots
            .iter()
            .map(|(port, slot)| {
                let values = inner
                    .counts
                    .get(&slot, 0)
                    .map_err(map_error("PORT_COUNTS"))?;
                Ok((port, EventCounts::sum(values.iter())))
            })
            .collect()
    }

    /// Follows the ports the program reported new listeners on.
    fn drain_listeners(&self, inner: &mut Inner) -> Result<Vec<u16>, SourceError> {
        let mut ports = Vec::new();
        while let Some(item) = inner.listeners.next() {
            if let Ok(bytes) = <[u8; 4]>::try_from(&item[..]) {
                ports.push(u32::from_ne_bytes(bytes) as u16);
            }
        }
        let mut added = Vec::new();
        for port in ports {
            if inner.book.follow.add(port) {
                self.follow(inner, port)?;
                added.push(port);
            }
        }
        if !added.is_empty() {
            info!(?added, "following new listeners");
        }
        Ok(added)
    }

    fn stat(inner: &Inner, index: u32) -> Option<u64> {
        let values = inner.stats.get(&index, 0).ok()?;
        Some(values.iter().sum())
    }

    /// Runs the kernel skipped (`recursion_misses`).
    fn missed_runs(&self) -> Option<u64> {
        lock(&self.program).as_ref()?.recursion_misses()
    }
}

impl ConnectionSource for EbpfSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Ebpf
    }

    fn read(&self, detail: Detail) -> Result<Reading, SourceError> {
        let added = self.drain_listeners(&mut lock(&self.inner))?;
        if !added.is_empty() {
            // Their listener's own LISTEN event came before we followed
            // them: only a snapshot can count it. Rare, so paid here.
            if let Err(e) = self.refresh() {
                warn!("seeding new listeners: {e}");
            }
        }
        let inner = lock(&self.inner);
        let events = self.event_counts(&inner)?;
        let mut reading = inner.book.current(&events);
        if detail.starts {
            let tracked = connection_ages::read(&inner.sockets)?;
            let mut starts = connection_ages::starts_by_port(&tracked, self.netns);
            for (port, r) in reading.iter_mut() {
                r.starts = Some(starts.remove(port).unwrap_or_default());
            }
        }
        Ok(reading)
    }

    fn refresh(&self) -> Result<(), SourceError> {
        let _one_at_a_time = lock(&self.refreshing);
        let (ports, before) = {
            let mut inner = lock(&self.inner);
            if let Some(log) = &mut inner.kernel_log {
                log.drain();
            }
            self.drain_listeners(&mut inner)?;
            let before = self.event_counts(&inner)?;
            let needed = inner.book.snapshot_needed(
                Instant::now(),
                Self::stat(&inner, STAT_LISTENERS_LOST),
                &before,
            );
            if !needed {
                let inner = &mut *inner;
                inner.slots.recycle(&mut inner.counts)?;
                return Ok(());
            }
            (inner.book.follow.ports(), before)
        };
        let started = boottime_ns();
        let sockets = self
            .snapshots
            .snapshot(&SnapshotRequest {
                ports: ports.clone(),
                all_listeners: lock(&self.inner).book.follow.all_ports(),
            })
            .map_err(|e| SourceError::Snapshot {
                source: Box::new(e),
            })?;
        let mut inner = lock(&self.inner);
        let after = self.event_counts(&inner)?;
        let mut counted = snapshot::count(&sockets, &ports, &self.filter);
        if self.min_age_ns > 0 {
            let cookies = connection_ages::young_cookies(&inner.young_closed)?;
            let young = connection_ages::young_time_wait(&cookies, &sockets, &self.filter);
            for (port, r) in counted.iter_mut() {
                r.young_time_wait = young.get(port).copied().unwrap_or(0);
            }
        }
        let listeners_lost = Self::stat(&inner, STAT_LISTENERS_LOST).unwrap_or(0);
        let listening = snapshot::listening_ports(&sockets);
        let folded = inner.book.fold(
            &ports,
            &before,
            &counted,
            &after,
            &listening,
            listeners_lost,
        );
        let tracked = connection_ages::read(&inner.sockets)?;
        connection_ages::reconcile(
            &mut inner.sockets,
            &tracked,
            &sockets,
            &folded.quiet,
            &self.filter,
            &connection_ages::Window {
                netns: self.netns,
                snapshot_ns: started,
                now_ns: boottime_ns(),
            },
        )?;

        // Ports: free last tick's slots, then follow and drop per the snapshot.
        let inner = &mut *inner;
        inner.slots.recycle(&mut inner.counts)?;
        for port in folded.added {
            self.follow(inner, port)?;
        }
        for port in folded.removed {
            self.unfollow(inner, port)?;
        }
        Ok(())
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Detaches the program; the maps stay readable but nothing feeds them.
        drop(lock(&self.program).take());
    }

    fn health(&self) -> SourceHealth {
        let missed = self.missed_runs();
        let inner = lock(&self.inner);
        SourceHealth {
            kernel_events: Self::stat(&inner, STAT_EVENTS),
            kernel_missed_events: missed,
            untracked_connections: Self::stat(&inner, STAT_SOCKETS_FULL),
            lost_listener_reports: Self::stat(&inner, STAT_LISTENERS_LOST),
            corrections: inner.book.corrections_total,
        }
    }
}
