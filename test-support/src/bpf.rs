//! The kernel's view of the tracker's BPF program: whether this kernel can
//! run it, which programs are loaded, the program's own counters (its
//! `STATS` map), read by id as `bpftool map dump` would, and how many
//! entries its hash maps hold. A test that asserts "nothing changed" reads
//! the counters first to prove the program saw the events.

use std::{
    collections::{BTreeSet, HashSet},
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::{Map, MapData, MapType, PerCpuArray, loaded_maps};
use aya::programs::loaded_programs;

pub use spawner_sidecar_common::{STAT_EVENTS, STAT_NOT_TCP, STAT_OTHER_NETNS};

/// The program's per-CPU array of counters (`spawner-sidecar-ebpf`).
const STATS_MAP: &str = "STATS";

/// Whether this kernel can run the eBPF source at all.
pub fn ebpf_supported() -> Result<(), String> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("kernel lacks BTF (/sys/kernel/btf/vmlinux)".into());
    }
    Ok(())
}

/// Ids of the BPF programs named `name` loaded on the host right now.
pub fn loaded_program_ids(name: &str) -> BTreeSet<u32> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .collect()
}

/// Counter `index` (a `STAT_*`) of program `prog_id`, summed over CPUs.
pub fn program_stat(prog_id: u32, index: u32) -> io::Result<u64> {
    let program = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .ok_or_else(|| io::Error::other(format!("no loaded program {prog_id}")))?;
    let map_ids = program
        .map_ids()
        .map_err(io::Error::other)?
        .unwrap_or_default();
    let map_id = loaded_maps()
        .filter_map(Result::ok)
        .find(|m| map_ids.contains(&m.id()) && m.name_as_str() == Some(STATS_MAP))
        .map(|m| m.id())
        .ok_or_else(|| io::Error::other(format!("program {prog_id} has no {STATS_MAP} map")))?;
    let map = Map::from_map_data(MapData::from_id(map_id).map_err(io::Error::other)?)
        .map_err(io::Error::other)?;
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(io::Error::other)?;
    let values = stats.get(&index, 0).map_err(io::Error::other)?;
    Ok(values.iter().sum())
}

/// A hash map of a loaded program and how many entries it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntries {
    pub id: u32,
    pub name: String,
    pub entries: u64,
    pub max_entries: u32,
}

/// Every hash map (plain, LRU, per-CPU) the programs `prog_ids` use, with
/// the number of keys each holds now, listed as `bpftool map dump` would:
/// for tests that a tracker's maps hold only what is alive.
pub fn hash_map_entries(prog_ids: &BTreeSet<u32>) -> io::Result<Vec<MapEntries>> {
    let mut map_ids = BTreeSet::new();
    for program in loaded_programs().filter_map(Result::ok) {
        if prog_ids.contains(&program.id()) {
            map_ids.extend(
                program
                    .map_ids()
                    .map_err(io::Error::other)?
                    .unwrap_or_default(),
            );
        }
    }
    let mut maps = Vec::new();
    for info in loaded_maps().filter_map(Result::ok) {
        let hash = matches!(
            info.map_type(),
            Ok(MapType::Hash | MapType::LruHash | MapType::PerCpuHash | MapType::LruPerCpuHash)
        );
        if !hash || !map_ids.contains(&info.id()) {
            continue;
        }
        let fd = info.fd().map_err(io::Error::other)?;
        let entries = count_keys(fd.as_fd(), info.key_size(), info.max_entries())?;
        maps.push(MapEntries {
            id: info.id(),
            name: info.name_as_str().unwrap_or_default().to_string(),
            entries,
            max_entries: info.max_entries(),
        });
    }
    Ok(maps)
}

/// `bpf_attr` as BPF_MAP_GET_NEXT_KEY reads it (include/uapi/linux/bpf.h).
#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

/// The distinct keys of a map, walked with BPF_MAP_GET_NEXT_KEY (aya walks
/// keys only through a map typed with the exact key size). A key deleted
/// while we stand on it sends a hash map's walk back to its first key, so
/// keys are counted once each and the walk is bounded.
fn count_keys(fd: std::os::fd::BorrowedFd<'_>, key_size: u32, max_entries: u32) -> io::Result<u64> {
    let key_size = key_size as usize;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut key: Option<Vec<u8>> = None;
    for _ in 0..=2 * u64::from(max_entries) {
        let mut next = vec![0u8; key_size];
        let attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ref().map_or(0, |k| k.as_ptr() as u64),
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: bpf(2) reads `attr` and `key_size` bytes at `key` and
        // writes `key_size` bytes at `next_key`, both buffers of that size
        // alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                libc::c_long::from(4u8), // BPF_MAP_GET_NEXT_KEY
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(e);
        }
        seen.insert(next.clone());
        key = Some(next);
    }
    Ok(seen.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{BorrowedFd, FromRawFd as _, OwnedFd};

    use super::*;

    /// A BPF hash map of u32 -> u64 made with BPF_MAP_CREATE.
    fn hash_map(max_entries: u32) -> OwnedFd {
        // The first fields of `bpf_attr` for BPF_MAP_CREATE; the rest zero.
        let mut attr = [0u32; 30];
        attr[..4].copy_from_slice(&[1, 4, 8, max_entries]); // BPF_MAP_TYPE_HASH
        // SAFETY: bpf(2) reads the attr buffer, alive and zeroed beyond the fields set.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0 as libc::c_long, // BPF_MAP_CREATE
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: the kernel just handed us this fd; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn insert(fd: BorrowedFd<'_>, key: u32) {
        let value = 7u64;
        let attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            next_key: &value as *const u64 as u64,
            flags: 0,
        };
        // SAFETY: BPF_MAP_UPDATE_ELEM reads `attr`, the key and the value,
        // all alive for the call (its attr has the same layout).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                2 as libc::c_long, // BPF_MAP_UPDATE_ELEM
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        assert_eq!(rc, 0, "BPF_MAP_UPDATE_ELEM: {}", io::Error::last_os_error());
    }

    #[test]
    fn counts_the_keys_of_a_hash_map() {
        let map = hash_map(16);
        assert_eq!(count_keys(map.as_fd(), 4, 16).unwrap(), 0);
        for key in [3, 1, 4, 1, 5] {
            insert(map.as_fd(), key);
        }
        assert_eq!(count_keys(map.as_fd(), 4, 16).unwrap(), 4);
    }
}
