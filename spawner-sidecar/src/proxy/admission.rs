//! Which clients may use a service: allowed and denied source networks.
//! A denied client is closed at once and never wakes the service: port
//! scanners and probes from networks that have no business here must not
//! cost a cold start. The networks are parsed and matched as the daemon's
//! `--ignore-peer` is (IPv4-mapped IPv6 peers match as IPv4).
use std::net::IpAddr;

use crate::source::peers::{PeerFilter, PeerNet};

#[derive(Debug, Clone, Default)]
pub struct Admission {
    allow: PeerFilter,
    deny: PeerFilter,
}

impl Admission {
    pub fn new(allow: Vec<PeerNet>, deny: Vec<PeerNet>) -> Self {
        Self {
            allow: PeerFilter::new(allow),
            deny: PeerFilter::new(deny),
        }
    }

    /// Denied networks win; with an allow list, only its networks pass.
    pub fn admits(&self, peer: IpAddr) -> bool {
        !self.deny.ignores(peer) && (self.allow.is_empty() || self.allow.ignores(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<PeerNet> {
        list.iter().map(|n| n.parse().expect(n)).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect(text)
    }

    #[test]
    fn deny_wins_and_an_allow_list_admits_only_its_networks() {
        let open = Admission::default();
        assert!(open.admits(ip("203.0.113.9")));
        let rules = Admission::new(nets(&["10.0.0.0/8", "::1"]), nets(&["10.9.0.0/16"]));
        assert!(rules.admits(ip("10.1.2.3")));
        assert!(rules.admits(ip("::ffff:10.1.2.3")), "v4-mapped");
        assert!(rules.admits(ip("::1")));
        assert!(!rules.admits(ip("10.9.1.1")), "denied inside the allowed");
        assert!(!rules.admits(ip("192.0.2.1")), "not allowed");
        let deny_only = Admission::new(Vec::new(), nets(&["127.0.0.2"]));
        assert!(!deny_only.admits(ip("127.0.0.2")));
        assert!(deny_only.admits(ip("127.0.0.1")));
    }
}
