//! The HTTP edge: routers for the REST API, WebSocket, SSE, health, the page and the docs;
//! the middleware every response passes through; the one error → response mapping.

pub mod api;
pub mod caller;
pub mod client;
mod deadlines;
mod debug;
pub mod docs;
mod drain;
pub mod error;
mod extract;
mod faults;
mod health;
pub mod metrics_port;
mod middleware;
mod observe;
mod routes;
pub mod rum;
pub mod serve;
mod sse;
mod web;
pub mod ws;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit};

use crate::{lifecycle::Lifecycle, service::Service};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 1 << 20;

/// What every handler shares. Axum clones the state for each request: behind one `Arc` that
/// is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub service: Service,
    pub lifecycle: Arc<Lifecycle>,
    pub ws_ping_interval: Duration,
    /// `service.instance.id`, sent as `X-Served-By` on every answer (encoded once; `None` if
    /// it cannot be a header value).
    pub served_by: Option<axum::http::HeaderValue>,
    /// The cross-instance bus, with several instances (for readiness).
    pub bus: Option<Arc<dyn crate::bus::Bus>>,
    /// What `/metrics` encodes, when metrics go to Prometheus.
    pub prometheus: Option<prometheus::Registry>,
    /// The rates of `POST /rum`.
    /// Whether the metrics port may arm fire drills (`--fire-drills`).
    pub fire_drills: bool,
    /// Whose `X-Forwarded-For` names the client (`--trusted-proxies`).
    pub trusted_proxies: client::TrustedProxies,
    /// The public port's limits, and where their refusals are counted.
    pub limits: Arc<crate::limits::Limits>,
    /// Whose pages may change images (`--allowed-origins`).
    pub allowed_origins: caller::AllowedOrigins,
    /// `DRAW64_ADMIN_TOKEN`.
    pub admin_token: caller::AdminToken,
}

/// The public port's router (`routes::public`, and the docs).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in routes::public() {
        router = router.route(route.template, route.handlers);
    }
    router
        .merge(docs::router())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe))
        .with_state(state)
}
