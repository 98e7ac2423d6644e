//! The HTTP endpoint: `GET /healthz`, `GET /metrics` (Prometheus text format),
//! `GET /v1/stats` (the same counters as JSON, for `vringctl stats`), and the topology API
//! under `/v1/bridges` and `/v1/ports` (see docs/api.md).
//!
//! Every error is a 4xx or 5xx with a JSON body `{"error": <kind>, "detail": <what to fix>}`,
//! including malformed JSON and unknown fields; a refused request changed nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vringswitch_metrics::{Metrics, PortSnapshot, Snapshot};
use vringswitch_ports::PortHandle;

use crate::daemon::{
    BridgeSpec, ChangeError, Daemon, FdbEntryView, PortPatch, PortSpec, StaticMac, StaticMacRequest,
};

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    metrics: Arc<Metrics>,
}

/// The router of the HTTP endpoint. With a `token`, every request under `/v1` must carry
/// `Authorization: Bearer <token>`; /healthz and /metrics stay open (for probes and
/// Prometheus).
pub fn router(daemon: Arc<Daemon>, token: Option<Arc<str>>) -> Router {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/v1/bridges", get(list_bridges).post(add_bridge))
        .route("/v1/bridges/{name}", get(get_bridge).delete(remove_bridge))
        .route("/v1/ports", get(list_ports).post(add_port))
        .route(
            "/v1/bridges/{name}/fdb",
            get(get_fdb).post(add_static_mac).delete(flush_fdb),
        )
        .route(
            "/v1/ports/{name}",
            get(get_port).patch(update_port).delete(remove_port),
        )
        .fallback(not_found)
        .with_state(AppState {
            daemon,
            metrics: Arc::new(Metrics::new()),
        });
    match token {
        Some(t) => app.layer(axum::middleware::from_fn_with_state(t, require_token)),
        None => app,
    }
}

/// Refuses a `/v1` request without the bearer token.
async fn require_token(
    State(token): State<Arc<str>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same_secret(g.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs 'Authorization: Bearer <token>' with the daemon's \
                 --api-token-file token (vringctl: --token or VRINGSWITCH_TOKEN)",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An API error: status, a short machine-readable kind, and what to fix.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            detail: &self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        let (status, kind) = match &e {
            ChangeError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ChangeError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ChangeError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ChangeError::Port { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "port_failed"),
            ChangeError::NotSaved(_) => (StatusCode::INTERNAL_SERVER_ERROR, "not_saved"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

/// Parses a JSON request body, refusing unknown fields, with the parser's message.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("request body: {e}"),
        )
    })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = s.metrics.render(&s.daemon.switch);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn stats(State(s): State<AppState>) -> Json<Snapshot> {
    Json(Snapshot::take(&s.daemon.switch))
}

/// A bridge with its ports, as `GET /v1/bridges/{name}` returns it.
#[derive(Serialize)]
struct BridgeView {
    #[serde(flatten)]
    spec: BridgeSpec,
    ports: Vec<String>,
}

async fn list_bridges(State(s): State<AppState>) -> Json<Vec<BridgeView>> {
    let views = s
        .daemon
        .bridges()
        .into_iter()
        .map(|(spec, ports)| BridgeView { spec, ports })
        .collect();
    Json(views)
}

async fn get_bridge(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<BridgeView>, ApiError> {
    let (spec, ports) = s.daemon.bridge(&name)?;
    Ok(Json(BridgeView { spec, ports }))
}

async fn add_bridge(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<BridgeView>), ApiError> {
    let spec: BridgeSpec = parse(&body)?;
    let name = spec.name.clone();
    let daemon = s.daemon.clone();
    blocking(move || daemon.add_bridge(spec)).await?;
    let (spec, ports) = s.daemon.bridge(&name)?;
    Ok((StatusCode::CREATED, Json(BridgeView { spec, ports })))
}

async fn remove_bridge(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let daemon = s.daemon.clone();
    blocking(move || daemon.remove_bridge(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Live state of a port.
#[derive(Serialize)]
struct PortState {
    /// A frontend is connected to the socket.
    connected: bool,
    /// Its rings are set up: frames can be delivered.
    ready: bool,
    /// Virtio features the frontend acknowledged (while ready), in hex.
    features: Option<String>,
    /// Queue pairs whose rings are ready and enabled.
    queue_pairs_active: usize,
}

/// A port: its configuration, live state and counters.
#[derive(Serialize)]
struct PortView {
    #[serde(flatten)]
    spec: PortSpec,
    state: PortState,
    counters: PortSnapshot,
}

fn port_view(spec: PortSpec, handle: &PortHandle, snapshot: &Snapshot) -> PortView {
    let attachment = handle.attachment();
    let state = PortState {
        connected: handle.is_connected(),
        ready: attachment.is_some(),
        features: attachment.as_ref().map(|a| format!("{:#x}", a.features())),
        queue_pairs_active: attachment.as_ref().map_or(0, |a| a.active_queue_pairs()),
    };
    let counters = snapshot
        .ports
        .iter()
        .find(|p| p.name == spec.name)
        .cloned()
        .unwrap_or_else(|| PortSnapshot {
            name: spec.name.clone(),
            bridge: spec.bridge.clone(),
            ..PortSnapshot::default()
        });
    PortView {
        spec,
        state,
        counters,
    }
}

async fn list_ports(State(s): State<AppState>) -> Json<Vec<PortView>> {
    let snapshot = Snapshot::take(&s.daemon.switch);
    let views = s
        .daemon
        .ports()
        .into_iter()
        .map(|(spec, handle)| port_view(spec, &handle, &snapshot))
        .collect();
    Json(views)
}

async fn get_port(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PortView>, ApiError> {
    let (spec, handle) = s.daemon.port(&name)?;
    let snapshot = Snapshot::take(&s.daemon.switch);
    Ok(Json(port_view(spec, &handle, &snapshot)))
}

async fn add_port(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<PortView>), ApiError> {
    let spec: PortSpec = parse(&body)?;
    let name = spec.name.clone();
    let daemon = s.daemon.clone();
    blocking(move || daemon.add_port(spec)).await?;
    let (spec, handle) = s.daemon.port(&name)?;
    let snapshot = Snapshot::take(&s.daemon.switch);
    Ok((
        StatusCode::CREATED,
        Json(port_view(spec, &handle, &snapshot)),
    ))
}

async fn remove_port(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let daemon = s.daemon.clone();
    blocking(move || daemon.remove_port(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update_port(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PortView>, ApiError> {
    let patch: PortPatch = parse(&body)?;
    let daemon = s.daemon.clone();
    let n = name.clone();
    blocking(move || daemon.update_port(&n, patch)).await?;
    let (spec, handle) = s.daemon.port(&name)?;
    let snapshot = Snapshot::take(&s.daemon.switch);
    Ok(Json(port_view(spec, &handle, &snapshot)))
}

async fn get_fdb(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<FdbEntryView>>, ApiError> {
    Ok(Json(s.daemon.fdb(&name)?))
}

async fn add_static_mac(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<StaticMac>), ApiError> {
    let req: StaticMacRequest = parse(&body)?;
    let daemon = s.daemon.clone();
    let entry = blocking(move || daemon.add_static_mac(&name, req)).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

/// `?port=NAME` of `DELETE /v1/bridges/{name}/fdb`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlushQuery {
    port: Option<String>,
}

async fn flush_fdb(
    State(s): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<FlushQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let daemon = s.daemon.clone();
    blocking(move || daemon.flush_fdb(&name, q.port.as_deref())).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a topology change off the async runtime: stopping a port joins its thread, and
/// a change waits for the workers to pick it up.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChangeError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
