//! Loading the kernel program: offsets from BTF, the verifier, the attach,
//! and the maps the daemon keeps.
//!
//! Memory matters for a sidecar: parsing vmlinux BTF costs ~19 MB, and aya's
//! `EbpfLoader::new()` always does it once. Every parse here is dropped
//! before the next begins (ours for the offsets, aya's for the attach id),
//! and the freed heap is handed back to the system once loading is done.
use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use spawner_sidecar_common::{
    FLAG_ALL_PORTS, FLAG_IGNORE_PEERS, PeerData, PortCounts, SelfTestRecord, SocketRecord,
    TrackerConfig,
};
use tracing::debug;

use super::kernel_btf::{self, Btf};
use crate::{clock::nanos, source::SourceError};

/// The kernel program, built by `build.rs`; empty when the host had no eBPF
/// toolchain at build time.
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spawner-sidecar"));

pub const PROGRAM: &str = "track_tcp_state";
/// `inet_sock_set_state` (Linux 4.16) as a BTF tracepoint: needs no tracefs.
const TRACEPOINT: &str = "inet_sock_set_state";

/// What the program needs to know at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub kernel_btf: PathBuf,
    pub max_sockets: u32,
    pub activity_min_age: Duration,
    pub ignore_peers: bool,
    pub all_ports: bool,
}

/// The attached program and the maps the daemon uses.
pub struct Loaded {
    /// Owns the program and its link: dropping it detaches.
    pub ebpf: Ebpf,
    pub config: TrackerConfig,
    pub slots: Array<MapData, u32>,
    pub counts: PerCpuArray<MapData, PortCounts>,
    pub sockets: HashMap<MapData, u64, SocketRecord>,
    pub young_closed: HashMap<MapData, u64, u64>,
    pub ignored_peers: LpmTrie<MapData, PeerData, u8>,
    pub listeners: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub selftest: Array<MapData, SelfTestRecord>,
}

pub fn unavailable(context: &str, error: impl std::error::Error) -> SourceError {
    let mut reason = format!("{context}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        // Many errors already print their cause; say each thing once.
        let cause_text = cause.to_string();
        if !reason.contains(&cause_text) {
            reason.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    // Verifier logs run to hundreds of lines; keep the error to one line
    // and the whole log at debug level.
    debug!("{reason}");
    let first_line = reason.lines().next().unwrap_or_default().to_string();
    SourceError::Unavailable { reason: first_line }
}

/// The network namespace this process lives in, as the kernel numbers it.
pub fn own_netns_inum() -> Result<u32, SourceError> {
    let meta = std::fs::metadata("/proc/self/ns/net").map_err(|source| SourceError::Io {
        path: "/proc/self/ns/net",
        source,
    })?;
    u32::try_from(meta.ino()).map_err(|_| SourceError::Unavailable {
        reason: format!(
            "network namespace inode {} does not fit 32 bits",
            meta.ino()
        ),
    })
}

/// Loads, verifies and attaches the program. Nothing is followed yet: the
/// caller self-tests it and then fills `PORT_SLOTS`.
pub fn load(options: &LoadOptions) -> Result<Loaded, SourceError> {
    if PROGRAM_OBJECT.is_empty() {
        return Err(SourceError::Unavailable {
            reason: "this binary was built without the kernel program (build it with `cargo xtask build`)"
                .into(),
        });
    }
    // Our own parse first, dropped at the end of this statement.
    let offsets =
        Btf::from_file(&options.kernel_btf).and_then(|btf| kernel_btf::tracker_offsets(&btf));
    let mut flags = 0;
    if options.ignore_peers {
        flags |= FLAG_IGNORE_PEERS;
    }
    if options.all_ports {
        flags |= FLAG_ALL_PORTS;
    }
    let config = TrackerConfig {
        netns_inum: own_netns_inum()?,
        flags,
        activity_min_age_ns: nanos(options.activity_min_age),
        ..offsets.map_err(|e| unavailable("kernel BTF", e))?
    };
    debug!(?config, "struct offsets from kernel BTF");

    let mut loader = EbpfLoader::new();
    // Rust programs carry no CO-RE relocations, so the loader needs no
    // kernel BTF: dropping the one new() parsed keeps one parse alive at most.
    loader.btf(None);
    let mut ebpf = loader
        .override_global("CONFIG", &config, true)
        .map_max_entries("SOCKETS", options.max_sockets)
        .load(PROGRAM_OBJECT)
        .map_err(|e| unavailable("loading the kernel program", e))?;
    drop(loader);
    {
        // Only for the attach point's BTF id; dropped right after.
        let btf = aya::Btf::parse_file(&options.kernel_btf, aya::Endianness::default())
            .map_err(|e| unavailable("kernel BTF", e))?;
        let program: &mut BtfTracePoint = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| SourceError::Unavailable {
                reason: format!("program {PROGRAM} missing from the object"),
            })?
            .try_into()
            .map_err(|e| unavailable("program type", e))?;
        program
            .load(TRACEPOINT, &btf)
            .map_err(|e| unavailable("verifying the kernel program", e))?;
    }
    release_freed_heap();

    let loaded = Loaded {
        config,
        slots: take_map(&mut ebpf, "PORT_SLOTS")?,
        counts: take_map(&mut ebpf, "PORT_COUNTS")?,
        sockets: take_map(&mut ebpf, "SOCKETS")?,
        young_closed: take_map(&mut ebpf, "YOUNG_CLOSED")?,
        ignored_peers: take_map(&mut ebpf, "IGNORED_PEERS")?,
        listeners: take_map(&mut ebpf, "LISTENERS")?,
        stats: take_map(&mut ebpf, "STATS")?,
        selftest: take_map(&mut ebpf, "SELFTEST")?,
        ebpf,
    };
    Ok(loaded)
}

impl Loaded {
    /// Attaches the verified program to the tracepoint.
    pub fn attach(&mut self) -> Result<(), SourceError> {
        let program: &mut BtfTracePoint = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| SourceError::Unavailable {
                reason: format!("program {PROGRAM} missing from the object"),
            })?
            .try_into()
            .map_err(|e| unavailable("program type", e))?;
        program
            .attach()
            .map_err(|e| unavailable("attaching to inet_sock_set_state", e))?;
        Ok(())
    }
}

/// Gives the heap freed by the BTF parses back to the system, so the
/// resident size after start-up is what the daemon really uses.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, SourceError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| SourceError::Unavailable {
            reason: format!("map {name} missing from the object"),
        })?;
    T::try_from(map).map_err(|source| SourceError::Map { map: name, source })
}
