//! `spawner-sidecar node`'s flags: the daemon's where they apply, and the
//! bounds and paths only a node-wide tracker has.
use std::path::PathBuf;

use crate::config::{TrackArgs, WatchArgs};

/// Follow every network namespace of the host with one kernel program
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub watch: WatchArgs,

    #[command(flatten)]
    pub track: TrackArgs,

    /// Network namespaces followed at most (1-65536); more are counted in /metrics and logged
    #[arg(long, value_name = "N", env = "SPAWNER_SIDECAR_MAX_NAMESPACES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_namespaces: u32,

    /// Ports followed in one namespace at most (1-1024), --monitor-port ones included
    #[arg(long, value_name = "N", env = "SPAWNER_SIDECAR_MAX_PORTS_PER_NAMESPACE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_ports_per_namespace: u32,

    /// Where the host's /proc is (a DaemonSet with hostPID: /proc)
    #[arg(
        long,
        value_name = "PATH",
        env = "SPAWNER_SIDECAR_HOST_PROC",
        default_value = "/proc"
    )]
    pub host_proc: PathBuf,

    /// Read settings from this TOML file (keys: flag names with underscores)
    #[arg(long, value_name = "FILE", env = "SPAWNER_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
}
