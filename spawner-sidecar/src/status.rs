//! The contract's JSON, built from one reading: the four original fields
//! first, then the original code's `seconds_inactive` alias, then ours.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    activity::Idle,
    source::{PortReading, Reading},
};

/// One port's state, and (top level) all followed ports together.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PortStatus {
    pub active_connections: u64,
    pub waiting_connections: u64,
    pub seconds_since_active: u64,
    pub listening: bool,
    pub seconds_inactive: u64,
    /// ESTABLISHED and TIME_WAIT sockets from `--ignore-peer` networks.
    pub ignored_connections: u64,
}

impl PortStatus {
    fn new(r: &PortReading, idle: u64) -> Self {
        PortStatus {
            active_connections: r.established_total(),
            waiting_connections: r.time_wait_total(),
            seconds_since_active: idle,
            listening: r.listeners > 0,
            seconds_inactive: idle,
            ignored_connections: r.ignored(),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub active_connections: u64,
    pub waiting_connections: u64,
    pub seconds_since_active: u64,
    pub listening: bool,
    pub seconds_inactive: u64,
    pub source: &'static str,
    pub ignored_connections: u64,
    /// Per followed port, keyed by the port number (a string in JSON).
    pub ports: BTreeMap<u16, PortStatus>,
}

impl Status {
    /// Aggregates every followed port: counts add up, the idle time is the
    /// shortest, and `listening` needs a listener on every port.
    pub fn new(reading: &Reading, idle: &Idle, source: &'static str) -> Self {
        let ports: BTreeMap<u16, PortStatus> = reading
            .iter()
            .map(|(&port, r)| {
                let seconds = idle.ports.get(&port).copied().unwrap_or(idle.overall);
                (port, PortStatus::new(r, seconds))
            })
            .collect();
        let sum = |f: fn(&PortStatus) -> u64| ports.values().map(f).sum();
        Status {
            active_connections: sum(|p| p.active_connections),
            waiting_connections: sum(|p| p.waiting_connections),
            seconds_since_active: idle.overall,
            listening: !ports.is_empty() && ports.values().all(|p| p.listening),
            seconds_inactive: idle.overall,
            source,
            ignored_connections: sum(|p| p.ignored_connections),
            ports,
        }
    }
}

/// `8080,9090`: ports as the hooks' environment and the logs show them.
pub fn port_list(ports: impl IntoIterator<Item = u16>) -> String {
    ports
        .into_iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_ports_and_keys_them_as_strings() {
        let reading = Reading::from([
            (
                8080,
                PortReading {
                    established: [2, 1],
                    time_wait: [0, 1],
                    ignored_established: 4,
                    listeners: 1,
                    ..Default::default()
                },
            ),
            (9090, PortReading::default()),
        ]);
        let idle = Idle {
            ports: BTreeMap::from([(8080, 0), (9090, 7)]),
            overall: 0,
        };
        let json = serde_json::to_string(&Status::new(&reading, &idle, "ebpf")).expect("json");
        assert_eq!(
            json,
            concat!(
                r#"{"active_connections":3,"waiting_connections":1,"seconds_since_active":0,"listening":false,"#,
                r#""seconds_inactive":0,"source":"ebpf","ignored_connections":4,"ports":{"#,
                r#""8080":{"active_connections":3,"waiting_connections":1,"seconds_since_active":0,"listening":true,"seconds_inactive":0,"ignored_connections":4},"#,
                r#""9090":{"active_connections":0,"waiting_connections":0,"seconds_since_active":7,"listening":false,"seconds_inactive":7,"ignored_connections":0}}}"#
            )
        );
    }

    #[test]
    fn no_ports_is_not_listening() {
        let s = Status::new(&Reading::new(), &Idle::default(), "proc");
        assert!(!s.listening);
        assert!(s.ports.is_empty());
    }
}
