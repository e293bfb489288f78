//! The metrics port (`--metrics-listen`, default 127.0.0.1:9464): the Prometheus exposition
//! at `/metrics`, and the same `/healthz` and `/readyz` as the main port, so a scraper's
//! network can probe health too.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder, TextEncoder};

use super::{AppState, health};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

async fn metrics(State(app): State<AppState>) -> Response {
    let Some(registry) = app.prometheus.clone() else {
        return (StatusCode::NOT_FOUND, "metrics are not exported to Prometheus (see OTEL_METRICS_EXPORTER)\n")
            .into_response();
    };
    // Collection runs the host observers, which read /proc: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(64 * 1024);
        TextEncoder::new().encode(&registry.gather(), &mut out).map(|()| out)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, TextEncoder::new().format_type().to_owned())], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics collection failed: {e}\n")).into_response(),
    }
}
