//! The per-connection map (`SOCKETS`: cookie -> start time, port, family):
//! the kernel program adds a connection when it enters ESTABLISHED and
//! removes it when it leaves. Here: reading ages out of it, and keeping it
//! true with snapshots, the same way the counts are kept true.
//!
//! Connections from before start are added with the time they were first
//! seen. On a port that was quiet during a snapshot, an entry older than the
//! snapshot that the snapshot does not list is stale (its insert raced its
//! close, say) and goes; a listed connection missing from the map (the map
//! was full, or it predates the program) is added.
use std::collections::{BTreeMap, HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, MapData};
use spawner_sidecar_common::{AF_INET, AF_INET6, SocketRecord};
use tracing::debug;

use super::batch;
use crate::source::{
    Family, SourceError,
    peers::PeerFilter,
    snapshot::{SocketEntry, SocketState},
};

pub type SocketMap = BpfHashMap<MapData, u64, SocketRecord>;

/// Map update flag (`include/uapi/linux/bpf.h`): only if the key is new.
const BPF_NOEXIST: u64 = 1;

fn io_error(map: &'static str) -> impl Fn(std::io::Error) -> SourceError {
    move |source| SourceError::Unavailable {
        reason: format!("reading BPF map {map}: {source}"),
    }
}

/// Every tracked connection: cookie and record. Read once per answer or
/// round; in node mode it holds every namespace's, told apart by `netns`.
pub fn read(map: &SocketMap) -> Result<Vec<(u64, SocketRecord)>, SourceError> {
    batch::read_all(map).map_err(io_error("SOCKETS"))
}

/// Start times of the tracked connections of namespace `netns`, per port,
/// ascending.
pub fn starts_by_port(tracked: &[(u64, SocketRecord)], netns: u32) -> BTreeMap<u16, Vec<u64>> {
    let mut starts: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    for (_, record) in tracked.iter().filter(|(_, r)| r.netns == netns) {
        starts.entry(record.port).or_default().push(record.start_ns);
    }
    for list in starts.values_mut() {
        list.sort_unstable();
    }
    starts
}

/// The namespace a snapshot is of, and when: it began at `snapshot_ns`;
/// `now_ns` dates the connections it adds.
pub struct Window {
    pub netns: u32,
    pub snapshot_ns: u64,
    pub now_ns: u64,
}

/// The counted ESTABLISHED connections of the `quiet` ports in a snapshot:
/// port -> cookie -> family.
fn listed(
    sockets: &[SocketEntry],
    quiet: &HashSet<u16>,
    filter: &PeerFilter,
) -> HashMap<u16, HashMap<u64, Family>> {
    let mut listed: HashMap<u16, HashMap<u64, Family>> = HashMap::new();
    for s in sockets {
        if s.state == SocketState::Established
            && quiet.contains(&s.port())
            && !filter.ignores(s.peer.ip())
            && let Some(cookie) = s.cookie
        {
            listed.entry(s.port()).or_default().insert(cookie, s.family);
        }
    }
    listed
}

/// Makes the map agree with a snapshot of one namespace for its `quiet`
/// ports (no transition during the snapshot). `tracked` is the map as read
/// before. Returns (removed, added).
pub fn reconcile(
    map: &mut SocketMap,
    tracked: &[(u64, SocketRecord)],
    sockets: &[SocketEntry],
    quiet: &[u16],
    filter: &PeerFilter,
    window: &Window,
) -> Result<(usize, usize), SourceError> {
    if quiet.is_empty() || sockets.iter().any(|s| s.cookie.is_none()) {
        // A /proc snapshot has no cookies to match entries with.
        return Ok((0, 0));
    }
    let quiet: HashSet<u16> = quiet.iter().copied().collect();
    let listed = listed(sockets, &quiet, filter);
    let known: HashSet<u64> = tracked.iter().map(|(cookie, _)| *cookie).collect();
    let mut removed = 0;
    for (cookie, record) in tracked {
        if record.netns != window.netns
            || !quiet.contains(&record.port)
            || record.start_ns >= window.snapshot_ns
        {
            continue;
        }
        let still_there = listed
            .get(&record.port)
            .is_some_and(|cookies| cookies.contains_key(cookie));
        // Gone already is fine: the kernel removed it meanwhile.
        if !still_there && map.remove(cookie).is_ok() {
            removed += 1;
        }
    }
    let mut added = 0;
    for (&port, cookies) in &listed {
        for (cookie, family) in cookies.iter().filter(|(c, _)| !known.contains(*c)) {
            let record = SocketRecord {
                start_ns: window.now_ns,
                port,
                family: match family {
                    Family::V4 => AF_INET,
                    Family::V6 => AF_INET6,
                },
                netns: window.netns,
            };
            // NOEXIST: an entry the kernel just made is the better one.
            if map.insert(cookie, record, BPF_NOEXIST).is_ok() {
                added += 1;
            }
        }
    }
    if removed + added > 0 {
        debug!(removed, added, "per-connection map repaired from snapshot");
    }
    Ok((removed, added))
}

/// Of the TIME_WAIT sockets in a snapshot, per port, those left by
/// connections the kernel program saw close young (`YOUNG_CLOSED`).
pub fn young_time_wait(
    cookies: &HashSet<u64>,
    sockets: &[SocketEntry],
    filter: &PeerFilter,
) -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    for s in sockets {
        if s.state == SocketState::TimeWait
            && !filter.ignores(s.peer.ip())
            && s.cookie.is_some_and(|c| cookies.contains(&c))
        {
            *out.entry(s.port()).or_default() += 1;
        }
    }
    out
}

/// Cookies of the connections the kernel program saw close young
/// (`YOUNG_CLOSED`).
pub fn young_cookies(young: &BpfHashMap<MapData, u64, u64>) -> Result<HashSet<u64>, SourceError> {
    Ok(batch::read_all(young)
        .map_err(io_error("YOUNG_CLOSED"))?
        .into_iter()
        .map(|(cookie, _)| cookie)
        .collect())
}
