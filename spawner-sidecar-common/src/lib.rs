//! Types shared by the kernel program and the daemon: the values stored in the
//! BPF maps and the configuration handed to the program at load time.
//!
//! Every type is `#[repr(C)]`, has no padding holes the kernel could leave
//! uninitialised, and has its layout pinned by the tests at the bottom: both
//! sides must agree byte for byte, and nothing checks that at run time.
#![no_std]

/// Number of distinct ports the kernel program can follow at once.
pub const MAX_PORTS: u32 = 1024;
/// Entries in the port -> slot map: one per possible TCP port.
pub const PORT_SLOT_ENTRIES: u32 = 65_536;
/// A `PORT_SLOTS` value meaning "record what you read in `SELFTEST`": the
/// daemon sets it for a port of its own while it checks the BTF offsets.
pub const SELFTEST_SLOT: u32 = u32::MAX;
/// Default capacity of the per-connection map (`SOCKETS`); the daemon can
/// change it at load time (`--max-tracked-connections`).
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;
/// Capacity of `YOUNG_CLOSED`, an LRU map: an evicted entry only makes a
/// TIME_WAIT socket count as activity, the safe direction.
pub const YOUNG_CLOSED_ENTRIES: u32 = 16_384;
/// Capacity of `IGNORED_PEERS`.
pub const MAX_IGNORED_PEERS: u32 = 256;
/// Bytes of the `LISTENERS` ring buffer: one page, 256 notifications (an
/// 8-byte record header plus the port, padded to 8 bytes).
pub const LISTENER_RING_BYTES: u32 = 4096;

/// `AF_INET` and `AF_INET6` as the kernel stores them in `skc_family`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`: the tracepoint also fires for SCTP and MPTCP sockets.
pub const IPPROTO_TCP: u16 = 6;

/// TCP states as numbered in the kernel (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;

/// Indices into the `STATS` per-CPU array: the program's own health counters.
pub const STAT_EVENTS: u32 = 0;
pub const STAT_NOT_TCP: u32 = 1;
pub const STAT_OTHER_NETNS: u32 = 2;
pub const STAT_READ_ERRORS: u32 = 3;
/// A connection could not be recorded in `SOCKETS` (full, or busy).
pub const STAT_SOCKETS_FULL: u32 = 4;
/// A new listener could not be reported (ring buffer full).
pub const STAT_LISTENERS_LOST: u32 = 5;
/// Node mode: a namespace could not be followed (`--max-namespaces`).
pub const STAT_NODE_NETNS_FULL: u32 = 6;
/// Node mode: a port of a namespace could not be followed
/// (`--max-ports-per-namespace`).
pub const STAT_NODE_PORTS_FULL: u32 = 7;
/// Node mode: the (namespace, port) map had no room left.
pub const STAT_NODE_KEYS_FULL: u32 = 8;
pub const STAT_ENTRIES: u32 = 9;

/// Node mode, `PORT_SLOTS` bits: the port is followed in every namespace
/// (`--monitor-port`), so its first transition in a namespace makes a key.
pub const NODE_PORT_FOLLOWED: u32 = 1;
/// Node mode, `PORT_SLOTS` bits: some namespace has a key for this port,
/// so its transitions need a look in `NODE_COUNTS`.
pub const NODE_PORT_KEYED: u32 = 2;

/// Node mode: the key of `NODE_COUNTS`, and what the program reports in
/// `LISTENERS` for each key it makes (as `netns << 32 | port`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsPort {
    /// The network namespace's inode number.
    pub netns: u32,
    /// The local port (a u32 so the key has no padding).
    pub port: u32,
}

/// `TrackerConfig::flags`: peers in `IGNORED_PEERS` are left out.
pub const FLAG_IGNORE_PEERS: u32 = 1;
/// `TrackerConfig::flags`: report every new listener of this namespace in
/// `LISTENERS`, so the daemon can follow it (`--all-ports`).
pub const FLAG_ALL_PORTS: u32 = 2;

/// What the program needs to know before it sees its first event. Set as a
/// read-only global at load time, so the verifier sees constants: that is
/// what lets the program load socket fields directly (BTF-typed loads)
/// instead of calling `bpf_probe_read_kernel` for each.
///
/// Rust eBPF programs get no CO-RE relocations, so every struct offset here
/// comes from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    /// `offsetof(struct sock, __sk_common.skc_num)`: local port, host order.
    /// Inside `struct sock`, so the verifier allows a direct load. The
    /// kernel zeroes it in `inet_put_port()` before the tracepoint fires for
    /// some transitions to CLOSE; then the program reads `off_sport`.
    pub off_num: u32,
    /// `offsetof(struct inet_sock, inet_sport)`: local port, network order.
    /// Beyond `struct sock`, so read with `bpf_probe_read_kernel`.
    pub off_sport: u32,
    /// `offsetof(struct sock, __sk_common.skc_family)`.
    pub off_sk_family: u32,
    /// `offsetof(struct sock, sk_protocol)`.
    pub off_sk_protocol: u32,
    /// `offsetof(struct sock, __sk_common.skc_net)`: a `struct net *`.
    pub off_sk_net: u32,
    /// `offsetof(struct net, ns.inum)`: the namespace's inode number.
    pub off_net_inum: u32,
    /// `offsetof(struct sock, __sk_common.skc_daddr)`: IPv4 peer address.
    pub off_daddr: u32,
    /// `offsetof(struct sock, __sk_common.skc_v6_daddr)`: IPv6 peer address.
    pub off_v6_daddr: u32,
    /// Size in bytes of `sk_protocol` (u8 before Linux 5.6, u16 since).
    pub sk_protocol_size: u32,
    /// Only sockets of this network namespace count; 0 counts every namespace.
    pub netns_inum: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `offsetof(struct sock, __sk_common.skc_cookie)`: the socket cookie
    /// once generated, 0 before. The program generates it (helper) when a
    /// connection enters ESTABLISHED and loads it from here when it leaves:
    /// a plain load instead of a second helper call.
    pub off_cookie: u32,
    /// Connections that close younger than this are not activity
    /// (`--activity-min-age`); 0 makes every connection activity.
    pub activity_min_age_ns: u64,
    /// Node mode: keys one namespace may have (`--max-ports-per-namespace`).
    pub max_ports_per_netns: u32,
    pub _reserved: u32,
}

/// Event-fed counts for one followed port, kept per CPU: a socket may enter
/// ESTABLISHED on one CPU and leave it on another, so a single CPU's counts
/// can be negative; only their sum over CPUs means anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounts {
    /// Net ESTABLISHED entries minus exits, IPv4 sockets.
    pub established_v4: i64,
    /// Net ESTABLISHED entries minus exits, IPv6 sockets (v4-mapped included).
    pub established_v6: i64,
    /// Net ESTABLISHED entries minus exits from ignored peers (either family).
    pub ignored: i64,
    /// Net LISTEN entries minus exits.
    pub listening: i64,
    /// Every transition that touched this port: lets the daemon tell whether
    /// the port was quiet while it took a snapshot.
    pub transitions: u64,
    /// Sockets that entered ESTABLISHED (ignored peers left out).
    pub opened: u64,
    /// Sockets that left ESTABLISHED (ignored peers left out).
    pub closed: u64,
    /// `bpf_ktime_get_boot_ns()` of the last change that counts as
    /// activity; 0 if none.
    pub last_active_ns: u64,
}

/// One ESTABLISHED connection on a followed port, keyed in `SOCKETS` by its
/// socket cookie (the id sock_diag reports too, so snapshots can seed it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// `bpf_ktime_get_boot_ns()` when it entered ESTABLISHED, or when the
    /// daemon first saw it if it predates the program.
    pub start_ns: u64,
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// The socket's network namespace (inode number): node mode keeps every
    /// namespace's connections in one map.
    pub netns: u32,
}

/// `IGNORED_PEERS` key data after the LPM trie's prefix length: a tag word
/// (`PEER_TAG_V4`/`PEER_TAG_V6`) then the address in network order, so one
/// trie holds both families. A CIDR of n bits has prefix length 32 + n.
pub type PeerData = [u32; 5];
pub const PEER_TAG_V4: u32 = 4;
pub const PEER_TAG_V6: u32 = 6;

/// What the program read for the last socket on the self-test port; index 0
/// for an IPv4 connection, 1 for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfTestRecord {
    /// How many self-test events were seen.
    pub seen: u64,
    /// Socket cookie, from `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// Namespace inode read through `off_sk_net` and `off_net_inum`.
    pub netns_inum: u32,
    /// Family read through `off_sk_family`.
    pub family: u16,
    /// Protocol read through `off_sk_protocol`.
    pub protocol: u16,
    /// Local port read through `off_num` (0 if the kernel had zeroed it).
    pub num: u16,
    /// Local port read through `off_sport`, host order.
    pub sport: u16,
    pub _reserved: u32,
    /// Peer address through `off_daddr` (first 4 bytes) or `off_v6_daddr`.
    pub daddr: [u8; 16],
    /// Socket cookie loaded through `off_cookie` after `cookie` was
    /// generated: must equal it.
    pub loaded_cookie: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with no padding (pinned by the layout
    // tests), so every byte pattern is a valid value.
    unsafe impl aya::Pod for super::TrackerConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SelfTestRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetnsPort {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn tracker_config_layout_is_pinned() {
        assert_eq!(size_of::<TrackerConfig>(), 64);
        assert_eq!(offset_of!(TrackerConfig, off_num), 0);
        assert_eq!(offset_of!(TrackerConfig, off_sport), 4);
        assert_eq!(offset_of!(TrackerConfig, off_sk_family), 8);
        assert_eq!(offset_of!(TrackerConfig, off_sk_protocol), 12);
        assert_eq!(offset_of!(TrackerConfig, off_sk_net), 16);
        assert_eq!(offset_of!(TrackerConfig, off_net_inum), 20);
        assert_eq!(offset_of!(TrackerConfig, off_daddr), 24);
        assert_eq!(offset_of!(TrackerConfig, off_v6_daddr), 28);
        assert_eq!(offset_of!(TrackerConfig, sk_protocol_size), 32);
        assert_eq!(offset_of!(TrackerConfig, netns_inum), 36);
        assert_eq!(offset_of!(TrackerConfig, flags), 40);
        assert_eq!(offset_of!(TrackerConfig, off_cookie), 44);
        assert_eq!(offset_of!(TrackerConfig, activity_min_age_ns), 48);
        assert_eq!(offset_of!(TrackerConfig, max_ports_per_netns), 56);
    }

    #[test]
    fn netns_port_layout_is_pinned() {
        assert_eq!(size_of::<NetnsPort>(), 8);
        assert_eq!(offset_of!(NetnsPort, netns), 0);
        assert_eq!(offset_of!(NetnsPort, port), 4);
    }

    #[test]
    fn port_counts_layout_is_pinned() {
        assert_eq!(size_of::<PortCounts>(), 64);
        assert_eq!(offset_of!(PortCounts, established_v4), 0);
        assert_eq!(offset_of!(PortCounts, established_v6), 8);
        assert_eq!(offset_of!(PortCounts, ignored), 16);
        assert_eq!(offset_of!(PortCounts, listening), 24);
        assert_eq!(offset_of!(PortCounts, transitions), 32);
        assert_eq!(offset_of!(PortCounts, opened), 40);
        assert_eq!(offset_of!(PortCounts, closed), 48);
        assert_eq!(offset_of!(PortCounts, last_active_ns), 56);
    }

    #[test]
    fn socket_record_layout_is_pinned() {
        assert_eq!(size_of::<SocketRecord>(), 16);
        assert_eq!(offset_of!(SocketRecord, start_ns), 0);
        assert_eq!(offset_of!(SocketRecord, port), 8);
        assert_eq!(offset_of!(SocketRecord, family), 10);
        assert_eq!(offset_of!(SocketRecord, netns), 12);
    }

    #[test]
    fn selftest_record_layout_is_pinned() {
        assert_eq!(size_of::<SelfTestRecord>(), 56);
        assert_eq!(offset_of!(SelfTestRecord, seen), 0);
        assert_eq!(offset_of!(SelfTestRecord, cookie), 8);
        assert_eq!(offset_of!(SelfTestRecord, netns_inum), 16);
        assert_eq!(offset_of!(SelfTestRecord, family), 20);
        assert_eq!(offset_of!(SelfTestRecord, protocol), 22);
        assert_eq!(offset_of!(SelfTestRecord, num), 24);
        assert_eq!(offset_of!(SelfTestRecord, sport), 26);
        assert_eq!(offset_of!(SelfTestRecord, daddr), 32);
        assert_eq!(offset_of!(SelfTestRecord, loaded_cookie), 48);
    }

    /// A value viewed as the bytes the kernel stores decodes to itself.
    #[test]
    fn port_counts_round_trip_through_bytes() {
        let value = PortCounts {
            established_v4: -3,
            established_v6: 7,
            ignored: 2,
            listening: 1,
            transitions: 42,
            opened: 9,
            closed: 5,
            last_active_ns: 123_456_789,
        };
        let mut bytes = [0u8; size_of::<PortCounts>()];
        // SAFETY: PortCounts is repr(C) plain integers of exactly this size.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (&value as *const PortCounts).cast::<u8>(),
                bytes.as_mut_ptr(),
                bytes.len(),
            );
        }
        assert_eq!(&bytes[0..8], &(-3i64).to_ne_bytes());
        assert_eq!(&bytes[56..64], &123_456_789u64.to_ne_bytes());
        // SAFETY: every byte pattern is a valid PortCounts.
        let back: PortCounts = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(back, value);
    }
}
