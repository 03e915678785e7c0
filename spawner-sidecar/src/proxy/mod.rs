//! `spawner-sidecar proxy`: ynetd's lazy-start proxy. It holds the
//! listeners of services that may be stopped; a client of a stopped service
//! starts it (once, however many arrive), waits until its target accepts,
//! and is forwarded; the service is stopped again after `stop_after`
//! without connections. Without a command it is a plain port forwarder.
//!
//! It does not use the daemon's HTTP, drain or hook modules: data flows
//! one way, and this mode sits beside them on the same lower layers.
mod address;
mod admission;
mod args;
mod backend;
mod child;
mod connection;
mod dial;
mod forward;
mod listener;
mod metrics;
mod ready;
mod service;
mod signal;
mod spec;
mod status;
mod supervisor;
mod tracker;
mod yaml;

use std::{future::Future, process::ExitCode, sync::Arc};

use tokio::{sync::watch, task::JoinSet};
use tracing::{info, warn};

pub use self::args::{Args, is_toml, normalise};
use self::{
    connection::OpenCount, dial::Local, service::Service, spec::ProxyConfig, tracker::Tracker,
};
use crate::{
    runtime::{self, Threads},
    serve,
};

/// Bad configuration or a busy address: like clap's usage errors.
const EXIT_USAGE: u8 = 2;

/// Runs the subcommand; the exit code is the result.
pub fn main(args: Args) -> ExitCode {
    let config = match spec::build(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match runtime::build(Threads::PerCore) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let _context = runtime.enter();
    // Every listener before anything starts: a busy address fails the whole
    // proxy at once, with no service half-started.
    let mut bound = Vec::new();
    for service in &config.services {
        for route in &service.routes {
            match listener::bind(&route.listen) {
                Ok(listeners) => bound.push((service.name.clone(), route.clone(), listeners)),
                Err(e) => {
                    eprintln!("error: service {}: {e}", service.name);
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
    }
    let page = match args.serve_port {
        None => None,
        Some(port) => match serve::listen(std::net::SocketAddr::new(args.serve_address, port)) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "error: cannot listen on {}:{port} (--serve-port): {e}",
                    args.serve_address
                );
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let shutdown = runtime::shutdown_signal(&runtime);
    runtime.block_on(run(config, bound, page, shutdown));
    // The services are stopped; what may be left on the blocking pool (the
    // tracker still resolving a target's name, or a read of its source)
    // must not hold up the exit.
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

type Bound = Vec<(String, address::Route, Vec<tokio::net::TcpListener>)>;

async fn run(
    config: ProxyConfig,
    bound: Bound,
    page: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = metrics::Metrics::new();
    // Opened in the background: loading the kernel program must not delay
    // the first clients; until it is open, idle is judged by proxied
    // connections alone.
    let tracker = config
        .services
        .iter()
        .any(tracker::wanted)
        .then(|| Tracker::new(Local::read()));
    if let Some(tracker) = &tracker {
        let (tracker, specs, settings) = (
            tracker.clone(),
            config.services.clone(),
            config.tracker.clone(),
        );
        tokio::task::spawn_blocking(move || tracker.open(&specs, &settings));
    }
    let services: Vec<Arc<Service>> = config
        .services
        .into_iter()
        .map(|spec| {
            let handles = metrics.service(&spec.name);
            Service::new(spec, handles, tracker.clone())
        })
        .collect();
    let (stop_accepting, accepting) = watch::channel(false);
    let (stop_services, services_running) = watch::channel(false);
    let open: OpenCount = Arc::new(watch::Sender::new(0));

    let mut supervisors = JoinSet::new();
    for service in &services {
        supervisors.spawn(supervisor::supervise(
            service.clone(),
            services_running.clone(),
        ));
    }
    let mut acceptors = JoinSet::new();
    for (name, route, listeners) in bound {
        let Some(service) = services.iter().find(|s| s.spec.name == name) else {
            continue;
        };
        let target = Arc::new(route.target.clone());
        for listener in listeners {
            let local = listener
                .local_addr()
                .map_or_else(|_| route.listen.to_string(), |a| a.to_string());
            info!(service = name, listen = local, target = %route.target, command = ?service.spec.command, "proxying");
            acceptors.spawn(connection::accept_loop(
                listener,
                service.clone(),
                target.clone(),
                open.clone(),
                accepting.clone(),
            ));
        }
    }

    let page = page.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            info!(%address, "serving");
        }
        let router = status::router(Arc::new(status::Page {
            services: services.clone(),
            metrics,
        }));
        let mut done = services_running.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = done.wait_for(|stop| *stop).await;
            };
            if let Err(e) = serve::serve(listener, router, stopped).await {
                warn!("status page failed: {e}");
            }
        })
    });

    shutdown.await;
    let _ = stop_accepting.send(true);
    while acceptors.join_next().await.is_some() {}
    let open_now = *open.borrow();
    if open_now > 0 {
        info!(connections = open_now, deadline = ?config.shutdown_timeout, "letting connections finish");
        let mut count = open.subscribe();
        let finished =
            tokio::time::timeout(config.shutdown_timeout, count.wait_for(|n| *n == 0)).await;
        if finished.is_err() {
            warn!(
                connections = *open.borrow(),
                "connections still open at the deadline: closing them"
            );
        }
    }
    let _ = stop_services.send(true);
    while supervisors.join_next().await.is_some() {}
    if let Some(page) = page {
        let _ = page.await;
    }
    info!("shut down");
}
