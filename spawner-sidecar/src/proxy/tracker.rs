//! The pod's own traffic to a service: connections the kernel source sees
//! on its targets' ports that did not come through the proxy. They hold off
//! the idle stop as the proxy's own connections do.
//!
//! One source (the daemon's `source::open`, with its `--source`,
//! `--ignore-peer`, `--activity-min-age` and `--kernel-btf`) follows the
//! ports of every local target of every service that can stop for
//! idleness; one [`Activity`] per service (the daemon's activity clock)
//! turns readings of its ports into the last moment they were active. The
//! proxy's own connections are left out by peer: it dials local IPv4
//! targets from [`dial::OWN_ADDRESS`], which the source ignores.
//!
//! Not tracked: `exec:` targets (the port is known per connection only)
//! and targets on other hosts (their connections are not in this
//! namespace). When the source cannot be opened or read, one line says so
//! and idleness is judged by proxied connections alone.
use std::{
    collections::BTreeMap,
    net::ToSocketAddrs as _,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use spawner_sidecar_common::{DEFAULT_MAX_SOCKETS, MAX_IGNORED_PEERS};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    address::Target,
    dial::{self, Local},
    spec::ServiceSpec,
};
use crate::{
    activity::Activity,
    app::App,
    clock::boottime_ns,
    source::{
        self, Reading, SourceChoice, SourceOptions,
        peers::{PeerFilter, PeerNet},
    },
    status::port_list,
};

/// The tracker's flags, as the daemon's.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceChoice,
    pub kernel_btf: PathBuf,
    pub ignore_peer: Vec<PeerNet>,
    pub activity_min_age: Duration,
}

impl Settings {
    /// The user's networks and the proxy's own address share the kernel's
    /// table of ignored peers.
    pub fn check(&self) -> Result<(), String> {
        let most = MAX_IGNORED_PEERS as usize - 1;
        if self.ignore_peer.len() > most {
            return Err(format!(
                "--ignore-peer: {} networks, at most {most} (one of the kernel's {MAX_IGNORED_PEERS} is the proxy's own address)",
                self.ignore_peer.len()
            ));
        }
        Ok(())
    }
}

/// Whether `spec` can stop for idleness and so needs its targets tracked.
pub fn wanted(spec: &ServiceSpec) -> bool {
    spec.stop_after.is_some() && !spec.is_forwarder()
}

/// The ports of `spec`'s targets served in this namespace (names resolved
/// now, blocking), ascending.
pub fn local_ports(spec: &ServiceSpec, local: &Local) -> Vec<u16> {
    let mut ports: Vec<u16> = spec
        .routes
        .iter()
        .filter_map(|route| match &route.target {
            Target::Host { host, port } => {
                let is_local = match host.parse() {
                    Ok(ip) => local.contains(ip),
                    Err(_) => (host.as_str(), *port)
                        .to_socket_addrs()
                        .is_ok_and(|mut found| found.any(|a| local.contains(a.ip()))),
                };
                is_local.then_some(*port)
            }
            Target::Exec { .. } => None,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

struct Watch {
    ports: Vec<u16>,
    activity: Activity,
}

struct Open {
    app: App,
    /// By service name.
    watches: BTreeMap<String, Watch>,
}

/// The source and each watched service's activity, once opened.
pub struct Tracker {
    local: Local,
    started_ns: u64,
    open: OnceLock<Open>,
    /// A read failed and has not succeeded since: said once.
    failing: AtomicBool,
}

impl Tracker {
    pub fn new(local: Local) -> Arc<Self> {
        Arc::new(Self {
            local,
            started_ns: boottime_ns(),
            open: OnceLock::new(),
            failing: AtomicBool::new(false),
        })
    }

    /// The namespace's addresses, for dialing.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// Resolves the services' targets and opens the source for their local
    /// ports. Blocking (name resolution, loading the kernel program): run it
    /// off the async workers. Until it is done, and if it fails, idleness is
    /// judged by proxied connections alone.
    pub fn open(&self, services: &[ServiceSpec], settings: &Settings) {
        let mut watches = BTreeMap::new();
        for spec in services.iter().filter(|s| wanted(s)) {
            let ports = local_ports(spec, &self.local);
            if ports.is_empty() {
                continue;
            }
            info!(service = spec.name, ports = %port_list(ports.iter().copied()),
                  "idle also waits for the pod's own connections to these target ports");
            watches.insert(
                spec.name.clone(),
                Watch {
                    ports,
                    activity: Activity::new(self.started_ns, settings.activity_min_age),
                },
            );
        }
        if watches.is_empty() {
            return;
        }
        let mut ports: Vec<u16> = watches.values().flat_map(|w| w.ports.clone()).collect();
        ports.sort_unstable();
        ports.dedup();
        let mut ignored = settings.ignore_peer.clone();
        ignored.push(PeerNet::from(std::net::IpAddr::V4(dial::OWN_ADDRESS)));
        let options = SourceOptions {
            ports,
            all_ports: false,
            kernel_btf: settings.kernel_btf.clone(),
            peers: PeerFilter::new(ignored),
            activity_min_age: settings.activity_min_age,
            max_tracked_connections: DEFAULT_MAX_SOCKETS,
            excluded_ports: Vec::new(),
        };
        let source = match source::open(settings.source, &options) {
            Ok(source) => source,
            Err(e) => {
                warn!("tracker unavailable, idle is judged by proxied connections only: {e:#}");
                return;
            }
        };
        info!(source = %source.kind(), "tracking the targets' ports");
        let app = App::new(
            source,
            Activity::new(self.started_ns, settings.activity_min_age),
            Duration::ZERO,
        );
        let _ = self.open.set(Open { app, watches });
    }

    /// The last moment the pod's own connections made `service`'s target
    /// ports active (now, while they are), from a fresh reading; `None`
    /// when the service is not tracked or the source cannot say.
    pub async fn last_active(&self, service: &str) -> Option<Instant> {
        let open = self.open.get()?;
        let watch = open.watches.get(service)?;
        // The TIME_WAIT count comes from a snapshot: renew it first.
        open.app.refresh("tracker").await;
        let observed = match open.app.observe().await {
            Ok(observed) => observed,
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!("tracker unreadable, idle is judged by proxied connections only: {e}");
                }
                return None;
            }
        };
        if self.failing.swap(false, Ordering::Relaxed) {
            info!("tracker readable again");
        }
        let mine: Reading = observed
            .reading
            .iter()
            .filter(|(port, _)| watch.ports.contains(port))
            .map(|(port, reading)| (*port, reading.clone()))
            .collect();
        watch.activity.observe(&mine, observed.now_ns);
        let ago = boottime_ns().saturating_sub(watch.activity.last_active_ns());
        Some(
            Instant::now()
                .checked_sub(Duration::from_nanos(ago))
                .unwrap_or_else(Instant::now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::address::{Listen, Route};

    fn spec(targets: &[&str]) -> ServiceSpec {
        let routes = targets
            .iter()
            .map(|t| Route {
                listen: Listen::Any { port: 1 },
                target: Target::parse(t).expect(t),
            })
            .collect();
        ServiceSpec {
            name: "s".into(),
            routes,
            command: vec!["server".into()],
            auto_start: false,
            stop_after: Some(Duration::from_secs(1)),
            stop_signal: crate::proxy::signal::Signal::TERM,
            stop_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            wait_after_start: Duration::ZERO,
            min_online: Duration::ZERO,
            admission: crate::proxy::admission::Admission::new(vec![], vec![]),
            wake_on_data: false,
            idle_action: crate::proxy::spec::IdleAction::Stop,
            start: None,
            stop: None,
            check_url: None,
        }
    }

    #[test]
    fn local_targets_are_tracked_remote_and_exec_ones_are_not() {
        let local = Local::default();
        let s = spec(&[
            "127.0.0.1:8081",
            "localhost:8082",
            "[::1]:8083",
            "192.0.2.1:8084",
            "exec:/bin/true",
            "127.0.0.1:8081",
        ]);
        assert_eq!(local_ports(&s, &local), [8081, 8082, 8083]);
        assert!(wanted(&s));
    }

    #[test]
    fn only_services_that_can_stop_for_idleness_are_tracked() {
        let mut s = spec(&["127.0.0.1:8081"]);
        s.stop_after = None;
        assert!(!wanted(&s), "never stops");
        let mut s = spec(&["127.0.0.1:8081"]);
        s.command.clear();
        assert!(!wanted(&s), "a plain forwarder");
    }

    #[test]
    fn the_own_address_takes_one_of_the_kernels_ignored_peers() {
        let nets = |n: usize| Settings {
            source: SourceChoice::Proc,
            kernel_btf: PathBuf::new(),
            ignore_peer: vec!["10.0.0.0/8".parse().expect("net"); n],
            activity_min_age: Duration::ZERO,
        };
        assert!(nets(MAX_IGNORED_PEERS as usize - 1).check().is_ok());
        let e = nets(MAX_IGNORED_PEERS as usize)
            .check()
            .expect_err("too many");
        assert!(e.contains("--ignore-peer"), "{e}");
    }
}
