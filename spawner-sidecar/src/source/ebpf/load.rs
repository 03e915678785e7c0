//! Loading the kernel program: offsets and the attach point from BTF, the
//! maps, the verifier, the attach.
//!
//! Memory matters for a sidecar: the daemon holds ~7 MB once started, and
//! aya's `EbpfLoader` parses all of vmlinux BTF on construction (~19 MB for
//! a moment, which stays the process's peak). So the object is loaded with
//! aya's parts below its loader: aya-obj parses and relocates it, aya creates
//! and reads the maps, and `bpf_commands` loads the program against the one
//! type id it needs, which `kernel_btf` finds along with the offsets.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::Duration,
};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya_obj::{EbpfSectionKind, generated::bpf_map_type};
use spawner_sidecar_common::{
    FLAG_ALL_PORTS, FLAG_IGNORE_PEERS, NetnsPort, PeerData, PortCounts, SelfTestRecord,
    SocketRecord, TrackerConfig,
};
use tracing::debug;

use super::{
    bpf_commands,
    kernel_btf::{self, Btf},
};
use crate::{clock::nanos, source::SourceError};

/// The kernel program, built by `build.rs`; empty when the host had no eBPF
/// toolchain at build time.
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spawner-sidecar"));

pub const PROGRAM: &str = "track_tcp_state";
/// The same counting keyed by (namespace, port), for `spawner-sidecar node`.
pub const NODE_PROGRAM: &str = "track_tcp_state_node";
/// Node mode's report ring: one record per new (namespace, port) key, so it
/// must absorb a burst of pods starting at once between two drains.
const NODE_RING_BYTES: u32 = 64 * 1024;
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
    /// Node mode: every namespace, keyed; `None` for the per-pod program.
    pub node: Option<NodeLimits>,
}

/// Node mode's bounds, which size its maps.
#[derive(Clone, Copy, Debug)]
pub struct NodeLimits {
    pub max_namespaces: u32,
    pub max_ports_per_namespace: u32,
}

/// The loaded program and, once attached, its link.
pub struct Program {
    fd: OwnedFd,
    /// Closing it detaches the program.
    link: Option<OwnedFd>,
}

impl Program {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The attached program and the maps the daemon uses.
pub struct Loaded {
    /// Owns the program and its link: dropping it detaches.
    pub program: Program,
    pub config: TrackerConfig,
    pub slots: Array<MapData, u32>,
    pub counts: PerCpuArray<MapData, PortCounts>,
    pub sockets: HashMap<MapData, u64, SocketRecord>,
    pub young_closed: HashMap<MapData, u64, u64>,
    pub ignored_peers: LpmTrie<MapData, PeerData, u8>,
    pub listeners: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub selftest: Array<MapData, SelfTestRecord>,
    /// Node mode's counts and per-namespace key counts (one entry each in
    /// the per-pod mode, which does not use them).
    pub node_counts: PerCpuHashMap<MapData, NetnsPort, PortCounts>,
    pub node_netns: HashMap<MapData, u32, u64>,
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

/// Loads and verifies the program. Nothing is followed yet: the caller
/// attaches and self-tests it, then fills `PORT_SLOTS`.
pub fn load(options: &LoadOptions) -> Result<Loaded, SourceError> {
    if PROGRAM_OBJECT.is_empty() {
        return Err(SourceError::Unavailable {
            reason: "this binary was built without the kernel program (build it with `cargo xtask build`)"
                .into(),
        });
    }
    let (offsets, attach_btf_id) = Btf::from_file(&options.kernel_btf)
        .and_then(|btf| {
            Ok((
                kernel_btf::tracker_offsets(&btf)?,
                btf.typedef_id(&format!("btf_trace_{TRACEPOINT}"))?,
            ))
        })
        .map_err(|e| unavailable("kernel BTF", e))?;
    let mut flags = 0;
    if options.ignore_peers {
        flags |= FLAG_IGNORE_PEERS;
    }
    if options.all_ports {
        flags |= FLAG_ALL_PORTS;
    }
    let own_netns = own_netns_inum()?;
    let config = TrackerConfig {
        // Node mode counts every namespace; the self-test still checks
        // against our own.
        netns_inum: if options.node.is_some() { 0 } else { own_netns },
        flags,
        activity_min_age_ns: nanos(options.activity_min_age),
        max_ports_per_netns: options.node.map_or(0, |n| n.max_ports_per_namespace),
        ..offsets
    };
    let name = if options.node.is_some() {
        NODE_PROGRAM
    } else {
        PROGRAM
    };
    debug!(?config, attach_btf_id, "from kernel BTF");

    let mut obj = aya_obj::Object::parse(PROGRAM_OBJECT)
        .map_err(|e| unavailable("parsing the kernel program", e))?;
    obj.patch_map_data(StdHashMap::from([(
        "CONFIG",
        (config_bytes(&config), true),
    )]))
    .map_err(|e| unavailable("setting the program's configuration", e))?;
    let mut maps = create_maps(&mut obj, options)?;

    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        maps.iter()
            .map(|(name, (def, data))| (name.as_str(), data.fd().as_fd().as_raw_fd(), def)),
        &text_sections,
    )
    .map_err(|e| unavailable("relocating the kernel program", e))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| unavailable("relocating the kernel program", e))?;
    let missing = || SourceError::Unavailable {
        reason: format!("program {name} missing from the object"),
    };
    let program = obj.programs.get(name).ok_or_else(missing)?;
    let function = obj
        .functions
        .get(&program.function_key())
        .ok_or_else(missing)?;
    let fd = bpf_commands::load_btf_tracepoint(
        name,
        &function.instructions,
        &program.license,
        attach_btf_id,
    )
    .map_err(|e| {
        debug!("verifier log:\n{}", e.log);
        unavailable("verifying the kernel program", e)
    })?;
    drop(obj);
    crate::malloc::release_freed();

    let loaded = Loaded {
        config,
        slots: take_map(&mut maps, "PORT_SLOTS")?,
        counts: take_map(&mut maps, "PORT_COUNTS")?,
        sockets: take_map(&mut maps, "SOCKETS")?,
        young_closed: take_map(&mut maps, "YOUNG_CLOSED")?,
        ignored_peers: take_map(&mut maps, "IGNORED_PEERS")?,
        listeners: take_map(&mut maps, "LISTENERS")?,
        stats: take_map(&mut maps, "STATS")?,
        selftest: take_map(&mut maps, "SELFTEST")?,
        node_counts: take_map(&mut maps, "NODE_COUNTS")?,
        node_netns: take_map(&mut maps, "NODE_NETNS")?,
        program: Program { fd, link: None },
    };
    Ok(loaded)
}

/// The object's maps, created as aya's loader would create them: sized,
/// data sections filled and `.rodata` frozen. Each keeps its definition,
/// which the relocations read.
fn create_maps(
    obj: &mut aya_obj::Object,
    options: &LoadOptions,
) -> Result<StdHashMap<String, (aya_obj::Map, MapData)>, SourceError> {
    let mut maps = StdHashMap::new();
    for (name, mut def) in obj.maps.drain() {
        match (name.as_str(), options.node) {
            ("SOCKETS", _) => def.set_max_entries(options.max_sockets),
            ("NODE_COUNTS", Some(n)) => def.set_max_entries(
                n.max_namespaces
                    .saturating_mul(n.max_ports_per_namespace)
                    .max(1),
            ),
            ("NODE_NETNS", Some(n)) => def.set_max_entries(n.max_namespaces.max(1)),
            // Node mode keeps no per-slot counts: one per-CPU entry, not
            // 1 024 of them on every CPU.
            ("PORT_COUNTS", Some(_)) => def.set_max_entries(1),
            ("LISTENERS", Some(_)) => def.set_max_entries(NODE_RING_BYTES),
            _ => {}
        }
        if def.map_type() == bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32 {
            // The kernel wants no value size and a power-of-two number of
            // pages, which aya-ebpf's definition leaves to the loader.
            def.set_value_size(0);
            def.set_max_entries(ring_size(def.max_entries()));
        }
        let created = MapData::create(def.clone(), &name, None)
            .map_err(|source| unavailable(&format!("creating map {name}"), source))?;
        let fd = created.fd().as_fd();
        if !def.data().is_empty() {
            bpf_commands::set_first_element(fd, def.data())
                .map_err(|e| unavailable(&format!("filling map {name}"), e))?;
        }
        if def.section_kind() == EbpfSectionKind::Rodata {
            bpf_commands::freeze(fd)
                .map_err(|e| unavailable(&format!("freezing map {name}"), e))?;
        }
        maps.insert(name, (def, created));
    }
    Ok(maps)
}

/// A ring buffer's size rounded up to a power-of-two number of pages.
fn ring_size(bytes: u32) -> u32 {
    // SAFETY: sysconf only reads a system constant.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    bytes.div_ceil(page).max(1).next_power_of_two() * page
}

/// The configuration as the bytes of the `CONFIG` global.
fn config_bytes(config: &TrackerConfig) -> &[u8] {
    // SAFETY: TrackerConfig is repr(C) and Copy with no padding (twelve u32,
    // a u64, two u32; its layout test pins this), so all its bytes are
    // initialised; the slice borrows it.
    unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(config).cast::<u8>(),
            std::mem::size_of::<TrackerConfig>(),
        )
    }
}

impl Loaded {
    /// Attaches the verified program to the tracepoint.
    pub fn attach(&mut self) -> Result<(), SourceError> {
        let link = bpf_commands::attach_tracing(self.program.fd())
            .map_err(|e| unavailable("attaching to inet_sock_set_state", e))?;
        self.program.link = Some(link);
        Ok(())
    }
}

fn take_map<T>(
    maps: &mut StdHashMap<String, (aya_obj::Map, MapData)>,
    name: &'static str,
) -> Result<T, SourceError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let (_, data) = maps.remove(name).ok_or_else(|| SourceError::Unavailable {
        reason: format!("map {name} missing from the object"),
    })?;
    let map = Map::from_map_data(data).map_err(|source| SourceError::Map { map: name, source })?;
    T::try_from(map).map_err(|source| SourceError::Map { map: name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffers_round_up_to_a_power_of_two_of_pages() {
        let page = ring_size(1);
        assert!(page.is_power_of_two() && page >= 4096, "one page: {page}");
        assert_eq!(ring_size(page), page);
        assert_eq!(ring_size(page + 1), 2 * page);
        assert_eq!(ring_size(3 * page), 4 * page);
    }

    #[test]
    fn config_bytes_are_the_whole_struct_in_field_order() {
        let config = TrackerConfig {
            off_num: 14,
            activity_min_age_ns: u64::MAX,
            ..TrackerConfig::default()
        };
        let bytes = config_bytes(&config);
        assert_eq!(bytes.len(), 64);
        assert_eq!(bytes[..4], 14u32.to_ne_bytes());
        assert_eq!(bytes[48..56], u64::MAX.to_ne_bytes());
    }
}
