//! The HTTP API: `GET /` and `GET /status` (the contract's JSON),
//! `GET /healthz`, `GET /metrics`. Every answer reads the source at request
//! time.
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{
    activity::{Activity, boottime_ns},
    lock::lock,
    metrics,
    source::{ConnectionSource, Detail, Reading},
    status::Status,
};

/// What the handlers share.
pub struct App {
    pub source: Arc<dyn ConnectionSource>,
    pub activity: Activity,
    /// `--min-connection-age`, for the long-lived gauge.
    pub min_connection_age: Duration,
    /// Failed reads of the source, for `/metrics`.
    pub source_errors: AtomicU64,
    /// Hook runs by (hook, result), for `/metrics`.
    pub hook_runs: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

pub type AppState = Arc<App>;

impl App {
    pub fn new(
        source: Arc<dyn ConnectionSource>,
        activity: Activity,
        min_connection_age: Duration,
    ) -> Self {
        App {
            source,
            activity,
            min_connection_age,
            source_errors: AtomicU64::new(0),
            hook_runs: Default::default(),
        }
    }

    /// Reads the source off the async workers: polling sources take
    /// milliseconds. A failure is counted and returned as text.
    pub async fn read(self: &Arc<Self>, detail: Detail) -> Result<Reading, String> {
        let source = self.source.clone();
        let result = match tokio::task::spawn_blocking(move || source.read(detail)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("reader task failed: {e}")),
        };
        if result.is_err() {
            self.source_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// A fresh reading and the status it gives, recorded in the activity.
    pub async fn status(self: &Arc<Self>) -> Result<Status, String> {
        let reading = self.read(self.activity.detail()).await?;
        let name = self.source.kind().as_str();
        Ok(Status::observe(
            &reading,
            &self.activity,
            boottime_ns(),
            name,
        ))
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/wait-for-idle", get(crate::drain::wait_for_idle))
        .fallback(not_found)
        .with_state(state)
}

fn unavailable(app: &App, error: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": error, "source": app.source.kind().as_str() })),
    )
        .into_response()
}

async fn status(State(app): State<AppState>) -> Response {
    match app.status().await {
        Ok(status) => Json(status).into_response(),
        Err(error) => unavailable(&app, error),
    }
}

async fn healthz(State(app): State<AppState>) -> Response {
    let result = app.read(Detail::default()).await;
    let name = app.source.kind().as_str();
    match result {
        Ok(_) => match app.source.degraded() {
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

async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let reading = match app.read(Detail { starts: true }).await {
        Ok(reading) => reading,
        Err(error) => return unavailable(&app, error),
    };
    let now_ns = boottime_ns();
    let idle = app.activity.observe(&reading, now_ns);
    let source = app.source.clone();
    let health = tokio::task::spawn_blocking(move || source.health())
        .await
        .unwrap_or_default();
    let hook_runs = lock(&app.hook_runs).clone();
    let scrape = metrics::Scrape {
        reading: &reading,
        idle: &idle,
        now_ns,
        min_connection_age_ns: u64::try_from(app.min_connection_age.as_nanos()).unwrap_or(u64::MAX),
        source: app.source.kind().as_str(),
        health,
        source_errors: app.source_errors.load(Ordering::Relaxed),
        hook_runs,
    };
    let text = match metrics::render(&scrape) {
        Ok(text) => text,
        Err(_) => return unavailable(&app, "encoding metrics failed".into()),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if metrics::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, metrics::OPENMETRICS_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, metrics::CLASSIC_TYPE)],
            metrics::to_classic(&text),
        )
            .into_response()
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
        fn read(&self, _: Detail) -> Result<Reading, SourceError> {
            self.0
                .lock()
                .expect("lock")
                .clone()
                .map_err(|reason| SourceError::Unavailable { reason })
        }
    }

    fn app(result: Result<Reading, String>) -> Router {
        router(Arc::new(App::new(
            Arc::new(Scripted(Mutex::new(result))),
            Activity::new(boottime_ns(), Duration::ZERO),
            Duration::from_secs(6),
        )))
    }

    fn one_port(established_v6: u64, time_wait: u64, listeners: u64) -> Reading {
        Reading::from([(
            8080,
            PortReading {
                established: [2, established_v6],
                time_wait: [time_wait, 0],
                listeners,
                ..Default::default()
            },
        )])
    }

    async fn call(
        app: Router,
        method: Method,
        path: &str,
        accept: Option<&str>,
    ) -> (StatusCode, String, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(accept) = accept {
            req = req.header(header::ACCEPT, accept);
        }
        let resp = app
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("utf-8"),
        )
    }

    #[tokio::test]
    async fn status_has_the_contract_fields_first_and_in_order() {
        for path in ["/", "/status"] {
            let (code, _, body) = call(app(Ok(one_port(1, 3, 1))), Method::GET, path, None).await;
            assert_eq!(code, StatusCode::OK);
            assert!(
                body.starts_with(
                    r#"{"active_connections":3,"waiting_connections":3,"seconds_since_active":0,"listening":true,"seconds_inactive":0,"source":"proc","ignored_connections":0,"ports":{"8080":"#
                ),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn not_listening_without_a_listener() {
        let (_, _, body) = call(app(Ok(one_port(0, 0, 0))), Method::GET, "/", None).await;
        assert!(body.contains(r#""listening":false"#), "{body}");
    }

    #[tokio::test]
    async fn unknown_path_is_404_and_other_methods_405() {
        let ok = || app(Ok(one_port(0, 0, 1)));
        assert_eq!(
            call(ok(), Method::GET, "/nope", None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(ok(), Method::POST, "/nope", None).await.0,
            StatusCode::NOT_FOUND
        );
        for path in ["/", "/status", "/healthz", "/metrics"] {
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                assert_eq!(
                    call(ok(), method.clone(), path, None).await.0,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
            }
        }
    }

    #[tokio::test]
    async fn source_failure_is_503_with_the_reason() {
        let broken = || app(Err("map read failed".into()));
        for path in ["/", "/metrics"] {
            let (code, _, body) = call(broken(), Method::GET, path, None).await;
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(body.contains("map read failed"), "{body}");
        }
        let (code, _, body) = call(broken(), Method::GET, "/healthz", None).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""status":"failing""#), "{body}");
    }

    #[tokio::test]
    async fn healthz_names_the_source() {
        let (code, _, body) = call(app(Ok(one_port(0, 0, 1))), Method::GET, "/healthz", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, r#"{"source":"proc","status":"ok"}"#);
    }

    #[tokio::test]
    async fn metrics_format_follows_accept() {
        let (code, content_type, body) =
            call(app(Ok(one_port(1, 0, 1))), Method::GET, "/metrics", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type, metrics::CLASSIC_TYPE);
        assert!(!body.contains("# EOF"), "{body}");
        let (_, content_type, body) = call(
            app(Ok(one_port(1, 0, 1))),
            Method::GET,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .await;
        assert_eq!(content_type, metrics::OPENMETRICS_TYPE);
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(
            body.contains(r#"spawner_sidecar_source_errors_total 0"#),
            "{body}"
        );
    }
}
