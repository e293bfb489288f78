//! Log lines on stderr: readable text on a terminal, JSON lines otherwise. Each JSON line
//! carries the `trace_id` and `span_id` of the span it was written in, so a log line leads to
//! its trace and back.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::Subscriber;
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{Format, Json, Writer},
    },
    registry::LookupSpan,
};

/// tracing-subscriber's JSON line, with the OpenTelemetry ids appended.
pub struct JsonWithTraceIds(pub Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.trim_end();
        // The current OpenTelemetry context: attached by the HTTP layer for requests, and by the
        // tracing bridge when a `tracing` span is entered.
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let ids = span.span_context();
        match line.strip_suffix('}') {
            Some(open) if ids.is_valid() => {
                writeln!(writer, "{open},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}", ids.trace_id(), ids.span_id())
            }
            _ => writeln!(writer, "{line}"),
        }
    }
}
