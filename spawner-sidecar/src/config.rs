//! Command line, environment and config file -> one validated [`Config`].
//!
//! Every flag can also be set as `SPAWNER_SIDECAR_<FLAG>`, or in the TOML
//! file named by `--config`, under the flag's name with underscores.
//! Precedence: flags > environment > file > defaults. The file's values
//! become the flags' defaults and go through the very same value parsers, so
//! a bad value fails the same way a bad flag does, naming the key instead.
use std::{
    ffi::OsString,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{CommandFactory as _, FromArgMatches as _, error::ErrorKind};
use spawner_sidecar_common::{DEFAULT_MAX_SOCKETS, MAX_IGNORED_PEERS};

use crate::{
    cli::Cli,
    duration::parse_duration,
    source::{SourceChoice, SourceOptions, peers::PeerFilter, peers::PeerNet},
};

/// What to watch and how to read it: the daemon's flags that `wait-idle`
/// shares.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// TCP port to watch; repeat the flag or separate ports with commas
    #[arg(long, value_name = "PORT", env = "SPAWNER_SIDECAR_MONITOR_PORT", default_value = "8080",
          value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub monitor_port: Vec<u16>,

    /// Where connection counts come from; auto picks the best that works here
    #[arg(long, value_name = "SOURCE", env = "SPAWNER_SIDECAR_SOURCE", value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,

    /// Kernel BTF to take struct offsets from, for kernels that keep it elsewhere
    #[arg(long, value_name = "PATH", env = "SPAWNER_SIDECAR_KERNEL_BTF", default_value = crate::kernel_btf::VMLINUX_BTF)]
    pub kernel_btf: PathBuf,

    /// Leave connections from this CIDR out of every count and of activity; repeatable
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

/// The daemon's flags; parsed as part of [`crate::cli::Cli`].
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub watch: WatchArgs,

    /// Also follow every port that has a LISTEN socket in this network namespace
    #[arg(long, env = "SPAWNER_SIDECAR_ALL_PORTS")]
    pub all_ports: bool,

    /// tick for polling sources, logs and actions
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

    /// Capacity of the eBPF source's per-connection map (connection ages)
    #[arg(long, value_name = "N", env = "SPAWNER_SIDECAR_MAX_TRACKED_CONNECTIONS",
          default_value_t = DEFAULT_MAX_SOCKETS,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_tracked_connections: u32,

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
    fn check(&self) -> Result<(), clap::Error> {
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
        Duration::from_secs(self.refresh_rate_seconds)
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            all_ports: self.all_ports,
            activity_min_age: self.activity_min_age,
            max_tracked_connections: self.max_tracked_connections,
            ..self.watch.source_options()
        }
    }
}

/// Keys the file may not set: they are not settings of the daemon.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// Parses `args` (program name first) with the file named by `--config` (or
/// its variable) as the layer below the environment.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    // A subcommand comes first (daemon flags conflict with it) and has its
    // own flags: the daemon's variables, set in the same container, must not
    // be read for it, nor fail it when they do not parse.
    if args
        .get(1)
        .is_some_and(|a| command.find_subcommand(a).is_some())
    {
        command = command.mut_args(|a| a.env(None::<&str>));
    }
    let matches = command.clone().try_get_matches_from(&args)?;
    let (file, matches, file_keys) =
        match (matches.subcommand(), matches.get_one::<PathBuf>("config")) {
            (None, Some(file)) => {
                let (command, keys) = with_file_defaults(command, file)?;
                (
                    Some(file.clone()),
                    command.try_get_matches_from(&args)?,
                    keys,
                )
            }
            _ => (None, matches, Vec::new()),
        };
    let mut cli = Cli::from_arg_matches(&matches)?;
    // `--all-ports` alone means no fixed port, not the default 8080 as well.
    let port_given = matches.value_source("monitor_port")
        != Some(clap::parser::ValueSource::DefaultValue)
        || file_keys.iter().any(|k| k == "monitor_port");
    if cli.daemon.all_ports && !port_given {
        cli.daemon.watch.monitor_port.clear();
    }
    cli.daemon.check()?;
    if let Some(file) = file {
        tracing::debug!(file = %file.display(), keys = ?file_keys, "config file read");
    }
    Ok(cli)
}

fn file_error(file: &Path, message: impl std::fmt::Display) -> clap::Error {
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("config file {}: {message}\n", file.display()),
    )
}

/// Runs `value` through `arg`'s own value parser, alone: the real flag may
/// carry an environment variable or relations to other flags.
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let probe = clap::Command::new("config").no_binary_name(true).arg(
        clap::Arg::new("value")
            .long("value")
            .num_args(1)
            .value_parser(arg.get_value_parser().clone()),
    );
    let error = match probe.try_get_matches_from(["--value", value]) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let why = std::error::Error::source(&error)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .map(|p| p.get_name().to_string())
        .collect();
    let possible = if possible.is_empty() {
        String::new()
    } else {
        format!(" (possible values: {})", possible.join(", "))
    };
    Err(format!("invalid value `{value}`{why}{possible}"))
}

/// A TOML value as the strings a flag would take.
fn flag_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `command` with the file's values as defaults, each checked by the flag's
/// own value parser; and the keys the file set.
fn with_file_defaults(
    mut command: clap::Command,
    file: &Path,
) -> Result<(clap::Command, Vec<String>), clap::Error> {
    let text = std::fs::read_to_string(file).map_err(|e| file_error(file, e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        // toml's Display runs to several lines with a caret; say it in one.
        let rendered = e.to_string();
        let place = rendered.lines().next().unwrap_or("TOML parse error");
        file_error(
            file,
            format!("{place}: {}", e.message().trim().replace('\n', "; ")),
        )
    })?;
    let mut keys = Vec::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id().as_str() == key && !NOT_IN_FILE.contains(&key.as_str()))
            .cloned()
            .ok_or_else(|| file_error(file, format!("unknown key `{key}`")))?;
        let values = flag_values(value).ok_or_else(|| {
            file_error(
                file,
                format!("key `{key}`: expected a string, number, boolean or a list of them"),
            )
        })?;
        // "8080,9090" in the file means what it means on the command line.
        let values: Vec<String> = match arg.get_value_delimiter() {
            Some(d) => values
                .iter()
                .flat_map(|v| v.split(d).map(str::to_string))
                .collect(),
            None => values,
        };
        if values.len() != 1 && arg.get_value_delimiter().is_none() {
            return Err(file_error(
                file,
                format!("key `{key}`: takes one value, not a list"),
            ));
        }
        for v in &values {
            check_value(&arg, v).map_err(|why| file_error(file, format!("key `{key}`: {why}")))?;
        }
        command = command.mut_arg(key.as_str(), |a| a.default_values(values.clone()));
        keys.push(key.clone());
    }
    Ok((command, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn daemon(args: &[&str]) -> Result<Config, clap::Error> {
        let argv = std::iter::once("spawner-sidecar")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(argv).map(|cli| cli.daemon)
    }

    #[test]
    fn defaults_match_the_original() {
        let c = daemon(&[]).expect("defaults");
        assert_eq!(
            (c.watch.monitor_port, c.refresh_rate_seconds, c.serve_port),
            (vec![8080], 10, 7070)
        );
        assert_eq!(c.serve_address.to_string(), "0.0.0.0");
        assert_eq!(c.watch.source, SourceChoice::Auto);
        assert_eq!(c.min_connection_age, Duration::from_secs(6));
        assert_eq!(c.activity_min_age, Duration::ZERO);
        assert_eq!(c.hook_timeout, Duration::from_secs(60));
    }

    #[test]
    fn rejects_bad_values_with_clap_errors() {
        for args in [
            &["--monitor-port", "0"][..],
            &["--monitor-port", "65536"],
            &["--monitor-port", "http"],
            &["--monitor-port", "8080,"],
            &["--refresh-rate-seconds", "0"],
            &["--serve-address", "nowhere"],
            &["--source", "magic"],
            &["--min-connection-age", "soon"],
            &["--ignore-peer", "10.0.0.0/33"],
            &["--max-tracked-connections", "0"],
        ] {
            let err = daemon(args).expect_err("must fail");
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::ValueValidation | ErrorKind::InvalidValue
                ),
                "{args:?}"
            );
        }
        let err = daemon(&["--on-idle", "true"]).expect_err("needs --idle-after");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn accepts_every_source_name() {
        for (name, want) in [
            ("auto", SourceChoice::Auto),
            ("ebpf", SourceChoice::Ebpf),
            ("sock-diag", SourceChoice::SockDiag),
            ("proc", SourceChoice::Proc),
        ] {
            assert_eq!(daemon(&["--source", name]).expect(name).watch.source, want);
        }
    }

    #[test]
    fn ports_repeat_or_come_comma_separated() {
        let repeated = daemon(&["--monitor-port", "80", "--monitor-port", "443"]).expect("ok");
        let commas = daemon(&["--monitor-port", "80,443"]).expect("ok");
        assert_eq!(repeated.watch.monitor_port, [80, 443]);
        assert_eq!(commas.watch.monitor_port, [80, 443]);
    }

    #[test]
    fn all_ports_alone_drops_the_default_port_but_keeps_a_given_one() {
        assert!(
            daemon(&["--all-ports"])
                .expect("ok")
                .watch
                .monitor_port
                .is_empty()
        );
        let both = daemon(&["--all-ports", "--monitor-port", "8080"]).expect("ok");
        assert_eq!(both.watch.monitor_port, [8080]);
    }

    #[test]
    fn a_file_sets_defaults_that_flags_override() {
        let dir = std::env::temp_dir().join(format!("spawner-config-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "monitor_port = \"81,82\"\nall_ports = true\nidle_after = 90\non_idle = \"true\"\n",
        )
        .expect("write");
        let path = file.to_str().expect("utf-8");
        let c = daemon(&["--config", path]).expect("ok");
        assert_eq!(
            c.watch.monitor_port,
            [81, 82],
            "a port from the file is given"
        );
        assert!(c.all_ports);
        assert_eq!(c.idle_after, Some(Duration::from_secs(90)));
        let c = daemon(&["--config", path, "--monitor-port", "83"]).expect("ok");
        assert_eq!(c.watch.monitor_port, [83]);
        std::fs::write(&file, "idle_afterr = 1\n").expect("write");
        let err = daemon(&["--config", path]).expect_err("unknown key");
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("unknown key `idle_afterr`"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
