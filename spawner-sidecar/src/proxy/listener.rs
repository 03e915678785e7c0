//! Binding the listen addresses, all of them before anything starts.
//!
//! Each with `serve::bind`: the backlog is the kernel's
//! `net.core.somaxconn` (the most it allows), so a burst of a thousand
//! connects does not overflow the queue between two accepts.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, ToSocketAddrs as _};

use super::address::Listen;

/// The socket addresses `listen` stands for.
pub fn addresses(listen: &Listen) -> Result<Vec<SocketAddr>, String> {
    match listen {
        // One dual-stack socket takes IPv4 too (see `serve::bind`).
        Listen::Any { port } => Ok(vec![SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            *port,
        )]),
        Listen::Host { host, port } => {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, *port)]);
            }
            // Like Go's net.Listen: a name listens on one of its addresses,
            // IPv4 first (`localhost` means 127.0.0.1 to most clients).
            let mut found: Vec<SocketAddr> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| format!("address `{listen}`: cannot resolve `{host}`: {e}"))?
                .collect();
            found.sort_by_key(|a| a.is_ipv6());
            found
                .first()
                .map(|a| vec![*a])
                .ok_or_else(|| format!("address `{listen}`: `{host}` has no address"))
        }
        Listen::Interface { name, port } => {
            let interfaces = if_addrs::get_if_addrs()
                .map_err(|e| format!("address `{listen}`: cannot list interfaces: {e}"))?;
            let found: Vec<SocketAddr> = interfaces
                .iter()
                .filter(|i| i.name == *name)
                .map(|i| match i.ip() {
                    // A link-local address needs its interface as scope.
                    IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        *port,
                        0,
                        if ip.is_unicast_link_local() {
                            i.index.unwrap_or(0)
                        } else {
                            0
                        },
                    )),
                    ip => SocketAddr::new(ip, *port),
                })
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "address `{listen}`: no interface `{name}` with an address"
                ));
            }
            Ok(found)
        }
    }
}

/// Binds every address of `listen`. `:port` falls back to IPv4 alone where
/// the kernel has no IPv6.
pub fn bind(listen: &Listen) -> Result<Vec<tokio::net::TcpListener>, String> {
    let mut bound = Vec::new();
    for address in addresses(listen)? {
        let socket = match crate::serve::bind(address) {
            Err(e)
                if matches!(listen, Listen::Any { .. })
                    && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                crate::serve::bind(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    address.port(),
                ))
            }
            other => other,
        }
        .map_err(|e| format!("cannot listen on {listen} ({address}): {e}"))?;
        let socket = tokio::net::TcpListener::from_std(socket)
            .map_err(|e| format!("cannot listen on {listen} ({address}): {e}"))?;
        bound.push(socket);
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_interface_has_addresses() {
        let found = addresses(&Listen::Interface {
            name: "lo".into(),
            port: 1,
        })
        .expect("lo exists");
        assert!(
            found.iter().all(|a| a.ip().is_loopback() && a.port() == 1),
            "{found:?}"
        );
        assert!(
            addresses(&Listen::Interface {
                name: "nope0".into(),
                port: 1
            })
            .is_err()
        );
    }

    #[test]
    fn a_name_listens_on_one_address_ipv4_first() {
        let found = addresses(&Listen::Host {
            host: "localhost".into(),
            port: 5,
        })
        .expect("resolves");
        assert_eq!(found, [SocketAddr::from(([127, 0, 0, 1], 5))]);
    }
}
