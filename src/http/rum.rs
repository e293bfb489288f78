//! `POST /rum`: what pages measure of their users' experience (`domain::browser`), turned into
//! OpenTelemetry signals — the `draw64.browser.*` histograms and counters, and a log record per
//! browser error — so real-user monitoring shows in Prometheus and Grafana with nothing else
//! to run. Public and unauthenticated, so strictly bounded: a 16 KiB body, a fixed schema, the
//! page's own origin only, and a rate per client address and in all.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::Instant,
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, State},
    http::{HeaderMap, StatusCode, header},
};
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as attr;

use super::{AppState, error::ApiError};
use crate::{
    domain::browser::{Event, Report, Timing},
    telemetry::metrics,
};

/// Largest report accepted (a page sends a few hundred bytes every few seconds).
pub const MAX_REPORT: usize = 16 * 1024;
/// Reports per second one client address may send, and its burst; a page sends one every 5 s.
const PER_CLIENT: (f64, f64) = (2.0, 20.0);
/// Reports per second from everyone together, and the burst.
const IN_ALL: (f64, f64) = (500.0, 1000.0);
/// A draw→echo at least this slow is logged with its stroke's trace id.
const SLOW_STROKE_MS: f64 = 250.0;
/// Client buckets kept; past this, the idle ones are forgotten.
const MAX_CLIENTS: usize = 10_000;

#[utoipa::path(post, path = "/rum", tag = "telemetry",
    request_body(content = String, description = "`{\"session\": HEX, \"events\": [...]}`: timing, socket and error events (see docs/observability.md)"),
    responses((status = 204, description = "Accepted"), (status = 403, description = "From another origin"),
        (status = 413, description = "Larger than 16 KiB"), (status = 422, description = "Not a valid report"),
        (status = 429, description = "Too many reports")))]
pub async fn report(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let client = app.trusted_proxies.client(peer.ip(), &headers);
    let outcome = accept(&app, client, &headers, &body);
    let label = match &outcome {
        Ok(_) => "accepted",
        Err(ApiError::TooLarge) => "too_large",
        Err(ApiError::CrossOrigin) => "forbidden",
        Err(ApiError::RateLimited) => "rate_limited",
        Err(_) => "invalid",
    };
    metrics().browser_reports.add(1, &[KeyValue::new("draw64.report.outcome", label)]);
    record(&outcome?);
    Ok(StatusCode::NO_CONTENT)
}

fn accept(app: &AppState, client: IpAddr, headers: &HeaderMap, body: &[u8]) -> Result<Report, ApiError> {
    if body.len() > MAX_REPORT {
        return Err(ApiError::TooLarge);
    }
    if !same_origin(headers) {
        return Err(ApiError::CrossOrigin);
    }
    if !app.rum_limits.allow(client) {
        return Err(ApiError::RateLimited);
    }
    Ok(Report::parse_json(body)?)
}

/// A browser names the page's origin in `Origin` on every POST; a report from a page of another
/// origin is refused. (A client that sends no `Origin` is not a browser page of another site.)
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
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
    buckets: Mutex<(Bucket, HashMap<IpAddr, Bucket>)>,
}

impl Default for RumLimits {
    fn default() -> Self {
        Self { buckets: Mutex::new((Bucket::full(IN_ALL), HashMap::new())) }
    }
}

impl RumLimits {
    fn allow(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (all, clients) = &mut *guard;
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, b| !b.refilled(now, PER_CLIENT));
        }
        let mine = clients.entry(client).or_insert_with(|| Bucket::full(PER_CLIENT));
        mine.take(now, PER_CLIENT) && all.take(now, IN_ALL)
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full((_, burst): (f64, f64)) -> Self {
        Self { tokens: burst, at: Instant::now() }
    }

    /// Whether it would be full again by `now` (so forgetting it changes nothing).
    fn refilled(&self, now: Instant, (rate, burst): (f64, f64)) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * rate >= burst
    }

    fn take(&mut self, now: Instant, (rate, burst): (f64, f64)) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limits = RumLimits::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let allowed = (0..100).filter(|_| limits.allow(a)).count();
        assert_eq!(allowed, PER_CLIENT.1 as usize);
        assert!(limits.allow(b));
    }

    #[test]
    fn only_the_page_s_own_origin_may_report() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "draw.example:8000".parse().unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            h
        };
        assert!(same_origin(&headers(None)));
        assert!(same_origin(&headers(Some("http://draw.example:8000"))));
        assert!(!same_origin(&headers(Some("http://evil.example"))));
        assert!(!same_origin(&headers(Some("null"))));
    }
}
