//! `--ignore-peer`: connections from these networks (kubelet probes, load
//! balancer health checks, uptime monitors) are left out of every count and
//! of activity. The same rule runs in the kernel program (an LPM trie) and
//! here, for snapshots and the polling sources.
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use spawner_sidecar_common::{PEER_TAG_V4, PEER_TAG_V6, PeerData};

/// One `--ignore-peer` value: a CIDR, or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerNet(IpNet);

impl FromStr for PeerNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => s
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8, fd00::/8) or an address"))?,
        };
        // `10.1.2.3/8` means the network; say it the way the kernel will match.
        Ok(PeerNet(net.trunc()))
    }
}

impl From<IpAddr> for PeerNet {
    /// One address: a network of its full length.
    fn from(ip: IpAddr) -> Self {
        PeerNet(IpNet::from(ip))
    }
}

impl fmt::Display for PeerNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PeerNet {
    /// The key of this network in the kernel's `IGNORED_PEERS` trie: a tag
    /// word, then the address; prefix length 32 + the CIDR's.
    pub fn trie_key(&self) -> (u32, PeerData) {
        match self.0 {
            IpNet::V4(n) => {
                let word = u32::from_ne_bytes(n.network().octets());
                (32 + u32::from(n.prefix_len()), [PEER_TAG_V4, word, 0, 0, 0])
            }
            IpNet::V6(n) => {
                let o = n.network().octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                (
                    32 + u32::from(n.prefix_len()),
                    [PEER_TAG_V6, word(0), word(4), word(8), word(12)],
                )
            }
        }
    }
}

/// The set of ignored peer networks.
#[derive(Clone, Debug, Default)]
pub struct PeerFilter {
    nets: Vec<PeerNet>,
}

impl PeerFilter {
    pub fn new(nets: Vec<PeerNet>) -> Self {
        PeerFilter { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn nets(&self) -> &[PeerNet] {
        &self.nets
    }

    /// Whether `peer` is ignored. An IPv4-mapped IPv6 peer is matched as
    /// the IPv4 address it is, as the kernel program does.
    pub fn ignores(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.0.contains(&peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(nets: &[&str]) -> PeerFilter {
        PeerFilter::new(nets.iter().map(|n| n.parse().expect(n)).collect())
    }

    #[test]
    fn parses_cidrs_and_single_addresses() {
        assert_eq!(
            "10.1.2.3/8".parse::<PeerNet>().expect("v4").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "192.0.2.7".parse::<PeerNet>().expect("addr").to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            "fd00::1/8".parse::<PeerNet>().expect("v6").to_string(),
            "fd00::/8"
        );
        for bad in ["", "10.0.0.0/33", "example.com", "1.2.3.4/x"] {
            assert!(bad.parse::<PeerNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_v4_v6_and_v4_mapped_peers() {
        let f = filter(&["10.0.0.0/8", "fd00::/8"]);
        assert!(f.ignores("10.200.0.1".parse().expect("ip")));
        assert!(
            f.ignores("::ffff:10.0.0.9".parse().expect("ip")),
            "v4-mapped"
        );
        assert!(f.ignores("fd12::5".parse().expect("ip")));
        assert!(!f.ignores("11.0.0.1".parse().expect("ip")));
        assert!(!f.ignores("::1".parse().expect("ip")));
        assert!(!filter(&[]).ignores("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn trie_keys_tag_the_family_and_keep_network_order() {
        let (len, data) = "10.1.0.0/16".parse::<PeerNet>().expect("v4").trie_key();
        assert_eq!(len, 48);
        assert_eq!(data[0], PEER_TAG_V4);
        assert_eq!(data[1].to_ne_bytes(), [10, 1, 0, 0]);
        let (len, data) = "fd00::/8".parse::<PeerNet>().expect("v6").trie_key();
        assert_eq!((len, data[0]), (40, PEER_TAG_V6));
        assert_eq!(data[1].to_ne_bytes(), [0xfd, 0, 0, 0]);
    }
}
