//! The metrics port (`--metrics-listen`, default 127.0.0.1:9464): the Prometheus exposition
//! at `/metrics`, and the same `/healthz` and `/readyz` as the main port, so a scraper's
//! network can probe health too.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus::{Encoder, TextEncoder};

use super::AppState;

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in super::routes::metrics_port() {
        router = router.route(route.template, route.handlers);
    }
    router.with_state(state)
}

pub(super) async fn metrics(State(app): State<AppState>) -> Response {
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
