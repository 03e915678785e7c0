//! The kernel's view of the tracker's BPF program: whether this kernel can
//! run it, which programs are loaded, and the program's own counters (its
//! `STATS` map), read by id as `bpftool map dump` would. A test that asserts
//! "nothing changed" reads them first to prove the program saw the events.

use std::{collections::BTreeSet, io, path::Path};

use aya::maps::{Map, MapData, PerCpuArray, loaded_maps};
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
