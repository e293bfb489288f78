//! One command frame from a client: parsed, queued to the writer, its outcome awaited — each
//! in a span of its own (a new trace, linked to the socket's connect) that lasts until the
//! outcome.
//!
//! The spans are made with the OpenTelemetry API directly, as for HTTP requests: through the
//! `tracing` bridge, three spans per frame took 4.3 % of the server's CPU samples at 10,000
//! frames a second (users-1000) even with no trace exported. Attributes and the link only for
//! a span that records.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

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
        caller::Caller,
        error::{ApiError, count_rejection},
    },
    limits::{Bucket, Limit, Limits, Rate},
    service::ServiceError,
    telemetry::{errors, propagation::parse_traceparent},
};

/// The outcome of a queued command: `Some(detail)` when it was refused.
pub type Pending = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// The socket a command came from, for its span and its client's limits.
pub struct Origin<'a> {
    pub image: &'a ImageId,
    pub session_id: &'a str,
    pub connect: &'a SpanContext,
    pub caller: &'a Caller,
}

/// A command refused at once.
pub struct Refusal {
    pub detail: String,
    /// Over a rate: counts toward closing the socket with 1008.
    pub throttled: bool,
}

impl From<String> for Refusal {
    fn from(detail: String) -> Self {
        Self { detail, throttled: false }
    }
}

/// What one socket may still send: its own command and pixel rates (besides its client's),
/// and its strikes, the refusals for rate it may collect before it is closed.
pub struct Allowance {
    rates: [Rate; 2],
    buckets: [Bucket; 2],
    strikes: Bucket,
}

/// Refusals for rate a socket may collect at once, and how fast they are forgiven.
const STRIKES: Rate = Rate { per_second: 2.0, burst: 20.0 };

impl Allowance {
    pub fn new(limits: &Limits) -> Self {
        let now = Instant::now();
        let rates = limits.socket_rates();
        Self { rates, buckets: rates.map(|r| Bucket::full(r, now)), strikes: Bucket::full(STRIKES, now) }
    }

    /// Takes a command's share of the socket's rates, all or none.
    fn take(&mut self, pixels: f64) -> Result<(), (Limit, Duration)> {
        let now = Instant::now();
        let amounts = [1.0, pixels];
        for (k, limit) in [Limit::Commands, Limit::Pixels].into_iter().enumerate() {
            let mut probe = self.buckets[k].clone();
            probe.take(self.rates[k], amounts[k], now).map_err(|wait| (limit, wait))?;
        }
        for ((bucket, rate), n) in self.buckets.iter_mut().zip(self.rates).zip(amounts) {
            let _ = bucket.take(rate, n, now);
        }
        Ok(())
    }

    /// Records a refusal for rate; `false` once the socket has had too many.
    pub fn strike(&mut self) -> bool {
        self.strikes.take(STRIKES, 1.0, Instant::now()).is_ok()
    }
}

/// A command from a socket: within the socket's own rates, then its client's (`Caller::admit`).
fn admit(app: &AppState, origin: &Origin<'_>, allowance: &mut Allowance, command: &Command) -> Result<(), ApiError> {
    let pixels = match command {
        Command::Draw(pixels) => pixels.len() as f64,
        Command::ClearCanvas => 0.0,
    };
    allowance.take(pixels).map_err(|(limit, retry_after)| {
        app.limits.refused(limit, Some(origin.caller.client));
        ApiError::Throttled { what: limit.noun(), retry_after }
    })?;
    origin.caller.admit(app, command)
}

/// Parses `frame` and queues it; `Err` when refused at once.
pub async fn handle(
    app: &AppState,
    origin: &Origin<'_>,
    allowance: &mut Allowance,
    frame: &[u8],
) -> Result<Pending, Refusal> {
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
            // Garbage costs a command of the socket's rate like anything else, so a flood of
            // it is throttled and then closed with 1008 as any other.
            if let Err((limit, retry_after)) = allowance.take(0.0) {
                app.limits.refused(limit, Some(origin.caller.client));
                let e = ApiError::Throttled { what: limit.noun(), retry_after };
                count_rejection(&e);
                cx.span().end();
                return Err(Refusal { detail: e.detail(), throttled: true });
            }
            // The client's mistake, at information level (at most a line a second).
            errors::record(&cx, &errors::INVALID_COMMAND, &e);
            let e = ApiError::from(e);
            count_rejection(&e);
            cx.span().end();
            return Err(e.detail().into());
        }
    };
    count_in(command.kind());
    if let Err(e) = admit(app, origin, allowance, &command) {
        count_rejection(&e);
        let throttled = matches!(e, ApiError::Throttled { .. });
        cx.span().set_attribute(KeyValue::new(attr::ERROR_TYPE, e.status().as_str().to_owned()));
        cx.span().end();
        return Err(Refusal { detail: e.detail(), throttled });
    }
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
            return Err(detail.into());
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
