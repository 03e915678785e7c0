//! Proves the BTF offsets right on this kernel before any count is trusted:
//! a TCP connection to a port of our own must be seen with our namespace,
//! family, protocol, port (both ways the program reads it), socket cookie
//! (from the helper, and loaded from the socket as the close path does it)
//! and peer address. Done for IPv4, and for IPv6 where `::1` works.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use socket2::SockRef;
use spawner_sidecar_common::{AF_INET, AF_INET6, IPPROTO_TCP, SELFTEST_SLOT, SelfTestRecord};
use tracing::{info, warn};

use crate::source::SourceError;

pub fn run(
    slots: &mut Array<MapData, u32>,
    records: &Array<MapData, SelfTestRecord>,
    netns_inum: u32,
) -> Result<(), SourceError> {
    check(slots, records, netns_inum, IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    match TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(_) => check(slots, records, netns_inum, IpAddr::V6(Ipv6Addr::LOCALHOST))?,
        // Without IPv6 there are no IPv6 sockets to misread.
        Err(e) => warn!("self-test: IPv6 loopback unavailable ({e}); IPv6 offsets not checked"),
    }
    info!(
        netns = netns_inum,
        "kernel program attached and self-tested"
    );
    Ok(())
}

fn check(
    slots: &mut Array<MapData, u32>,
    records: &Array<MapData, SelfTestRecord>,
    netns_inum: u32,
    address: IpAddr,
) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: "self-test socket",
        source,
    };
    let (index, family) = match address {
        IpAddr::V4(_) => (0, AF_INET),
        IpAddr::V6(_) => (1, AF_INET6),
    };
    let before = records
        .get(&index, 0)
        .map_err(|source| SourceError::Map {
            map: "SELFTEST",
            source,
        })?
        .seen;
    let listener = TcpListener::bind(SocketAddr::new(address, 0)).map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    let map_err = |source| SourceError::Map {
        map: "PORT_SLOTS",
        source,
    };
    slots
        .set(u32::from(port), SELFTEST_SLOT, 0)
        .map_err(map_err)?;
    let result = (|| {
        let client = TcpStream::connect(SocketAddr::new(address, port)).map_err(io)?;
        // A reset ends the connection at once on both sides: a graceful
        // close would leave a TIME_WAIT on the self-test's port in the
        // user's namespace for 60 s, counted if that port is monitored and
        // able to stop the application from binding it.
        SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .map_err(io)?;
        let (server, _) = listener.accept().map_err(io)?;
        // Rebound after `server` so that it is dropped first (locals drop
        // in reverse): the reset then ends both sides at once.
        let _client = client;
        let cookie = SockRef::from(&server).cookie().map_err(io)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let record = records.get(&index, 0).map_err(|source| SourceError::Map {
                map: "SELFTEST",
                source,
            })?;
            // The accepted socket's SYN_RECV and ESTABLISHED transitions
            // both write the record; either will do, as both are its own.
            if record.seen > before && record.cookie == cookie {
                return Ok((record, cookie));
            }
            if Instant::now() >= deadline {
                return Err(SourceError::Unavailable {
                    reason: format!(
                        "self-test: no event seen for an {address} connection to local port {port}; the port or cookie read is wrong on this kernel"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })();
    slots.set(u32::from(port), 0, 0).map_err(map_err)?;
    let (record, cookie) = result?;
    let expected_daddr = match address {
        IpAddr::V4(a) => {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&a.octets());
            d
        }
        IpAddr::V6(a) => a.octets(),
    };
    let expected = SelfTestRecord {
        seen: record.seen,
        cookie,
        netns_inum,
        family,
        protocol: IPPROTO_TCP,
        num: port,
        sport: port,
        _reserved: record._reserved,
        daddr: expected_daddr,
        loaded_cookie: cookie,
    };
    if record != expected {
        return Err(SourceError::Unavailable {
            reason: format!(
                "self-test: for its own {address} connection on port {port} the program read {record:?}, expected {expected:?}"
            ),
        });
    }
    Ok(())
}
