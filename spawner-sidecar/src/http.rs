//! The HTTP API: `GET /` and `GET /status` (the contract's JSON),
//! `GET /healthz`, `GET /metrics`, `GET /wait-for-idle`. Every answer reads
//! the source at request time.
use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::{
    app::App,
    clock::nanos,
    drain::{self, Outcome},
    duration::parse_duration,
    metrics,
    serve::not_found,
    source::Detail,
};

/// At most this many `/wait-for-idle` requests wait at once; more get a
/// 503 saying so. Each holds a connection and polls the source, and a
/// preStop hook needs one.
pub const MAX_WAITERS: usize = 1024;

/// What the handlers share.
#[derive(Clone)]
struct Api {
    app: Arc<App>,
    waiters: Arc<Semaphore>,
}

impl std::ops::Deref for Api {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

type AppState = Api;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/wait-for-idle", get(wait_for_idle))
        .fallback(not_found)
        .with_state(Api {
            app,
            waiters: Arc::new(Semaphore::new(MAX_WAITERS)),
        })
}

pub fn unavailable(app: &App, error: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": error, "source": app.source_name() })),
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
    let name = app.source_name();
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
    let observed = match app.observe_with(Detail { starts: true }).await {
        Ok(observed) => observed,
        Err(error) => return unavailable(&app, error),
    };
    let scrape = metrics::Scrape {
        sets: vec![metrics::PortSet {
            labels: Vec::new(),
            reading: &observed.reading,
            idle: &observed.idle,
        }],
        now_ns: observed.now_ns,
        min_connection_age_ns: nanos(app.min_connection_age),
        source: app.source_name(),
        health: app.health().await,
        source_errors: app.source_errors(),
        hook_runs: app.hook_runs(),
        node: None,
    };
    match metrics::render(&scrape) {
        Ok(text) => metrics_response(text, &headers),
        Err(_) => unavailable(&app, "encoding metrics failed".into()),
    }
}

/// OpenMetrics text as the scraper asked for it (its `Accept` header).
pub fn metrics_response(text: String, headers: &HeaderMap) -> Response {
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

pub fn query_duration(
    query: &HashMap<String, String>,
    key: &str,
    default: Duration,
) -> Result<Duration, String> {
    let Some(text) = query.get(key) else {
        return Ok(default);
    };
    let value = parse_duration(text).map_err(|e| format!("{key}: {e}"))?;
    drain::check_wait(value).map_err(|e| format!("{key}: {e}"))
}

/// `GET /wait-for-idle?quiet=5s&timeout=300s` (a preStop `httpGet`): 200
/// with the final state once quiet, 503 with the state at the timeout, 400
/// on a bad parameter.
async fn wait_for_idle(
    State(api): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    drain_response(&api.app, &api.waiters, &query, &[]).await
}

/// `/wait-for-idle` on `app`: the parameters `quiet`, `timeout` and the
/// `extra` ones the caller took already (node mode's `pod`), a place among
/// the `waiters`, then the drain.
pub async fn drain_response(
    app: &App,
    waiters: &Arc<Semaphore>,
    query: &HashMap<String, String>,
    extra: &[&str],
) -> Response {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "quiet" | "timeout") && !extra.contains(&k.as_str()))
    {
        let mut known = vec!["quiet", "timeout"];
        known.extend_from_slice(extra);
        return bad_request(format!(
            "unknown parameter {unknown:?}; use {}",
            known.join(", ")
        ));
    }
    let (quiet, timeout) = match (
        query_duration(query, "quiet", drain::DEFAULT_QUIET),
        query_duration(query, "timeout", drain::DEFAULT_TIMEOUT),
    ) {
        (Ok(q), Ok(t)) => (q, t),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let Ok(_waiting) = waiters.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": format!("too many waiters: {MAX_WAITERS} /wait-for-idle requests are already waiting"),
                "source": app.source_name(),
            })),
        )
            .into_response();
    };
    match drain::wait_quiet(app, quiet, timeout).await {
        Ok(Outcome {
            quiet: true,
            status,
        }) => Json(status).into_response(),
        Ok(Outcome {
            quiet: false,
            status,
        }) => (StatusCode::SERVICE_UNAVAILABLE, Json(status)).into_response(),
        Err(error) => unavailable(app, error),
    }
}

pub fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request};
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        activity::Activity,
        clock::boottime_ns,
        source::{ConnectionSource, PortReading, Reading, SourceError, SourceKind},
    };

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
