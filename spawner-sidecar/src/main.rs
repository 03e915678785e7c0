//! spawner-sidecar: wiring and graceful shutdown only.
mod activity;
mod cli;
mod config;
mod drain;
mod duration;
mod heartbeat;
mod hooks;
mod http;
mod kernel_btf;
mod lock;
mod malloc;
mod metrics;
mod source;
mod status;

use std::{future::Future, io::IsTerminal as _, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use tracing::{debug, info, warn};

use crate::{
    activity::{Activity, boottime_ns},
    cli::Command,
    config::Config,
    http::App,
    source::SourceOptions,
};

fn main() -> ExitCode {
    malloc::tune();
    let cli = match config::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // wait-idle prints one result line; its start-up details are noise in
    // a preStop hook's output unless asked for.
    let default_level = match cli.command {
        Some(Command::WaitIdle(_)) => "warn",
        Some(Command::Heartbeat(_)) | None => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match cli.command {
        Some(Command::WaitIdle(args)) => return drain::wait_idle(args),
        Some(Command::Heartbeat(args)) => return heartbeat::main(args),
        None => cli.daemon,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime's context: tokio's signal handling needs its driver.
    let shutdown = {
        let _context = runtime.enter();
        shutdown_signal()
    };
    match runtime.block_on(run(config, shutdown)) {
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

    let serve_port = listener
        .local_addr()
        .context("reading the bound address")?
        .port();
    let options = SourceOptions {
        excluded_ports: vec![serve_port],
        ..config.source_options()
    };
    let choice = config.watch.source;
    let source = tokio::task::spawn_blocking(move || source::open(choice, &options))
        .await
        .context("source start-up task failed")??;
    let app = Arc::new(App::new(
        source.clone(),
        Activity::new(started_ns, config.activity_min_age),
        config.min_connection_age,
    ));
    let ticker = tokio::spawn(tick(app.clone(), config.refresh()));
    let ports = hooks::port_list(config.watch.monitor_port.iter().copied());
    let hooks = config.idle_after.map(|idle_after| {
        tokio::spawn(hooks::run(
            app.clone(),
            hooks::Hooks {
                idle_after,
                on_idle: config.on_idle.clone(),
                on_active: config.on_active.clone(),
                timeout: config.hook_timeout,
            },
            config.refresh(),
        ))
    });

    info!(
        address = %listener.local_addr().context("reading the bound address")?,
        monitor_port = %ports,
        all_ports = config.all_ports,
        source = %source.kind(),
        "serving"
    );
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
    ticker.abort();
    if let Some(hooks) = hooks {
        hooks.abort();
    }
    drop(source);
    info!("shut down");
    Ok(())
}

/// Once per refresh: snapshots and reconcile for the sources that need
/// them, and an activity reading, so polling sources notice activity even
/// when nobody asks.
async fn tick(app: Arc<App>, every: std::time::Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let source = app.source.clone();
        let refreshed = tokio::task::spawn_blocking(move || source.refresh()).await;
        match refreshed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("tick: {e}"),
            Err(e) => warn!("tick task failed: {e}"),
        }
        match app.read(app.activity.detail()).await {
            Ok(reading) => {
                let idle = app.activity.observe(&reading, boottime_ns());
                debug!(?reading, ?idle, "tick");
            }
            Err(e) => warn!("tick: {e}"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before
/// anything is served: a signal that arrives while the source loads then
/// stops the daemon cleanly instead of killing it.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            },
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot listen for SIGTERM/SIGINT ({e}); stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
