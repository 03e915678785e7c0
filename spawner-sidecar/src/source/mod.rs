//! One trait, several ways to read the kernel's TCP state for the followed
//! ports. Everything above this module (activity, HTTP, metrics, hooks) sees
//! only [`ConnectionSource`] and [`Reading`].
pub mod ebpf;
mod failover;
mod follow;
pub mod netns;
pub mod peers;
mod poller;
pub mod proc_net;
mod reading;
mod reconcile;
pub mod snapshot;
pub mod sock_diag;

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use tracing::{info, warn};

pub use self::{
    follow::Follow,
    reading::{Detail, Family, PortReading, Reading},
};
use self::{peers::PeerFilter, poller::PollingSource, snapshot::Snapshotter};

/// Which source answered; also the `--source` choice minus `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Ebpf,
    SockDiag,
    Proc,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Ebpf => "ebpf",
            SourceKind::SockDiag => "sock-diag",
            SourceKind::Proc => "proc",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `--source` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// The best source that works here: ebpf, else sock-diag, else proc.
    Auto,
    /// Kernel program on the inet_sock_set_state tracepoint.
    Ebpf,
    /// Netlink sock_diag, states and ports filtered in the kernel.
    SockDiag,
    /// /proc/net/tcp and /proc/net/tcp6.
    Proc,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source cannot work on this host or in this binary.
    #[error("{reason}")]
    Unavailable { reason: String },
    /// Reading a kernel file failed.
    #[error("reading {path}: {source}")]
    Io {
        path: &'static str,
        source: std::io::Error,
    },
    /// Reading a file under a `/proc` named at run time failed.
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process a network namespace was reached through has exited or
    /// is in another namespace now: the namespace needs another process.
    #[error("process {pid} left network namespace {netns}")]
    ProcessLeft { pid: u32, netns: u32 },
    /// A netlink sock_diag request failed.
    #[error("sock_diag: {reason}")]
    Netlink { reason: String },
    /// A BPF map operation failed.
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    /// The snapshot an event-fed source takes each tick failed: its
    /// TIME_WAIT count and repairs wait for the next tick, but its event
    /// counts are as good as before.
    #[error("snapshot: {source}")]
    Snapshot { source: Box<SourceError> },
}

impl SourceError {
    /// Whether the source itself still works: true for a failed snapshot.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Snapshot { .. })
    }
}

/// The tracker's own health, for `/metrics`. Counters are totals since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// TCP state changes the kernel program saw (every port, every namespace).
    pub kernel_events: Option<u64>,
    /// Program runs the kernel skipped because it was already running on that
    /// CPU (`recursion_misses`); the snapshot reconcile repairs their effect.
    pub kernel_missed_events: Option<u64>,
    /// Connections the per-connection map had no room for.
    pub untracked_connections: Option<u64>,
    /// New listeners the ring buffer had no room for (`--all-ports`).
    pub lost_listener_reports: Option<u64>,
    /// Times a snapshot found the event counts wrong and corrected them.
    pub corrections: u64,
}

/// A way of reading TCP socket counts from the kernel.
///
/// `read` must reflect the kernel at the moment of the call (the contract's
/// "fresh answer" rule); `refresh` runs once per tick for work that may lag,
/// like snapshots.
pub trait ConnectionSource: Send + Sync {
    fn kind(&self) -> SourceKind;
    fn read(&self, detail: Detail) -> Result<Reading, SourceError>;
    fn refresh(&self) -> Result<(), SourceError> {
        Ok(())
    }
    /// Why this source answers with less than it should, if it does.
    fn degraded(&self) -> Option<String> {
        None
    }
    fn health(&self) -> SourceHealth {
        SourceHealth::default()
    }
    /// Gives up the source for good (another took over): stops its threads
    /// and detaches what it attached.
    fn stop(&self) {}
}

/// What every source needs to know to start.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// `--monitor-port`: always followed.
    pub ports: Vec<u16>,
    /// `--all-ports`: also every port with a listener.
    pub all_ports: bool,
    /// Where the kernel's BTF is (`--kernel-btf`).
    pub kernel_btf: PathBuf,
    /// `--ignore-peer`.
    pub peers: PeerFilter,
    /// `--activity-min-age`.
    pub activity_min_age: Duration,
    /// `--max-tracked-connections`: capacity of the per-connection map.
    pub max_tracked_connections: u32,
    /// Ports `--all-ports` must not follow: the daemon's own HTTP port.
    pub excluded_ports: Vec<u16>,
}

impl SourceOptions {
    pub fn follow(&self) -> Follow {
        Follow::new(self.ports.clone(), self.all_ports, &self.excluded_ports)
    }

    fn poller(&self, snapshots: Arc<dyn Snapshotter>) -> Arc<dyn ConnectionSource> {
        Arc::new(PollingSource::new(
            snapshots,
            self.follow(),
            self.peers.clone(),
            self.activity_min_age,
        ))
    }
}

/// Opens the source `choice` names. Under `Auto`, a source that cannot work
/// here is logged with its reason and the next one is tried.
pub fn open(
    choice: SourceChoice,
    options: &SourceOptions,
) -> anyhow::Result<Arc<dyn ConnectionSource>> {
    let proc_source = || options.poller(Arc::new(proc_net::ProcNet));
    let sock_diag = || -> Result<Arc<dyn Snapshotter>, SourceError> {
        let snapshots = sock_diag::SockDiag;
        // Proves the kernel answers before we rely on it.
        snapshots.snapshot(&snapshot::SnapshotRequest {
            ports: options.ports.clone(),
            all_listeners: options.all_ports,
        })?;
        Ok(Arc::new(snapshots))
    };
    // The eBPF source's snapshots (seeding, TIME_WAIT): the cheapest lister.
    let snapshots = || match sock_diag() {
        Ok(snapshots) => snapshots,
        Err(e) => {
            warn!("sock_diag unavailable ({e}); eBPF snapshots will read /proc");
            Arc::new(proc_net::ProcNet) as Arc<dyn Snapshotter>
        }
    };
    // A poller on the same snapshots is the backup if eBPF breaks at run time.
    let ebpf = || {
        let snapshots = snapshots();
        ebpf::EbpfSource::open(options, snapshots.clone()).map(|s| {
            Arc::new(failover::Failover::new(s, options.poller(snapshots)))
                as Arc<dyn ConnectionSource>
        })
    };
    match choice {
        SourceChoice::Proc => Ok(proc_source()),
        SourceChoice::SockDiag => sock_diag()
            .map(|s| options.poller(s))
            .map_err(|e| anyhow::anyhow!("sock-diag source unavailable: {e}")),
        SourceChoice::Ebpf => ebpf().map_err(|e| anyhow::anyhow!("eBPF source unavailable: {e}")),
        SourceChoice::Auto => {
            let source = ebpf()
                .inspect_err(|e| warn!("eBPF source unavailable ({e}); trying sock_diag"))
                .or_else(|_| sock_diag().map(|s| options.poller(s)))
                .inspect_err(|e| {
                    warn!("sock-diag source unavailable ({e}); falling back to /proc/net/tcp")
                })
                .unwrap_or_else(|_| proc_source());
            info!(source = %source.kind(), "source chosen");
            Ok(source)
        }
    }
}
