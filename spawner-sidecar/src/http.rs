//! The HTTP API: `GET /` and `GET /status` (the contract's JSON), and
//! `GET /healthz`. Every answer reads the source at request time.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;

use crate::{
    activity::{Activity, boottime_ns},
    source::{ConnectionSource, Reading},
};

#[derive(Clone)]
pub struct AppState {
    pub source: Arc<dyn ConnectionSource>,
    pub activity: Arc<Activity>,
}

/// The contract's JSON. Field order is the wire order: the four original
/// fields first, then the original code's `seconds_inactive` alias, then ours.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub active_connections: u64,
    pub waiting_connections: u64,
    pub seconds_since_active: u64,
    pub listening: bool,
    pub seconds_inactive: u64,
    pub source: &'static str,
}

impl Status {
    /// Aggregates every followed port: counts add up, the idle time is the
    /// shortest, and `listening` needs a listener on every port.
    pub fn new(reading: &Reading, activity: &Activity, now_ns: u64, source: &'static str) -> Self {
        let seconds = activity.observe(reading, now_ns);
        let idle = seconds.values().copied().min().unwrap_or(0);
        Status {
            active_connections: reading.values().map(|r| r.established()).sum(),
            waiting_connections: reading.values().map(|r| r.time_wait).sum(),
            seconds_since_active: idle,
            listening: !reading.is_empty() && reading.values().all(|r| r.listeners > 0),
            seconds_inactive: idle,
            source,
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

/// Reads the source off the async workers: polling sources take milliseconds.
async fn read(state: &AppState) -> Result<Reading, String> {
    let source = state.source.clone();
    match tokio::task::spawn_blocking(move || source.read()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("reader task failed: {e}")),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    let result = read(&state).await;
    let name = state.source.kind().as_str();
    match result {
        Ok(reading) => {
            Json(Status::new(&reading, &state.activity, boottime_ns(), name)).into_response()
        }
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error, "source": name })),
        )
            .into_response(),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let result = read(&state).await;
    let name = state.source.kind().as_str();
    match result {
        Ok(_) => match state.source.degraded() {
            // Still answering, from a lesser source: alive, but say so.
            Some(reason) => Json(json!({ "status": "degraded", "source": name, "reason": reason }))
                .into_response(),
            None => Json(json!({ "status": "ok", "source": name })).into_response(),
        },
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failing", "source": name, "error": error })),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request};
    use tower::ServiceExt as _;

    use super::*;
    use crate::source::{PortReading, SourceError, SourceKind};

    /// A source that answers whatever the test scripted.
    struct Scripted(Mutex<Result<Reading, String>>);

    impl ConnectionSource for Scripted {
        fn kind(&self) -> SourceKind {
            SourceKind::Proc
        }
        fn read(&self) -> Result<Reading, SourceError> {
            self.0
                .lock()
                .expect("lock")
                .clone()
                .map_err(|reason| SourceError::Unavailable { reason })
        }
    }

    fn app(result: Result<Reading, String>) -> Router {
        router(AppState {
            source: Arc::new(Scripted(Mutex::new(result))),
            activity: Arc::new(Activity::new(boottime_ns())),
        })
    }

    fn one_port(established_v6: u64, time_wait: u64, listeners: u64) -> Reading {
        Reading::from([(
            8080,
            PortReading {
                established_v4: 2,
                established_v6,
                time_wait,
                listeners,
                last_active_ns: None,
            },
        )])
    }

    async fn call(app: Router, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("response");
        let status = resp.status();
        let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, String::from_utf8(body.to_vec()).expect("utf-8"))
    }

    #[tokio::test]
    async fn status_has_the_contract_fields_first_and_in_order() {
        for path in ["/", "/status"] {
            let (code, body) = call(app(Ok(one_port(1, 3, 1))), Method::GET, path).await;
            assert_eq!(code, StatusCode::OK);
            assert_eq!(
                body,
                r#"{"active_connections":3,"waiting_connections":3,"seconds_since_active":0,"listening":true,"seconds_inactive":0,"source":"proc"}"#
            );
        }
    }

    #[tokio::test]
    async fn not_listening_without_a_listener() {
        let (_, body) = call(app(Ok(one_port(0, 0, 0))), Method::GET, "/").await;
        assert!(body.contains(r#""listening":false"#), "{body}");
    }

    #[tokio::test]
    async fn unknown_path_is_404_and_other_methods_405() {
        assert_eq!(
            call(app(Ok(one_port(0, 0, 1))), Method::GET, "/nope")
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(app(Ok(one_port(0, 0, 1))), Method::POST, "/nope")
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        for path in ["/", "/status", "/healthz"] {
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                assert_eq!(
                    call(app(Ok(one_port(0, 0, 1))), method.clone(), path)
                        .await
                        .0,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
            }
        }
    }

    #[tokio::test]
    async fn source_failure_is_503_with_the_reason() {
        let (code, body) = call(app(Err("map read failed".into())), Method::GET, "/").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("map read failed"), "{body}");
        let (code, body) = call(app(Err("map read failed".into())), Method::GET, "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""status":"failing""#), "{body}");
    }

    #[tokio::test]
    async fn healthz_names_the_source() {
        let (code, body) = call(app(Ok(one_port(0, 0, 1))), Method::GET, "/healthz").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, r#"{"source":"proc","status":"ok"}"#);
    }
}
