//! `spawner-sidecar node`: one kernel program for the whole host, every
//! network namespace counted apart and attributed to its pod, each pod
//! answered as its own sidecar would answer (the DaemonSet shape).
mod args;
mod http;
mod registry;
mod view;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use tracing::{debug, info};

pub use self::args::Args;
use self::registry::Registry;
use crate::{
    runtime::{self, Threads},
    serve,
    source::{
        SourceChoice, SourceOptions,
        ebpf::{
            load::NodeLimits,
            node::{NodeOptions, NodeSource},
        },
        netns::HostProc,
    },
    status::port_list,
};

pub fn main(args: Args) -> ExitCode {
    runtime::run_to_exit(Threads::PerCore, |shutdown| run(args, shutdown))
}

async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !matches!(args.watch.source, SourceChoice::Auto | SourceChoice::Ebpf) {
        anyhow::bail!(
            "node mode reads every namespace through the kernel program; --source {} is for the per-pod mode",
            clap::ValueEnum::to_possible_value(&args.watch.source)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        );
    }
    let host = Arc::new(HostProc::open(&args.host_proc).context("--host-proc")?);
    let address = std::net::SocketAddr::new(args.track.serve_address, args.track.serve_port);
    let listener = serve::listen(address).with_context(|| format!("cannot listen on {address}"))?;
    let serve_port = listener
        .local_addr()
        .context("reading the bound address")?
        .port();
    let options = NodeOptions {
        source: SourceOptions {
            excluded_ports: vec![serve_port],
            ..args.track.source_options(&args.watch)
        },
        limits: NodeLimits {
            max_namespaces: args.max_namespaces,
            max_ports_per_namespace: args.max_ports_per_namespace,
        },
    };
    let source = {
        let host = host.clone();
        tokio::task::spawn_blocking(move || NodeSource::open(options, host))
            .await
            .context("source start-up task failed")?
            .map_err(|e| {
                anyhow::anyhow!(
                    "node mode needs the kernel program (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to see every namespace: {e}"
                )
            })?
    };
    let registry = Arc::new(Registry::new(
        source.clone(),
        host,
        args.track.activity_min_age,
        args.track.min_connection_age,
    ));
    registry.sync(false);
    let ticker = tokio::spawn(tick(registry.clone(), args.track.refresh()));
    info!(
        address = %listener.local_addr().context("reading the bound address")?,
        monitor_port = %port_list(args.watch.monitor_port.iter().copied()),
        all_ports = args.track.all_ports,
        namespaces = registry.entries().len(),
        source = "ebpf",
        "serving"
    );
    serve::serve(listener, http::router(registry), shutdown)
        .await
        .context("HTTP server failed")?;
    ticker.abort();
    source.stop();
    info!("shut down");
    Ok(())
}

/// Once per refresh: every namespace's round, then every namespace's
/// reading into its activity clock.
async fn tick(registry: Arc<Registry>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let source = registry.source.clone();
        match tokio::task::spawn_blocking(move || source.refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("tick: refreshing the node source: {e}"),
            Err(e) => tracing::warn!("tick: refresh task failed: {e}"),
        }
        registry.sync(false);
        if let Err(e) = registry.observe_all(registry.detail()).await {
            debug!("tick: {e}");
        }
    }
}
