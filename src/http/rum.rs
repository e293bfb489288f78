//! `POST /rum`: what pages measure of their users' experience (`domain::browser`), turned into
//! OpenTelemetry signals — the `draw64.browser.*` histograms and counters, and a log record per
//! browser error — so real-user monitoring shows in Prometheus and Grafana with nothing else
//! to run. Public and unauthenticated, so strictly bounded: a 16 KiB body, a fixed schema, the
//! page's own origin only, and a rate per client address and in all.

use std::{
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode};
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as attr;

use super::{AppState, caller::Caller, error::ApiError, extract::TimedBody};
use crate::{
    domain::browser::{Event, Report, Timing},
    limits::{Bucket, Rate, Rates},
    telemetry::metrics,
};

/// Largest report accepted (a page sends a few hundred bytes every few seconds).
pub const MAX_REPORT: usize = 16 * 1024;
/// Reports per second one client address may send, and its burst; a page sends one every 5 s.
const PER_CLIENT: Rate = Rate { per_second: 2.0, burst: 20.0 };
/// Reports per second from everyone together, and the burst.
const IN_ALL: Rate = Rate { per_second: 500.0, burst: 1000.0 };
/// A draw→echo at least this slow is logged with its stroke's trace id.
const SLOW_STROKE_MS: f64 = 250.0;

#[utoipa::path(post, path = "/rum", tag = "telemetry",
    request_body(content = String, description = "`{\"session\": HEX, \"events\": [...]}`: timing, socket and error events (see docs/observability.md)"),
    responses((status = 204, description = "Accepted"), (status = 403, description = "From another origin"),
        (status = 413, description = "Larger than 16 KiB"), (status = 422, description = "Not a valid report"),
        (status = 429, description = "Too many reports")))]
pub async fn report(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Result<TimedBody, ApiError>,
) -> Result<StatusCode, ApiError> {
    let outcome = accept(&app, caller, body);
    let label = match &outcome {
        Ok(_) => "accepted",
        Err(ApiError::TooLarge) => "too_large",
        Err(ApiError::CrossOrigin) => "forbidden",
        Err(ApiError::Throttled { .. }) => "rate_limited",
        Err(_) => "invalid",
    };
    metrics().browser_reports.add(1, &[KeyValue::new("draw64.report.outcome", label)]);
    record(&outcome?);
    Ok(StatusCode::NO_CONTENT)
}

fn accept(app: &AppState, caller: Result<Caller, ApiError>, body: Result<TimedBody, ApiError>) -> Result<Report, ApiError> {
    let caller = caller?;
    let TimedBody(body) = body?;
    if body.len() > MAX_REPORT {
        return Err(ApiError::TooLarge);
    }
    app.rum_limits.allow(caller.client).map_err(|retry_after| ApiError::Throttled { what: "reports", retry_after })?;
    Ok(Report::parse_json(&body)?)
}

fn record(report: &Report) {
    let m = metrics();
    for event in &report.events {
        match event {
            Event::Timing { name: Timing::Cls, value, .. } => m.browser_layout_shift.record(*value, &[]),
            Event::Timing { name, value, trace_id } => {
                m.browser_duration.record(value / 1000.0, &[KeyValue::new("draw64.browser.timing", name.as_str())]);
                // A slow stroke names its trace: from the browser's p99 to the server's spans.
                if let Some(trace_id) = trace_id
                    && *value >= SLOW_STROKE_MS
                {
                    tracing::info!(stroke.trace_id = %trace_id, latency_ms = value, session = %report.session, "slow stroke");
                }
            }
            Event::Socket { event, code } => m.browser_socket_events.add(
                1,
                &[
                    KeyValue::new("draw64.browser.socket.event", event.as_str()),
                    KeyValue::new("draw64.close.code", *code),
                ],
            ),
            Event::Error { kind, message } => {
                m.browser_errors.add(1, &[KeyValue::new(attr::ERROR_TYPE, *kind)]);
                tracing::warn!(error.type = kind, browser.message = %message, session = %report.session, "browser error");
            }
        }
    }
}

/// Token buckets: one per client address, and one for everyone.
pub struct RumLimits {
    clients: Rates<1>,
    all: Mutex<Bucket>,
}

impl Default for RumLimits {
    fn default() -> Self {
        Self { clients: Rates::new([PER_CLIENT]), all: Mutex::new(Bucket::full(IN_ALL, Instant::now())) }
    }
}

impl RumLimits {
    /// Takes a report's token, or answers how long until one is free.
    fn allow(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        self.clients.take(client, [1.0], now).map_err(|(_, wait)| wait)?;
        self.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(IN_ALL, 1.0, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limits = RumLimits::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let allowed = (0..100).filter(|_| limits.allow(a).is_ok()).count();
        assert_eq!(allowed, PER_CLIENT.burst as usize);
        assert!(limits.allow(b).is_ok());
    }
}
