//! Node mode's routes: the sidecar's answers per pod (`/pods/<uid>`) and
//! per namespace (`/netns/<inode>`), the lists, the drain per pod, and one
//! `/metrics` with every namespace's ports labelled by pod and namespace.
use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use super::registry::{Entry, Registry};
use crate::{
    cgroup,
    clock::nanos,
    coalesce::Coalesced,
    http::{MAX_WAITERS, bad_request, drain_response, metrics_response, unavailable},
    metrics::{self, Labels, NodeFigures, PortSet},
    serve::not_found,
    source::Detail,
    status::Status,
};

#[derive(Clone)]
struct Api {
    registry: Arc<Registry>,
    waiters: Arc<Semaphore>,
    /// Concurrent scrapes share one rendering (started after each asked):
    /// a node's text holds every namespace, and a thousand renderings at
    /// once measured 88-126 MB.
    scrapes: Arc<Coalesced<Result<String, String>>>,
}

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(pods))
        .route("/pods", get(pods))
        .route("/pods/{uid}", get(pod))
        .route("/netns", get(namespaces))
        .route("/netns/{inode}", get(namespace))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/wait-for-idle", get(wait_for_idle))
        .fallback(not_found)
        .with_state(Api {
            registry,
            waiters: Arc::new(Semaphore::new(MAX_WAITERS)),
            scrapes: Arc::default(),
        })
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The pod `uid` names, looked up again after a sync if not known yet (it
/// may have started a moment ago).
#[expect(
    clippy::result_large_err,
    reason = "the error is the answer itself, made once per request"
)]
fn find_pod(api: &Api, uid: &str) -> Result<Entry, Response> {
    let Some(uid) = cgroup::parse_uid(uid) else {
        return Err(bad_request(format!("{uid:?} is not a pod UID")));
    };
    if let Some(entry) = api.registry.by_pod(&uid) {
        return Ok(entry);
    }
    api.registry.sync(true);
    api.registry
        .by_pod(&uid)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no followed pod {uid}")))
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the answer itself, made once per request"
)]
fn find_netns(api: &Api, inode: &str) -> Result<Entry, Response> {
    let Ok(netns) = inode.parse::<u32>() else {
        return Err(bad_request(format!(
            "{inode:?} is not a network namespace inode number"
        )));
    };
    if let Some(entry) = api.registry.by_netns(netns) {
        return Ok(entry);
    }
    api.registry.sync(true);
    api.registry.by_netns(netns).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no followed network namespace {netns}"),
        )
    })
}

async fn answer(entry: Entry) -> Response {
    match entry.app.status().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => unavailable(&entry.app, e),
    }
}

async fn pod(State(api): State<Api>, Path(uid): Path<String>) -> Response {
    match find_pod(&api, &uid) {
        Ok(entry) => answer(entry).await,
        Err(response) => response,
    }
}

async fn namespace(State(api): State<Api>, Path(inode): Path<String>) -> Response {
    match find_netns(&api, &inode) {
        Ok(entry) => answer(entry).await,
        Err(response) => response,
    }
}

/// One entry of the lists: who it is, then the sidecar's fields.
#[derive(Serialize)]
struct Listed {
    /// `null` for a namespace of no pod (`/netns` only).
    pod_uid: Option<String>,
    netns: u32,
    /// The pod's QoS class, where its cgroup path says (`null` otherwise).
    qos_class: Option<&'static str>,
    containers: Vec<String>,
    #[serde(flatten)]
    status: Status,
}

/// The entries' answers, read one after another (each a few map reads).
async fn list(api: &Api, pods_only: bool) -> Result<Vec<Listed>, Response> {
    api.registry.sync(true);
    let mut out = Vec::new();
    for entry in api.registry.entries() {
        if pods_only && entry.pod.is_none() {
            continue;
        }
        let status = match entry.app.status().await {
            Ok(status) => status,
            // Gone between the listing and the read: leave it out.
            Err(_) if !api.registry.source.follows(entry.netns) => continue,
            Err(e) => return Err(unavailable(&entry.app, e)),
        };
        let (uid, qos_class, containers) = match entry.pod {
            Some(pod) => (Some(pod.uid), pod.qos, pod.containers),
            None => (None, None, Vec::new()),
        };
        out.push(Listed {
            pod_uid: uid,
            netns: entry.netns,
            qos_class,
            containers,
            status,
        });
    }
    Ok(out)
}

async fn pods(State(api): State<Api>) -> Response {
    match list(&api, true).await {
        Ok(mut listed) => {
            listed.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
            Json(json!({ "pods": listed })).into_response()
        }
        Err(response) => response,
    }
}

async fn namespaces(State(api): State<Api>) -> Response {
    match list(&api, false).await {
        Ok(listed) => Json(json!({ "namespaces": listed })).into_response(),
        Err(response) => response,
    }
}

async fn healthz(State(api): State<Api>) -> Response {
    // The program answers when a map read does: read one namespace's, or
    // just the health counters when none is followed.
    let source = api.registry.source.clone();
    let events = tokio::task::spawn_blocking(move || source.health().0.kernel_events)
        .await
        .ok()
        .flatten();
    match events {
        Some(_) => Json(json!({ "status": "ok", "source": "ebpf" })).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failing", "source": "ebpf", "error": "the kernel program's maps cannot be read" })),
        )
            .into_response(),
    }
}

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    let scrapes = api.scrapes.clone();
    match scrapes.get(|| render(&api)).await {
        Ok(text) => metrics_response(text, &headers),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The OpenMetrics text of every followed namespace, read now.
async fn render(api: &Api) -> Result<String, String> {
    api.registry.sync(true);
    let observed = api.registry.observe_all(Detail { starts: true }).await?;
    let min_connection_age_ns = observed
        .first()
        .map_or(0, |(entry, _)| nanos(entry.app.min_connection_age));
    let sets = observed
        .iter()
        .map(|(entry, o)| {
            let labels: Labels = vec![
                (
                    "pod_uid",
                    entry
                        .pod
                        .as_ref()
                        .map(|p| p.uid.clone())
                        .unwrap_or_default(),
                ),
                ("netns", entry.netns.to_string()),
            ];
            PortSet {
                labels,
                reading: &o.reading,
                idle: &o.idle,
            }
        })
        .collect();
    let source = api.registry.source.clone();
    let (health, node) = tokio::task::spawn_blocking(move || source.health())
        .await
        .unwrap_or_default();
    let scrape = metrics::Scrape {
        sets,
        now_ns: crate::clock::boottime_ns(),
        min_connection_age_ns,
        source: "ebpf",
        health,
        source_errors: observed.iter().map(|(e, _)| e.app.source_errors()).sum(),
        hook_runs: Default::default(),
        node: Some(NodeFigures {
            health: node,
            attribution_failures: api.registry.attribution_failures(),
        }),
    };
    metrics::render(&scrape).map_err(|_| "encoding metrics failed".to_string())
}

/// `/wait-for-idle?pod=<uid>` (or `netns=<inode>`): the sidecar's drain,
/// on that namespace.
async fn wait_for_idle(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let entry = match (query.get("pod"), query.get("netns")) {
        (Some(uid), None) => find_pod(&api, uid),
        (None, Some(inode)) => find_netns(&api, inode),
        _ => Err(bad_request(
            "node mode drains one pod: give pod=<uid> or netns=<inode>".into(),
        )),
    };
    match entry {
        Ok(entry) => drain_response(&entry.app, &api.waiters, &query, &["pod", "netns"]).await,
        Err(response) => response,
    }
}
