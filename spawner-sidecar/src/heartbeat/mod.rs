//! `spawner-sidecar heartbeat`: checks that the things this pod depends on
//! answer (TCP connect, HTTP or HTTPS status), every interval. Without
//! `--server` it exits 1 once a target has failed `retries + 1` checks in a
//! row; with `--server` it keeps checking and answers `GET /` with 200 or
//! 503 for a readiness probe. It does not restart or notify anything.
pub mod check;
mod server;
mod state;
pub mod target;
mod tls;

use std::{fmt, future::Future, net::IpAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tracing::{debug, info, warn};

use self::{
    check::Checker,
    state::{Board, Change},
    target::{Scheme, Target},
    tls::CaFile,
};
use crate::{
    duration::parse_duration,
    runtime::{self, Threads},
};

/// Longest accepted timeout and interval: longer ones are typos, and this
/// keeps every deadline far from `Instant` overflow.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Flags of `spawner-sidecar heartbeat`; each can also be set as
/// `SPAWNER_SIDECAR_HEARTBEAT_<FLAG>`, and a flag wins over its variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Dependency to check: tcp://host:port, http://host[:port]/path or
    /// https://host[:port]/path; repeat the flag or separate with commas
    #[arg(
        short = 'c',
        long = "connect",
        value_name = "URI",
        required = true,
        value_delimiter = ',',
        env = "SPAWNER_SIDECAR_HEARTBEAT_CONNECT"
    )]
    pub connect: Vec<Target>,

    /// Limit for one check, end to end: DNS, connect, TLS and response headers
    #[arg(short, long, value_name = "DURATION", default_value = "1s",
          value_parser = parse_positive_duration, env = "SPAWNER_SIDECAR_HEARTBEAT_TIMEOUT")]
    pub timeout: Duration,

    /// Time between the starts of two checks of a target (500ms, 5s, 1m, or seconds)
    #[arg(short, long, value_name = "DURATION", default_value = "5s",
          value_parser = parse_positive_duration, env = "SPAWNER_SIDECAR_HEARTBEAT_INTERVAL")]
    pub interval: Duration,

    /// Failed checks in a row tolerated; a target fails at retries + 1
    #[arg(
        short,
        long,
        value_name = "N",
        default_value_t = 3,
        env = "SPAWNER_SIDECAR_HEARTBEAT_RETRIES"
    )]
    pub retries: u32,

    /// Keep checking and answer GET / with 200 while all targets are healthy, 503 otherwise
    #[arg(short, long, env = "SPAWNER_SIDECAR_HEARTBEAT_SERVER")]
    pub server: bool,

    /// Port of the --server endpoint (0 picks a free port and logs it)
    #[arg(
        short,
        long,
        default_value_t = 9999,
        env = "SPAWNER_SIDECAR_HEARTBEAT_PORT"
    )]
    pub port: u16,

    /// Address the --server endpoint listens on
    #[arg(
        long,
        default_value = "0.0.0.0",
        env = "SPAWNER_SIDECAR_HEARTBEAT_ADDRESS"
    )]
    pub address: IpAddr,

    /// PEM file of CA certificates trusted for https:// besides the system's
    #[arg(long, value_name = "PATH", value_parser = CaFile::load,
          env = "SPAWNER_SIDECAR_HEARTBEAT_CA_FILE")]
    pub ca_file: Option<CaFile>,
}

/// [`parse_duration`], more than zero and at most a day.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!(
            "`{}` is zero: it must be more than zero",
            text.trim()
        ));
    }
    if duration > MAX_DURATION {
        return Err(format!("`{}` is more than the maximum, 1 day", text.trim()));
    }
    Ok(duration)
}

/// A target that reached `retries + 1` consecutive failures.
#[derive(Debug)]
struct Failure {
    uri: String,
    failures: u32,
    error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.failures == 1 { "" } else { "s" };
        write!(
            f,
            "{} failed {} consecutive check{s}: {}",
            self.uri, self.failures, self.error
        )
    }
}

/// How a run ended.
enum Outcome {
    /// SIGTERM or SIGINT.
    Stopped,
    /// A target failed (never with `--server`).
    Failed(Failure),
}

/// Runs the subcommand on its own runtime; the exit code is the result.
pub fn main(args: Args) -> ExitCode {
    // One thread is plenty for a few checks and a probe endpoint; name
    // lookups run on tokio's blocking pool.
    let runtime = match runtime::build(Threads::One) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let shutdown = runtime::shutdown_signal(&runtime);
    let result = runtime.block_on(run(args, shutdown));
    // Do not wait for a lookup still stuck in getaddrinfo.
    runtime.shutdown_background();
    match result {
        Ok(Outcome::Stopped) => {
            info!("shut down");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Failed(failure)) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Outcome> {
    let tls = if args.connect.iter().any(|t| t.scheme == Scheme::Https) {
        Some(tls::connector(args.ca_file.as_ref()).context("TLS configuration")?)
    } else {
        None
    };
    let checker = Arc::new(Checker::new(args.timeout, tls));
    let board = Board::new(&args.connect, args.retries);
    // Bind before checking: a busy port should fail fast.
    let listener = if args.server {
        let address = std::net::SocketAddr::from((args.address, args.port));
        let listener =
            crate::serve::listen(address).with_context(|| format!("cannot listen on {address}"))?;
        Some(listener)
    } else {
        None
    };

    let (failed_tx, mut failed_rx) = mpsc::channel(args.connect.len().max(1));
    let mut tasks = JoinSet::new();
    for (index, target) in args.connect.iter().enumerate() {
        tasks.spawn(watch(
            index,
            target.clone(),
            checker.clone(),
            board.clone(),
            args.interval,
            // Only without --server does a failure end the run.
            listener.is_none().then(|| failed_tx.clone()),
        ));
    }
    drop(failed_tx);

    let targets: Vec<&str> = args.connect.iter().map(Target::uri).collect();
    let interval = humantime::format_duration(args.interval);
    let timeout = humantime::format_duration(args.timeout);
    let outcome = match listener {
        Some(listener) => {
            info!(
                address = %listener.local_addr().context("reading the bound address")?,
                targets = %targets.join(","),
                %interval,
                %timeout,
                retries = args.retries,
                "serving"
            );
            server::serve(listener, board, shutdown)
                .await
                .context("HTTP server failed")?;
            Outcome::Stopped
        }
        None => {
            info!(targets = %targets.join(","), %interval, %timeout, retries = args.retries, "checking");
            tokio::select! {
                () = shutdown => Outcome::Stopped,
                Some(failure) = failed_rx.recv() => Outcome::Failed(failure),
            }
        }
    };
    tasks.abort_all();
    Ok(outcome)
}

/// Checks one target every `interval` (measured from the start of each
/// check; a check never overlaps the previous one) and records the result.
async fn watch(
    index: usize,
    target: Target,
    checker: Arc<Checker>,
    board: Board,
    interval: Duration,
    failed: Option<mpsc::Sender<Failure>>,
) {
    loop {
        let started = Instant::now();
        let result = checker.check(&target).await.map_err(|e| e.to_string());
        let latency = started.elapsed();
        let (change, failures) =
            board.record(index, result.clone(), latency, std::time::Instant::now());
        let latency_ms = state::round3(latency.as_secs_f64() * 1000.0);
        match &result {
            Ok(()) => match change {
                Change::Healthy => info!(uri = %target, latency_ms, "target healthy"),
                Change::Recovered => info!(uri = %target, latency_ms, "target recovered"),
                _ => debug!(uri = %target, latency_ms, "check passed"),
            },
            Err(error) => {
                warn!(uri = %target, %error, consecutive_failures = failures, latency_ms, "check failed");
                if change == Change::Failing {
                    match &failed {
                        Some(tx) => {
                            let failure = Failure {
                                uri: target.uri().to_string(),
                                failures,
                                error: error.clone(),
                            };
                            // The receiver ends the run; nothing left to do.
                            let _ = tx.send(failure).await;
                            return;
                        }
                        None => {
                            warn!(uri = %target, consecutive_failures = failures, "target failing")
                        }
                    }
                }
            }
        }
        match started.checked_add(interval) {
            Some(next) => tokio::time::sleep_until(next).await,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let argv = ["spawner-sidecar", "heartbeat"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Some(Command::Heartbeat(args)) => Ok(args),
            other => panic!("heartbeat not parsed: {}", other.is_some()),
        }
    }

    #[test]
    fn defaults_are_pod_heartbeats() {
        let a = parse(&["-c", "tcp://db:5432"]).expect("defaults");
        assert_eq!(
            (a.timeout, a.interval, a.retries, a.server, a.port),
            (
                Duration::from_secs(1),
                Duration::from_secs(5),
                3,
                false,
                9999
            )
        );
        assert_eq!(a.address.to_string(), "0.0.0.0");
        assert!(a.ca_file.is_none());
    }

    #[test]
    fn connect_repeats_and_splits_on_commas() {
        let a = parse(&[
            "-c",
            "tcp://a:1,http://b/x",
            "--connect",
            "https://c",
            "-t",
            "250ms",
            "-i",
            "2",
            "-r",
            "0",
            "-s",
            "-p",
            "0",
        ])
        .expect("flags");
        let uris: Vec<&str> = a.connect.iter().map(Target::uri).collect();
        assert_eq!(uris, ["tcp://a:1", "http://b/x", "https://c"]);
        assert_eq!(
            (a.timeout, a.interval, a.retries, a.server, a.port),
            (
                Duration::from_millis(250),
                Duration::from_secs(2),
                0,
                true,
                0
            )
        );
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for args in [
            &[][..],
            &["-c", "ftp://h:21"],
            &["-c", "tcp://h"],
            &["-c", "tcp://h:1", "-t", "soon"],
            &["-c", "tcp://h:1", "-t", "0s"],
            &["-c", "tcp://h:1", "-i", "0"],
            &["-c", "tcp://h:1", "-i", "2d"],
            &["-c", "tcp://h:1", "-r", "-1"],
            &["-c", "tcp://h:1", "-p", "65536"],
            &["-c", "tcp://h:1", "--address", "everywhere"],
            &["-c", "tcp://h:1", "--ca-file", "/nonexistent/ca.pem"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?}"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn daemon_flags_do_not_mix_with_the_subcommand() {
        let argv = [
            "spawner-sidecar",
            "--monitor-port",
            "1",
            "heartbeat",
            "-c",
            "tcp://h:1",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn failure_line_names_target_count_and_error() {
        let failure = Failure {
            uri: "tcp://db:5432".into(),
            failures: 4,
            error: "connecting to 10.0.0.1:5432: Connection refused (os error 111)".into(),
        };
        assert_eq!(
            failure.to_string(),
            "tcp://db:5432 failed 4 consecutive checks: connecting to 10.0.0.1:5432: Connection refused (os error 111)"
        );
    }
}
