//! Kernel program: follows every TCP state change and keeps, per followed local
//! port, event-fed counts of ESTABLISHED and LISTEN sockets plus the time of the
//! last change (see `spawner_sidecar_common::PortCounts`).
//!
//! Attached as a BTF tracepoint on `inet_sock_set_state` (Linux 4.16; BTF
//! tracepoints since 5.5), which needs no tracefs. Its raw arguments are
//! `(struct sock *sk, int oldstate, int newstate)`. Every field is read with
//! `bpf_probe_read_kernel` at an offset the daemon took from the running
//! kernel's BTF, because Rust eBPF programs get no CO-RE relocations.
//!
//! It never fails a transition: every error path returns 0 and at worst
//! bumps `STAT_READ_ERRORS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray},
    programs::BtfTracePointContext,
};
use spawner_sidecar_common::{
    AF_INET, IPPROTO_TCP, MAX_PORTS, PORT_SLOT_ENTRIES, PortCounts, SELFTEST_SLOT, STAT_ENTRIES,
    STAT_EVENTS, STAT_NOT_TCP, STAT_OTHER_NETNS, STAT_READ_ERRORS, SelfTestRecord, TCP_CLOSE,
    TCP_ESTABLISHED, TCP_LISTEN, TrackerConfig,
};

/// Offsets and filters, set by the loader (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static CONFIG: TrackerConfig = TrackerConfig {
    off_sport: 0,
    off_sk_family: 0,
    off_sk_protocol: 0,
    off_sk_net: 0,
    off_net_inum: 0,
    sk_protocol_size: 0,
    netns_inum: 0,
};

/// Local port -> slot in `PORT_COUNTS` plus one; 0 means "not followed",
/// `SELFTEST_SLOT` means "record in `SELFTEST`".
/// An array, not a hash map: the JIT inlines array lookups, and this is the
/// first test every TCP transition on the host goes through.
#[map]
static PORT_SLOTS: Array<u32> = Array::with_max_entries(PORT_SLOT_ENTRIES, 0);

/// Per-CPU counts for each followed port, indexed by slot.
#[map]
static PORT_COUNTS: PerCpuArray<PortCounts> = PerCpuArray::with_max_entries(MAX_PORTS, 0);

/// The program's own health counters (`STAT_*`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_ENTRIES, 0);

/// What the program read for the last socket on the self-test port.
#[map]
static SELFTEST: Array<SelfTestRecord> = Array::with_max_entries(1, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn track_tcp_state(ctx: BtfTracePointContext) -> i32 {
    if try_track_tcp_state(&ctx).is_err() {
        bump(STAT_READ_ERRORS);
    }
    0
}

fn config() -> TrackerConfig {
    // SAFETY: CONFIG is a plain static; the volatile read stops the compiler
    // from folding in the zeroes above instead of what the loader wrote.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

fn bump(stat: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stat) {
        // SAFETY: a valid per-CPU slot; programs do not migrate CPUs mid-run.
        unsafe { *counter += 1 };
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
///
/// # Safety
/// `base` must be a kernel pointer; the helper checks the read itself.
unsafe fn read_at<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an
    // error code, never a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

fn try_track_tcp_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    bump(STAT_EVENTS);
    let cfg = config();
    let sk: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);

    // The port first: on a busy node most transitions are on ports nobody
    // follows, and they should cost one read and one array lookup.
    // SAFETY: sk is the tracepoint's socket argument.
    let port = u16::from_be(unsafe { read_at::<u16>(sk, cfg.off_sport)? });
    let slot = match PORT_SLOTS.get(u32::from(port)) {
        Some(&slot) if slot != 0 => slot,
        _ => return Ok(()),
    };

    // SAFETY: as above.
    let protocol = unsafe {
        if cfg.sk_protocol_size == 1 {
            u16::from(read_at::<u8>(sk, cfg.off_sk_protocol)?)
        } else {
            read_at::<u16>(sk, cfg.off_sk_protocol)?
        }
    };
    // SAFETY: as above; skc_net holds a `struct net *`.
    let net: *const u8 = unsafe { read_at::<*const u8>(sk, cfg.off_sk_net)? };
    // SAFETY: net points at the socket's `struct net`.
    let netns = unsafe { read_at::<u32>(net, cfg.off_net_inum)? };
    // SAFETY: as above.
    let family = unsafe { read_at::<u16>(sk, cfg.off_sk_family)? };

    if slot == SELFTEST_SLOT {
        record_selftest(netns, family, protocol);
        return Ok(());
    }
    if protocol != IPPROTO_TCP {
        bump(STAT_NOT_TCP);
        return Ok(());
    }
    if cfg.netns_inum != 0 && netns != cfg.netns_inum {
        bump(STAT_OTHER_NETNS);
        return Ok(());
    }
    let Some(counts) = PORT_COUNTS.get_ptr_mut(slot - 1) else {
        return Err(-1);
    };
    // SAFETY: a valid per-CPU slot; programs do not migrate CPUs mid-run.
    let counts = unsafe { &mut *counts };
    counts.transitions += 1;
    if newstate == TCP_LISTEN {
        counts.listening += 1;
    }
    // A listener only ever leaves LISTEN for CLOSE. LISTEN -> SYN_RECV is a
    // new child: inet_csk_clone_lock() copies the listener, state included,
    // then moves the copy to SYN_RECV, so it must not count as a listener
    // going away.
    if oldstate == TCP_LISTEN && newstate == TCP_CLOSE {
        counts.listening -= 1;
    }
    if newstate == TCP_ESTABLISHED || oldstate == TCP_ESTABLISHED {
        let delta = if newstate == TCP_ESTABLISHED { 1 } else { -1 };
        if delta > 0 {
            counts.opened += 1;
        } else {
            counts.closed += 1;
        }
        if family == AF_INET {
            counts.established_v4 += delta;
        } else {
            counts.established_v6 += delta;
        }
        // SAFETY: a plain helper call with no arguments.
        counts.last_active_ns = unsafe { bpf_ktime_get_boot_ns() };
    }
    Ok(())
}

fn record_selftest(netns: u32, family: u16, protocol: u16) {
    if let Some(record) = SELFTEST.get_ptr_mut(0) {
        // SAFETY: a valid array slot; concurrent writers only race on which
        // of two identical self-test events wins, which does not matter.
        unsafe {
            (*record).seen += 1;
            (*record).netns_inum = netns;
            (*record).family = family;
            (*record).protocol = protocol;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that
    // could get here. Required by no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
