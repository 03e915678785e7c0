//! Accepting on one listener and serving each client: hold it until the
//! service is ready (or `timeout`), find the target, dial it, forward.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    address::{Target, join},
    forward::{self, forward},
    service::{NotReady, Raised, Service},
};

/// Pause after an accept error (EMFILE, ENFILE, ENOBUFS): retrying at once
/// would spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Connections being served, across all services, for the shutdown drain.
pub type OpenCount = Arc<watch::Sender<usize>>;

struct Open(OpenCount);

impl Open {
    fn new(count: &OpenCount) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Accepts until `shutdown` turns true, then drops the listener (new
/// clients are refused from then on).
pub async fn accept_loop(
    listener: TcpListener,
    service: Arc<Service>,
    target: Arc<Target>,
    open: OpenCount,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((client, peer)) => {
                let open = Open::new(&open);
                let service = service.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    serve(&service, &target, client, peer).await;
                    drop(open);
                });
            }
            Err(e) => {
                warn!(service = service.spec.name, "accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn serve(service: &Arc<Service>, target: &Target, client: TcpStream, peer: SocketAddr) {
    let metrics = &service.metrics;
    let name = service.spec.name.as_str();
    let _entry = service.enter();
    let held_at = Instant::now();
    let held = Raised::new(&metrics.held);
    metrics.accepted.inc();
    match tokio::time::timeout(service.spec.timeout, service.wait_ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(NotReady::StartFailed)) => {
            metrics.start_failed.inc();
            debug!(service = name, %peer, "closed: the start it waited for failed");
            return;
        }
        Ok(Err(NotReady::Closed)) => return,
        Err(_) => {
            metrics.timed_out.inc();
            info!(service = name, %peer, timeout = ?service.spec.timeout, "closed: held longer than the timeout");
            return;
        }
    }
    let remaining = service.spec.timeout.saturating_sub(held_at.elapsed());
    let address = match resolve(target, &client, peer, remaining).await {
        Ok(a) => a,
        Err(e) => {
            metrics.dial_failed.inc();
            warn!(service = name, %peer, "dropped: {e}");
            return;
        }
    };
    let backend = match tokio::time::timeout(remaining, TcpStream::connect(address.as_str())).await
    {
        Ok(Ok(b)) => b,
        outcome => {
            metrics.dial_failed.inc();
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            warn!(service = name, %peer, target = address, "cannot connect: {why}");
            // As if the client had dialed the dead backend itself.
            forward::reset(&client);
            return;
        }
    };
    drop(held);
    service.end_cold_start();
    forward::no_delay(&client);
    forward::no_delay(&backend);
    metrics.forwarded.inc();
    let _forwarding = Raised::new(&metrics.forwarding);
    let moved = forward(client, backend).await;
    metrics.bytes_to_backend.inc_by(moved.to_backend);
    metrics.bytes_to_client.inc_by(moved.to_client);
    if moved.reset {
        metrics.resets.inc();
    }
}

/// The `host:port` to dial: the target's own, or what its `exec:` program
/// prints when run with the local and remote addresses.
async fn resolve(
    target: &Target,
    client: &TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Result<String, String> {
    let program = match target {
        Target::Host { host, port } => return Ok(join(host, *port)),
        Target::Exec { program } => program,
    };
    let local = client
        .local_addr()
        .map_err(|e| format!("cannot read the local address: {e}"))?;
    let run = tokio::process::Command::new(program)
        .arg(local.to_string())
        .arg(peer.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("{} did not finish within the timeout", program.display()))?
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || printed.is_empty() {
        return Err(format!(
            "{} failed ({}): {}",
            program.display(),
            output.status,
            stderr.trim().replace('\n', "; ")
        ));
    }
    Ok(printed)
}
