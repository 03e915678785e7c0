//! Reads a whole BPF hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`,
//! Linux 5.6), which aya 0.14 does not offer: its iterator costs two
//! syscalls per entry, 20 000 for 10 000 connections. Every kernel that can
//! load our program has batch operations (it needs 5.12 for socket cookies
//! in tracing programs).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, MapData},
};

/// `enum bpf_cmd` value (`include/uapi/linux/bpf.h`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of `map`, at one moment per batch (the kernel copies a
/// bucket at a time, so an entry changing meanwhile is seen before or after,
/// never torn).
pub fn read_all<K: Pod + Default, V: Pod + Default>(
    map: &HashMap<MapData, K, V>,
) -> io::Result<Vec<(K, V)>> {
    let fd = map_fd(map);
    let mut chunk = 1024usize;
    let mut out = Vec::new();
    // The hash map's batch token is a bucket index (u32); room for a u64.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut keys = vec![K::default(); chunk];
        let mut values = vec![V::default(); chunk];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            ..Default::default()
        };
        // SAFETY: attr is a valid bpf_attr prefix for this command; keys and
        // values have room for `count` entries of the map's key and value
        // sizes (K and V are the map's own Pod types), and the tokens outlive
        // the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(chunk);
        out.extend(keys.into_iter().zip(values).take(filled));
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            // The end of the map; the last entries came with it.
            Some(libc::ENOENT) => return Ok(out),
            // One bucket holds more than `chunk` entries: retry it bigger.
            Some(libc::ENOSPC) if filled == 0 => {
                chunk *= 4;
                continue;
            }
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        token_in = token_out;
        first = false;
    }
}

fn map_fd<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> i32 {
    // aya exposes the fd of a typed map only through the untyped MapData.
    IterableMap::map(map).fd().as_fd().as_raw_fd()
}
