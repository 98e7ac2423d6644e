//! The HTTP endpoint: `GET /healthz` and `GET /metrics` (Prometheus text format).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use vringswitch_metrics::Metrics;
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
