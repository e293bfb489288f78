//! One command frame from a client: parsed, queued to the writer, its outcome awaited — each
//! in a span of its own (a new trace, linked to the socket's connect) that lasts until the
//! outcome.
//!
//! The spans are made with the OpenTelemetry API directly, as for HTTP requests: through the
//! `tracing` bridge, three spans per frame took 4.3 % of the server's CPU samples at 10,000
//! frames a second (users-1000) even with no trace exported. Attributes and the link only for
//! a span that records.

use std::pin::Pin;

use opentelemetry::{
    Context, KeyValue,
    trace::{FutureExt as _, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer as _},
};
use opentelemetry_semantic_conventions::attribute as attr;

use super::count_in;
use crate::{
    domain::{Command, ImageId},
    http::{
        AppState,
        error::{ApiError, count_rejection},
    },
    service::ServiceError,
    telemetry::{errors, propagation::parse_traceparent},
};

/// The outcome of a queued command: `Some(detail)` when it was refused.
pub type Pending = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// The socket a command came from, for its span.
pub struct Origin<'a> {
    pub image: &'a ImageId,
    pub session_id: &'a str,
    pub connect: &'a SpanContext,
}

/// Parses `frame` and queues it; `Err(detail)` when refused at once.
pub async fn handle(app: &AppState, origin: &Origin<'_>, frame: &[u8]) -> Result<Pending, String> {
    let tracer = crate::telemetry::span::tracer();
    let started = std::time::SystemTime::now();
    let parsed = Command::parse_frame(frame);
    let validated = std::time::SystemTime::now();
    // The page's stroke, when it sent one, is the parent: its trace is the stroke's, from the
    // browser to the commit. Otherwise the command is a trace of its own.
    let parent = match &parsed {
        Ok((_, Some(traceparent))) => {
            parse_traceparent(traceparent).map_or_else(Context::new, |sc| Context::new().with_remote_span_context(sc))
        }
        _ => Context::new(),
    };
    let mut span = tracer
        .span_builder("ws command")
        .with_kind(SpanKind::Consumer)
        .with_start_time(started)
        .start_with_context(tracer, &parent);
    if span.is_recording() {
        span.add_link(origin.connect.clone(), Vec::new());
        span.set_attribute(KeyValue::new("draw64.image.id", origin.image.to_string()));
        span.set_attribute(KeyValue::new("draw64.ws.session_id", origin.session_id.to_owned()));
    }
    let cx = parent.with_span(span);
    tracer
        .span_builder("validate")
        .with_start_time(started)
        .start_with_context(tracer, &cx)
        .end_with_timestamp(validated);
    let command = match parsed {
        Ok((command, _)) => command,
        Err(e) => {
            count_in("invalid");
            // The client's mistake, at information level: one record per refused frame.
            errors::record(&cx, &errors::INVALID_COMMAND, &e);
            let e = ApiError::from(e);
            count_rejection(&e);
            cx.span().end();
            return Err(e.detail());
        }
    };
    count_in(command.kind());
    if cx.span().is_recording() {
        cx.span().set_attribute(KeyValue::new("draw64.command.type", command.kind()));
        if let Command::Draw(pixels) = &command {
            cx.span().set_attribute(KeyValue::new("draw64.pixel.count", pixels.len() as i64));
        }
    }
    // Attached while the queueing and the outcome are polled: the writer links its batch to it.
    let commit = cx.with_span(tracer.start_with_context("commit", &cx));
    let queued = app.service.submit(origin.image.clone(), command).with_context(commit.clone()).await;
    let outcome = match queued {
        Ok(outcome) => outcome,
        Err(e) => {
            let detail = refused(&cx, e);
            end(&cx, &commit);
            return Err(detail);
        }
    };
    Ok(Box::pin(async move {
        let detail = outcome.with_context(commit.clone()).await.err().map(|e| refused(&cx, e));
        end(&cx, &commit);
        detail
    }))
}

/// A refusal from the service: counted, recorded on the command's span, and its detail for
/// the client. A failure on the server's side (503) was logged where it happened (the writer);
/// here it becomes the command's exception event.
fn refused(command: &Context, e: ServiceError) -> String {
    let e = ApiError::from(e);
    count_rejection(&e);
    let status = e.status();
    if status.is_server_error() {
        errors::mark(command, status.as_str(), std::any::type_name::<ServiceError>(), &e.to_string(), None);
    } else {
        command.span().set_attribute(KeyValue::new(attr::ERROR_TYPE, status.as_str().to_owned()));
    }
    e.detail()
}

/// Ends a command's spans, the child first.
fn end(command: &Context, commit: &Context) {
    commit.span().end();
    command.span().end();
}
