//! Every HTTP request as OpenTelemetry sees it: a server span named `{method} {route}` that
//! continues the caller's W3C trace context, and the semantic-convention HTTP server metrics.
//! The route is the template (`/images/{image_id}`), never the raw path, so metric
//! cardinality stays bounded.

use std::time::Instant;

use axum::{
    body::HttpBody,
    extract::{MatchedPath, Request},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::Response,
};
use opentelemetry::{KeyValue, global, propagation::Extractor, trace::Status};
use opentelemetry_semantic_conventions::attribute as attr;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::metrics;

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The route template; the PNG route shares axum's `/images/{image_id}` (a dynamic segment
/// cannot carry a suffix) and is reported as the template the API documents.
fn route(method: &Method, matched: Option<&MatchedPath>, path: &str) -> Option<String> {
    let matched = matched?.as_str();
    if matched == "/images/{image_id}" && method == Method::GET && path.ends_with(".png") {
        return Some("/images/{image_id}.png".to_owned());
    }
    Some(matched.to_owned())
}

/// Known methods as themselves; anything else as `_OTHER`, as the convention asks.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_name(req.method());
    let route = route(req.method(), req.extensions().get::<MatchedPath>(), req.uri().path());
    let name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!("HTTP request", otel.name = %name, otel.kind = "server");
    let parent = global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let _ = span.set_parent(parent);
    span.set_attribute(attr::HTTP_REQUEST_METHOD, method);
    span.set_attribute(attr::URL_PATH, req.uri().path().to_owned());
    if let Some(q) = req.uri().query() {
        span.set_attribute(attr::URL_QUERY, q.to_owned());
    }
    span.set_attribute(attr::URL_SCHEME, "http");
    span.set_attribute(attr::NETWORK_PROTOCOL_VERSION, version(&req));
    if let Some(r) = &route {
        span.set_attribute(attr::HTTP_ROUTE, r.clone());
    }
    if let Some(agent) = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        span.set_attribute(attr::USER_AGENT_ORIGINAL, agent.to_owned());
    }
    let protocol = version(&req);
    let request_size = req.body().size_hint().exact();

    let m = metrics();
    let active = [KeyValue::new(attr::HTTP_REQUEST_METHOD, method), KeyValue::new(attr::URL_SCHEME, "http")];
    m.http_active.add(1, &active);
    let res = next.run(req).instrument(span.clone()).await;
    m.http_active.add(-1, &active);

    let status = res.status();
    span.set_attribute(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16()));
    let mut attrs = vec![
        KeyValue::new(attr::HTTP_REQUEST_METHOD, method),
        KeyValue::new(attr::URL_SCHEME, "http"),
        KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16())),
        KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, protocol),
    ];
    if let Some(r) = route {
        attrs.push(KeyValue::new(attr::HTTP_ROUTE, r));
    }
    if status.is_server_error() {
        let code = status.as_str().to_owned();
        span.set_attribute(attr::ERROR_TYPE, code.clone());
        span.set_status(Status::error(status.canonical_reason().unwrap_or("server error")));
        attrs.push(KeyValue::new(attr::ERROR_TYPE, code));
    }
    let took = started.elapsed();
    m.http_duration.record(took.as_secs_f64(), &attrs);
    // The access log: debug, so it costs nothing unless asked for (DRAW64_LOG=info,draw64=debug).
    span.in_scope(|| tracing::debug!(method, status = status.as_u16(), duration_s = took.as_secs_f64(), "request"));
    if let Some(size) = request_size {
        m.http_request_size.record(size, &attrs);
    }
    if let Some(size) = res.body().size_hint().exact() {
        m.http_response_size.record(size, &attrs);
    }
    res
}

fn version(req: &Request) -> &'static str {
    match req.version() {
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
