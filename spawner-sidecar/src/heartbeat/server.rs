//! `--server`: `GET /` answers 200 while every target is healthy and 503
//! otherwise (pending targets included), with the per-target report. The
//! answer reads the latest results; it never runs a check itself, so a slow
//! dependency cannot make the probe slow.
use std::{future::Future, time::Instant};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use super::state::Board;
use crate::serve::not_found;

pub fn router(board: Board) -> Router {
    Router::new()
        .route("/", get(report))
        .fallback(not_found)
        .with_state(board)
}

async fn report(State(board): State<Board>) -> Response {
    let report = board.report(Instant::now());
    let code = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

/// Serves the report until `shutdown`, with the shared shutdown deadline.
pub async fn serve(
    listener: TcpListener,
    board: Board,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::serve::serve(listener, router(board), shutdown).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request};
    use tower::ServiceExt as _;

    use super::*;

    async fn call(board: &Board, method: Method, path: &str) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let response = router(board.clone())
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        let json = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).expect("JSON")
        };
        (status, json)
    }

    fn board() -> Board {
        Board::new(&["tcp://db:5432".parse().expect("target")], 1)
    }

    #[tokio::test]
    async fn pending_is_503_healthy_200_failing_503() {
        let board = board();
        let (code, body) = call(&board, Method::GET, "/").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["targets"][0]["state"], "pending");
        assert_eq!(body["targets"][0]["last_error"], serde_json::Value::Null);

        let now = Instant::now();
        board.record(0, Ok(()), Duration::from_millis(2), now);
        let (code, body) = call(&board, Method::GET, "/").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["healthy"], true);
        assert_eq!(body["targets"][0]["state"], "healthy");
        assert_eq!(body["targets"][0]["last_latency_ms"], 2.0);

        board.record(0, Err("refused".into()), Duration::ZERO, now);
        assert_eq!(call(&board, Method::GET, "/").await.0, StatusCode::OK);
        board.record(0, Err("refused".into()), Duration::ZERO, now);
        let (code, body) = call(&board, Method::GET, "/").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["unhealthy"][0], "tcp://db:5432");
        assert_eq!(body["targets"][0]["state"], "failing");
        assert_eq!(body["targets"][0]["consecutive_failures"], 2);
        assert_eq!(body["targets"][0]["last_error"], "refused");
    }

    #[tokio::test]
    async fn other_paths_404_and_other_methods_405() {
        let board = board();
        assert_eq!(
            call(&board, Method::GET, "/healthz").await.0,
            StatusCode::NOT_FOUND
        );
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                call(&board, method.clone(), "/").await.0,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method}"
            );
        }
        assert_eq!(
            call(&board, Method::HEAD, "/").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
