//! Errors as a signal of their own. Every failure that Draw64 handles away from the HTTP edge
//! goes through [`record`], once, where it is handled: the span it happened in gets status
//! Error, `error.type` and an `exception` event with the semantic-convention attributes; one log
//! record is written with that span's trace; and `draw64.errors` counts it by source and a
//! bounded `error.type`. (HTTP answers are counted by the HTTP metrics, which carry
//! `error.type` for 5xx; panics by the panic hook, which adds `exception.stacktrace`.)

use std::{borrow::Cow, error::Error};

use opentelemetry::{
    Context, KeyValue,
    trace::{Status, TraceContextExt as _},
};
use opentelemetry_semantic_conventions::attribute as attr;

use super::{metrics, throttle::LineThrottle};

/// Where a failure was handled: the values of `draw64.error.source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A WebSocket command that could not be parsed.
    WsCommand,
    /// The writer: locking, committing or pinging the store.
    Writer,
    /// The cross-instance bus: the listener connection and the change log.
    Bus,
    /// The OpenTelemetry exporters (counted from their own diagnostics).
    Exporter,
    /// A request handler, the writer thread or a socket task that panicked.
    Panic,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::WsCommand => "ws_command",
            Source::Writer => "writer",
            Source::Bus => "bus",
            Source::Exporter => "exporter",
            Source::Panic => "panic",
        }
    }
}

/// How loud the log record is: a failure the service recovers from by itself is a warning;
/// one that the client caused (an invalid command) is information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warn,
    Info,
}

/// The error and its causes, outermost first: `commit failed: database is locked`.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        // thiserror's `#[error(transparent)]` and "{0}" messages repeat their source.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

/// One kind of handled failure: where, its bounded `error.type`, how loud, and the log
/// record's message. Every kind is declared below, so the set of `error.type` values is this
/// list (and the observability guide's table, which a test holds to it).
#[derive(Debug)]
pub struct Failure {
    pub source: Source,
    pub error_type: &'static str,
    pub severity: Severity,
    pub what: &'static str,
}

const fn failure(source: Source, error_type: &'static str, severity: Severity, what: &'static str) -> Failure {
    Failure { source, error_type, severity, what }
}

pub const COMMIT_FAILED: Failure =
    failure(Source::Writer, "commit_failed", Severity::Error, "commit failed; batch rolled back");
pub const LOCK_FAILED: Failure =
    failure(Source::Writer, "lock_failed", Severity::Error, "cannot lock the batch's rows");
pub const PING_FAILED: Failure = failure(Source::Writer, "ping_failed", Severity::Warn, "the store does not answer");
pub const WRITER_TIMEOUT: Failure = failure(Source::Writer, "timeout", Severity::Warn, "the writer does not answer");
pub const RELOAD_FAILED: Failure =
    failure(Source::Writer, "reload_failed", Severity::Error, "cannot reload the images after a panic");
pub const INVALID_COMMAND: Failure =
    failure(Source::WsCommand, "invalid_command", Severity::Info, "invalid command refused");
pub const LISTENER_LOST: Failure =
    failure(Source::Bus, "listener_lost", Severity::Warn, "lost the listener connection; reconnecting");
pub const MALFORMED_NOTICE: Failure = failure(Source::Bus, "malformed_notice", Severity::Warn, "ignoring a notice");
pub const UNREADABLE_CHANGE: Failure =
    failure(Source::Bus, "unreadable_change", Severity::Error, "unreadable change in the log; reloading the image");

/// Every kind of [`Failure`].
pub const ALL: &[&Failure] = &[
    &COMMIT_FAILED,
    &LOCK_FAILED,
    &PING_FAILED,
    &WRITER_TIMEOUT,
    &RELOAD_FAILED,
    &INVALID_COMMAND,
    &LISTENER_LOST,
    &MALFORMED_NOTICE,
    &UNREADABLE_CHANGE,
];

/// Records `error` once: on `cx`'s span (status, `error.type`, an `exception` event), in
/// `draw64.errors`, and as one log record carrying that span's trace — at most one a second
/// per kind, so a flood (a client sending garbage, a disk that stays full) cannot flood the
/// log; the next line says how many it stands for.
pub fn record<E: Error + 'static>(cx: &Context, failure: &Failure, error: &E) {
    let message = chain(error);
    mark(cx, failure.error_type, std::any::type_name::<E>(), &message, None);
    count(failure.source, failure.error_type);
    let Some(also) = may_log(failure) else { return };
    let _attached = cx.clone().attach();
    let (source, error_type, what) = (failure.source.as_str(), failure.error_type, failure.what);
    match failure.severity {
        Severity::Error => tracing::error!(
            draw64.error.source = source, error.type = error_type, exception.message = %message,
            suppressed_since_last_line = also, "{what}"
        ),
        Severity::Warn => tracing::warn!(
            draw64.error.source = source, error.type = error_type, exception.message = %message,
            suppressed_since_last_line = also, "{what}"
        ),
        Severity::Info => tracing::info!(
            draw64.error.source = source, error.type = error_type, exception.message = %message,
            suppressed_since_last_line = also, "{what}"
        ),
    }
}

/// One line throttle per kind of failure, in the order of [`ALL`].
static LOG_THROTTLE: [LineThrottle; ALL.len()] = [const { LineThrottle::new() }; ALL.len()];

/// Whether `failure`'s line may be written now: `Some(records left out since its last line)`.
fn may_log(failure: &Failure) -> Option<u64> {
    match ALL.iter().position(|f| f.source == failure.source && f.error_type == failure.error_type) {
        Some(k) => LOG_THROTTLE[k].admit(1),
        None => Some(0),
    }
}

/// The span side alone, for a failure logged elsewhere (an HTTP answer, a panic's hook).
pub fn mark(cx: &Context, error_type: &str, exception_type: &str, message: &str, stacktrace: Option<String>) {
    let span = cx.span();
    if !span.span_context().is_valid() {
        return;
    }
    span.set_status(Status::error(Cow::Owned(message.to_owned())));
    span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()));
    let mut event = vec![
        KeyValue::new(attr::EXCEPTION_TYPE, exception_type.to_owned()),
        KeyValue::new(attr::EXCEPTION_MESSAGE, message.to_owned()),
    ];
    if let Some(trace) = stacktrace {
        event.push(KeyValue::new(attr::EXCEPTION_STACKTRACE, trace));
    }
    span.add_event("exception", event);
}

pub fn count(source: Source, error_type: &'static str) {
    metrics()
        .errors
        .add(1, &[KeyValue::new("draw64.error.source", source.as_str()), KeyValue::new(attr::ERROR_TYPE, error_type)]);
}

/// Counts the exporters' failures: the OpenTelemetry SDK and exporters report them as their
/// own warnings and errors (each with a fixed event name, so `error.type` stays bounded), which
/// are logged as they are and not exported through themselves.
pub struct ExporterFailures;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ExporterFailures {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        count(Source::Exporter, event.metadata().name());
    }
}

/// The events [`ExporterFailures`] counts.
pub fn is_exporter_failure(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::WARN && meta.target().starts_with("opentelemetry")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("commit failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_guide_lists_every_kind_of_failure() {
        let guide = include_str!("../../docs/observability.md");
        for f in ALL {
            let row = format!("| `{}` | `{}` |", f.source.as_str(), f.error_type);
            assert!(guide.contains(&row), "docs/observability.md lacks the row {row}");
            assert!(guide.contains(f.what), "docs/observability.md does not quote {:?}", f.what);
        }
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        let e = Outer(std::io::Error::other("database is locked"));
        assert_eq!(chain(&e), "commit failed: database is locked");
        let io = std::io::Error::other("disk full");
        assert_eq!(chain(&io), "disk full");
    }
}
