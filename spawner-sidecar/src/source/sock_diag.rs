//! The netlink sock_diag source: asks the kernel for TCP sockets in
//! ESTABLISHED, TIME_WAIT and LISTEN (the state filter runs in the kernel)
//! and counts those on followed local ports. No text parsing, and no `ss`.
//!
//! Like `/proc`, it costs O(sockets in those states) per read and cannot see
//! a connection that opened and closed between two reads; it is the eBPF
//! source's snapshot for seeding and TIME_WAIT, and the fallback before
//! `/proc`.
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::{ConnectionSource, Reading, SourceError, SourceKind, empty_reading};

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
const ESTABLISHED: u8 = 1;
const TIME_WAIT: u8 = 6;
const LISTEN: u8 = 10;

pub struct SockDiagSource {
    ports: Vec<u16>,
}

fn netlink(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Netlink {
        reason: format!("{what}: {e}"),
    }
}

impl SockDiagSource {
    pub fn new(ports: Vec<u16>) -> Self {
        SockDiagSource { ports }
    }

    /// One dump of one address family, folded into `reading`.
    fn dump(family: u8, reading: &mut Reading) -> Result<(), SourceError> {
        let mut socket =
            Socket::new(NETLINK_SOCK_DIAG).map_err(|e| netlink("opening a sock_diag socket", e))?;
        socket.bind_auto().map_err(|e| netlink("binding", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| netlink("connecting", e))?;

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
                states: StateFlags::ESTABLISHED | StateFlags::TIME_WAIT | StateFlags::LISTEN,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
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
                let message =
                    NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                        .map_err(|e| netlink("decoding the dump", e))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        count(&response, family, reading);
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
}

fn count(response: &InetResponse, family: u8, reading: &mut Reading) {
    let header = &response.header;
    let Some(port) = reading.get_mut(&header.socket_id.source_port) else {
        return;
    };
    match header.state {
        ESTABLISHED if family == AF_INET => port.established_v4 += 1,
        ESTABLISHED => port.established_v6 += 1,
        TIME_WAIT => port.time_wait += 1,
        LISTEN => port.listeners += 1,
        _ => {}
    }
}

impl ConnectionSource for SockDiagSource {
    fn kind(&self) -> SourceKind {
        SourceKind::SockDiag
    }

    fn read(&self) -> Result<Reading, SourceError> {
        let mut reading = empty_reading(&self.ports);
        Self::dump(AF_INET, &mut reading)?;
        Self::dump(AF_INET6, &mut reading)?;
        Ok(reading)
    }
}
