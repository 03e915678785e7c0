//! Dialing a target. A service the tracker watches (see [`super::tracker`])
//! dials its local IPv4 targets from the proxy's own loopback address,
//! [`OWN_ADDRESS`], which the tracker's source ignores as a peer: the
//! backend's side of every proxied connection then drops out of the counts
//! in the kernel program itself (established, TIME_WAIT, the last-activity
//! stamp, connection ages), and what is left on the target's port is the
//! pod's own traffic. Counting our connections and subtracting them could
//! not do that: a count says nothing about which TIME_WAIT socket or which
//! close stamp was ours.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
};

use tokio::net::{TcpSocket, TcpStream};

/// The source address of the proxy's connections to local IPv4 targets of
/// watched services. Every 127.0.0.0/8 address is the loopback interface's
/// on Linux, so it needs no set-up; the pod's own clients connect from
/// 127.0.0.1 (the kernel's choice for a loopback destination) unless they
/// bind another address themselves. 83.80 is "SP" in ASCII.
pub const OWN_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 83, 80);

/// This network namespace's own addresses, read once at start: a target on
/// one of them (or on loopback) is served by a process of this pod.
#[derive(Debug, Default, Clone)]
pub struct Local(Vec<IpAddr>);

/// `::ffff:a.b.c.d` is the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Local {
    /// The interfaces' addresses now; none when they cannot be listed
    /// (then only loopback targets count as local).
    pub fn read() -> Self {
        let addresses = if_addrs::get_if_addrs()
            .map(|list| list.iter().map(|i| canonical(i.ip())).collect())
            .unwrap_or_default();
        Self(addresses)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        // A connect() to 0.0.0.0 or :: reaches this host.
        ip.is_loopback() || ip.is_unspecified() || self.0.contains(&ip)
    }
}

/// Connects to `address` (`host:port`; a name is resolved now). With
/// `local` (a watched service), its local IPv4 addresses are tried first,
/// from [`OWN_ADDRESS`]; other addresses as usual. The last error is
/// returned when none accepts, so a refused dial stays a refused dial.
pub async fn connect(address: &str, local: Option<&Local>) -> io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect(address).await;
    };
    let mut addresses: Vec<SocketAddr> = tokio::net::lookup_host(address).await?.collect();
    let own = |a: &SocketAddr| a.is_ipv4() && local.contains(a.ip());
    // Stable: the resolver's order otherwise (`localhost` may list ::1 first,
    // and a connection over IPv6 cannot be told from the pod's own).
    addresses.sort_by_key(|a| !own(a));
    let mut last = None;
    for to in addresses {
        let attempt = if own(&to) {
            from_own_address(to).await
        } else {
            TcpStream::connect(to).await
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{address}: no address to connect to"),
        )
    }))
}

async fn from_own_address(to: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // The port is then picked at connect() for the whole 4-tuple, as for an
    // unbound socket, not reserved at bind() for every destination: without
    // it, one address would run out of ports at the size of the ephemeral
    // range, TIME_WAIT included.
    let on: libc::c_int = 1;
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a c_int
    // and its size, as IP_BIND_ADDRESS_NO_PORT takes (Linux 4.2+).
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        // Older kernels: bind() picks the port, which still works.
        tracing::debug!("IP_BIND_ADDRESS_NO_PORT: {}", io::Error::last_os_error());
    }
    socket.bind(SocketAddr::from((OWN_ADDRESS, 0)))?;
    socket.connect(to).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_unspecified_and_interface_addresses_are_local() {
        let local = Local(vec!["192.0.2.2".parse().expect("ip")]);
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "0.0.0.0",
            "192.0.2.2",
            "::ffff:192.0.2.2",
        ] {
            assert!(local.contains(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["192.0.2.3", "10.0.0.1", "fd00::1"] {
            assert!(!local.contains(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_local_ipv4_target_is_dialed_from_the_own_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let address = format!("127.0.0.1:{port}");
        let _ours = connect(&address, Some(&Local::default()))
            .await
            .expect("connect");
        let (_, peer) = listener.accept().expect("accept");
        assert_eq!(peer.ip(), IpAddr::V4(OWN_ADDRESS));
        let _plain = connect(&address, None).await.expect("connect");
        let (_, peer) = listener.accept().expect("accept");
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
