//! The command line: the daemon's flags at the top level, or a subcommand.
//!
//! Every flag can also be set as `SPAWNER_SIDECAR_<FLAG>`, or in the TOML
//! file named by `--config`, under the flag's name with underscores.
//! Precedence: flags > environment > file > defaults. Parsing only; `main`
//! dispatches.
mod file;

use std::{ffi::OsString, path::PathBuf};

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::{config::Config, drain::WaitIdleArgs, heartbeat, node, proxy};

/// Without a subcommand, runs the connection tracker with [`Config`].
#[derive(clap::Parser)]
#[command(
    name = "spawner-sidecar",
    version,
    about = "Tracks TCP connections on a port and answers over HTTP whether the pod can be stopped",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Wait until the ports have had no connection for a while (for preStop hooks)
    WaitIdle(WaitIdleArgs),
    /// Check that the things this pod depends on answer (TCP, HTTP, HTTPS)
    Heartbeat(heartbeat::Args),
    /// Hold listeners for services started on the first connection, stopped when idle (ynetd)
    Proxy(Box<proxy::Args>),
    /// Follow every network namespace of the host with one kernel program, per pod (DaemonSet)
    Node(Box<node::Args>),
}

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
    if let Some(("proxy", proxy_matches)) = matches.subcommand() {
        return proxy_with_files(command, proxy_matches, &args);
    }
    // Node mode takes the same file, for its own flags.
    let node_file = match matches.subcommand() {
        Some(("node", sub)) => sub.get_one::<PathBuf>("config").cloned(),
        _ => None,
    };
    let (file, matches, file_keys) =
        match (matches.subcommand(), matches.get_one::<PathBuf>("config")) {
            (None, Some(file)) => {
                let (command, keys) = file::with_file_defaults(command, file)?;
                (
                    Some(file.clone()),
                    command.try_get_matches_from(&args)?,
                    keys,
                )
            }
            _ => match node_file {
                Some(file) => {
                    let node = command
                        .find_subcommand("node")
                        .cloned()
                        .unwrap_or_else(|| clap::Command::new("node"));
                    let (node, keys) = file::with_file_defaults(node, &file)?;
                    let command = command.mut_subcommand("node", |_| node);
                    (Some(file), command.try_get_matches_from(&args)?, keys)
                }
                None => (None, matches, Vec::new()),
            },
        };
    let mut cli = Cli::from_arg_matches(&matches)?;
    // `--all-ports` alone means no fixed port, not the default 8080 as well.
    let port_given = |m: &clap::ArgMatches| {
        m.value_source("monitor_port") != Some(clap::parser::ValueSource::DefaultValue)
            || file_keys.iter().any(|k| k == "monitor_port")
    };
    if cli.daemon.track.all_ports && !port_given(&matches) {
        cli.daemon.watch.monitor_port.clear();
    }
    if let (Some(Command::Node(node)), Some(("node", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        if node.track.all_ports && !port_given(sub) {
            node.watch.monitor_port.clear();
        }
        node.watch.check()?;
    }
    cli.daemon.check()?;
    if let Some(file) = file {
        tracing::debug!(file = %file.display(), keys = ?file_keys, "config file read");
    }
    Ok(cli)
}

/// The proxy's `-config` names ynetd's YAML file of services, or (a file
/// named `*.toml`) our layer of the proxy's flags, as `--config` is the
/// daemon's; several TOML files layer in the order given.
fn proxy_with_files(
    mut command: clap::Command,
    matches: &clap::ArgMatches,
    args: &[OsString],
) -> Result<Cli, clap::Error> {
    let files: Vec<&PathBuf> = matches
        .get_many::<PathBuf>("config")
        .into_iter()
        .flatten()
        .filter(|f| proxy::is_toml(f))
        .collect();
    if !files.is_empty()
        && let Some(mut layered) = command.find_subcommand("proxy").cloned()
    {
        for file in files {
            layered = file::with_file_defaults(layered, file)?.0;
        }
        command = command.mut_subcommand("proxy", |_| layered);
    }
    Cli::from_arg_matches(&command.try_get_matches_from(args)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::error::ErrorKind;

    use super::*;
    use crate::source::SourceChoice;

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
            (
                c.watch.monitor_port,
                c.track.refresh_rate_seconds,
                c.track.serve_port
            ),
            (vec![8080], 10, 7070)
        );
        assert_eq!(c.track.serve_address.to_string(), "0.0.0.0");
        assert_eq!(c.watch.source, SourceChoice::Auto);
        assert_eq!(c.track.min_connection_age, Duration::from_secs(6));
        assert_eq!(c.track.activity_min_age, Duration::ZERO);
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
        assert!(c.track.all_ports);
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
