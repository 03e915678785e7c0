//! The command line: the daemon's flags at the top level, or a subcommand.
//! Parsing only; `main` dispatches.

/// Without a subcommand, runs the connection tracker with [`Config`](crate::config::Config).
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
    pub daemon: crate::config::Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Wait until the ports have had no connection for a while (for preStop hooks)
    WaitIdle(crate::drain::WaitIdleArgs),
    /// Check that the things this pod depends on answer (TCP, HTTP, HTTPS)
    Heartbeat(crate::heartbeat::Args),
}
