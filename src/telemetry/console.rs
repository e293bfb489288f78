//! The `console` trace exporter: one line per span on stdout, with what a person reading a
//! terminal wants first — name, ids, kind, duration, status, attributes. (The stdout crate's
//! span format spreads a span over twenty lines and gives only start and end times; its metric
//! and log exporters are used as they are.)

use std::io::Write;

use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};

#[derive(Debug, Default)]
pub struct ConsoleSpans;

pub fn line(span: &SpanData) -> String {
    use std::fmt::Write as _;
    let took = span.end_time.duration_since(span.start_time).unwrap_or_default();
    let mut out = format!(
        "span {:?} trace_id={} span_id={} parent_span_id={} kind={:?} duration_ms={:.3} status={:?}",
        span.name,
        span.span_context.trace_id(),
        span.span_context.span_id(),
        span.parent_span_id,
        span.span_kind,
        took.as_secs_f64() * 1e3,
        span.status,
    );
    for kv in &span.attributes {
        let value = kv.value.to_string();
        // Quoted only when needed, so the line still splits on spaces.
        if value.contains(char::is_whitespace) {
            let _ = write!(out, " {}={value:?}", kv.key);
        } else {
            let _ = write!(out, " {}={value}", kv.key);
        }
    }
    if !span.links.is_empty() {
        let _ = write!(out, " links={}", span.links.len());
    }
    out
}

impl SpanExporter for ConsoleSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut stdout = std::io::stdout().lock();
        for span in &batch {
            // A closed stdout must not fail the pipeline; the spans are simply not shown.
            let _ = writeln!(stdout, "{}", line(span));
        }
        let _ = stdout.flush();
        Ok(())
    }
}
