//! `GET /sse/announce`: images created and deleted, users connected and disconnected, the
//! user count. The data is encoded once by the service; only the per-stream `id:` differs.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;

use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{AppState, caller::Client, error::ApiError};
use crate::{
    limits::{Limit, Seat},
    telemetry::metrics,
};

/// Counts an open stream and holds its client's seat; on drop (the client left or the server
/// closed it) counts it out and records a short close span.
struct Open(std::time::Instant, #[allow(dead_code)] Seat);

impl Open {
    fn new(seat: Seat) -> Self {
        metrics().sse_streams.add(1, &[]);
        Self(std::time::Instant::now(), seat)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics().sse_streams.add(-1, &[]);
        let span = tracing::info_span!("sse close", otel.name = "sse close", otel.kind = "server");
        span.set_attribute("draw64.sse.duration", self.0.elapsed().as_secs_f64());
    }
}

pub async fn announce(
    State(app): State<AppState>,
    Client(client): Client,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let seat = app.limits.streams.enter(Some(client)).map_err(|_| {
        app.limits.refused(Limit::StreamsPerClient, Some(client));
        ApiError::TooManyOpen("event streams")
    })?;
    let rx = app.service.announcements();
    let closing = Box::pin(app.lifecycle.closing());
    let open = Open::new(seat);
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(5)).text("ping")))
}
