//! Serving an axum router, shared by the daemon's API and the heartbeat
//! probe: the listener, the connection limits, the JSON 404, and graceful
//! shutdown with a deadline.
//!
//! Our own accept loop rather than `axum::serve`, for three things it does
//! not offer: a listen backlog of `net.core.somaxconn` (mio, under tokio's
//! `bind`, asks for 128, so a burst of 1 000 clients overflows it and the
//! dropped SYNs are retried a second later), a timeout for connections that
//! never send a request, and a deadline on shutdown.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::malloc;

/// How long open connections may keep the server alive after the signal:
/// a client holding a connection (or a long `/wait-for-idle`) open must not
/// keep a terminating pod alive until its grace period runs out.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A connection must send a whole request head within this long of being
/// accepted, and of its previous answer (keep-alive idle): one that
/// connects and sends nothing would otherwise hold a task and a descriptor
/// forever. Prometheus and controllers reconnect when it was closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A burst: at least this many connections open at once. Once it has
/// passed (few left open), the freed buffers are handed back to the system.
const BURST: usize = 64;
/// How often the end of a burst is looked for.
const TRIM_CHECK: Duration = Duration::from_secs(1);

/// Backlog when `net.core.somaxconn` cannot be read; the kernel caps any
/// backlog at that value anyway.
const DEFAULT_BACKLOG: i32 = 4096;

/// The answer for every path no route has.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response()
}

/// Binds `address` with a listen backlog of `net.core.somaxconn` (as read
/// in this network namespace); the unspecified IPv6 address takes IPv4
/// clients too, whatever `net.ipv6.bindv6only` says. Accepted sockets
/// have TCP_NODELAY: answers and proxied messages are small writes that
/// must not wait for Nagle.
pub fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let backlog = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &i32| n > 0)
        .unwrap_or(DEFAULT_BACKLOG);
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // As std and tokio do: a restarted process can bind while the old
    // one's connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if address.is_ipv6() && address.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    // Set once here: an accepted socket is a clone of its listener and
    // inherits it, one setsockopt less per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    debug!(%address, backlog, "listening");
    Ok(socket.into())
}

/// [`bind`], as a tokio listener.
pub fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind(address)?)
}

/// Serves until `shutdown` resolves, then stops accepting, lets requests in
/// flight finish for up to [`SHUTDOWN_GRACE`] and returns, closing whatever
/// is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let load = Arc::new(Load::default());
    let trimmer = tokio::spawn(trim_after_bursts(load.clone()));
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: the connection waits in
                    // the backlog; try again shortly rather than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        let open = Open::new(&load);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("connection ended: {e}");
            }
            drop(open);
        });
    }
    drop(listener);
    trimmer.abort();
    // Idle keep-alive connections close now; busy ones after their answer.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open {SHUTDOWN_GRACE:?} after the signal: closing them");
    }
    Ok(())
}

/// Connections open now, and the most open since the last trim.
#[derive(Default)]
struct Load {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// One open connection, counted while it lives.
struct Open(Arc<Load>);

impl Open {
    fn new(load: &Arc<Load>) -> Self {
        let now = load.open.fetch_add(1, Ordering::Relaxed) + 1;
        load.peak.fetch_max(now, Ordering::Relaxed);
        Open(load.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// After a burst of connections has passed, hands the heap its buffers
/// used back to the system: glibc keeps freed memory for reuse, so without
/// this the resident size stays at the burst's high-water mark.
async fn trim_after_bursts(load: Arc<Load>) {
    loop {
        tokio::time::sleep(TRIM_CHECK).await;
        let open = load.open.load(Ordering::Relaxed);
        if load.peak.load(Ordering::Relaxed) >= BURST && open < BURST / 4 {
            load.peak.store(open, Ordering::Relaxed);
            malloc::release_freed();
            debug!("burst over: freed heap released");
        }
    }
}
