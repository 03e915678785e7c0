//! The daemon's settings: what to watch, how to serve, what to run. Each
//! is a clap argument with its environment variable; `cli` parses them
//! (with the config file as a layer) into one validated [`Config`].
use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::error::ErrorKind;
use spawner_sidecar_common::{DEFAULT_MAX_SOCKETS, MAX_IGNORED_PEERS};

use crate::{
    duration::parse_duration,
    source::{SourceChoice, SourceOptions, peers::PeerFilter, peers::PeerNet},
};

/// What to watch and how to read it: the daemon's flags that `wait-idle`
/// shares.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// TCP port to watch (1-65535); repeat the flag or separate ports with commas
    #[arg(long, value_name = "PORT", env = "SPAWNER_SIDECAR_MONITOR_PORT", default_value = "8080",
          value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub monitor_port: Vec<u16>,

    /// Where connection counts come from; auto picks the best that works here
    #[arg(long, value_name = "SOURCE", env = "SPAWNER_SIDECAR_SOURCE", value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,

    /// Kernel BTF to take struct offsets from, for kernels that keep it elsewhere
    #[arg(long, value_name = "PATH", env = "SPAWNER_SIDECAR_KERNEL_BTF", default_value = crate::source::ebpf::kernel_btf::VMLINUX_BTF)]
    pub kernel_btf: PathBuf,

    /// Leave connections from this CIDR out of every count and of activity; repeat the flag or separate with commas, at most 256
    #[arg(
        long,
        value_name = "CIDR",
        env = "SPAWNER_SIDECAR_IGNORE_PEER",
        value_delimiter = ','
    )]
    pub ignore_peer: Vec<PeerNet>,
}

impl WatchArgs {
    /// What a source needs; the daemon adds what only it uses.
    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            ports: self.monitor_port.clone(),
            all_ports: false,
            kernel_btf: self.kernel_btf.clone(),
            peers: PeerFilter::new(self.ignore_peer.clone()),
            activity_min_age: Duration::ZERO,
            max_tracked_connections: DEFAULT_MAX_SOCKETS,
            excluded_ports: Vec::new(),
        }
    }

    /// Rules between values that clap's own checks miss.
    pub fn check(&self) -> Result<(), clap::Error> {
        if self.ignore_peer.len() > MAX_IGNORED_PEERS as usize {
            return Err(clap::Error::raw(
                ErrorKind::TooManyValues,
                format!(
                    "--ignore-peer: {} networks, at most {MAX_IGNORED_PEERS}\n",
                    self.ignore_peer.len()
                ),
            ));
        }
        Ok(())
    }
}

/// How to follow, serve and judge: the daemon's flags that node mode
/// shares.
#[derive(Debug, Clone, clap::Args)]
pub struct TrackArgs {
    /// Also follow every port that has a LISTEN socket in this network namespace (node mode: in every one)
    #[arg(long, env = "SPAWNER_SIDECAR_ALL_PORTS")]
    pub all_ports: bool,

    /// Tick for polling sources, logs and actions, in seconds (1-86400)
    #[arg(long, value_name = "SECS", env = "SPAWNER_SIDECAR_REFRESH_RATE_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub refresh_rate_seconds: u64,

    /// HTTP port for the JSON API (0 picks a free port and logs it)
    #[arg(
        long,
        value_name = "PORT",
        env = "SPAWNER_SIDECAR_SERVE_PORT",
        default_value_t = 7070
    )]
    pub serve_port: u16,

    /// Address the HTTP API listens on
    #[arg(
        long,
        value_name = "ADDR",
        env = "SPAWNER_SIDECAR_SERVE_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub serve_address: IpAddr,

    /// Connections established at least this long count as long-lived in /metrics
    #[arg(long, value_name = "DURATION", env = "SPAWNER_SIDECAR_MIN_CONNECTION_AGE", default_value = "6s",
          value_parser = parse_duration)]
    pub min_connection_age: Duration,

    /// Connections that close younger than this are not activity (probes, health checks)
    #[arg(long, value_name = "DURATION", env = "SPAWNER_SIDECAR_ACTIVITY_MIN_AGE", default_value = "0s",
          value_parser = parse_duration)]
    pub activity_min_age: Duration,

    /// Capacity of the eBPF source's per-connection map (connection ages), 1-1048576
    #[arg(long, value_name = "N", env = "SPAWNER_SIDECAR_MAX_TRACKED_CONNECTIONS",
          default_value_t = DEFAULT_MAX_SOCKETS,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_tracked_connections: u32,
}

impl TrackArgs {
    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_rate_seconds)
    }

    /// The source options of `watch` with these settings.
    pub fn source_options(&self, watch: &WatchArgs) -> SourceOptions {
        SourceOptions {
            all_ports: self.all_ports,
            activity_min_age: self.activity_min_age,
            max_tracked_connections: self.max_tracked_connections,
            ..watch.source_options()
        }
    }
}

/// The daemon's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub watch: WatchArgs,

    #[command(flatten)]
    pub track: TrackArgs,

    /// Run --on-idle once the ports have been idle this long
    #[arg(long, value_name = "DURATION", env = "SPAWNER_SIDECAR_IDLE_AFTER", value_parser = parse_duration)]
    pub idle_after: Option<Duration>,

    /// Shell command run (via /bin/sh -c) when idle for --idle-after
    #[arg(
        long,
        value_name = "CMD",
        env = "SPAWNER_SIDECAR_ON_IDLE",
        requires = "idle_after"
    )]
    pub on_idle: Option<String>,

    /// Shell command run at the first activity after --on-idle ran
    #[arg(
        long,
        value_name = "CMD",
        env = "SPAWNER_SIDECAR_ON_ACTIVE",
        requires = "idle_after"
    )]
    pub on_active: Option<String>,

    /// A hook still running after this long is killed and counted as failed
    #[arg(long, value_name = "DURATION", env = "SPAWNER_SIDECAR_HOOK_TIMEOUT", default_value = "60s",
          value_parser = parse_duration)]
    pub hook_timeout: Duration,

    /// Read settings from this TOML file (keys: flag names with underscores)
    #[arg(long, value_name = "FILE", env = "SPAWNER_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
}

impl Config {
    /// Rules between flags that clap's own checks miss for values that come
    /// from the config file (it sees those as defaults).
    pub fn check(&self) -> Result<(), clap::Error> {
        let fail = |kind, message: String| Err(clap::Error::raw(kind, format!("{message}\n")));
        if self.idle_after.is_none() && (self.on_idle.is_some() || self.on_active.is_some()) {
            return fail(
                ErrorKind::MissingRequiredArgument,
                "--on-idle and --on-active need --idle-after (config key idle_after)".into(),
            );
        }
        self.watch.check()
    }

    pub fn refresh(&self) -> Duration {
        self.track.refresh()
    }

    pub fn source_options(&self) -> SourceOptions {
        self.track.source_options(&self.watch)
    }
}
