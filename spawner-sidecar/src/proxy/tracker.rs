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
//!
//! Readiness asks it too ([`Tracker::listeners`]): the eBPF source's
//! LISTEN count of a tracked target's port is fresh at each read (the
//! kernel program counts the listen(2) as it happens, in this namespace
//! only), so a start sees its backend's port open without dialing for it.
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
use tracing::{debug, info, warn};

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
        self, Detail, Reading, SourceChoice, SourceKind, SourceOptions,
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

/// `spec`'s `host:port` targets served in this namespace (names resolved
/// now, blocking), in the spec's order, each once.
pub fn local_targets(spec: &ServiceSpec, local: &Local) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    for route in &spec.routes {
        let Target::Host { host, port } = &route.target else {
            continue;
        };
        let is_local = match host.parse() {
            Ok(ip) => local.contains(ip),
            Err(_) => (host.as_str(), *port)
                .to_socket_addrs()
                .is_ok_and(|mut found| found.any(|a| local.contains(a.ip()))),
        };
        if is_local && !targets.contains(&route.target) {
            targets.push(route.target.clone());
        }
    }
    targets
}

/// The ports of `targets`, ascending.
fn ports_of(targets: &[Target]) -> Vec<u16> {
    let mut ports: Vec<u16> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Host { port, .. } => Some(*port),
            Target::Exec { .. } => None,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

struct Watch {
    /// The local targets, for readiness.
    targets: Vec<Target>,
    ports: Vec<u16>,
    activity: Activity,
}

/// What the kernel says of a target's listeners, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// The source is still being opened: ask again later.
    NotYet,
    /// LISTEN sockets on the target's port in this namespace, now.
    Count(u64),
    /// No fresh count: the target is not tracked (not local, or its service
    /// cannot stop for idleness), or the source is not eBPF (a polling
    /// source's read costs milliseconds), or it could not be opened or read.
    Unknown,
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
    /// [`Tracker::open`] is over, whether it opened the source or not.
    settled: AtomicBool,
    /// A read failed and has not succeeded since: said once.
    failing: AtomicBool,
}

impl Tracker {
    pub fn new(local: Local) -> Arc<Self> {
        Arc::new(Self {
            local,
            started_ns: boottime_ns(),
            open: OnceLock::new(),
            settled: AtomicBool::new(false),
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
        if let Some(open) = self.open_source(services, settings) {
            let _ = self.open.set(open);
        }
        // After the source: whoever sees this sees the source too.
        self.settled.store(true, Ordering::Release);
    }

    fn open_source(&self, services: &[ServiceSpec], settings: &Settings) -> Option<Open> {
        let mut watches = BTreeMap::new();
        for spec in services.iter().filter(|s| wanted(s)) {
            let targets = local_targets(spec, &self.local);
            let ports = ports_of(&targets);
            if ports.is_empty() {
                continue;
            }
            info!(service = spec.name, ports = %port_list(ports.iter().copied()),
                  "idle also waits for the pod's own connections to these target ports");
            watches.insert(
                spec.name.clone(),
                Watch {
                    targets,
                    ports,
                    activity: Activity::new(self.started_ns, settings.activity_min_age),
                },
            );
        }
        if watches.is_empty() {
            return None;
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
                return None;
            }
        };
        info!(source = %source.kind(), "tracking the targets' ports");
        let app = App::new(
            source,
            Activity::new(self.started_ns, settings.activity_min_age),
            Duration::ZERO,
        );
        Some(Open { app, watches })
    }

    /// The LISTEN sockets on `target`'s port now, if `service` tracks it
    /// and the source is eBPF. Not off the async workers: the eBPF
    /// source's read is one BPF map lookup per followed port, microseconds,
    /// and readiness asks every millisecond while a start waits.
    pub fn listeners(&self, service: &str, target: &Target) -> Listening {
        let settled = self.settled.load(Ordering::Acquire);
        let Some(open) = self.open.get() else {
            return if settled {
                Listening::Unknown
            } else {
                Listening::NotYet
            };
        };
        let (Some(watch), Target::Host { port, .. }) = (open.watches.get(service), target) else {
            return Listening::Unknown;
        };
        if !watch.targets.contains(target) || open.app.source.kind() != SourceKind::Ebpf {
            return Listening::Unknown;
        }
        match open.app.source.read(Detail::default()) {
            Ok(reading) => reading
                .get(port)
                .map_or(Listening::Unknown, |r| Listening::Count(r.listeners)),
            Err(e) => {
                debug!(
                    service,
                    "readiness cannot read the tracker, dialing only: {e}"
                );
                Listening::Unknown
            }
        }
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
        let targets = local_targets(&s, &local);
        let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1:8081", "localhost:8082", "[::1]:8083"]);
        assert_eq!(ports_of(&targets), [8081, 8082, 8083]);
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
