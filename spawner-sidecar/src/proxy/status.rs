//! The proxy's HTTP page on `--serve-port`: `GET /` (and `/status`) lists
//! each service's state and counts as JSON; `GET /metrics` is Prometheus
//! text. Read-only: nothing here starts or stops a service.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use super::{metrics::Metrics, service::Phase, service::Service};
use crate::{
    duration::parse_duration,
    metrics::{CLASSIC_TYPE, OPENMETRICS_TYPE, to_classic, wants_openmetrics},
    serve,
};

pub struct Page {
    pub services: Vec<Arc<Service>>,
    pub metrics: Metrics,
}

pub fn router(page: Arc<Page>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/services/{name}/keepalive", post(keepalive))
        .fallback(serve::not_found)
        .with_state(page)
}

/// One service as the status page shows it.
pub fn describe(service: &Service) -> Value {
    let phase = *service.phase.borrow();
    let m = &service.metrics;
    let failures = match phase {
        Phase::Stopped { failures, .. } => failures,
        _ => 0,
    };
    let routes: Vec<Value> = service
        .spec
        .routes
        .iter()
        .map(|r| json!({"listen": r.listen.to_string(), "target": r.target.to_string()}))
        .collect();
    json!({
        "name": service.spec.name,
        "state": phase.name(),
        "connections_held": m.held.get(),
        "connections_forwarding": m.forwarding.get(),
        "connections_accepted": m.accepted.get(),
        "connections_forwarded": m.forwarded.get(),
        "connections_timed_out": m.timed_out.get(),
        "connections_start_failed": m.start_failed.get(),
        "starts": m.starts_connection.get() + m.starts_auto.get(),
        "failures_in_a_row": failures,
        "last_cold_start_seconds": service.last_cold_start().map(|d| d.as_secs_f64()),
        "keepalive_seconds": service.kept_alive_for().as_secs_f64(),
        "connections_denied": m.denied.get(),
        "command": service.spec.command,
        "routes": routes,
    })
}

async fn status(State(page): State<Arc<Page>>) -> Json<Value> {
    let services: Vec<Value> = page.services.iter().map(|s| describe(s)).collect();
    Json(json!({ "services": services }))
}

async fn metrics(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    let states: Vec<(&str, &str)> = page
        .services
        .iter()
        .map(|s| (s.spec.name.as_str(), s.phase.borrow().name()))
        .collect();
    let text = match page.metrics.render(&states) {
        Ok(t) => t,
        Err(_) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response();
        }
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, OPENMETRICS_TYPE)], text).into_response()
    } else {
        ([(header::CONTENT_TYPE, CLASSIC_TYPE)], to_classic(&text)).into_response()
    }
}

/// Longest keepalive one request may ask for.
const MAX_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(86_400);

#[derive(serde::Deserialize)]
struct KeepaliveQuery {
    #[serde(rename = "for")]
    duration: Option<String>,
}

/// `POST /services/NAME/keepalive?for=DURATION`: no idle stop for that
/// long (work that is not inbound traffic). It does not start a stopped
/// service; a frozen one is thawed (by its supervisor, which follows the
/// load). Answers the service's status.
async fn keepalive(
    State(page): State<Arc<Page>>,
    Path(name): Path<String>,
    Query(query): Query<KeepaliveQuery>,
) -> Response {
    let Some(service) = page.services.iter().find(|s| s.spec.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no service named `{name}`") })),
        )
            .into_response();
    };
    let duration = query
        .duration
        .ok_or_else(|| "missing ?for=DURATION".to_string())
        .and_then(|text| parse_duration(&text))
        .and_then(|d| {
            if d > MAX_KEEPALIVE {
                Err("at most 1 day".to_string())
            } else {
                Ok(d)
            }
        });
    match duration {
        Ok(d) => {
            service.keep_alive(d);
            tracing::info!(service = name, keepalive = ?d, "kept alive by request");
            Json(describe(service)).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}
