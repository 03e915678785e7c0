//! The slowest snapshotter, and the one that works anywhere:
//! `/proc/net/tcp` and `/proc/net/tcp6`, re-read in full every time.
//!
//! It costs O(sockets in the namespace) per snapshot, almost all of it the
//! kernel printing the tables. The parser is hand-written rather than the
//! `procfs` crate's: it splits each line in place, allocates nothing for a
//! line it skips, and decodes addresses only for followed ports. Measured
//! (BENCHMARKS.md, section 5): at 100 000 sockets our parsing adds nothing
//! measurable to reading the files, `procfs` adds about 12 ms.
use std::{
    collections::HashSet,
    io::BufRead,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use super::{
    Family, SourceError, SourceKind,
    snapshot::{SnapshotRequest, Snapshotter, SocketEntry, SocketState},
};

const TCP4: &str = "/proc/net/tcp";
const TCP6: &str = "/proc/net/tcp6";

/// What one pass over a table found besides the sockets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    pub lines: usize,
    /// Lines that did not have the documented shape; skipped, never guessed.
    pub malformed: usize,
    /// Rows the kernel printed twice across read boundaries; listed once.
    pub duplicates: usize,
}

/// Appends the sockets of one `/proc/net/tcp{,6}` table that `request`
/// asks for to `out`.
pub fn parse_table(
    input: impl BufRead,
    family: Family,
    request: &SnapshotRequest,
    out: &mut Vec<SocketEntry>,
) -> std::io::Result<ParseStats> {
    let mut stats = ParseStats::default();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for (index, line) in input.split(b'\n').enumerate() {
        let line = line?;
        if index == 0 || line.iter().all(u8::is_ascii_whitespace) {
            continue; // the header, or a trailing blank line
        }
        stats.lines += 1;
        let Some(row) = Row::parse(&line) else {
            stats.malformed += 1;
            continue;
        };
        let Some(state) = SocketState::from_kernel(row.state) else {
            continue;
        };
        let wanted = request.ports.contains(&row.local_port)
            || (request.all_listeners && state == SocketState::Listen);
        if !wanted {
            continue;
        }
        // The 4-tuple plus inode identifies a socket: several listeners may
        // share an address (SO_REUSEPORT), TIME_WAIT sockets all have inode 0.
        if !seen.insert(row.identity.to_vec()) {
            stats.duplicates += 1;
            continue;
        }
        let (Some(local), Some(peer)) = (address(row.local), address(row.remote)) else {
            stats.malformed += 1;
            continue;
        };
        out.push(SocketEntry {
            state,
            family,
            local,
            peer,
            cookie: None,
        });
    }
    Ok(stats)
}

struct Row<'a> {
    local_port: u16,
    state: u8,
    local: &'a [u8],
    remote: &'a [u8],
    identity: &'a [u8],
}

impl<'a> Row<'a> {
    /// `  sl: LOCAL:PORT REMOTE:PORT ST tx:rx tr:when retrnsmt uid timeout inode ...`
    fn parse(line: &'a [u8]) -> Option<Self> {
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let slot = fields.next()?;
        if slot.last() != Some(&b':') {
            return None;
        }
        let local = fields.next()?;
        let remote = fields.next()?;
        let state = hex(fields.next()?)?;
        let (address, port) = split_address(local)?;
        if !matches!(address.len(), 8 | 32) || split_address(remote).is_none() {
            return None;
        }
        let inode = fields.nth(5)?;
        if !inode.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Everything from the local address through the inode, as one slice.
        let start = local.as_ptr() as usize - line.as_ptr() as usize;
        let end = inode.as_ptr() as usize - line.as_ptr() as usize + inode.len();
        Some(Row {
            local_port: u16::try_from(hex(port)?).ok()?,
            state: u8::try_from(state).ok()?,
            local,
            remote,
            identity: &line[start..end],
        })
    }
}

fn split_address(field: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = field.iter().position(|&b| b == b':')?;
    let (address, port) = (&field[..colon], &field[colon + 1..]);
    (address.iter().all(u8::is_ascii_hexdigit) && port.len() == 4).then_some((address, port))
}

fn hex(field: &[u8]) -> Option<u32> {
    if field.is_empty() || field.len() > 8 {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

/// `0100007F:1F90` -> 127.0.0.1:8080. The kernel prints each 32-bit word of
/// the address as a host-order integer (`%08X`), so a word's bytes in
/// memory order are the hex value's native-endian bytes.
fn address(field: &[u8]) -> Option<SocketAddr> {
    let (address, port) = split_address(field)?;
    let port = u16::try_from(hex(port)?).ok()?;
    let word = |i: usize| hex(address.get(8 * i..8 * i + 8)?).map(u32::to_ne_bytes);
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Lists sockets from `/proc/net/tcp` and `/proc/net/tcp6` of the namespace
/// it runs in.
pub struct ProcNet;

/// Appends the sockets `request` asks for from the table file at `path`
/// (a `net/tcp` or `net/tcp6` of some procfs) to `out`.
pub fn read_table(
    path: &Path,
    family: Family,
    request: &SnapshotRequest,
    out: &mut Vec<SocketEntry>,
) -> std::io::Result<()> {
    // Read in one pass into memory, reopening every time: a long-lived
    // reader that seeks back sees a mix of two moments.
    let data = match std::fs::read(path) {
        Ok(data) => data,
        // A kernel without IPv6 has no tcp6 table: no IPv6 sockets.
        Err(e) if family == Family::V6 && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let stats = parse_table(&data[..], family, request, out)?;
    if stats.malformed > 0 {
        tracing::warn!(path = %path.display(), malformed = stats.malformed, "skipped malformed lines");
    }
    Ok(())
}

impl ProcNet {
    fn read_table(
        path: &'static str,
        family: Family,
        request: &SnapshotRequest,
        out: &mut Vec<SocketEntry>,
    ) -> Result<(), SourceError> {
        read_table(Path::new(path), family, request, out)
            .map_err(|source| SourceError::Io { path, source })
    }
}

impl Snapshotter for ProcNet {
    fn kind(&self) -> SourceKind {
        SourceKind::Proc
    }

    fn snapshot(&self, request: &SnapshotRequest) -> Result<Vec<SocketEntry>, SourceError> {
        let mut out = Vec::new();
        Self::read_table(TCP4, Family::V4, request, &mut out)?;
        Self::read_table(TCP6, Family::V6, request, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{peers::PeerFilter, snapshot::count};

    /// Captured on Linux 6.18: a listener on 127.0.0.1:8080, one accepted
    /// connection, one in TIME_WAIT after a server-first close, and a client
    /// connection to 9090 whose local port is ephemeral.
    const TCP4_CAPTURE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 498 1 000000004925ea5f 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8811 1 00000000434827d3 100 0 0 10 0
   2: 0100007F:E9A0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 8813 2 0000000045c90f5f 20 0 0 10 -1
   3: 0100007F:CC9C 0100007F:2382 01 00000000:00000000 00:00000000 00000000     0        0 8817 2 0000000051aef7e7 20 0 0 10 -1
   4: 0100007F:1F90 0100007F:E9A0 01 00000000:00000000 00:00000000 00000000     0        0 8814 1 00000000e41bb77c 20 0 0 10 -1
   5: 0100007F:1F90 0100007F:E9A4 06 00000000:00000000 03:00001766 00000000     0        0 0 3 00000000668e9c9b
";

    /// The same moment's tcp6: a dual-stack listener on [::]:9090, a native
    /// IPv6 connection and an IPv4-mapped one accepted by it.
    const TCP6_CAPTURE: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8812 1 000000005b8f57d9 100 0 0 10 0
   1: 00000000000000000000000001000000:E540 00000000000000000000000001000000:2382 01 00000000:00000000 00:00000000 00000000     0        0 8815 2 00000000547fce2c 20 0 0 10 -1
   2: 0000000000000000FFFF00000100007F:2382 0000000000000000FFFF00000100007F:CC9C 01 00000000:00000000 00:00000000 00000000     0        0 8818 1 000000009ea7af84 20 0 0 10 -1
   3: 00000000000000000000000001000000:2382 00000000000000000000000001000000:E540 01 00000000:00000000 00:00000000 00000000     0        0 8816 1 0000000085341760 20 0 0 10 -1
";

    fn request(ports: &[u16]) -> SnapshotRequest {
        SnapshotRequest {
            ports: ports.to_vec(),
            all_listeners: false,
        }
    }

    fn parse(input: &str, family: Family, req: &SnapshotRequest) -> (Vec<SocketEntry>, ParseStats) {
        let mut out = Vec::new();
        let stats = parse_table(input.as_bytes(), family, req, &mut out).expect("parse");
        (out, stats)
    }

    #[test]
    fn lists_server_side_sockets_of_followed_ports_only() {
        let (sockets, stats) = parse(TCP4_CAPTURE, Family::V4, &request(&[8080, 9090]));
        assert_eq!(
            stats,
            ParseStats {
                lines: 6,
                malformed: 0,
                duplicates: 0
            }
        );
        let r = count(&sockets, &[8080, 9090], &PeerFilter::default());
        let p8080 = &r[&8080];
        assert_eq!(
            (p8080.established, p8080.time_wait, p8080.listeners),
            ([1, 0], [1, 0], 1)
        );
        // 0100007F:CC9C -> :2382 is a client of 9090: local port is ephemeral.
        assert_eq!(r[&9090], Default::default());
        let conn = sockets
            .iter()
            .find(|s| s.state == SocketState::Established)
            .expect("one");
        assert_eq!(conn.local, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(conn.peer, "127.0.0.1:59808".parse().expect("addr"));
    }

    #[test]
    fn lists_ipv6_and_ipv4_mapped_connections_on_dual_stack_listener() {
        let (sockets, _) = parse(TCP6_CAPTURE, Family::V6, &request(&[9090]));
        let r = count(&sockets, &[9090], &PeerFilter::default());
        assert_eq!(r[&9090].established, [0, 2]);
        assert_eq!(r[&9090].listeners, 1);
        let peers: Vec<String> = sockets.iter().map(|s| s.peer.to_string()).collect();
        assert_eq!(peers, ["[::]:0", "[::ffff:127.0.0.1]:52380", "[::1]:58688"]);
    }

    #[test]
    fn all_listeners_adds_listeners_of_every_port() {
        let req = SnapshotRequest {
            ports: vec![],
            all_listeners: true,
        };
        let (sockets, _) = parse(TCP4_CAPTURE, Family::V4, &req);
        let ports: Vec<u16> = sockets.iter().map(SocketEntry::port).collect();
        assert_eq!(ports, [2024, 8080]);
        assert!(sockets.iter().all(|s| s.state == SocketState::Listen));
    }

    #[test]
    fn lists_a_row_printed_twice_once() {
        let mut doubled = TCP4_CAPTURE.to_string();
        doubled.push_str(TCP4_CAPTURE.lines().nth(5).expect("row"));
        doubled.push('\n');
        let (sockets, stats) = parse(&doubled, Family::V4, &request(&[8080]));
        assert_eq!(stats.duplicates, 1);
        assert_eq!(sockets.len(), 3);
    }

    #[test]
    fn skips_and_counts_malformed_lines() {
        let input = "header\n\
            garbage\n\
            0: 0100007F:1F90 0100007F:E9A0 01\n\
            1: 0100007F:1F90 0100007F:E9A0 ZZ 0:0 0:0 0 0 0 1 1\n\
            2: 0100007F:1F9 0100007F:E9A0 01 0:0 0:0 0 0 0 1 1\n\
            3: 01007F:1F90 0100007F:E9A0 01 0:0 0:0 0 0 0 1 1\n\
            4: 0100007F:1F90 0100007F:E9A0 01 0:0 0:0 0 0 0 x1 1\n\
            5 0100007F:1F90 0100007F:E9A0 01 0:0 0:0 0 0 0 1 1\n\
            6: 0100007F:1F90 0100007F:E9A1 01 0:0 0:0 0 0 0 77 1\n";
        let (sockets, stats) = parse(input, Family::V4, &request(&[8080]));
        assert_eq!(stats.lines, 8);
        assert_eq!(stats.malformed, 7);
        assert_eq!(sockets.len(), 1, "only the well-formed row is listed");
    }

    #[test]
    fn header_only_table_is_empty() {
        let header = TCP6_CAPTURE.lines().next().expect("header");
        let (sockets, stats) = parse(header, Family::V6, &request(&[8080]));
        assert_eq!(stats.lines, 0);
        assert!(sockets.is_empty());
    }
}
