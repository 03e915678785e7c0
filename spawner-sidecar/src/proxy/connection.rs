//! Accepting on one listener and serving each client: hold it until the
//! service is ready (or `timeout`), find the target, dial it, forward.
use std::{io::ErrorKind, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    address::{Target, join},
    dial,
    forward::{self, forward},
    ready,
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

/// Why a client was closed without being forwarded.
enum Dropped {
    NotReady(NotReady),
    /// The `exec:` program failed.
    Resolve(String),
    Dial(String, std::io::Error),
}

async fn serve(service: &Arc<Service>, target: &Target, client: TcpStream, peer: SocketAddr) {
    let metrics = &service.metrics;
    let name = service.spec.name.as_str();
    metrics.accepted.inc();
    if !service.spec.admission.admits(peer.ip()) {
        metrics.denied.inc();
        debug!(service = name, %peer, "closed: source network not allowed");
        return;
    }
    let deadline = Instant::now() + service.spec.timeout;
    if service.spec.wake_on_data && !service.is_ready() {
        // A probe or a port scan connects and closes: that must not cost a
        // cold start. The byte stays in the socket for the backend.
        match tokio::time::timeout_at(deadline, client.peek(&mut [0u8; 1])).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                metrics.no_data.inc();
                debug!(service = name, %peer, "closed before sending anything: woke nothing");
                return;
            }
            Err(_) => {
                metrics.timed_out.inc();
                return;
            }
        }
    }
    let _entry = service.enter();
    let held = Raised::new(&metrics.held);
    let reached = tokio::time::timeout_at(deadline, reach(service, target, &client, peer));
    let backend = match reached.await {
        Ok(Ok(backend)) => backend,
        Ok(Err(Dropped::NotReady(NotReady::StartFailed))) => {
            metrics.start_failed.inc();
            debug!(service = name, %peer, "closed: the start it waited for failed");
            return;
        }
        Ok(Err(Dropped::NotReady(NotReady::Closed))) => return,
        Ok(Err(Dropped::Resolve(e))) => {
            metrics.dial_failed.inc();
            warn!(service = name, %peer, "dropped: {e}");
            return;
        }
        Ok(Err(Dropped::Dial(address, e))) => {
            metrics.dial_failed.inc();
            warn!(service = name, %peer, target = address, "cannot connect: {e}");
            // As if the client had dialed the dead backend itself.
            forward::reset(&client);
            return;
        }
        Err(_) => {
            metrics.timed_out.inc();
            info!(service = name, %peer, timeout = ?service.spec.timeout, "closed: held longer than the timeout");
            return;
        }
    };
    drop(held);
    // The client's socket has it from the listener (`serve::bind`).
    forward::no_delay(&backend);
    metrics.forwarded.inc();
    let _forwarding = Raised::new(&metrics.forwarding);
    // A cold start ends with the first byte forwarded, either way (a
    // protocol where the server speaks first has its first byte from the
    // backend).
    let first_byte = || service.end_cold_start();
    let shared = forward::Connection::new(
        &metrics.bytes_to_backend,
        &metrics.bytes_to_client,
        &first_byte,
    );
    if forward(client, backend, &shared).await {
        metrics.resets.inc();
    }
}

/// How long a `host:port` target of a running start may refuse one
/// client's dials before the backend counts as gone. Readiness saw that
/// address accept during this start, so a refusal now means it closed;
/// the grace (about fifteen dials of readiness's backoff) covers a port
/// closed and opened again at once (a listener being replaced), not a
/// backend that went away.
pub const GONE_AFTER: Duration = Duration::from_millis(500);

/// Holds until the service is ready, then connects to the target. A
/// service with a command may still be opening this port (readiness cannot
/// probe an `exec:` target), so a refused dial is retried with readiness's
/// backoff while the same start runs; if that start ends meanwhile, the
/// client waits for the next. A `host:port` target that keeps refusing for
/// [`GONE_AFTER`] is reported to the supervisor, which ends that start (a
/// backend elsewhere has no process whose exit would tell). A plain
/// forwarder's backend is not ours to wait for: one attempt.
async fn reach(
    service: &Service,
    target: &Target,
    client: &TcpStream,
    peer: SocketAddr,
) -> Result<TcpStream, Dropped> {
    // An `exec:` program may name a port the service opens later than
    // readiness looked: its refusals are waited out as before.
    let proven = matches!(target, Target::Host { .. });
    loop {
        let start = service.wait_ready().await.map_err(Dropped::NotReady)?;
        let address = resolve(target, client, peer)
            .await
            .map_err(Dropped::Resolve)?;
        let mut pause = ready::FIRST_RETRY;
        let mut refused_since = None;
        loop {
            match dial::connect(&address, service.dial_local()).await {
                Ok(backend) => return Ok(backend),
                Err(e) if start.is_some() && e.kind() == ErrorKind::ConnectionRefused => {
                    let Some(start) = start.filter(|&s| service.is_running(s)) else {
                        break;
                    };
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if proven && since.elapsed() >= GONE_AFTER {
                        service.report_refused(start, &address);
                    }
                    tokio::time::sleep(pause).await;
                    pause = ready::next_pause(pause);
                }
                Err(e) => return Err(Dropped::Dial(address, e)),
            }
        }
    }
}

/// The `host:port` to dial: the target's own, or what its `exec:` program
/// prints when run with the local and remote addresses.
async fn resolve(target: &Target, client: &TcpStream, peer: SocketAddr) -> Result<String, String> {
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
    // The caller's timeout bounds it; dropped, the program is killed.
    let output = run
        .await
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
