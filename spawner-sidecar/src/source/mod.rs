//! One trait, several ways to read the kernel's TCP state for the followed
//! ports. Everything above this module (activity, HTTP) sees only
//! [`ConnectionSource`] and [`Reading`].
pub mod ebpf;
mod failover;
pub mod procfs;
mod reconcile;
pub mod sock_diag;

use std::{collections::BTreeMap, fmt, path::PathBuf, sync::Arc};

use tracing::{info, warn};

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
    /// Netlink sock_diag, states filtered in the kernel.
    SockDiag,
    /// /proc/net/tcp and /proc/net/tcp6.
    Proc,
}

/// What a source knows about one port at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortReading {
    pub established_v4: u64,
    pub established_v6: u64,
    pub time_wait: u64,
    /// LISTEN sockets on the port (several with SO_REUSEPORT).
    pub listeners: u64,
    /// CLOCK_BOOTTIME nanoseconds of the last ESTABLISHED entry or exit the
    /// kernel reported; only event-fed sources know it.
    pub last_active_ns: Option<u64>,
}

impl PortReading {
    pub fn established(&self) -> u64 {
        self.established_v4 + self.established_v6
    }

    /// Someone is, or is about to stop being, connected.
    pub fn busy(&self) -> bool {
        self.established() + self.time_wait > 0
    }
}

/// One reading of every followed port.
pub type Reading = BTreeMap<u16, PortReading>;

/// A reading with every port at zero, for a poller to count into.
pub fn empty_reading(ports: &[u16]) -> Reading {
    ports.iter().map(|&p| (p, PortReading::default())).collect()
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
    /// A netlink sock_diag request failed.
    #[error("sock_diag: {reason}")]
    Netlink { reason: String },
    /// A BPF map operation failed.
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// A way of reading TCP socket counts from the kernel.
///
/// `read` must reflect the kernel at the moment of the call (the contract's
/// "fresh answer" rule); `refresh` runs once per tick for work that may lag,
/// like snapshots.
pub trait ConnectionSource: Send + Sync {
    fn kind(&self) -> SourceKind;
    fn read(&self) -> Result<Reading, SourceError>;
    fn refresh(&self) -> Result<(), SourceError> {
        Ok(())
    }
    /// Why this source answers with less than it should, if it does.
    fn degraded(&self) -> Option<String> {
        None
    }
}

/// What every source needs to know to start.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub ports: Vec<u16>,
    /// Where the kernel's BTF is (`--kernel-btf`).
    pub kernel_btf: PathBuf,
}

/// Opens the source `choice` names. Under `Auto`, a source that cannot work
/// here is logged with its reason and the next one is tried.
pub fn open(
    choice: SourceChoice,
    options: &SourceOptions,
) -> anyhow::Result<Arc<dyn ConnectionSource>> {
    let ports = || options.ports.clone();
    let proc_source = || Arc::new(procfs::ProcNetSource::new(ports())) as Arc<dyn ConnectionSource>;
    let sock_diag = || -> Result<Arc<dyn ConnectionSource>, SourceError> {
        let source = sock_diag::SockDiagSource::new(ports());
        source.read()?; // proves the kernel answers before we rely on it
        Ok(Arc::new(source))
    };
    // The eBPF source's snapshots (seeding, TIME_WAIT): the cheapest poller.
    let snapshots = || match sock_diag() {
        Ok(source) => source,
        Err(e) => {
            warn!("sock_diag unavailable ({e}); eBPF snapshots will read /proc");
            proc_source()
        }
    };
    // The snapshot source doubles as the backup if eBPF breaks at run time.
    let ebpf = || {
        let snapshots = snapshots();
        ebpf::EbpfSource::open(options, snapshots.clone()).map(|s| {
            Arc::new(failover::Failover::new(Arc::new(s), snapshots)) as Arc<dyn ConnectionSource>
        })
    };
    match choice {
        SourceChoice::Proc => Ok(proc_source()),
        SourceChoice::SockDiag => {
            sock_diag().map_err(|e| anyhow::anyhow!("sock-diag source unavailable: {e}"))
        }
        SourceChoice::Ebpf => ebpf().map_err(|e| anyhow::anyhow!("eBPF source unavailable: {e}")),
        SourceChoice::Auto => {
            let source = ebpf()
                .inspect_err(|e| warn!("eBPF source unavailable ({e}); trying sock_diag"))
                .or_else(|_| sock_diag())
                .inspect_err(|e| {
                    warn!("sock-diag source unavailable ({e}); falling back to /proc/net/tcp")
                })
                .unwrap_or_else(|_| proc_source());
            info!(source = %source.kind(), "source chosen");
            Ok(source)
        }
    }
}
