//! The one tracer every span of Draw64's own is started from, fetched once: spans go through
//! the OpenTelemetry API directly, not the `tracing` bridge, on every per-request and
//! per-command path (three bridged spans per WebSocket frame were 4.3 % of the server's CPU
//! samples under users-1000 with no trace exported; docs/performance.md).

use std::sync::OnceLock;

use opentelemetry::global::{self, BoxedTracer};

pub fn tracer() -> &'static BoxedTracer {
    static TRACER: OnceLock<BoxedTracer> = OnceLock::new();
    TRACER.get_or_init(|| global::tracer("draw64"))
}
