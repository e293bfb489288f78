//! `POST /rum`: what pages measure of their users' experience (`domain::browser`), turned into
//! OpenTelemetry signals — the `draw64.browser.*` histograms and counters, and a log record per
//! browser error — so real-user monitoring shows in Prometheus and Grafana with nothing else
//! to run. Public and unauthenticated, so strictly bounded: a 16 KiB body, a fixed schema, the
//! page's own origin only, and a rate per client address and in all (`limits`).

use axum::{extract::State, http::StatusCode};
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as attr;

use super::{
    AppState,
    caller::Caller,
    error::{ApiError, Detail},
    extract::TimedBody,
};
use crate::{
    domain::browser::{Event, Report, Timing},
    telemetry::metrics,
};

/// A report's schema, for the API document (written in `docs::document`; the parser is
/// `domain::browser`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct BrowserReport(Vec<u8>);

/// Largest report accepted (a page sends a few hundred bytes every few seconds).
pub const MAX_REPORT: usize = 16 * 1024;
/// A draw→echo at least this slow is logged with its stroke's trace id.
const SLOW_STROKE_MS: f64 = 250.0;

#[utoipa::path(post, path = "/rum", tag = "telemetry",
    request_body(content = BrowserReport, content_type = "application/json", description = "Timing, socket and error events (docs/observability.md); at most 16 KiB"),
    responses((status = 204, description = "Accepted"), (status = 403, description = "From another origin", body = Detail),
        (status = 408, description = "The body did not arrive within --body-timeout", body = Detail),
        (status = 413, description = "Larger than 16 KiB", body = Detail), (status = 422, description = "Not a valid report", body = Detail),
        (status = 429, description = "Too many reports; Retry-After says when", body = Detail)))]
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

fn accept(
    app: &AppState,
    caller: Result<Caller, ApiError>,
    body: Result<TimedBody, ApiError>,
) -> Result<Report, ApiError> {
    let caller = caller?;
    let TimedBody(body) = body?;
    if body.len() > MAX_REPORT {
        return Err(ApiError::TooLarge);
    }
    app.limits.report(caller.client).map_err(|retry_after| ApiError::Throttled { what: "reports", retry_after })?;
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
