//! Serving an axum router, shared by the daemon's API and the heartbeat
//! probe: the JSON 404, and graceful shutdown with a deadline.
use std::{future::Future, time::Duration};

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::warn;

/// How long open connections may keep the server alive after the signal:
/// a client holding a connection (or a long `/wait-for-idle`) open must not
/// keep a terminating pod alive until its grace period runs out.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The answer for every path no route has.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response()
}

/// Serves until `shutdown` resolves, then lets requests in flight finish
/// for up to [`SHUTDOWN_GRACE`] and returns, closing whatever is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled.send(());
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown);
    tokio::select! {
        result = server => result,
        () = async {
            if on_signal.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            warn!("connections still open {SHUTDOWN_GRACE:?} after the signal: closing them");
            Ok(())
        }
    }
}
