//! spawner-sidecar: wiring and graceful shutdown only.
mod activity;
mod cli;
mod config;
mod duration;
mod heartbeat;
mod http;
mod kernel_btf;
mod source;

use std::{future::Future, io::IsTerminal as _, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;
use tracing::{debug, info, warn};

use crate::{
    activity::{Activity, boottime_ns},
    config::Config,
    http::AppState,
};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match cli.command {
        Some(cli::Command::Heartbeat(args)) => return heartbeat::main(args),
        None => cli.daemon,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let started_ns = boottime_ns();
    // Bind before loading anything: a busy port is the commonest mistake,
    // and it should fail fast and leave nothing attached.
    let address = (config.serve_address, config.serve_port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{}",
                config.serve_address, config.serve_port
            )
        })?;

    let (choice, options) = (config.source, config.source_options());
    let source = tokio::task::spawn_blocking(move || source::open(choice, &options))
        .await
        .context("source start-up task failed")??;
    let state = AppState {
        source: source.clone(),
        activity: Arc::new(Activity::new(started_ns)),
    };
    let ticker = tokio::spawn(tick(state.clone(), config.refresh()));

    info!(
        address = %listener.local_addr().context("reading the bound address")?,
        monitor_port = config.monitor_port,
        source = %source.kind(),
        "serving"
    );
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
    ticker.abort();
    drop(source);
    info!("shut down");
    Ok(())
}

/// Once per refresh: snapshots and reconcile for the sources that need
/// them, and an activity reading, so polling sources notice activity even
/// when nobody asks.
async fn tick(state: AppState, every: std::time::Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let source = state.source.clone();
        let result = tokio::task::spawn_blocking(move || {
            source.refresh()?;
            source.read()
        })
        .await;
        match result {
            Ok(Ok(reading)) => {
                let idle = state.activity.observe(&reading, boottime_ns());
                debug!(?reading, ?idle, "tick");
            }
            Ok(Err(e)) => warn!("tick: {e}"),
            Err(e) => warn!("tick task failed: {e}"),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
