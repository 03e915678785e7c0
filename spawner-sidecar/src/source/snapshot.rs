//! Snapshots: every socket on the followed ports at one moment, as netlink
//! sock_diag or `/proc/net/tcp{,6}` list them. The polling sources answer
//! from them; the eBPF source takes one per tick for TIME_WAIT and to seed
//! and repair its event counts.
use std::net::SocketAddr;

use super::{Family, PortReading, Reading, SourceError, SourceKind, peers::PeerFilter};

/// The TCP states a snapshot asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketState {
    Established,
    TimeWait,
    Listen,
}

impl SocketState {
    /// From the kernel's number for a TCP state (`include/net/tcp_states.h`,
    /// as sock_diag reports it and `/proc/net/tcp` prints it in hex); `None`
    /// for the states no snapshot counts.
    pub fn from_kernel(state: u8) -> Option<Self> {
        use netlink_packet_sock_diag::constants::{TCP_ESTABLISHED, TCP_LISTEN, TCP_TIME_WAIT};
        match state {
            TCP_ESTABLISHED => Some(SocketState::Established),
            TCP_TIME_WAIT => Some(SocketState::TimeWait),
            TCP_LISTEN => Some(SocketState::Listen),
            _ => None,
        }
    }
}

/// One socket as a snapshot sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    pub state: SocketState,
    pub family: Family,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The kernel's socket cookie (sock_diag only). A TIME_WAIT socket keeps
    /// the cookie of the connection it came from.
    pub cookie: Option<u64>,
}

impl SocketEntry {
    pub fn port(&self) -> u16 {
        self.local.port()
    }
}

/// What to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Sockets in ESTABLISHED, TIME_WAIT and LISTEN on these local ports.
    pub ports: Vec<u16>,
    /// Also every LISTEN socket on any port (`--all-ports` discovery).
    pub all_listeners: bool,
}

/// A way of listing sockets. Costs O(sockets in the namespace) per call.
pub trait Snapshotter: Send + Sync {
    fn kind(&self) -> SourceKind;
    fn snapshot(&self, request: &SnapshotRequest) -> Result<Vec<SocketEntry>, SourceError>;
}

/// Counts `sockets` per port for `ports`, leaving ignored peers out of the
/// main counts. Ages, totals and activity are the callers' business.
pub fn count(sockets: &[SocketEntry], ports: &[u16], filter: &PeerFilter) -> Reading {
    let mut reading: Reading = ports.iter().map(|&p| (p, PortReading::default())).collect();
    for socket in sockets {
        let Some(port) = reading.get_mut(&socket.port()) else {
            continue;
        };
        let ignored = || filter.ignores(socket.peer.ip());
        match socket.state {
            SocketState::Listen => port.listeners += 1,
            SocketState::Established if ignored() => port.ignored_established += 1,
            SocketState::Established => port.established[socket.family.index()] += 1,
            SocketState::TimeWait if ignored() => port.ignored_time_wait += 1,
            SocketState::TimeWait => port.time_wait[socket.family.index()] += 1,
        }
    }
    reading
}

/// Local ports with a LISTEN socket in `sockets`.
pub fn listening_ports(sockets: &[SocketEntry]) -> Vec<u16> {
    let mut ports: Vec<u16> = sockets
        .iter()
        .filter(|s| s.state == SocketState::Listen)
        .map(SocketEntry::port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A socket for tests: `"127.0.0.1:8080"`-style addresses.
    pub fn entry(state: SocketState, local: &str, peer: &str) -> SocketEntry {
        let local: SocketAddr = local.parse().expect("local");
        SocketEntry {
            state,
            family: if local.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            },
            local,
            peer: peer.parse().expect("peer"),
            cookie: None,
        }
    }

    #[test]
    fn counts_by_state_family_and_ignored_peer() {
        use SocketState::*;
        let sockets = [
            entry(Listen, "0.0.0.0:8080", "0.0.0.0:0"),
            entry(Established, "127.0.0.1:8080", "127.0.0.1:5000"),
            entry(
                Established,
                "[::ffff:127.0.0.1]:8080",
                "[::ffff:127.0.0.1]:5001",
            ),
            entry(Established, "10.0.0.2:8080", "10.1.0.9:5002"),
            entry(TimeWait, "[::1]:8080", "[::1]:5003"),
            entry(TimeWait, "[::ffff:10.0.0.2]:8080", "[::ffff:10.1.0.9]:5004"),
            entry(Established, "127.0.0.1:9999", "127.0.0.1:5005"),
        ];
        let filter = PeerFilter::new(vec!["10.1.0.0/16".parse().expect("cidr")]);
        let r = count(&sockets, &[8080], &filter);
        let p = &r[&8080];
        assert_eq!(p.listeners, 1);
        assert_eq!(
            p.established,
            [1, 1],
            "v4-mapped is IPv6, as the kernel says"
        );
        assert_eq!(p.time_wait, [0, 1]);
        assert_eq!((p.ignored_established, p.ignored_time_wait), (1, 1));
        assert_eq!(r.len(), 1, "unfollowed port left out");
        assert_eq!(listening_ports(&sockets), [8080]);
    }

    #[test]
    fn kernel_state_numbers_are_the_kernel_programs() {
        use netlink_packet_sock_diag::constants as kernel;
        use spawner_sidecar_common as program;
        // The kernel program cannot use the netlink crate (no_std): its own
        // copies must be the same numbers.
        assert_eq!(program::TCP_ESTABLISHED, i32::from(kernel::TCP_ESTABLISHED));
        assert_eq!(program::TCP_CLOSE, i32::from(kernel::TCP_CLOSE));
        assert_eq!(program::TCP_LISTEN, i32::from(kernel::TCP_LISTEN));
        assert_eq!(SocketState::from_kernel(1), Some(SocketState::Established));
        assert_eq!(SocketState::from_kernel(6), Some(SocketState::TimeWait));
        assert_eq!(SocketState::from_kernel(0x0A), Some(SocketState::Listen));
        assert_eq!(SocketState::from_kernel(7), None, "CLOSE is not counted");
    }
}
