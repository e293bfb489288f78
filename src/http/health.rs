//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the store answers
//! through the real write path and the instance is not draining).

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;

/// A store slower than this is reported not ready rather than hanging the health check.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    status: &'static str,
    /// Present when not ready: which checks failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Each check by name (`store`, `bus` with several instances, `shutdown`, and `faults`
    /// while the `failingReadiness` fault flag is on).
    checks: std::collections::BTreeMap<&'static str, Check>,
    /// Present while fault flags are on: each active flag, its value and where it came from,
    /// so an injected fault is never mistaken for a real one.
    #[serde(skip_serializing_if = "Option::is_none")]
    faults: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Check {
    /// `ok` or what is wrong.
    status: String,
    /// How long the check took, for checks that reach a dependency.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_seconds: Option<f64>,
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "Not ready: the failing checks are named", body = Readiness)))]
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let mut checks = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    let store = match app.service.ping(STORE_TIMEOUT).await {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    checks.insert("store", Check { status: store, latency_seconds: Some(started.elapsed().as_secs_f64()) });
    if let Some(bus) = &app.bus {
        let status = bus.check().err().unwrap_or_else(|| "ok".to_owned());
        checks.insert("bus", Check { status, latency_seconds: None });
    }
    let shutdown = if app.lifecycle.is_draining() { "draining" } else { "ok" };
    checks.insert("shutdown", Check { status: shutdown.to_owned(), latency_seconds: None });
    if crate::faults::readiness_fails() {
        let status = "failing on purpose: the failingReadiness fault flag is on".to_owned();
        checks.insert("faults", Check { status, latency_seconds: None });
    }
    let faults = banner();
    let failing: Vec<&str> = checks.iter().filter(|(_, c)| c.status != "ok").map(|(k, _)| *k).collect();
    if failing.is_empty() {
        (StatusCode::OK, Json(Readiness { status: "ok", detail: None, checks, faults }))
    } else {
        let detail = Some(format!("not ready: {}", failing.join(", ")));
        (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { status: "unavailable", detail, checks, faults }))
    }
}

/// "fault injection active: failingCommits=0.2 (variant 20% of the flag file), …".
fn banner() -> Option<String> {
    let active = crate::faults::active();
    if active.is_empty() {
        return None;
    }
    let each: Vec<String> = active
        .iter()
        .map(|(fault, (setting, source))| {
            let from = match source {
                crate::faults::Source::File(variant) => format!("variant {variant} of the flag file"),
                crate::faults::Source::Admin => "set over /admin/faults".to_owned(),
            };
            format!("{}={} ({from})", fault.key(), setting.to_json())
        })
        .collect();
    Some(format!("fault injection active: {}", each.join(", ")))
}
