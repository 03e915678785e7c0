//! The flags of `spawner-sidecar proxy`, spelled as ynetd spells them.
//!
//! ynetd uses Go's `flag` package, where long flags take one dash
//! (`-proxy`, `-stop-after`). clap reads `-proxy` as `-p roxy`, so
//! [`normalise`] rewrites a single-dash long flag that names one of ours to
//! its double-dash form before clap sees the arguments. Everything after the
//! first word that is not a flag (the command) is left untouched.
use std::{ffi::OsString, net::IpAddr, path::PathBuf, time::Duration};

use clap::Args as _;

use super::{
    signal::Signal,
    spec::{CheckUrl, IdleAction, parse_check_url},
};
use crate::{
    duration::parse_duration,
    source::{SourceChoice, ebpf::kernel_btf::VMLINUX_BTF, peers::PeerNet},
};

/// Flags of `spawner-sidecar proxy`; each can also be set as
/// `SPAWNER_SIDECAR_PROXY_<FLAG>`, and a flag wins over its variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address pairs to listen on and forward to: "LISTEN TARGET [LISTEN TARGET ...]"; repeatable
    #[arg(
        short = 'p',
        long,
        value_name = "PAIRS",
        env = "SPAWNER_SIDECAR_PROXY_PROXY"
    )]
    pub proxy: Vec<String>,

    /// Separator of the addresses in --proxy
    #[arg(
        long,
        visible_alias = "ps",
        value_name = "SEP",
        default_value = " ",
        env = "SPAWNER_SIDECAR_PROXY_PROXY_SEP"
    )]
    pub proxy_sep: String,

    /// Start the command at once instead of at the first connection
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          env = "SPAWNER_SIDECAR_PROXY_AUTO_START")]
    pub auto_start: bool,

    /// Stop the command after this long without a connection (0: never)
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration,
          env = "SPAWNER_SIDECAR_PROXY_STOP_AFTER")]
    pub stop_after: Duration,

    /// Signal sent to the command's process group to stop it
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", value_parser = Signal::parse,
          env = "SPAWNER_SIDECAR_PROXY_STOP_SIGNAL")]
    pub stop_signal: Signal,

    /// SIGKILL the command's process group when it is still running this long after the stop signal
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration,
          env = "SPAWNER_SIDECAR_PROXY_STOP_TIMEOUT")]
    pub stop_timeout: Duration,

    /// Close a client still waiting for the service after this long
    #[arg(short = 't', long, value_name = "DURATION", default_value = "5m",
          value_parser = parse_duration, env = "SPAWNER_SIDECAR_PROXY_TIMEOUT")]
    pub timeout: Duration,

    /// After the target accepts connections, wait this long more before forwarding
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration,
          env = "SPAWNER_SIDECAR_PROXY_WAIT_AFTER_START")]
    pub wait_after_start: Duration,

    /// Keep the service up at least this long after each start, however idle
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration,
          env = "SPAWNER_SIDECAR_PROXY_MIN_ONLINE")]
    pub min_online: Duration,

    /// Only clients from these networks (CIDR or address) are served; repeatable
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        env = "SPAWNER_SIDECAR_PROXY_ALLOW"
    )]
    pub allow: Vec<PeerNet>,

    /// Clients from these networks are closed at once and wake nothing; repeatable
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        env = "SPAWNER_SIDECAR_PROXY_DENY"
    )]
    pub deny: Vec<PeerNet>,

    /// Start a stopped service only once the client has sent its first byte (probes wake nothing)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          env = "SPAWNER_SIDECAR_PROXY_WAKE_ON_DATA")]
    pub wake_on_data: bool,

    /// What an idle service gets after --stop-after: stop, or freeze (SIGSTOP; SIGCONT on the next client)
    #[arg(long, value_name = "ACTION", value_enum, default_value_t = IdleAction::Stop,
          env = "SPAWNER_SIDECAR_PROXY_IDLE_ACTION")]
    pub idle_action: IdleAction,

    /// Instead of a command: shell command that starts the backend elsewhere (hibergate)
    #[arg(
        long,
        value_name = "SHELL",
        env = "SPAWNER_SIDECAR_PROXY_START_COMMAND"
    )]
    pub start_command: Option<String>,

    /// With --start-command: shell command that stops the backend when idle
    #[arg(long, value_name = "SHELL", env = "SPAWNER_SIDECAR_PROXY_STOP_COMMAND")]
    pub stop_command: Option<String>,

    /// Readiness also needs this http:// URL to answer 200-399 (after the target accepts)
    #[arg(long, value_name = "URL", value_parser = parse_check_url,
          env = "SPAWNER_SIDECAR_PROXY_CHECK_URL")]
    pub check_url: Option<CheckUrl>,

    /// On SIGTERM, let established connections finish for up to this long
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration,
          env = "SPAWNER_SIDECAR_PROXY_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Duration,

    /// Where the tracker sees the pod's own connections to a target's port (and, on eBPF, readiness a target's listener); auto picks the best that works here
    #[arg(long, value_name = "SOURCE", value_enum, default_value_t = SourceChoice::Auto,
          env = "SPAWNER_SIDECAR_PROXY_SOURCE")]
    pub source: SourceChoice,

    /// Kernel BTF to take struct offsets from, for kernels that keep it elsewhere
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF,
          env = "SPAWNER_SIDECAR_PROXY_KERNEL_BTF")]
    pub kernel_btf: PathBuf,

    /// Connections from this CIDR to a target's port do not keep its service up; repeatable or comma-separated, at most 255
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        env = "SPAWNER_SIDECAR_PROXY_IGNORE_PEER"
    )]
    pub ignore_peer: Vec<PeerNet>,

    /// Connections to a target's port that close younger than this do not keep its service up (probes)
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration,
          env = "SPAWNER_SIDECAR_PROXY_ACTIVITY_MIN_AGE")]
    pub activity_min_age: Duration,

    /// ynetd's YAML file of services, or (named *.toml) our TOML file of these flags; repeatable
    #[arg(
        short = 'c',
        long,
        value_name = "FILE",
        env = "SPAWNER_SIDECAR_PROXY_CONFIG"
    )]
    pub config: Vec<PathBuf>,

    /// HTTP port for the status page and /metrics (none unless given; 0 picks a free port)
    #[arg(long, value_name = "PORT", env = "SPAWNER_SIDECAR_PROXY_SERVE_PORT")]
    pub serve_port: Option<u16>,

    /// Address the HTTP status page listens on
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0",
        env = "SPAWNER_SIDECAR_PROXY_SERVE_ADDRESS"
    )]
    pub serve_address: IpAddr,

    /// The command to run and its arguments (after the flags, or after --)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// Whether `-config FILE` names our TOML file of flags (by its extension)
/// rather than ynetd's YAML file of services.
pub fn is_toml(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// Names (without dashes) of the long flags and aliases of [`Args`] that
/// take a value; `None` when `name` is not one of ours.
fn takes_value(name: &str) -> Option<bool> {
    let command = Args::augment_args(clap::Command::new("proxy"));
    command
        .get_arguments()
        .find(|a| {
            a.get_long() == Some(name)
                || a.get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&name))
        })
        .map(|a| {
            // Booleans take a value only as `-flag=value`, as in Go.
            // (`get_num_args` is unset until clap builds the command.)
            !a.is_require_equals_set() && a.get_action().takes_values()
        })
}

/// Rewrites ynetd's `-flag` and `-flag=value` to `--flag` for the `proxy`
/// subcommand (the argument after the program name); other command lines
/// are returned as they are.
pub fn normalise(mut args: Vec<OsString>) -> Vec<OsString> {
    if args.get(1).is_none_or(|a| a != "proxy") {
        return args;
    }
    let mut i = 2;
    while i < args.len() {
        let Some(word) = args[i].to_str() else { break };
        if word == "--" || !word.starts_with('-') || word == "-" {
            // The command starts here: its arguments are its own.
            break;
        }
        let long = word.strip_prefix("--").or_else(|| {
            word.strip_prefix('-')
                .filter(|rest| rest.len() > 1 || rest.contains('='))
        });
        let Some(body) = long else { break };
        let (name, inline_value) = match body.split_once('=') {
            Some((n, _)) => (n, true),
            None => (body, false),
        };
        match takes_value(name) {
            Some(value) => {
                if !word.starts_with("--") {
                    args[i] = OsString::from(format!("-{word}"));
                }
                i += if value && !inline_value { 2 } else { 1 };
            }
            // A short flag (`-p`, `-t 5s`) or one clap will reject by name.
            None => i += if word.len() == 2 { 2 } else { 1 },
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalise(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash_until_the_command() {
        assert_eq!(
            norm(&[
                "ss",
                "proxy",
                "-proxy",
                ":1 a:2",
                "-auto-start",
                "-stop-after=5s",
                "-ps",
                ",",
                "--timeout",
                "1s",
                "cmd",
                "-proxy",
                "x"
            ]),
            [
                "ss",
                "proxy",
                "--proxy",
                ":1 a:2",
                "--auto-start",
                "--stop-after=5s",
                "--ps",
                ",",
                "--timeout",
                "1s",
                "cmd",
                "-proxy",
                "x"
            ]
        );
    }

    #[test]
    fn a_value_that_looks_like_a_flag_is_left_alone() {
        assert_eq!(
            norm(&[
                "ss",
                "proxy",
                "-stop-signal",
                "-config",
                "-p",
                ":1 a:2",
                "--",
                "-timeout"
            ]),
            [
                "ss",
                "proxy",
                "--stop-signal",
                "-config",
                "-p",
                ":1 a:2",
                "--",
                "-timeout"
            ]
        );
    }

    #[test]
    fn other_subcommands_are_untouched() {
        assert_eq!(
            norm(&["ss", "heartbeat", "-proxy"]),
            ["ss", "heartbeat", "-proxy"]
        );
        assert_eq!(norm(&["ss"]), ["ss"]);
    }
}
