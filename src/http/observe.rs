//! Every HTTP request as OpenTelemetry sees it: a server span named `{method} {route}` that
//! continues the caller's W3C trace context, and the semantic-convention HTTP server metrics.
//! The route is the template (`/images/{image_id}`), never the raw path, so metric
//! cardinality stays bounded.

use std::{panic::AssertUnwindSafe, time::Instant};

use axum::{
    body::HttpBody,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use futures_util::FutureExt as _;
use std::sync::OnceLock;

use opentelemetry::{
    KeyValue, global,
    propagation::Extractor,
    trace::{FutureExt as _, Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _},
};
use opentelemetry_semantic_conventions::attribute as attr;

use super::{AppState, routes::templates};
use crate::telemetry::{
    errors,
    http_server::{self, Answer, Failure},
};

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
fn route(method: &Method, matched: Option<&MatchedPath>, path: &str) -> Option<usize> {
    let matched = matched?.as_str();
    let matched = if matched == "/images/{image_id}" && method == Method::GET && path.ends_with(".png") {
        "/images/{image_id}.png"
    } else {
        matched
    };
    // Every template is in the list the routers are built from: none can be missing.
    super::routes::templates().iter().position(|r| *r == matched)
}

/// Known methods as themselves; anything else as `_OTHER`, as the convention asks.
const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "_OTHER"];

fn method_index(method: &Method) -> usize {
    METHODS[..9].iter().position(|m| *m == method.as_str()).unwrap_or(9)
}

/// `{method} {route}` for every pair, built once: span names cost no allocation per request.
fn span_name(method: usize, route: usize) -> &'static str {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        METHODS
            .iter()
            .flat_map(|m| templates().iter().map(move |r| &*Box::leak(format!("{m} {r}").into_boxed_str())))
            .collect()
    });
    names[method * templates().len() + route]
}

/// The server span is made with the OpenTelemetry API directly (one builder, attributes in
/// one vector) rather than through a `tracing` span: it is the hottest span and the bridge
/// costs several microseconds more per request. Its context is attached while the request is
/// polled, so everything below (the writer's spans, log lines with their trace ids, the OTLP
/// log bridge) sees it as the current context.
pub async fn observe(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method_at = method_index(req.method());
    let method = METHODS[method_at];
    let route_at = route(req.method(), req.extensions().get::<MatchedPath>(), req.uri().path());
    let route = route_at.map(|r| templates()[r]);
    // The convention's name: `{method} {route}`, or the method alone without a route, and
    // `HTTP` for a method it does not know.
    let name = match (route_at, method) {
        (_, "_OTHER") => "HTTP",
        (Some(r), _) => span_name(method_at, r),
        (None, _) => method,
    };
    let parent = global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let protocol_at = version(&req);
    let protocol = PROTOCOLS[protocol_at];
    let tracer = crate::telemetry::span::tracer();
    let mut span = tracer.span_builder(name).with_kind(SpanKind::Server).start_with_context(tracer, &parent);
    // Attributes only for a span that records (no sampler here reads them to decide).
    if span.is_recording() {
        span_attributes(&mut span, &req, method, route, protocol);
    }
    let cx = parent.with_span(span);
    let request_size = req.body().size_hint().exact();
    // Only when asked for (DRAW64_LOG=info,draw64=debug): the access log's client address and
    // path (the query is left out: it may carry credentials).
    let client = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        let peer = super::serve::peer_ip(req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>());
        (app.trusted_proxies.client(peer, req.headers()), req.uri().path().to_owned())
    });

    let active = http_server::active(method_at, &METHODS);
    active.add(1);
    if let Some(length) = crate::faults::cpu_burn() {
        crate::faults::mark_span(&cx.span(), crate::faults::Fault::CpuBurn);
        crate::faults::burn(length);
    }
    // A panic in a handler is recorded by the panic hook (in the handler's span) and answered
    // here with a 500, so the connection and the instance go on.
    let handled = AssertUnwindSafe(async move {
        if crate::drill::take(crate::drill::Drill::Request) {
            panic!("fire drill: a panic in a request handler");
        }
        next.run(req).await
    })
    .catch_unwind()
    .with_context(cx.clone())
    .await;
    let (mut res, panicked) = match handled {
        Ok(res) => (res, false),
        Err(_) => (super::error::ApiError::Panicked.into_response(), true),
    };
    active.add(-1);
    // One middleware for both: each layer costs every request a boxed future and a clone.
    super::middleware::stamp(&app, &mut res);

    let status = res.status();
    let span = cx.span();
    span.set_attribute(KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16())));
    // Only the server's own failures are errors (4xx are the client's, by the convention).
    let failure = if panicked {
        Failure::Panic
    } else if status.is_server_error() {
        // The cause, when the answer carries one, was logged where it happened (the writer, a
        // timeout): here it becomes this request's exception event, not a second log record.
        match res.extensions_mut().remove::<super::error::Fault>() {
            Some(fault) => {
                errors::mark(&cx, status.as_str(), "draw64::service::ServiceError", &fault.0, None);
            }
            None => {
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, status.as_str().to_owned()));
                span.set_status(Status::error(status.canonical_reason().unwrap_or("server error")));
            }
        }
        Failure::Status
    } else {
        Failure::None
    };
    let answer = Answer { method: method_at, route: route_at, protocol: protocol_at, status: status.as_u16(), failure };
    let attributes = || {
        let mut attrs = Vec::with_capacity(6);
        attrs.extend([
            KeyValue::new(attr::HTTP_REQUEST_METHOD, method),
            KeyValue::new(attr::URL_SCHEME, "http"),
            KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16())),
            KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, protocol),
        ]);
        if let Some(r) = route {
            attrs.push(KeyValue::new(attr::HTTP_ROUTE, r));
        }
        match failure {
            Failure::Panic => attrs.push(KeyValue::new(attr::ERROR_TYPE, "panic")),
            Failure::Status => attrs.push(KeyValue::new(attr::ERROR_TYPE, status.as_str().to_owned())),
            Failure::None => {}
        }
        attrs
    };
    let took = started.elapsed();
    http_server::record(answer, attributes, took.as_secs_f64(), request_size, res.body().size_hint().exact());
    {
        let _attached = cx.clone().attach();
        // The access log: debug, so it costs nothing unless asked for (DRAW64_LOG=info,draw64=debug).
        if let Some((client, path)) = client {
            tracing::debug!(
                method,
                http.route = route.unwrap_or("-"),
                url.path = path,
                status = status.as_u16(),
                client.address = %client,
                duration_s = took.as_secs_f64(),
                "request"
            );
        }
    }
    span.end();
    res
}

fn span_attributes(
    span: &mut impl opentelemetry::trace::Span,
    req: &Request,
    method: &'static str,
    route: Option<&'static str>,
    protocol: &'static str,
) {
    let mut attributes = Vec::with_capacity(10);
    attributes.extend([
        KeyValue::new(attr::HTTP_REQUEST_METHOD, method),
        KeyValue::new(attr::URL_PATH, req.uri().path().to_owned()),
        KeyValue::new(attr::URL_SCHEME, "http"),
        KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, protocol),
    ]);
    if let Some(q) = req.uri().query() {
        attributes.push(KeyValue::new(attr::URL_QUERY, redact_query(q)));
    }
    if let Some(r) = route {
        attributes.push(KeyValue::new(attr::HTTP_ROUTE, r));
    }
    if let Some(agent) = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new(attr::USER_AGENT_ORIGINAL, agent.to_owned()));
    }
    span.set_attributes(attributes);
}

/// `url.query` with the values of parameters that may carry credentials replaced by
/// `REDACTED`, as the semantic conventions ask (`?token=…` must not reach a trace backend).
pub fn redact_query(query: &str) -> String {
    const SENSITIVE: [&str; 10] =
        ["token", "key", "secret", "pass", "pwd", "sig", "auth", "credential", "session", "code"];
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SENSITIVE.iter().any(|s| name.to_ascii_lowercase().contains(s)) => {
                format!("{name}=REDACTED")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `network.protocol.version`, by the index `version` answers.
const PROTOCOLS: [&str; 4] = ["1.1", "1.0", "2", "3"];

fn version(req: &Request) -> usize {
    match req.version() {
        axum::http::Version::HTTP_10 => 1,
        axum::http::Version::HTTP_2 => 2,
        axum::http::Version::HTTP_3 => 3,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_leave_the_query_before_it_is_recorded() {
        let q = super::redact_query("seconds=5&token=abc&X-Amz-Signature=s&api_key=k&format=svg&flag");
        assert_eq!(q, "seconds=5&token=REDACTED&X-Amz-Signature=REDACTED&api_key=REDACTED&format=svg&flag");
    }
}
