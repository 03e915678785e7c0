//! Kernel program: follows every TCP state change and keeps, per followed local
//! port, event-fed counts of ESTABLISHED and LISTEN sockets plus the time of the
//! last activity (see `spawner_sidecar_common::PortCounts`), and per
//! connection its start time (`SOCKETS`).
//!
//! Attached as a BTF tracepoint on `inet_sock_set_state` (Linux 4.16; BTF
//! tracepoints since 5.5), which needs no tracefs. Its raw arguments are
//! `(struct sock *sk, int oldstate, int newstate)`, and `sk` is BTF-typed:
//! the verifier lets the program load fields of `struct sock` directly (the
//! JIT turns them into plain loads guarded by an exception table), at offsets
//! the daemon took from the running kernel's BTF and froze in `CONFIG`,
//! because Rust eBPF programs get no CO-RE relocations. Only the one field
//! outside `struct sock` (`inet_sport`) needs `bpf_probe_read_kernel`.
//!
//! It never fails a transition: every error path returns 0 and at worst
//! bumps a `STATS` counter. The rare paths (a failed read, the
//! per-connection map full, a lost listener report) also write an aya-log
//! line, at most at the 1st, 2nd, 4th, 8th... occurrence on each CPU so
//! that a flood costs no more than the counter; so does the self-test.
//! Nothing is logged on the per-event path.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
    programs::BtfTracePointContext,
};
use aya_log_ebpf::{debug, warn};
use spawner_sidecar_common::{
    AF_INET, DEFAULT_MAX_SOCKETS, FLAG_ALL_PORTS, FLAG_IGNORE_PEERS, IPPROTO_TCP,
    LISTENER_RING_BYTES, MAX_IGNORED_PEERS, MAX_PORTS, NODE_PORT_FOLLOWED, NODE_PORT_KEYED,
    NetnsPort, PEER_TAG_V4, PEER_TAG_V6, PORT_SLOT_ENTRIES, PeerData, PortCounts, SELFTEST_SLOT,
    STAT_ENTRIES, STAT_EVENTS, STAT_LISTENERS_LOST, STAT_NODE_KEYS_FULL, STAT_NODE_NETNS_FULL,
    STAT_NODE_PORTS_FULL, STAT_NOT_TCP, STAT_OTHER_NETNS, STAT_READ_ERRORS, STAT_SOCKETS_FULL,
    SelfTestRecord, SocketRecord, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TrackerConfig,
    YOUNG_CLOSED_ENTRIES,
};

/// Offsets and filters, set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: TrackerConfig = TrackerConfig {
    off_num: 0,
    off_sport: 0,
    off_sk_family: 0,
    off_sk_protocol: 0,
    off_sk_net: 0,
    off_net_inum: 0,
    off_daddr: 0,
    off_v6_daddr: 0,
    sk_protocol_size: 0,
    netns_inum: 0,
    flags: 0,
    off_cookie: 0,
    activity_min_age_ns: 0,
    max_ports_per_netns: 0,
    _reserved: 0,
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

/// Socket cookie -> start of each ESTABLISHED connection on a followed port
/// (long-lived counts, `--activity-min-age`). Preallocated, so an update
/// never allocates in the TCP path; when full, the insert fails and is
/// counted, and the daemon's snapshots fill the gap later.
#[map]
static SOCKETS: HashMap<u64, SocketRecord> = HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

/// Cookies of connections that closed younger than `activity_min_age_ns`:
/// their TIME_WAIT sockets (which keep the cookie) are not activity either.
#[map]
static YOUNG_CLOSED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(YOUNG_CLOSED_ENTRIES, 0);

/// Peers whose connections are left out of every count (`--ignore-peer`).
#[map]
static IGNORED_PEERS: LpmTrie<PeerData, u8> = LpmTrie::with_max_entries(MAX_IGNORED_PEERS, 0);

/// Ports that just got a listener in this namespace (`--all-ports`).
#[map]
static LISTENERS: RingBuf = RingBuf::with_byte_size(LISTENER_RING_BYTES, 0);

/// The program's own health counters (`STAT_*`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_ENTRIES, 0);

/// What the program read for the last sockets on the self-test port.
#[map]
static SELFTEST: Array<SelfTestRecord> = Array::with_max_entries(2, 0);

/// Node mode (`track_tcp_state_node`): per-CPU counts keyed by namespace
/// and port. Preallocated (the loader sizes it: namespaces x ports per
/// namespace; one entry in the per-pod mode), so creating a key never
/// allocates on the TCP path; a full map refuses the key, which is counted.
#[map]
static NODE_COUNTS: PerCpuHashMap<NetnsPort, PortCounts> = PerCpuHashMap::with_max_entries(1, 0);

/// Node mode: keys each namespace has in `NODE_COUNTS`, which bounds both
/// the namespaces (this map's size) and the ports of each. A u64 because
/// the BPF target's atomics are 64-bit.
#[map]
static NODE_NETNS: HashMap<u32, u64> = HashMap::with_max_entries(1, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn track_tcp_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(error) = try_track_tcp_state(&ctx) {
        let seen = bump(STAT_READ_ERRORS);
        if worth_logging(seen) {
            log_read_error(&ctx, error, seen);
        }
    }
    0
}

/// Does nothing, and the daemon never attaches it: `cargo xtask bench`
/// attaches it on its own to measure, in the same run as the tracker, what
/// any program costs on this tracepoint (the floor under `track_tcp_state`'s
/// figure with `kernel.bpf_stats_enabled`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}

fn config() -> TrackerConfig {
    // SAFETY: CONFIG is a plain static; the volatile read stops the compiler
    // from folding in the zeroes above instead of what the loader wrote.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Adds one to a `STATS` counter of this CPU; returns its new value (0 if
/// the slot is missing, which the verifier makes impossible).
fn bump(stat: u32) -> u64 {
    match STATS.get_ptr_mut(stat) {
        Some(counter) => {
            // SAFETY: a valid per-CPU slot; the kernel never runs this
            // program twice at once on one CPU (it skips a nested run), so
            // no other writer can interleave.
            unsafe {
                *counter += 1;
                *counter
            }
        }
        None => 0,
    }
}

// The log lines live in functions of their own, kept out of line: an
// aya-log call expands to a few hundred instructions, which inlined would
// spread the per-event path over more of the instruction cache.

#[inline(never)]
fn log_read_error(ctx: &BtfTracePointContext, error: i32, seen: u64) {
    warn!(
        ctx,
        "reading a socket failed (error {}); {} times on this CPU, the transition is not counted",
        error,
        seen
    );
}

#[inline(never)]
fn log_sockets_full(ctx: &BtfTracePointContext, port: u16, seen: u64) {
    warn!(
        ctx,
        "per-connection map full: a connection on port {} has no recorded start ({} times on this CPU); snapshots add it later",
        port,
        seen
    );
}

#[inline(never)]
fn log_listener_lost(ctx: &BtfTracePointContext, port: u16, seen: u64) {
    warn!(
        ctx,
        "listener ring full: new listener on port {} not reported ({} times on this CPU); the next snapshot finds it",
        port,
        seen
    );
}

#[inline(never)]
fn log_node_full(ctx: &BtfTracePointContext, what: &str, netns: u32, port: u32, seen: u64) {
    warn!(
        ctx,
        "node mode: no room for more {} (namespace {} port {} not counted; {} times on this CPU)",
        what,
        netns,
        port,
        seen
    );
}

/// Whether the `seen`-th occurrence of a rare event on this CPU gets a log
/// line: the powers of two, so a flood writes a few lines, not one each.
fn worth_logging(seen: u64) -> bool {
    seen.is_power_of_two()
}

/// Loads a `T` at `base + offset`, where `base` is a BTF-typed kernel
/// pointer and the access lies inside the struct it points to.
///
/// # Safety
/// The verifier checks the access against the kernel's BTF and the JIT
/// guards it; a bad offset is refused at load time, never a fault.
unsafe fn load<T>(base: *const u8, offset: u32) -> T {
    // SAFETY: see above; volatile keeps it one load of exactly this size.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Reads a `T` at `base + offset` with `bpf_probe_read_kernel`, for fields
/// the verifier cannot see as part of the pointer's BTF type.
///
/// # Safety
/// `base` must be a kernel pointer; the helper checks the read itself.
unsafe fn probe<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: the helper validates the address; a bad one is an error code.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// The socket's own network namespace, protocol and family: not the current
/// task's, since many transitions run in softirq on behalf of nobody.
struct Identity {
    netns: u32,
    protocol: u16,
    family: u16,
}

#[inline(always)]
fn identity(sk: *const u8, cfg: &TrackerConfig) -> Identity {
    // SAFETY: sk is the tracepoint's BTF-typed socket; offsets from BTF.
    unsafe {
        let net: *const u8 = load(sk, cfg.off_sk_net);
        Identity {
            netns: load(net, cfg.off_net_inum),
            protocol: if cfg.sk_protocol_size == 1 {
                u16::from(load::<u8>(sk, cfg.off_sk_protocol))
            } else {
                load(sk, cfg.off_sk_protocol)
            },
            family: load(sk, cfg.off_sk_family),
        }
    }
}

/// The socket's local port, and `skc_num` as read (0 when the kernel has
/// already zeroed it). Inlined, like `identity`: as a function of its own
/// the verifier would see `cfg`'s offsets as unknown values, not the
/// constants the loader froze, and refuse the socket loads.
#[inline(always)]
fn local_port(sk: *const u8, cfg: &TrackerConfig) -> Result<(u16, u16), i32> {
    // SAFETY: sk is the tracepoint's socket argument.
    let num: u16 = unsafe { load(sk, cfg.off_num) };
    if num != 0 {
        return Ok((num, num));
    }
    // SAFETY: as above; inet_sport survives inet_put_port().
    let sport = u16::from_be(unsafe { probe::<u16>(sk, cfg.off_sport)? });
    Ok((num, sport))
}

/// One state change as both programs read it first: the socket, its two
/// states, and its local port (`num` as read, 0 when the kernel had zeroed
/// it).
struct Transition {
    sk: *const u8,
    oldstate: i32,
    newstate: i32,
    num: u16,
    port: u16,
}

/// Counts the event and reads the transition. The port first: on a busy
/// node most transitions are on ports nobody follows, and they should cost
/// one load and one array lookup.
#[inline(always)]
fn transition(ctx: &BtfTracePointContext, cfg: &TrackerConfig) -> Result<Transition, i32> {
    bump(STAT_EVENTS);
    let sk: *const u8 = ctx.arg(0);
    let (num, port) = local_port(sk, cfg)?;
    Ok(Transition {
        sk,
        oldstate: ctx.arg(1),
        newstate: ctx.arg(2),
        num,
        port,
    })
}

fn try_track_tcp_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let cfg = config();
    let t = transition(ctx, &cfg)?;
    let (sk, newstate, num, port) = (t.sk, t.newstate, t.num, t.port);
    let slot = match PORT_SLOTS.get(u32::from(port)) {
        Some(&slot) => slot,
        None => return Ok(()),
    };
    if slot == 0 {
        if cfg.flags & FLAG_ALL_PORTS != 0 && newstate == TCP_LISTEN && port != 0 {
            report_listener(ctx, sk, &cfg, port);
        }
        return Ok(());
    }

    let id = identity(sk, &cfg);
    if slot == SELFTEST_SLOT {
        record_selftest(ctx, sk, &cfg, &id, num);
        return Ok(());
    }
    if id.protocol != IPPROTO_TCP {
        bump(STAT_NOT_TCP);
        return Ok(());
    }
    if cfg.netns_inum != 0 && id.netns != cfg.netns_inum {
        bump(STAT_OTHER_NETNS);
        return Ok(());
    }
    let Some(counts) = PORT_COUNTS.get_ptr_mut(slot - 1) else {
        return Err(-1);
    };
    // SAFETY: a valid per-CPU slot; no nested run on this CPU (see `bump`).
    count(ctx, &cfg, &t, &id, unsafe { &mut *counts });
    Ok(())
}

/// Node mode: every namespace of the host, counted under (namespace, port).
/// `PORT_SLOTS` holds `NODE_PORT_*` bits here, not slots: whether the port
/// is followed in every namespace, and whether some namespace has a key for
/// it, so that transitions on other ports cost what they cost per pod.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn track_tcp_state_node(ctx: BtfTracePointContext) -> i32 {
    if let Err(error) = try_track_node(&ctx) {
        let seen = bump(STAT_READ_ERRORS);
        if worth_logging(seen) {
            log_read_error(&ctx, error, seen);
        }
    }
    0
}

fn try_track_node(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let cfg = config();
    let t = transition(ctx, &cfg)?;
    let (sk, newstate, num, port) = (t.sk, t.newstate, t.num, t.port);
    let bits = match PORT_SLOTS.get(u32::from(port)) {
        Some(&bits) => bits,
        None => return Ok(()),
    };
    // --all-ports: a new listener anywhere starts a key of its own, so its
    // namespace's counts are exact from its first event.
    let new_listener = cfg.flags & FLAG_ALL_PORTS != 0 && newstate == TCP_LISTEN && port != 0;
    if bits == 0 && !new_listener {
        return Ok(());
    }
    let id = identity(sk, &cfg);
    if bits == SELFTEST_SLOT {
        record_selftest(ctx, sk, &cfg, &id, num);
        return Ok(());
    }
    if id.protocol != IPPROTO_TCP {
        bump(STAT_NOT_TCP);
        return Ok(());
    }
    let key = NetnsPort {
        netns: id.netns,
        port: u32::from(port),
    };
    let counts = match NODE_COUNTS.get_ptr_mut(key) {
        Some(counts) => counts,
        None if bits & NODE_PORT_FOLLOWED != 0 || new_listener => {
            match create_key(ctx, key.netns, key.port, cfg.max_ports_per_netns) {
                Some(counts) => counts,
                None => return Ok(()),
            }
        }
        None => return Ok(()),
    };
    // SAFETY: the per-CPU value of a live key; no nested run on this CPU.
    // The daemon deletes keys only of namespaces that are gone or ports with
    // no socket left, so no transition is expected to race the delete; one
    // that did would land in a recycled element, an error the next snapshot
    // of that namespace corrects.
    count(ctx, &cfg, &t, &id, unsafe { &mut *counts });
    Ok(())
}

/// Starts counting `key`: within the namespace cap and the ports-per-
/// namespace cap, marks its port as keyed and tells the daemon. `None` when
/// it does not fit (counted in `STATS` and logged, never an error: the
/// transition goes on, uncounted, and the daemon's snapshots see it).
/// Out of line (the rare path), so it takes plain values, not pointers
/// into the caller's stack.
#[inline(never)]
fn create_key(
    ctx: &BtfTracePointContext,
    netns: u32,
    port: u32,
    max_ports: u32,
) -> Option<*mut PortCounts> {
    let key = &NetnsPort { netns, port };
    let keys = match NODE_NETNS.get_ptr_mut(key.netns) {
        Some(keys) => keys,
        None => {
            // Another CPU may create it at the same moment: look again
            // before calling the map full.
            let _ = NODE_NETNS.insert(key.netns, 0, u64::from(BPF_NOEXIST));
            match NODE_NETNS.get_ptr_mut(key.netns) {
                Some(keys) => keys,
                None => {
                    let seen = bump(STAT_NODE_NETNS_FULL);
                    if worth_logging(seen) {
                        log_node_full(ctx, "namespaces", key.netns, key.port, seen);
                    }
                    return None;
                }
            }
        }
    };
    // SAFETY: a live entry of NODE_NETNS; races only on the count itself,
    // which is a bound, and the daemon rewrites it when it drops keys.
    if unsafe { *keys } >= u64::from(max_ports) {
        let seen = bump(STAT_NODE_PORTS_FULL);
        if worth_logging(seen) {
            log_node_full(ctx, "ports of a namespace", key.netns, key.port, seen);
        }
        return None;
    }
    if NODE_COUNTS
        .insert(key, PortCounts::default(), u64::from(BPF_NOEXIST))
        .is_ok()
    {
        // SAFETY: as above. Not atomic (Rust's BPF target has no atomic
        // read-modify-write): two CPUs making keys of one namespace in the
        // same instant may add one, so the cap can be passed by a few keys,
        // never by more than the CPUs; the daemon rewrites the count from
        // the keys it knows every refresh.
        unsafe { *keys += 1 };
        if let Some(bits) = PORT_SLOTS.get_ptr_mut(key.port) {
            // SAFETY: a valid array slot; the daemon only clears this bit
            // for a port without keys, and re-reads the reports after.
            unsafe { *bits |= NODE_PORT_KEYED };
        }
        let report = (u64::from(key.netns) << 32) | u64::from(key.port);
        if LISTENERS.output::<u64>(report, 0).is_err() {
            let seen = bump(STAT_LISTENERS_LOST);
            if worth_logging(seen) {
                log_listener_lost(ctx, key.port as u16, seen);
            }
        }
    }
    match NODE_COUNTS.get_ptr_mut(key) {
        Some(counts) => Some(counts),
        None => {
            let seen = bump(STAT_NODE_KEYS_FULL);
            if worth_logging(seen) {
                log_node_full(ctx, "keys", key.netns, key.port, seen);
            }
            None
        }
    }
}

/// What one transition of a followed socket changes in its port's counts
/// (both modes). Always inlined: the per-event path should not pay for a
/// call, and `cfg` must stay the constants the verifier knows.
#[inline(always)]
fn count(
    ctx: &BtfTracePointContext,
    cfg: &TrackerConfig,
    t: &Transition,
    id: &Identity,
    counts: &mut PortCounts,
) {
    let (sk, port, oldstate, newstate) = (t.sk, t.port, t.oldstate, t.newstate);
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
    let entering = newstate == TCP_ESTABLISHED;
    if !entering && oldstate != TCP_ESTABLISHED {
        return;
    }
    if cfg.flags & FLAG_IGNORE_PEERS != 0 && peer_ignored(sk, cfg, id.family) {
        counts.ignored += if entering { 1 } else { -1 };
        return;
    }
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let delta = if entering {
        counts.opened += 1;
        // The connection's first need of its cookie: the helper generates
        // it (sock_gen_cookie) and stores it in the socket.
        // SAFETY: sk is a BTF-typed socket pointer.
        let cookie = unsafe { bpf_get_socket_cookie(sk as *mut core::ffi::c_void) };
        let record = SocketRecord {
            start_ns: now,
            port,
            family: id.family,
            netns: id.netns,
        };
        if SOCKETS
            .insert(cookie, record, u64::from(BPF_NOEXIST))
            .is_err()
        {
            let seen = bump(STAT_SOCKETS_FULL);
            if worth_logging(seen) {
                log_sockets_full(ctx, port, seen);
            }
        }
        if cfg.activity_min_age_ns == 0 {
            counts.last_active_ns = now;
        }
        1
    } else {
        counts.closed += 1;
        // Leaving: the cookie was generated on the way in (or by a
        // sock_diag dump), so it is a plain load from the socket, cheaper
        // than the helper. 0 means nobody ever generated one, and then no
        // entry can be keyed by it: unknown start, old.
        // SAFETY: sk is the tracepoint's socket; offset from BTF, checked
        // by the self-test.
        let cookie: u64 = unsafe { load(sk, cfg.off_cookie) };
        // Without --activity-min-age nothing is young: skip the lookup.
        let young = cookie != 0
            && cfg.activity_min_age_ns != 0
            && SOCKETS
                .get_ptr(cookie)
                // SAFETY: a live entry; the socket's own lock orders its
                // transitions, so nothing removes it under us.
                .map(|r| now.saturating_sub(unsafe { (*r).start_ns }) < cfg.activity_min_age_ns)
                .unwrap_or(false);
        if cookie != 0 {
            let _ = SOCKETS.remove(cookie);
        }
        if young {
            let _ = YOUNG_CLOSED.insert(cookie, now, 0);
        } else {
            counts.last_active_ns = now;
        }
        -1
    };
    if id.family == AF_INET {
        counts.established_v4 += delta;
    } else {
        counts.established_v6 += delta;
    }
}

/// Whether the peer address is in `IGNORED_PEERS`. An IPv4-mapped IPv6 peer
/// (`::ffff:a.b.c.d`) is looked up as the IPv4 address it is.
#[inline(always)]
fn peer_ignored(sk: *const u8, cfg: &TrackerConfig, family: u16) -> bool {
    let mut data: PeerData = [PEER_TAG_V4, 0, 0, 0, 0];
    let prefix = if family == AF_INET {
        // SAFETY: a field of sock_common, offset from BTF.
        data[1] = unsafe { load::<u32>(sk, cfg.off_daddr) };
        32 + 32
    } else {
        // SAFETY: as above; skc_v6_daddr is 16 bytes.
        let words: [u32; 4] = unsafe {
            [
                load(sk, cfg.off_v6_daddr),
                load(sk, cfg.off_v6_daddr + 4),
                load(sk, cfg.off_v6_daddr + 8),
                load(sk, cfg.off_v6_daddr + 12),
            ]
        };
        if words[0] == 0 && words[1] == 0 && words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
            data[1] = words[3];
            32 + 32
        } else {
            data = [PEER_TAG_V6, words[0], words[1], words[2], words[3]];
            32 + 128
        }
    };
    IGNORED_PEERS.get(Key::new(prefix, data)).is_some()
}

/// Tells the daemon that `port` has a new listener in our namespace.
fn report_listener(ctx: &BtfTracePointContext, sk: *const u8, cfg: &TrackerConfig, port: u16) {
    let id = identity(sk, cfg);
    if id.protocol != IPPROTO_TCP || (cfg.netns_inum != 0 && id.netns != cfg.netns_inum) {
        return;
    }
    if LISTENERS.output::<u32>(u32::from(port), 0).is_err() {
        let seen = bump(STAT_LISTENERS_LOST);
        if worth_logging(seen) {
            log_listener_lost(ctx, port, seen);
        }
    }
}

/// Inlined in both programs for the reason `local_port` is.
#[inline(always)]
fn record_selftest(
    ctx: &BtfTracePointContext,
    sk: *const u8,
    cfg: &TrackerConfig,
    id: &Identity,
    num: u16,
) {
    let index = if id.family == AF_INET { 0 } else { 1 };
    let Some(record) = SELFTEST.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: sk is the tracepoint's socket; offsets from BTF.
    let (sport, cookie, loaded_cookie, daddr) = unsafe {
        let sport = probe::<u16>(sk, cfg.off_sport)
            .map(u16::from_be)
            .unwrap_or(0);
        let cookie = bpf_get_socket_cookie(sk as *mut core::ffi::c_void);
        // After the helper has generated it: what the close path loads.
        let loaded_cookie: u64 = load(sk, cfg.off_cookie);
        let daddr: [u8; 16] = if id.family == AF_INET {
            let v4: [u8; 4] = load(sk, cfg.off_daddr);
            [
                v4[0], v4[1], v4[2], v4[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
        } else {
            load(sk, cfg.off_v6_daddr)
        };
        (sport, cookie, loaded_cookie, daddr)
    };
    debug!(
        ctx,
        "self-test event: netns {} family {} protocol {} port {}/{} cookie {}/{}",
        id.netns,
        id.family,
        id.protocol,
        num,
        sport,
        cookie,
        loaded_cookie
    );
    // SAFETY: a valid array slot; concurrent writers only race on which of
    // two self-test events wins, which the daemon's check tolerates.
    unsafe {
        (*record).seen += 1;
        (*record).cookie = cookie;
        (*record).netns_inum = id.netns;
        (*record).family = id.family;
        (*record).protocol = id.protocol;
        (*record).num = num;
        (*record).sport = sport;
        (*record).daddr = daddr;
        (*record).loaded_cookie = loaded_cookie;
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
