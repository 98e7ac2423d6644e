//! The HTTP endpoint: `GET /healthz`, `GET /metrics` (Prometheus text format) and
//! `GET /v1/stats` (the same counters as JSON, for `vringctl stats`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use vringswitch_metrics::{Metrics, Snapshot};
use vringswitch_switch::Switch;

#[derive(Clone)]
struct AppState {
    switch: Arc<Switch>,
    metrics: Arc<Metrics>,
}

/// The router of the HTTP endpoint.
pub fn router(switch: Arc<Switch>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .with_state(AppState {
            switch,
            metrics: Arc::new(Metrics::new()),
        })
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = s.metrics.render(&s.switch);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn stats(State(s): State<AppState>) -> Json<Snapshot> {
    Json(Snapshot::take(&s.switch))
}
