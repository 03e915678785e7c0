//! spawner-sidecar: wiring and graceful shutdown only.
//!
//! Modules, lowest first; each imports only modules above it in this list
//! (a test keeps it so): `capabilities`, `clock`, `lock`, `cgroup`, `coalesce`,
//! `duration`, `runtime`, `serve`;
//! `source` (kernel -> readings); `activity` and `status` (readings ->
//! idle time and the contract's JSON); `app` (a source with its activity);
//! `metrics`; `drain`, `hooks` (actions on an app); `http` (routes);
//! `heartbeat`, `proxy`, `node` (modes of their own); `config`, `cli`
//! (parsing).
mod activity;
mod app;
mod capabilities;
mod cgroup;
mod cli;
mod clock;
mod coalesce;
mod config;
mod drain;
mod duration;
mod heartbeat;
mod hooks;
mod http;
#[cfg(test)]
mod layers;
mod lock;
mod malloc;
mod metrics;
mod node;
mod proxy;
mod runtime;
mod serve;
mod source;
mod status;

use std::{future::Future, io::IsTerminal as _, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use tracing::{debug, info, warn};

use crate::{
    activity::Activity, app::App, cli::Command, clock::boottime_ns, config::Config,
    runtime::Threads, source::SourceOptions, status::port_list,
};

fn main() -> ExitCode {
    malloc::tune();
    capabilities::raise_permitted();
    let cli = match cli::parse(proxy::normalise(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // wait-idle prints one result line; its start-up details are noise in
    // a preStop hook's output unless asked for.
    let default_level = match cli.command {
        Some(Command::WaitIdle(_)) => "warn",
        Some(Command::Heartbeat(_) | Command::Proxy(_) | Command::Node(_)) | None => "info",
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
        Some(Command::Proxy(args)) => return proxy::main(*args),
        Some(Command::Node(args)) => return node::main(*args),
        None => cli.daemon,
    };
    runtime::run_to_exit(Threads::PerCore, |shutdown| run(config, shutdown))
}

async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let started_ns = boottime_ns();
    // Bind before loading anything: a busy port is the commonest mistake,
    // and it should fail fast and leave nothing attached.
    let address = std::net::SocketAddr::new(config.track.serve_address, config.track.serve_port);
    let listener = serve::listen(address).with_context(|| format!("cannot listen on {address}"))?;

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
        Activity::new(started_ns, config.track.activity_min_age),
        config.track.min_connection_age,
    ));
    let ticker = tokio::spawn(tick(app.clone(), config.refresh()));
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
        monitor_port = %port_list(config.watch.monitor_port.iter().copied()),
        all_ports = config.track.all_ports,
        source = %source.kind(),
        "serving"
    );
    serve::serve(listener, http::router(app), shutdown)
        .await
        .context("HTTP server failed")?;
    ticker.abort();
    if let Some(hooks) = hooks {
        hooks.abort();
        // Until the task is dropped, a hook still running keeps its process
        // group: awaiting the cancelled task runs its GroupKill now, not
        // never (the runtime is shut down without waiting for tasks).
        let _ = hooks.await;
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
        app.refresh("tick").await;
        match app.observe().await {
            Ok(observed) => debug!(reading = ?observed.reading, idle = ?observed.idle, "tick"),
            Err(e) => warn!("tick: {e}"),
        }
    }
}
