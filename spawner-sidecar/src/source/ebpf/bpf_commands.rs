//! The four bpf(2) commands the loader issues itself: filling and freezing
//! the read-only data map, loading the program against a BTF type id, and
//! attaching it.
//!
//! aya 0.14 does these only from inside `EbpfLoader`, whose constructor
//! parses all of vmlinux BTF (~19 MB at its peak, three times what the
//! daemon holds afterwards) even for programs that never need it; the type
//! id a BTF tracepoint is loaded against is all the load needs, and
//! `kernel_btf` finds it without building a table of every type. (aya 0.15
//! no longer parses BTF in its loader, but needs a newer compiler than this
//! project builds with, and its `BtfTracePoint::load` still takes a parsed
//! `Btf`.) Everything else (parsing the object, relocations, creating and
//! using maps) stays aya's.
use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};

/// `BPF_OBJ_NAME_LEN`: program names are cut to 15 bytes and a NUL.
const NAME_LEN: usize = 16;
/// The verifier's log, asked for only after a refusal, to say why.
const LOG_SIZE: usize = 256 * 1024;

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain integer structs; all zeroes is a
    // valid value of each, and the kernel requires unused fields zeroed.
    unsafe { std::mem::zeroed() }
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a whole bpf_attr and its size is passed with it; the
    // pointers the callers put in it borrow memory that outlives this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sys_bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(2) returned no descriptor"))?;
    // SAFETY: these commands return a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Stores `value` at index 0 of an array map (a data section's only entry).
pub fn set_first_element(map: BorrowedFd<'_>, value: &[u8]) -> io::Result<()> {
    let key = 0u32;
    let mut attr = zeroed_attr();
    // SAFETY: a reference to the union member this command reads.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = map.as_raw_fd() as u32;
    elem.key = std::ptr::from_ref(&key) as u64;
    elem.__bindgen_anon_1.value = value.as_ptr() as u64;
    sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Makes a map read-only for user space, so the verifier may treat its
/// contents as constants (what libbpf and aya do for `.rodata`).
pub fn freeze(map: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: a reference to the union member this command reads.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = map.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_MAP_FREEZE, &mut attr).map(drop)
}

/// Why the kernel refused a program: the error and the verifier's log.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", last_line(log))]
pub struct LoadError {
    pub error: io::Error,
    /// The verifier's whole log (empty when it gave none).
    pub log: String,
}

/// The verifier's last words are the reason; the lines before are its trace.
fn last_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("processed "))
        .map(|l| format!(": verifier: {l}"))
        .unwrap_or_default()
}

/// Loads a BTF tracepoint program (`BPF_PROG_TYPE_TRACING`, Linux 5.5)
/// against the type id of `btf_trace_<tracepoint>` in vmlinux BTF.
pub fn load_btf_tracepoint(
    name: &str,
    insns: &[bpf_insn],
    license: &CStr,
    attach_btf_id: u32,
) -> Result<OwnedFd, LoadError> {
    let attempt = |log: &mut [u8]| {
        let mut attr = zeroed_attr();
        // SAFETY: a reference to the union member this command reads.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
        load.expected_attach_type = bpf_attach_type::BPF_TRACE_RAW_TP as u32;
        load.attach_btf_id = attach_btf_id;
        load.insns = insns.as_ptr() as u64;
        load.insn_cnt = insns.len() as u32;
        load.license = license.as_ptr() as u64;
        for (slot, byte) in load
            .prog_name
            .iter_mut()
            .zip(name.bytes().take(NAME_LEN - 1))
        {
            *slot = byte as libc::c_char;
        }
        if !log.is_empty() {
            load.log_level = 1;
            load.log_buf = log.as_mut_ptr() as u64;
            load.log_size = log.len() as u32;
        }
        sys_bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    attempt(&mut []).or_else(|_| {
        // Again with the log on: the first try spares the buffer when the
        // program loads, which is every time but the failing one.
        let mut log = vec![0u8; LOG_SIZE];
        attempt(&mut log).map_err(|error| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            LoadError {
                error,
                log: String::from_utf8_lossy(&log[..end]).into_owned(),
            }
        })
    })
}

/// Attaches a loaded BTF tracepoint program to the tracepoint it was loaded
/// for. The returned link detaches it when closed.
pub fn attach_tracing(program: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // No name: a tracing program's target is its attach_btf_id (Linux 5.5).
    attr.raw_tracepoint.name = 0;
    attr.raw_tracepoint.prog_fd = program.as_raw_fd() as u32;
    sys_bpf_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_verifiers_last_words() {
        let error = LoadError {
            error: io::Error::from_raw_os_error(libc::EINVAL),
            log: "attach_btf_id 38204 is not a typedef\nprocessed 0 insns (limit 1000000) max_states_per_insn 0\n\n".into(),
        };
        assert_eq!(
            error.to_string(),
            "Invalid argument (os error 22): verifier: attach_btf_id 38204 is not a typedef"
        );
        let silent = LoadError {
            error: io::Error::from_raw_os_error(libc::EPERM),
            log: String::new(),
        };
        assert_eq!(silent.to_string(), "Operation not permitted (os error 1)");
    }
}
