//! The HTTP endpoint: `GET /healthz`, `GET /metrics` (Prometheus text format),
//! `GET /v1/stats` (the same counters as JSON, for `vringctl stats`), and the topology API
//! under `/v1/bridges` and `/v1/ports` (see docs/api.md).
//!
//! Every error is a 4xx or 5xx with a JSON body `{"error": <kind>, "detail": <what to fix>}`,
//! including malformed JSON and unknown fields; a refused request changed nothing.

use crate::log_levels::{Level, LogControl, LogPatch, LogView, ModuleLevel};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vringswitch_metrics::{Metrics, PortSnapshot, Snapshot};
use vringswitch_ports::log_limit::LogLimiter;
use vringswitch_ports::PortHandle;
use vringswitch_switch::capture::CaptureSettings;

use crate::capture_stream::{self, CaptureLimits};
use crate::daemon::{
    BridgePatch, BridgeSpec, ChangeError, Daemon, FdbEntryView, PortPatch, PortSpec, StaticMac,
    StaticMacRequest, VlanConfig,
};

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    metrics: Arc<Metrics>,
}

/// The OpenAPI document of this API, served at `/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "vringswitch",
        description = "Topology, FDB and counters of a vringswitch daemon (see docs/api.md). \
            With --api-token-file, every /v1 request needs 'Authorization: Bearer <token>'."
    ),
    paths(
        healthz,
        metrics,
        stats,
        list_bridges,
        add_bridge,
        get_bridge,
        update_bridge,
        remove_bridge,
        get_fdb,
        add_static_mac,
        flush_fdb,
        remove_fdb_entry,
        list_ports,
        add_port,
        get_port,
        update_port,
        remove_port,
        capture,
        get_log,
        change_log,
        trace_frame,
        list_mirrors,
        add_mirror,
        get_mirror,
        remove_mirror,
        list_security_groups,
        add_security_group,
        get_security_group,
        put_security_group,
        remove_security_group,
        list_connections,
        flush_connections,
        upgrade
    ),
    components(schemas(
        ErrorBody,
        BridgeSpec,
        BridgePatch,
        BridgeView,
        PortSpec,
        PortPatch,
        PortView,
        PortState,
        RemoteView,
        EvpnView,
        RemoteMacView,
        VlanConfig,
        StaticMacRequest,
        StaticMac,
        FdbEntryView,
        vringswitch_config::AdminState,
        LogView,
        LogPatch,
        vringswitch_config::MirrorSpec,
        vringswitch_config::MirrorDirection,
        vringswitch_config::SecurityGroupSpec,
        vringswitch_config::RuleSpec,
        vringswitch_config::RuleDirection,
        vringswitch_config::Ethertype,
        vringswitch_config::Protocol,
        crate::schema::ConnectionView,
        ConnectionsView,
        FlushedView,
        crate::trace::TraceRequest,
        crate::trace::TraceView,
        crate::trace::TraceOutput,
        ModuleLevel,
        Level,
        UpgradeRequest,
        crate::upgrade::Upgraded
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document as served. Variants of the VLAN setting refuse unknown fields
/// like every other request object; utoipa does not say so for enum variants.
/// With a socket directory, the socket paths it accepts are in the document too.
pub fn openapi_document(socket_dir: Option<&std::path::Path>) -> serde_json::Value {
    let mut doc = serde_json::to_value(<ApiDoc as utoipa::OpenApi>::openapi())
        .unwrap_or(serde_json::Value::Null);
    if let Some(variants) = doc
        .pointer_mut("/components/schemas/VlanConfig/oneOf")
        .and_then(|v| v.as_array_mut())
    {
        for v in variants {
            v["additionalProperties"] = serde_json::Value::Bool(false);
        }
    }
    if let (Some(dir), Some(socket)) = (
        socket_dir,
        doc.pointer_mut("/components/schemas/VhostUserSettings/properties/socket"),
    ) {
        socket["pattern"] = crate::daemon::socket_pattern(dir).into();
        socket["description"] = format!(
            "Path of the vhost-user socket: {}/NAME, NAME being 1 to 64 characters of \
             A-Z a-z 0-9 - _ . not starting with a dot",
            dir.display()
        )
        .into();
    }
    close_port_schema(&mut doc);
    doc
}

/// A port as utoipa writes its schema (all of: one of the kinds' schemas, and the fields
/// every port has) leaves any other field open, which the daemon refuses: a generator
/// would send them. Written out instead as one closed object per kind: the fields every
/// port has, `type`, and the kind's own.
fn close_port_schema(doc: &mut serde_json::Value) {
    use serde_json::{json, Map, Value};
    let schemas = &doc["components"]["schemas"];
    let parts = schemas["PortSpec"]["allOf"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(common) = parts.iter().find(|p| p.get("properties").is_some()) else {
        return;
    };
    let mut kinds = Vec::new();
    for variant in schemas["KindSpec"]["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let mut properties = common["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut required = common["required"].as_array().cloned().unwrap_or_default();
        for part in variant["allOf"].as_array().into_iter().flatten() {
            let own = match part["$ref"].as_str() {
                Some(r) => &schemas[r.trim_start_matches("#/components/schemas/")],
                None => part,
            };
            properties.extend(own["properties"].as_object().cloned().unwrap_or_default());
            required.extend(own["required"].as_array().cloned().unwrap_or_default());
        }
        // The kind a port is when it gives no type: `type` is optional there.
        let default_kind = vringswitch_config::port::PortType::DEFAULT.name();
        if properties["type"]["enum"] == json!([default_kind]) {
            required.retain(|r| r != "type");
            properties["type"]["default"] = json!(default_kind);
        }
        kinds.push(json!({
            "type": "object",
            "description": variant["description"],
            "properties": Value::Object(properties),
            "required": required,
            "additionalProperties": false,
        }));
    }
    if kinds.is_empty() {
        return;
    }
    let mut port = Map::new();
    port.insert(
        "description".into(),
        schemas["PortSpec"]["description"].clone(),
    );
    port.insert("oneOf".into(), Value::Array(kinds));
    doc["components"]["schemas"]["PortSpec"] = Value::Object(port);
}

async fn openapi(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(openapi_document(s.daemon.socket_dir()))
}

/// Who may use `/v1` on one listener. /healthz, /metrics and /openapi.json are always open
/// (for probes and Prometheus).
#[derive(Debug, Clone)]
pub enum ApiAccess {
    /// Anyone who can connect (the unix socket, whose permissions are the control; or a
    /// loopback address on a daemon with no unix socket).
    Open,
    /// Every `/v1` request carries `Authorization: Bearer <token>`.
    Token(Arc<str>),
    /// `/v1` is read-only: changes go through the unix socket at this path.
    ReadOnly { api_socket: PathBuf },
}

/// The router of the HTTP endpoint, with `/v1` guarded as `access` says.
pub fn router(daemon: Arc<Daemon>, access: ApiAccess) -> Router {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/v1/bridges", get(list_bridges).post(add_bridge))
        .route(
            "/v1/bridges/{name}",
            get(get_bridge).patch(update_bridge).delete(remove_bridge),
        )
        .route("/v1/ports", get(list_ports).post(add_port))
        .route(
            "/v1/bridges/{name}/fdb",
            get(get_fdb).post(add_static_mac).delete(flush_fdb),
        )
        .route(
            "/v1/bridges/{name}/fdb/{mac}",
            axum::routing::delete(remove_fdb_entry),
        )
        .route(
            "/v1/ports/{name}",
            get(get_port).patch(update_port).delete(remove_port),
        )
        .route("/v1/ports/{name}/capture", get(capture))
        .route("/v1/log", get(get_log).patch(change_log))
        .route("/v1/trace", axum::routing::post(trace_frame))
        .route("/v1/mirrors", get(list_mirrors).post(add_mirror))
        .route("/v1/mirrors/{name}", get(get_mirror).delete(remove_mirror))
        .route(
            "/v1/security-groups",
            get(list_security_groups).post(add_security_group),
        )
        .route(
            "/v1/security-groups/{name}",
            get(get_security_group)
                .put(put_security_group)
                .delete(remove_security_group),
        )
        .route(
            "/v1/conntrack",
            get(list_connections).delete(flush_connections),
        )
        .route("/v1/upgrade", axum::routing::post(upgrade))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            wait_for_upgrade,
        ))
        .with_state(AppState {
            daemon,
            metrics: Arc::new(Metrics::new()),
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(json_errors));
    match access {
        ApiAccess::Open => app,
        ApiAccess::Token(t) => {
            let failures = Arc::new(std::sync::Mutex::new(LogLimiter::new(
                std::time::Duration::from_secs(10),
            )));
            app.layer(axum::middleware::from_fn_with_state(
                (t, failures),
                require_token,
            ))
        }
        ApiAccess::ReadOnly { api_socket } => app.layer(axum::middleware::from_fn_with_state(
            Arc::new(api_socket),
            refuse_changes,
        )),
    }
}

/// While the daemon replaces itself, `/v1` requests are answered "retry" (503 with
/// Retry-After): its state is locked from the workers' stop until the new process runs
/// (or the old one took everything back), and a change made meanwhile would be lost with
/// the old process. /healthz and /metrics read no state and are served throughout.
async fn wait_for_upgrade(
    State(daemon): State<Arc<Daemon>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let upgrading = daemon.upgrader().is_some_and(|u| u.in_progress());
    if !upgrading || !is_v1(path) || path == "/v1/upgrade" {
        return next.run(req).await;
    }
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upgrading",
        "the daemon is being upgraded: retry in a moment (the new process answers on the \
         same address)",
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Whether `path` is a port's packet capture: the VMs' traffic, which a read-only
/// listener does not show.
fn is_capture(path: &str) -> bool {
    path.starts_with("/v1/ports/") && path.ends_with("/capture")
}

/// Refuses a `/v1` request that would change something (anything but GET and HEAD) or
/// capture a port's frames.
async fn refuse_changes(
    State(api_socket): State<Arc<PathBuf>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    // A trace changes nothing and shows no more than the FDB does: a read.
    let reads = matches!(*req.method(), Method::GET | Method::HEAD)
        || (*req.method() == Method::POST && path == "/v1/trace");
    if !is_v1(path) || (reads && !is_capture(path)) {
        return next.run(req).await;
    }
    let what = if reads {
        "packet captures are not offered"
    } else {
        "changes are not accepted"
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "{what} over TCP on this daemon: use its unix socket \
             (vringctl --api {}) as a member of its group, or give the daemon \
             --api-token-file to accept requests with a token",
            api_socket.display()
        ),
    )
    .into_response()
}

/// Refuses a `/v1` request without the bearer token.
async fn require_token(
    State((token, failures)): State<(Arc<str>, Arc<std::sync::Mutex<LogLimiter>>)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !is_v1(req.uri().path()) {
        return next.run(req).await;
    }
    // The scheme is case-insensitive (RFC 9110, 11.1).
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t);
    match given {
        Some(g) if same_secret(g.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let why = if given.is_some() {
                "a wrong token"
            } else {
                "no bearer token"
            };
            let mut limiter = failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(suppressed) = limiter.check() {
                tracing::warn!(method = %req.method(), path = %req.uri().path(), suppressed,
                    "API request refused: {why}");
            }
            drop(limiter);
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
    /// An error answer. The detail is cut to [`MAX_DETAIL`] characters: it may quote what
    /// the client sent (a 2 MB name, say).
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        let mut detail = detail.into();
        if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL) {
            detail.truncate(cut);
            detail.push_str("… (cut)");
        }
        ApiError {
            status,
            error,
            detail,
        }
    }
}

/// Every error response.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody<'a> {
    /// bad_request, invalid, unauthorized, not_found, conflict, port_failed, not_saved,
    /// internal.
    error: &'a str,
    /// What went wrong and what to fix.
    detail: &'a str,
}

/// An extractor that refuses a query string, for the `/v1` routes that take none:
/// docs/api.md promises it, and a misspelt filter (`GET /v1/ports?bridge=br0`) must not
/// quietly return everything. Checked after routing, so that a method a path does not
/// take stays a 405.
struct NoQuery;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<NoQuery, ApiError> {
        match parts.uri.query().filter(|q| !q.is_empty()) {
            None => Ok(NoQuery),
            Some(q) => {
                let name = q.split(['&', '=']).next().unwrap_or(q);
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "unknown query parameter {name:?}: {} takes none",
                        parts.uri.path()
                    ),
                ))
            }
        }
    }
}

/// Most characters of an error's detail.
const MAX_DETAIL: usize = 512;

/// Gives every error answer the JSON body the API documents: those made by the HTTP layers
/// rather than by a handler (413 for a body over the limit, 405, 408...) come as plain text.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // Each request at debug (`vringctl log set http=debug`): who changed what, and when.
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    tracing::debug!(method = %method, path = %path, status = status.as_u16(),
        ms = started.elapsed().as_millis() as u64, "API request");
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (kind, detail) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            format!("the request body is larger than {} bytes", BODY_LIMIT),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this path does not take that method".to_owned(),
        ),
        other => (
            "http_error",
            other.canonical_reason().unwrap_or("error").to_owned(),
        ),
    };
    let mut out = ApiError::new(status, kind, detail).into_response();
    // An Allow header (405) and the like stay.
    for (name, value) in resp.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The largest request body taken (axum's default).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

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
            ChangeError::Start { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "port_failed"),
            ChangeError::NotSaved(_) => (StatusCode::INTERNAL_SERVER_ERROR, "not_saved"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

/// Parses a JSON request body, refusing unknown fields, with the parser's message.
/// Numbers written with a zero fraction (`300.0`) count as integers, as in JSON Schema.
/// Reads a JSON request body. It must be sent as `application/json`: a web page cannot
/// send that cross-site without a preflight, which the API never grants (see
/// [`crate::http_guard`]).
fn parse<T: DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if !crate::http_guard::is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON sent with 'Content-Type: application/json'",
        ));
    }
    let bad = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "request body: {}",
                vringswitch_config::in_words(&e.to_string())
            ),
        )
    };
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    // serde would also read a struct from an array of its fields in order.
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body: expected a JSON object",
        ));
    }
    integral_floats_to_integers(&mut value);
    serde_json::from_value(value).map_err(bad)
}

/// Rewrites every number with a zero fraction that fits an integer as that integer.
fn integral_floats_to_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f >= -(2f64.powi(53)) && f <= 2f64.powi(53) {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The daemon is up", body = String, content_type = "text/plain")))]
async fn healthz() -> impl IntoResponse {
    "ok\n"
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let evpn: Vec<vringswitch_metrics::EvpnGauges> = s
        .daemon
        .evpn_statuses()
        .into_iter()
        .map(|(port, bridge, st)| vringswitch_metrics::EvpnGauges {
            port,
            bridge,
            state: match st.state {
                vringswitch_evpn::ControlState::Following => "following",
                vringswitch_evpn::ControlState::Stale => "stale",
                vringswitch_evpn::ControlState::Starting => "starting",
                vringswitch_evpn::ControlState::Failed(_) => "failed",
            },
            frr_running: st.frr_running,
            advertised: st.advertised as u64,
            remote_macs: st.routes.macs.len() as u64,
            flood: st.routes.flood.len() as u64,
        })
        .collect();
    let body = s.metrics.render_with_evpn(&s.daemon.switch, &evpn);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

#[utoipa::path(get, path = "/v1/stats", responses((status = 200, description = "Per-worker and per-port counters", body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn stats(_: NoQuery, State(s): State<AppState>) -> Json<Snapshot> {
    Json(Snapshot::take(&s.daemon.switch))
}

/// A bridge with its ports, as `GET /v1/bridges/{name}` returns it.
#[derive(Serialize, utoipa::ToSchema)]
struct BridgeView {
    name: String,
    fdb_aging_s: u64,
    /// Most addresses the bridge learns over all its ports.
    fdb_max_learned: u32,
    /// Metadata for orchestrators (empty: none).
    external_ids: vringswitch_config::ExternalIds,
    ports: Vec<String>,
}

impl BridgeView {
    fn new(spec: BridgeSpec, ports: Vec<String>) -> BridgeView {
        BridgeView {
            name: spec.name,
            fdb_aging_s: spec.fdb_aging_s,
            fdb_max_learned: spec.fdb_max_learned,
            external_ids: spec.external_ids,
            ports,
        }
    }
}

#[utoipa::path(get, path = "/v1/bridges", responses((status = 200, body = [BridgeView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn list_bridges(_: NoQuery, State(s): State<AppState>) -> Json<Vec<BridgeView>> {
    let views = s
        .daemon
        .bridges()
        .into_iter()
        .map(|(spec, ports)| BridgeView::new(spec, ports))
        .collect();
    Json(views)
}

#[utoipa::path(get, path = "/v1/bridges/{name}", params(("name" = String, Path)), responses((status = 200, body = BridgeView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn get_bridge(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<BridgeView>, ApiError> {
    let (spec, ports) = s.daemon.bridge(&name)?;
    Ok(Json(BridgeView::new(spec, ports)))
}

#[utoipa::path(post, path = "/v1/bridges", request_body = BridgeSpec, responses((status = 201, body = BridgeView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 500, body = ErrorBody, description = "Applied but not saved to the state file"), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn add_bridge(
    _: NoQuery,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<BridgeView>), ApiError> {
    let spec: BridgeSpec = parse(&headers, &body)?;
    let name = spec.name.clone();
    let daemon = s.daemon.clone();
    blocking(move || daemon.add_bridge(spec)).await?;
    let (spec, ports) = s.daemon.bridge(&name)?;
    Ok((StatusCode::CREATED, Json(BridgeView::new(spec, ports))))
}

/// `?with_ports=true` of `DELETE /v1/bridges/{name}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBridgeQuery {
    #[serde(default)]
    with_ports: bool,
}

#[utoipa::path(delete, path = "/v1/bridges/{name}", params(("name" = String, Path), ("with_ports" = Option<bool>, Query, description = "Delete the bridge's ports first (as ovs-vsctl del-br); without it, a bridge with ports is refused")), responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Ports are still on it"), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn remove_bridge(
    State(s): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<RemoveBridgeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let daemon = s.daemon.clone();
    if q.with_ports {
        blocking(move || daemon.remove_bridge_with_ports(&name).map(|_| ())).await?;
    } else {
        blocking(move || daemon.remove_bridge(&name)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/v1/bridges/{name}", params(("name" = String, Path)), request_body = BridgePatch, responses((status = 200, body = BridgeView, description = "Changed while it forwards: nothing learnt is forgotten"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn update_bridge(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<BridgeView>, ApiError> {
    let patch: BridgePatch = parse(&headers, &body)?;
    let daemon = s.daemon.clone();
    let n = name.clone();
    blocking(move || daemon.update_bridge(&n, patch)).await?;
    let (spec, ports) = s.daemon.bridge(&name)?;
    Ok(Json(BridgeView::new(spec, ports)))
}

/// Live state of a port.
#[derive(Serialize, utoipa::ToSchema)]
struct PortState {
    /// A frontend is connected to the socket.
    connected: bool,
    /// Its rings are set up: frames can be delivered.
    ready: bool,
    /// Virtio features the frontend acknowledged (while ready), in hex.
    features: Option<String>,
    /// Queue pairs whose rings are ready and enabled.
    queue_pairs_active: usize,
    /// AF_XDP ports: how the socket is attached (`native-with-zerocopy`, `native` or
    /// `generic`), while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    xdp_mode: Option<&'static str>,
}

/// A port: its configuration (as in [`PortSpec`], defaults filled in), live state and
/// counters.
#[derive(Serialize, utoipa::ToSchema)]
struct PortView {
    name: String,
    bridge: String,
    /// `type` and the kind's own settings.
    #[serde(flatten)]
    kind: vringswitch_config::KindSpec,
    /// Queue pairs the port runs (one for TAP and AF_XDP ports).
    queues: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan: Option<VlanConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_macs: Option<Vec<String>>,
    /// The port's addresses: the sources it may send from, and what makes it a member
    /// of its groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_ips: Option<Vec<String>>,
    /// Its security groups (none: not filtered).
    #[serde(skip_serializing_if = "Option::is_none")]
    security_groups: Option<Vec<String>>,
    /// Most addresses the bridge learns on the port (how many it has: `counters`).
    fdb_max_learned: u32,
    /// Policers of what the port sends and of what it is sent (frames dropped by them:
    /// `counters.drops.policed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    police_rx: Option<vringswitch_config::PoliceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    police_tx: Option<vringswitch_config::PoliceConfig>,
    admin: vringswitch_config::AdminState,
    /// Metadata for orchestrators (empty: none).
    external_ids: vringswitch_config::ExternalIds,
    /// The cores whose workers poll the port's queues (none while it is set down).
    cores: Vec<usize>,
    state: PortState,
    /// How vringctl shows the port, in its kind's words.
    words: vringswitch_config::KindWords,
    /// A tunnel port's remote ends (VTEPs): the MAC addresses behind each and its
    /// counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    remotes: Option<Vec<RemoteView>>,
    /// An EVPN tunnel port's control: where it stands with FRR.
    #[serde(skip_serializing_if = "Option::is_none")]
    evpn: Option<EvpnView>,
    /// Packet, byte and drop counters (as in /v1/stats).
    #[schema(value_type = Object)]
    counters: PortSnapshot,
}

/// A tunnel's remote end (VTEP).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RemoteView {
    /// Its tunnel address.
    address: String,
    /// MAC addresses behind it: learnt from what came from it, or installed by the
    /// control plane.
    macs: Vec<RemoteMacView>,
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RemoteMacView {
    mac: String,
    learnt: bool,
}

/// An EVPN tunnel port's control.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvpnView {
    /// `following` (the routes zebra installed), `stale` (FRR is not running, or came
    /// back less than the hold time ago: forwarding on the routes kept), `starting` or
    /// `failed` (see `error`; tried again every second).
    state: String,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Whether FRR runs (the pid files of zebra and bgpd name live processes).
    frr_running: bool,
    /// This host's MAC addresses advertised (written on the segment's kernel mirror).
    advertised: usize,
    /// Remote MAC addresses the routes name (type 2).
    remote_macs: usize,
    /// The remote ends broadcast and unknown frames go to (type-3 routes).
    flood: Vec<String>,
}

fn evpn_view(st: vringswitch_evpn::Status) -> EvpnView {
    EvpnView {
        state: st.state.to_string(),
        error: match st.state {
            vringswitch_evpn::ControlState::Failed(e) => Some(e),
            _ => None,
        },
        frr_running: st.frr_running,
        advertised: st.advertised,
        remote_macs: st.routes.macs.len(),
        flood: st.routes.flood.iter().map(|a| a.to_string()).collect(),
    }
}

fn remote_view(r: vringswitch_ports::vxlan::RemoteEnd) -> RemoteView {
    RemoteView {
        address: r.address.to_string(),
        macs: r
            .macs
            .into_iter()
            .map(|(m, learnt)| RemoteMacView {
                mac: vringswitch_wire::MacAddr(m).to_string(),
                learnt,
            })
            .collect(),
        tx_packets: r.tx_packets,
        tx_bytes: r.tx_bytes,
        rx_packets: r.rx_packets,
        rx_bytes: r.rx_bytes,
    }
}

fn port_view(
    daemon: &Daemon,
    spec: PortSpec,
    handle: &PortHandle,
    snapshot: &Snapshot,
) -> PortView {
    let evpn = daemon.evpn_status(&spec.name).map(evpn_view);
    let attachment = handle.attachment();
    let remotes = attachment
        .as_ref()
        .and_then(|a| a.status().remote_ends())
        .map(|ends| ends.into_iter().map(remote_view).collect());
    let state = PortState {
        connected: handle.is_connected(),
        ready: attachment.is_some(),
        features: attachment
            .as_ref()
            .and_then(|a| a.features())
            .map(|f| format!("{f:#x}")),
        queue_pairs_active: attachment.as_ref().map_or(0, |a| a.active_queue_pairs()),
        xdp_mode: attachment.as_ref().and_then(|a| a.status().attach_mode()),
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
    let queues = spec.queue_pairs();
    let fdb_max_learned = spec.fdb_max_learned();
    let mut cores: Vec<usize> = if spec.admin == vringswitch_config::AdminState::Down {
        Vec::new()
    } else {
        (0..queues)
            .filter_map(|qp| {
                let w = vringswitch_switch::topology::Topology::owner(
                    handle.id(),
                    qp,
                    snapshot.workers.len(),
                );
                snapshot.workers.get(w).map(|w| w.core)
            })
            .collect()
    };
    cores.sort_unstable();
    cores.dedup();
    let words = spec.words(&vringswitch_config::Live {
        attach_mode: state.xdp_mode,
    });
    PortView {
        words,
        remotes,
        evpn,
        kind: spec.shown_kind(),
        name: spec.name,
        bridge: spec.bridge,
        queues,
        vlan: spec.vlan,
        allowed_macs: spec.allowed_macs,
        allowed_ips: spec.allowed_ips,
        security_groups: spec.security_groups,
        fdb_max_learned,
        police_rx: spec.police_rx,
        police_tx: spec.police_tx,
        admin: spec.admin,
        external_ids: spec.external_ids,
        cores,
        state,
        counters,
    }
}

#[utoipa::path(get, path = "/v1/ports", responses((status = 200, body = [PortView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn list_ports(_: NoQuery, State(s): State<AppState>) -> Json<Vec<PortView>> {
    let snapshot = Snapshot::take(&s.daemon.switch);
    let views = s
        .daemon
        .ports()
        .into_iter()
        .map(|(spec, handle)| port_view(&s.daemon, spec, &handle, &snapshot))
        .collect();
    Json(views)
}

#[utoipa::path(get, path = "/v1/ports/{name}", params(("name" = String, Path)), responses((status = 200, body = PortView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn get_port(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PortView>, ApiError> {
    let (spec, handle) = s.daemon.port(&name)?;
    let snapshot = Snapshot::take(&s.daemon.switch);
    Ok(Json(port_view(&s.daemon, spec, &handle, &snapshot)))
}

#[utoipa::path(post, path = "/v1/ports", request_body = PortSpec, responses((status = 201, body = PortView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such bridge"), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody, description = "The port could not be started"), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn add_port(
    _: NoQuery,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PortView>), ApiError> {
    let fields: serde_json::Map<String, serde_json::Value> = parse(&headers, &body)?;
    // Read field by field: a value of the wrong type is a bad request, a port the schema's
    // checks refuse (a setting of another kind) an invalid one.
    let spec = PortSpec::from_fields(fields.into_iter().collect()).map_err(|e| {
        if e.syntax {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body: {e}"),
            )
        } else {
            ChangeError::Invalid(e.message).into()
        }
    })?;
    let name = spec.name.clone();
    let daemon = s.daemon.clone();
    blocking(move || daemon.add_port(spec)).await?;
    let (spec, handle) = s.daemon.port(&name)?;
    let snapshot = Snapshot::take(&s.daemon.switch);
    Ok((
        StatusCode::CREATED,
        Json(port_view(&s.daemon, spec, &handle, &snapshot)),
    ))
}

#[utoipa::path(delete, path = "/v1/ports/{name}", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn remove_port(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let daemon = s.daemon.clone();
    blocking(move || daemon.remove_port(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/v1/ports/{name}", params(("name" = String, Path)), request_body = PortPatch, responses((status = 200, body = PortView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn update_port(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<PortView>, ApiError> {
    let patch: PortPatch = parse(&headers, &body)?;
    let daemon = s.daemon.clone();
    let n = name.clone();
    blocking(move || daemon.update_port(&n, patch)).await?;
    let (spec, handle) = s.daemon.port(&name)?;
    let snapshot = Snapshot::take(&s.daemon.switch);
    Ok(Json(port_view(&s.daemon, spec, &handle, &snapshot)))
}

#[utoipa::path(get, path = "/v1/mirrors", responses((status = 200, body = [vringswitch_config::MirrorSpec]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin")))]
async fn list_mirrors(
    _: NoQuery,
    State(s): State<AppState>,
) -> Json<Vec<vringswitch_config::MirrorSpec>> {
    Json(s.daemon.mirrors())
}

#[utoipa::path(get, path = "/v1/mirrors/{name}", params(("name" = String, Path)), responses((status = 200, body = vringswitch_config::MirrorSpec), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin")))]
async fn get_mirror(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<vringswitch_config::MirrorSpec>, ApiError> {
    Ok(Json(s.daemon.mirror(&name)?))
}

#[utoipa::path(post, path = "/v1/mirrors", request_body = vringswitch_config::MirrorSpec, responses((status = 201, body = vringswitch_config::MirrorSpec, description = "Frames are copied from the ports' next burst on"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn add_mirror(
    _: NoQuery,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<vringswitch_config::MirrorSpec>), ApiError> {
    let spec: vringswitch_config::MirrorSpec = parse(&headers, &body)?;
    let daemon = s.daemon.clone();
    let made = blocking(move || daemon.add_mirror(spec)).await?;
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(delete, path = "/v1/mirrors/{name}", params(("name" = String, Path)), responses((status = 204, description = "Deleted: its output takes part in the bridge again"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn remove_mirror(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let daemon = s.daemon.clone();
    blocking(move || daemon.remove_mirror(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/security-groups", responses((status = 200, body = [vringswitch_config::SecurityGroupSpec]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin")))]
async fn list_security_groups(
    _: NoQuery,
    State(s): State<AppState>,
) -> Json<Vec<vringswitch_config::SecurityGroupSpec>> {
    Json(s.daemon.security_groups())
}

#[utoipa::path(get, path = "/v1/security-groups/{name}", params(("name" = String, Path)), responses((status = 200, body = vringswitch_config::SecurityGroupSpec), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin")))]
async fn get_security_group(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<vringswitch_config::SecurityGroupSpec>, ApiError> {
    Ok(Json(s.daemon.security_group(&name)?))
}

#[utoipa::path(post, path = "/v1/security-groups", request_body = vringswitch_config::SecurityGroupSpec, responses((status = 201, body = vringswitch_config::SecurityGroupSpec, description = "Made; ports naming it are filtered by it from their next burst"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody, description = "A group of that name exists (PUT replaces it)"), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn add_security_group(
    _: NoQuery,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<vringswitch_config::SecurityGroupSpec>), ApiError> {
    let spec: vringswitch_config::SecurityGroupSpec = parse(&headers, &body)?;
    let daemon = s.daemon.clone();
    let made = spec.clone();
    blocking(move || daemon.put_security_group(spec, false)).await?;
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(put, path = "/v1/security-groups/{name}", params(("name" = String, Path)), request_body = vringswitch_config::SecurityGroupSpec, responses((status = 200, body = vringswitch_config::SecurityGroupSpec, description = "Replaced, atomically from one burst to the next: connections the new rules no longer allow are cut at their next frame, the others carry on"), (status = 201, body = vringswitch_config::SecurityGroupSpec, description = "Made"), (status = 400, body = ErrorBody, description = "A bad rule, or a name in the body other than the path's"), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn put_security_group(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<vringswitch_config::SecurityGroupSpec>), ApiError> {
    let spec: vringswitch_config::SecurityGroupSpec = parse(&headers, &body)?;
    if spec.name != name {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "the body names group {:?}, the path {name:?}: a group is not renamed",
                spec.name
            ),
        ));
    }
    let daemon = s.daemon.clone();
    let made = spec.clone();
    let created = blocking(move || daemon.put_security_group(spec, true)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(made)))
}

#[utoipa::path(delete, path = "/v1/security-groups/{name}", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "A port or another group's rule names it"), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn remove_security_group(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let daemon = s.daemon.clone();
    blocking(move || daemon.remove_security_group(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The connections tracked, as listed.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ConnectionsView {
    /// Connections in the table (all of them, not only those listed).
    pub total: usize,
    pub connections: Vec<crate::schema::ConnectionView>,
}

/// How many connections a flush removed.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FlushedView {
    pub flushed: usize,
}

/// Most connections one listing shows.
const MAX_LISTED_CONNECTIONS: usize = 100_000;

#[utoipa::path(get, path = "/v1/conntrack", params(crate::schema::ConnectionFilter), responses((status = 200, body = ConnectionsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin")))]
async fn list_connections(
    State(s): State<AppState>,
    query: Result<Query<crate::schema::ConnectionFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConnectionsView>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let limit = q.limit.unwrap_or(1000).min(MAX_LISTED_CONNECTIONS);
    let daemon = s.daemon.clone();
    let (connections, total) = blocking(move || Ok(daemon.connections(&q, limit))).await?;
    Ok(Json(ConnectionsView { total, connections }))
}

#[utoipa::path(delete, path = "/v1/conntrack", params(crate::schema::ConnectionFilter), responses((status = 200, body = FlushedView, description = "Removed: their next frames must open them again"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn flush_connections(
    State(s): State<AppState>,
    query: Result<Query<crate::schema::ConnectionFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FlushedView>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let daemon = s.daemon.clone();
    let flushed = blocking(move || Ok(daemon.flush_connections(&q))).await?;
    Ok(Json(FlushedView { flushed }))
}

#[utoipa::path(post, path = "/v1/trace", request_body = crate::trace::TraceRequest, responses((status = 200, body = crate::trace::TraceView, description = "What the data path does with that frame now; nothing is learnt or sent"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such port"), (status = 403, body = ErrorBody, description = "A foreign Host or Origin"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn trace_frame(
    _: NoQuery,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<crate::trace::TraceView>, ApiError> {
    let req: crate::trace::TraceRequest = parse(&headers, &body)?;
    Ok(Json(s.daemon.trace(&req)?))
}

/// How long the new binary may take for each step of an upgrade.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpgradeRequest {
    /// Seconds the new binary may take to start and answer, and again to take everything
    /// over (default 30).
    #[schema(minimum = 1, maximum = 600)]
    deadline_s: Option<u64>,
}

#[utoipa::path(post, path = "/v1/upgrade", request_body(content = UpgradeRequest, description = "Optional"), responses((status = 200, body = crate::upgrade::Upgraded, description = "The binary installed at the daemon's path now serves every port and this API; the old process exits. No VM's link went down"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody, description = "Refused before anything stopped (a capture, a VM being migrated, a kind of port not carried over yet), or an upgrade is under way; the daemon serves on"), (status = 502, body = ErrorBody, description = "The new binary exited, hung, spoke no common handover version or refused the state: it was killed, and the running daemon took everything back and serves on"), (status = 501, body = ErrorBody, description = "This daemon cannot replace itself (embedded)"), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn upgrade(
    _: NoQuery,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<crate::upgrade::Upgraded>, ApiError> {
    let req: UpgradeRequest = if body.is_empty() {
        UpgradeRequest::default()
    } else {
        parse(&headers, &body)?
    };
    let deadline = match req.deadline_s {
        None => crate::upgrade::DEFAULT_DEADLINE,
        Some(n @ 1..=600) => std::time::Duration::from_secs(n),
        Some(n) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("deadline_s {n} is not between 1 and 600"),
            ))
        }
    };
    let Some(upgrader) = s.daemon.upgrader().cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            "this daemon is embedded in another program and cannot replace itself",
        ));
    };
    let daemon = s.daemon.clone();
    let outcome = tokio::task::spawn_blocking(move || upgrader.run(&daemon, deadline))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    outcome.map(Json).map_err(|e| {
        use crate::upgrade::UpgradeError;
        let (status, code) = match &e {
            UpgradeError::Refused(_) => (StatusCode::CONFLICT, "conflict"),
            UpgradeError::Busy => (StatusCode::CONFLICT, "busy"),
            UpgradeError::NewBinary { .. } => (StatusCode::BAD_GATEWAY, "new_binary_failed"),
        };
        ApiError::new(status, code, e.to_string())
    })
}

/// The log levels, or why they cannot be changed here.
fn log_control(s: &AppState) -> Result<&Arc<LogControl>, ApiError> {
    s.daemon.log_control().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this daemon's log levels are set by whoever embeds it",
        )
    })
}

#[utoipa::path(get, path = "/v1/log", responses((status = 200, body = LogView, description = "The log levels in effect: in general and per module"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn get_log(_: NoQuery, State(s): State<AppState>) -> Result<Json<LogView>, ApiError> {
    Ok(Json(log_control(&s)?.view()))
}

#[utoipa::path(patch, path = "/v1/log", request_body = LogPatch, responses((status = 200, body = LogView, description = "Applied at once; not saved (a restart logs as VRINGSWITCH_LOG says)"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn change_log(
    _: NoQuery,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<LogView>, ApiError> {
    let patch: LogPatch = parse(&headers, &body)?;
    log_control(&s)?
        .change(&patch)
        .map(Json)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m))
}

#[utoipa::path(get, path = "/v1/bridges/{name}/fdb", params(("name" = String, Path)), responses((status = 200, body = [FdbEntryView]), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn get_fdb(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<FdbEntryView>>, ApiError> {
    Ok(Json(s.daemon.fdb(&name)?))
}

#[utoipa::path(post, path = "/v1/bridges/{name}/fdb", params(("name" = String, Path)), request_body = StaticMacRequest, responses((status = 201, body = StaticMac), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only"), (status = 415, body = ErrorBody, description = "The body was not sent as application/json")))]
async fn add_static_mac(
    _: NoQuery,
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<StaticMac>), ApiError> {
    let req: StaticMacRequest = parse(&headers, &body)?;
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

#[utoipa::path(delete, path = "/v1/bridges/{name}/fdb", params(("name" = String, Path), ("port" = Option<String>, Query, description = "Flush only this port's entries")), responses((status = 204, description = "Flushed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
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

/// `?vlan=N` of `DELETE /v1/bridges/{name}/fdb/{mac}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryQuery {
    vlan: Option<u16>,
}

#[utoipa::path(delete, path = "/v1/bridges/{name}/fdb/{mac}", params(("name" = String, Path), ("mac" = String, Path, description = "The entry's MAC address"), ("vlan" = Option<u16>, Query, description = "The entry's VLAN; needed only when the MAC is known on several")), responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a change over TCP on a daemon that takes changes on its unix socket only")))]
async fn remove_fdb_entry(
    State(s): State<AppState>,
    Path((name, mac)): Path<(String, String)>,
    query: Result<Query<EntryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let daemon = s.daemon.clone();
    blocking(move || daemon.remove_fdb_entry(&name, &mac, q.vlan)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /v1/ports/{name}/capture`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureQuery {
    direction: Option<String>,
    count: Option<u64>,
    seconds: Option<u64>,
    snaplen: Option<u32>,
}

/// Default and largest snaplen, tcpdump's.
const MAX_SNAPLEN: u32 = 262_144;
/// Longest capture by time: a day.
const MAX_CAPTURE_SECONDS: u64 = 86_400;

impl CaptureQuery {
    fn settings(&self) -> Result<(CaptureSettings, CaptureLimits), ApiError> {
        let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", detail);
        let (from_vm, to_vm) = match self.direction.as_deref().unwrap_or("both") {
            "rx" => (true, false),
            "tx" => (false, true),
            "both" => (true, true),
            other => {
                return Err(bad(format!(
                    "direction {other:?} is none of rx (frames the port's VM sends), tx \
                     (frames delivered to it) or both"
                )))
            }
        };
        let snaplen = self.snaplen.unwrap_or(MAX_SNAPLEN);
        if !(1..=MAX_SNAPLEN).contains(&snaplen) {
            return Err(bad(format!(
                "snaplen {snaplen} is not from 1 to {MAX_SNAPLEN} bytes"
            )));
        }
        if self.count == Some(0) {
            return Err(bad(
                "count 0 would capture nothing: give at least 1, or no count".into(),
            ));
        }
        if let Some(s) = self
            .seconds
            .filter(|s| !(1..=MAX_CAPTURE_SECONDS).contains(s))
        {
            return Err(bad(format!(
                "seconds {s} is not from 1 to {MAX_CAPTURE_SECONDS}"
            )));
        }
        Ok((
            CaptureSettings {
                from_vm,
                to_vm,
                snaplen,
            },
            CaptureLimits {
                count: self.count,
                seconds: self.seconds,
            },
        ))
    }
}

#[utoipa::path(get, path = "/v1/ports/{name}/capture", params(("name" = String, Path), ("direction" = Option<String>, Query, description = "rx: frames the port's VM sends; tx: frames delivered to it, as it gets them (VLAN tag pushed or popped); both (the default)"), ("count" = Option<u64>, Query, description = "End after this many frames"), ("seconds" = Option<u64>, Query, description = "End after this long (1 to 86400)"), ("snaplen" = Option<u32>, Query, description = "Bytes kept of each frame, 1 to 262144 (the default)")), responses((status = 200, content_type = "application/x-pcapng", description = "pcapng, streamed until the capture ends: the client leaving, count, seconds, or the port removed. It closes with an interface statistics block: frames seen, and frames the capture could not keep (isb_ifdrop)."), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The port is already being captured"), (status = 403, body = ErrorBody, description = "A foreign Host or Origin, or a capture over TCP on a daemon that takes changes on its unix socket only")))]
async fn capture(
    State(s): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<CaptureQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let (settings, limits) = q.settings()?;
    let daemon = s.daemon.clone();
    let port = name.clone();
    let tap = blocking(move || daemon.start_capture(&port, settings)).await?;
    let body = capture_stream::stream(s.daemon.clone(), &name, tap, limits);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pcapng"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::new(body),
    )
        .into_response())
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
    fn integral_floats_count_as_integers() {
        let mut v = serde_json::json!({"a": 300.0, "b": [1.5, 2.0, -3.0], "c": 1e300, "d": "4.0"});
        super::integral_floats_to_integers(&mut v);
        assert_eq!(v["a"], serde_json::json!(300));
        assert_eq!(v["b"], serde_json::json!([1.5, 2, -3]));
        assert!(v["c"].is_f64());
        assert_eq!(v["d"], "4.0");
    }

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc = super::openapi_document(Some(std::path::Path::new("/run/vs")));
        assert_eq!(
            doc["components"]["schemas"]["VhostUserSettings"]["properties"]["socket"]["pattern"],
            "^/run/vs/(client/)?[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
        );
        for path in [
            "/healthz",
            "/metrics",
            "/v1/stats",
            "/v1/bridges",
            "/v1/bridges/{name}",
            "/v1/bridges/{name}/fdb",
            "/v1/bridges/{name}/fdb/{mac}",
            "/v1/ports",
            "/v1/ports/{name}",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is missing");
        }
        assert!(doc["paths"]["/v1/ports/{name}"]["patch"].is_object());
        for v in doc["components"]["schemas"]["VlanConfig"]["oneOf"]
            .as_array()
            .unwrap()
        {
            assert_eq!(v["additionalProperties"], false);
        }
        // A port: one closed object per kind, with the fields every port has and its own.
        let kinds = doc["components"]["schemas"]["PortSpec"]["oneOf"]
            .as_array()
            .unwrap();
        assert_eq!(kinds.len(), vringswitch_config::PortType::ALL.len());
        for (k, t) in kinds.iter().zip(vringswitch_config::PortType::ALL) {
            assert_eq!(k["additionalProperties"], false);
            assert_eq!(k["properties"]["type"]["enum"][0], t.name());
            for field in ["name", "bridge", "vlan", "admin"]
                .iter()
                .chain(t.own_settings())
            {
                assert!(k["properties"][field].is_object(), "{t}: {field}");
            }
            // A port that gives no type is a VM's.
            if *t == vringswitch_config::PortType::DEFAULT {
                assert_eq!(k["required"], serde_json::json!(["name", "bridge"]));
                assert_eq!(k["properties"]["type"]["default"], t.name());
            } else {
                assert_eq!(k["required"], serde_json::json!(["name", "bridge", "type"]));
            }
        }
        assert_eq!(
            kinds[0]["properties"]["socket"]["pattern"],
            "^/run/vs/(client/)?[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
