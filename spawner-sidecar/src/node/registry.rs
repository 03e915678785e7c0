//! The followed namespaces as the API sees them: each with the per-pod
//! `App` that answers for it, and the pod it belongs to, found from the
//! cgroups of the processes in it (once, and again when those change).
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tracing::{debug, info};

use super::view::NamespaceView;
use crate::{
    activity::Activity,
    app::{App, Observed},
    cgroup,
    clock::boottime_ns,
    lock::lock,
    source::{Detail, ebpf::node::NodeSource, netns::HostProc},
};

/// The pod a namespace belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    /// `Guaranteed`, `Burstable` or `BestEffort`, where the path says.
    pub qos: Option<&'static str>,
    /// Distinct container ids of the processes found in the namespace.
    pub containers: Vec<String>,
}

/// One followed namespace.
#[derive(Clone)]
pub struct Entry {
    pub netns: u32,
    pub app: Arc<App>,
    pub pod: Option<Pod>,
}

struct Known {
    app: Arc<App>,
    pod: Option<Pod>,
    /// The processes the pod was found from.
    pids: Vec<u32>,
}

pub struct Registry {
    pub source: Arc<NodeSource>,
    host: Arc<HostProc>,
    known: Mutex<BTreeMap<u32, Known>>,
    activity_min_age: Duration,
    min_connection_age: Duration,
    attribution_failures: AtomicU64,
}

impl Registry {
    pub fn new(
        source: Arc<NodeSource>,
        host: Arc<HostProc>,
        activity_min_age: Duration,
        min_connection_age: Duration,
    ) -> Self {
        Registry {
            source,
            host,
            known: Mutex::default(),
            activity_min_age,
            min_connection_age,
            attribution_failures: AtomicU64::new(0),
        }
    }

    pub fn attribution_failures(&self) -> u64 {
        self.attribution_failures.load(Ordering::Relaxed)
    }

    /// Brings the entries in line with the source: new namespaces get an
    /// app, gone ones lose theirs, changed processes are attributed again.
    /// `fresh` first asks the source for namespaces it has just seen (an
    /// answer about a pod that started a moment ago).
    pub fn sync(&self, fresh: bool) {
        if fresh {
            self.source.sync();
        }
        let namespaces = self.source.namespaces();
        let mut known = lock(&self.known);
        known.retain(|netns, _| namespaces.contains_key(netns));
        for (netns, pids) in namespaces {
            let entry = known.entry(netns).or_insert_with(|| Known {
                app: Arc::new(App::new(
                    Arc::new(NamespaceView {
                        source: self.source.clone(),
                        netns,
                    }),
                    Activity::new(boottime_ns(), self.activity_min_age),
                    self.min_connection_age,
                )),
                pod: None,
                pids: Vec::new(),
            });
            // No process now (a pinned namespace whose last one exited):
            // keep what was found, until one is found again.
            if pids.is_empty() || entry.pids == pids {
                continue;
            }
            let pod = self.attribute(netns, &pids);
            if pod != entry.pod {
                match &pod {
                    Some(p) => {
                        info!(netns, pod_uid = %p.uid, containers = ?p.containers, "namespace attributed to a pod")
                    }
                    None => debug!(netns, "namespace belongs to no pod"),
                }
            }
            entry.pod = pod;
            entry.pids = pids;
        }
    }

    /// The pod of the processes `pids`, from their cgroups. Never for the
    /// host's own namespace: processes there can sit in a pod's cgroup
    /// without being in the pod's namespace (CRI-O's and podman's monitor,
    /// conmon, runs in `crio-conmon-<id>` or `conmon` beside the pod's
    /// containers), and a `hostNetwork` pod's connections are the host's,
    /// answered by inode (docs/node.md).
    fn attribute(&self, netns: u32, pids: &[u32]) -> Option<Pod> {
        if self.host.host_netns() == Some(netns) {
            return None;
        }
        let mut uid = None;
        let mut qos = None;
        let mut containers = Vec::new();
        let mut read = 0;
        for &pid in pids {
            let Some(text) = self.host.cgroup_of(pid) else {
                continue;
            };
            read += 1;
            let Some(found) = cgroup::pod_of(&text) else {
                continue;
            };
            uid.get_or_insert(found.uid);
            qos = qos.or(found.qos.map(|q| q.as_str()));
            if let Some(container) = found.container
                && !containers.contains(&container.id)
            {
                containers.push(container.id);
            }
        }
        if read == 0 {
            self.attribution_failures.fetch_add(1, Ordering::Relaxed);
            debug!(
                netns,
                ?pids,
                "no cgroup of the namespace's processes could be read"
            );
        }
        containers.sort();
        uid.map(|uid| Pod {
            uid,
            qos,
            containers,
        })
    }

    /// Every followed namespace.
    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.known)
            .iter()
            .map(|(&netns, k)| entry(netns, k))
            .collect()
    }

    /// The namespace of pod `uid` (canonical form).
    pub fn by_pod(&self, uid: &str) -> Option<Entry> {
        self.find(|k| k.pod.as_ref().is_some_and(|p| p.uid == uid))
    }

    pub fn by_netns(&self, netns: u32) -> Option<Entry> {
        let known = lock(&self.known);
        known.get(&netns).map(|k| entry(netns, k))
    }

    /// One entry, cloned alone: an answer for one pod should not cost a
    /// copy of a thousand.
    fn find(&self, matches: impl Fn(&Known) -> bool) -> Option<Entry> {
        let known = lock(&self.known);
        known
            .iter()
            .find(|(_, k)| matches(k))
            .map(|(&netns, k)| entry(netns, k))
    }

    /// Every namespace's reading recorded in its activity clock, from one
    /// read of the source for all of them (a scrape, a tick).
    pub async fn observe_all(&self, detail: Detail) -> Result<Vec<(Entry, Observed)>, String> {
        let source = self.source.clone();
        let readings = tokio::task::spawn_blocking(move || source.read_all(detail))
            .await
            .map_err(|e| format!("reader task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let now_ns = boottime_ns();
        let mut out = Vec::new();
        for entry in self.entries() {
            let Some(reading) = readings.get(&entry.netns) else {
                continue;
            };
            let idle = entry.app.activity.observe(reading, now_ns);
            out.push((
                entry,
                Observed {
                    reading: reading.clone(),
                    idle,
                    now_ns,
                },
            ));
        }
        Ok(out)
    }

    /// What the activity clocks need in a reading.
    pub fn detail(&self) -> Detail {
        Detail {
            starts: !self.activity_min_age.is_zero(),
        }
    }
}

fn entry(netns: u32, known: &Known) -> Entry {
    Entry {
        netns,
        app: known.app.clone(),
        pod: known.pod.clone(),
    }
}
