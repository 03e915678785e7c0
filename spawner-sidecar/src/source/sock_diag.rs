//! Netlink sock_diag snapshots: asks the kernel for TCP sockets in
//! ESTABLISHED, TIME_WAIT and LISTEN on the followed local ports (state and
//! port filters run in the kernel). No text parsing, no `ss`.
//!
//! Like `/proc`, it walks every socket of the namespace in those states per
//! call; only matches are copied out. It is the eBPF source's snapshot for
//! seeding and TIME_WAIT, and the fallback source before `/proc`.
use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::{
    Family, SourceError, SourceKind,
    snapshot::{SnapshotRequest, Snapshotter, SocketEntry, SocketState},
};

/// Lists sockets with netlink sock_diag dumps, states and ports filtered in
/// the kernel.
pub struct SockDiag;

fn netlink(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Netlink {
        reason: format!("{what}: {e}"),
    }
}

/// A sock_diag socket of the calling thread's network namespace, bound and
/// connected to the kernel.
fn open_socket() -> Result<Socket, SourceError> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).map_err(|e| netlink("opening a sock_diag socket", e))?;
    connect(&mut socket)?;
    Ok(socket)
}

/// Binds and connects a new `NETLINK_SOCK_DIAG` socket. It lists the
/// sockets of the namespace it was created in, whichever thread binds and
/// uses it (`sk_net` is set at creation).
pub fn connect(socket: &mut Socket) -> Result<(), SourceError> {
    socket.bind_auto().map_err(|e| netlink("binding", e))?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(|e| netlink("connecting", e))
}

/// One dump of one address family on `socket`, appended to `out`. `ports`
/// filters by local port in the kernel; `None` lists every port. Reads up
/// to the end of the dump, so the socket can take the next request.
fn dump(
    socket: &mut Socket,
    family: u8,
    states: StateFlags,
    ports: Option<&[u16]>,
    out: &mut Vec<SocketEntry>,
) -> Result<(), SourceError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    if let Some(ports) = ports {
        append_port_filter(&mut buf, ports);
    }
    socket
        .send(&buf, 0)
        .map_err(|e| netlink("sending the dump request", e))?;

    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .map_err(|e| netlink("receiving the dump", e))?;
        if size == 0 {
            return Err(netlink(
                "receiving the dump",
                "connection closed before the end",
            ));
        }
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .map_err(|e| netlink("decoding the dump", e))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    out.extend(entry(&response, family));
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(netlink("kernel refused the dump", e)),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// `inet_diag` bytecode ops (`include/uapi/linux/inet_diag.h`).
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;

/// Appends an `INET_DIAG_REQ_BYTECODE` attribute to the serialized request
/// in `buf` so that the kernel itself skips sockets on other local ports:
/// without it every dump walks and copies out every socket in those states.
/// The crate has no bytecode support, hence the bytes by hand.
///
/// Per port, three 4-byte ops `{code: u8, yes: u8, no: u16}`:
/// `S_EQ` (yes: on to the next op, no: skip this block), the port (in `no`),
/// and a `JMP` whose `no` lands exactly at the end, which means "accept".
/// The last `S_EQ`'s `no` overshoots the end by 4, which means "reject".
/// The kernel's audit (`inet_diag_bc_audit`) requires every `no` target to
/// be reachable by `yes` steps from the start, which this layout keeps.
fn append_port_filter(buf: &mut Vec<u8>, ports: &[u16]) {
    const BLOCK: usize = 12;
    let total = BLOCK * ports.len();
    if ports.is_empty() || total + 4 > usize::from(u16::MAX) {
        return; // no filter: count in userspace only
    }
    let op = |code: u8, yes: u8, no: u16| [code, yes, no.to_ne_bytes()[0], no.to_ne_bytes()[1]];
    buf.extend_from_slice(&((4 + total) as u16).to_ne_bytes());
    buf.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    for (i, &port) in ports.iter().enumerate() {
        let start = BLOCK * i;
        let last = i + 1 == ports.len();
        buf.extend_from_slice(&op(INET_DIAG_BC_S_EQ, 8, if last { 16 } else { 12 }));
        buf.extend_from_slice(&op(0, 0, port));
        buf.extend_from_slice(&op(INET_DIAG_BC_JMP, 4, (total - start - 8) as u16));
    }
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
}

fn entry(response: &InetResponse, family: u8) -> Option<SocketEntry> {
    let header = &response.header;
    let id = &header.socket_id;
    let state = SocketState::from_kernel(header.state)?;
    // `idiag_cookie` is two host-order u32s, low word first
    // (`sock_diag_save_cookie`).
    let word = |i: usize| {
        u64::from(u32::from_ne_bytes([
            id.cookie[i],
            id.cookie[i + 1],
            id.cookie[i + 2],
            id.cookie[i + 3],
        ]))
    };
    Some(SocketEntry {
        state,
        family: if family == AF_INET {
            Family::V4
        } else {
            Family::V6
        },
        local: SocketAddr::new(id.source_address, id.source_port),
        peer: SocketAddr::new(id.destination_address, id.destination_port),
        cookie: Some(word(0) | word(4) << 32),
    })
}

impl Snapshotter for SockDiag {
    fn kind(&self) -> SourceKind {
        SourceKind::SockDiag
    }

    fn snapshot(&self, request: &SnapshotRequest) -> Result<Vec<SocketEntry>, SourceError> {
        dumps(request, |family, states, ports, out| {
            dump(&mut open_socket()?, family, states, ports, out)
        })
    }
}

/// Everything `request` asks for, listed through `socket` (one dump after
/// the other): for a socket made in another namespace, then [`connect`]ed.
pub fn snapshot_on(
    socket: &mut Socket,
    request: &SnapshotRequest,
) -> Result<Vec<SocketEntry>, SourceError> {
    dumps(request, |family, states, ports, out| {
        dump(socket, family, states, ports, out)
    })
}

/// The dumps that answer `request`, each made by `dump`.
fn dumps(
    request: &SnapshotRequest,
    mut dump: impl FnMut(
        u8,
        StateFlags,
        Option<&[u16]>,
        &mut Vec<SocketEntry>,
    ) -> Result<(), SourceError>,
) -> Result<Vec<SocketEntry>, SourceError> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        if request.all_listeners {
            // Listeners of every port: this walks only the listening
            // hash, so it stays cheap however many connections exist.
            dump(family, StateFlags::LISTEN, None, &mut out)?;
            if !request.ports.is_empty() {
                dump(
                    family,
                    StateFlags::ESTABLISHED | StateFlags::TIME_WAIT,
                    Some(&request.ports),
                    &mut out,
                )?;
            }
        } else {
            dump(
                family,
                StateFlags::ESTABLISHED | StateFlags::TIME_WAIT | StateFlags::LISTEN,
                Some(&request.ports),
                &mut out,
            )?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_filter_bytecode_has_the_audited_layout() {
        let mut buf = vec![0u8; 72]; // a serialized request: header + inet_diag_req_v2
        append_port_filter(&mut buf, &[8080, 9090]);
        assert_eq!(
            u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")),
            72 + 4 + 24
        );
        let attr = &buf[72..];
        assert_eq!(u16::from_ne_bytes([attr[0], attr[1]]), 28, "nla_len");
        assert_eq!(
            u16::from_ne_bytes([attr[2], attr[3]]),
            INET_DIAG_REQ_BYTECODE
        );
        let ops: Vec<(u8, u8, u16)> = attr[4..]
            .chunks(4)
            .map(|o| (o[0], o[1], u16::from_ne_bytes([o[2], o[3]])))
            .collect();
        assert_eq!(
            ops,
            [
                (INET_DIAG_BC_S_EQ, 8, 12), // not 8080: next block
                (0, 0, 8080),
                (INET_DIAG_BC_JMP, 4, 16),  // 8080: jump to the end, accept
                (INET_DIAG_BC_S_EQ, 8, 16), // not 9090 either: past the end, reject
                (0, 0, 9090),
                (INET_DIAG_BC_JMP, 4, 4),
            ]
        );
    }
}
