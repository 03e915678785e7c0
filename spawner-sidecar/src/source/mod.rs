//! One trait, several ways to read the kernel's TCP state for the followed
//! ports. Everything above this module (activity, HTTP) sees only
//! [`ConnectionSource`] and [`Reading`].
pub mod ebpf;
pub mod procfs;
mod reconcile;

use std::{collections::BTreeMap, fmt, path::PathBuf, sync::Arc};

use tracing::{info, warn};

/// Which source answered; also the `--source` choice minus `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Ebpf,
    Proc,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Ebpf => "ebpf",
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
    /// The best source that works here: ebpf, else proc.
    Auto,
    /// Kernel program on the inet_sock_set_state tracepoint.
    Ebpf,
    /// Netlink sock_diag (not in this release; see the README).
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
    let proc_source = || Arc::new(procfs::ProcNetSource::new(options.ports.clone()));
    match choice {
        SourceChoice::Proc => Ok(proc_source()),
        SourceChoice::Ebpf => ebpf::EbpfSource::open(options, proc_source())
            .map(|s| Arc::new(s) as Arc<dyn ConnectionSource>)
            .map_err(|e| anyhow::anyhow!("eBPF source unavailable: {e}")),
        SourceChoice::SockDiag => Err(anyhow::anyhow!(
            "the sock-diag source is not implemented yet; use --source ebpf or proc"
        )),
        SourceChoice::Auto => match ebpf::EbpfSource::open(options, proc_source()) {
            Ok(source) => {
                info!(source = "ebpf", "using the eBPF source");
                Ok(Arc::new(source))
            }
            Err(e) => {
                warn!(
                    source = "proc",
                    "eBPF source unavailable ({e}); falling back to /proc/net/tcp"
                );
                Ok(proc_source())
            }
        },
    }
}
