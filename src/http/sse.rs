//! `GET /sse/announce`: images created and deleted, users connected and disconnected, the
//! user count. The data is encoded once by the service; only the per-stream `id:` differs.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;

use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::AppState;
use crate::telemetry::metrics;

/// Counts an open stream; on drop (the client left or the server closed it) counts it out
/// and records a short close span.
struct Open(std::time::Instant);

impl Open {
    fn new() -> Self {
        metrics().sse_streams.add(1, &[]);
        Self(std::time::Instant::now())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics().sse_streams.add(-1, &[]);
        let span = tracing::info_span!("sse close", otel.name = "sse close", otel.kind = "server");
        span.set_attribute("draw64.sse.duration", self.0.elapsed().as_secs_f64());
    }
}

pub async fn announce(State(app): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.service.announcements();
    let closing = Box::pin(app.lifecycle.closing());
    let open = Open::new();
    let stream = futures_util::stream::unfold((rx, 0u64, closing, open), |(mut rx, n, mut closing, open)| async move {
        tokio::select! {
            _ = &mut closing => None,
            msg = rx.recv() => {
                // A lagging or closed channel ends the stream; EventSource reconnects by itself.
                let a = msg.ok()?;
                let event = Event::default().id((n + 1).to_string()).event(a.name).data(&*a.data);
                Some((Ok(event), (rx, n + 1, closing, open)))
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(5)).text("ping"))
}
