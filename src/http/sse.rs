//! `GET /sse/announce`: images created and deleted, users connected and disconnected, the
//! user count. The data is encoded once by the service; only the per-stream `id:` differs.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;

use super::AppState;

pub async fn announce(State(app): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.service.announcements();
    let closing = Box::pin(app.lifecycle.closing());
    let stream = futures_util::stream::unfold((rx, 0u64, closing), |(mut rx, n, mut closing)| async move {
        tokio::select! {
            _ = &mut closing => None,
            msg = rx.recv() => {
                // A lagging or closed channel ends the stream; EventSource reconnects by itself.
                let a = msg.ok()?;
                let event = Event::default().id((n + 1).to_string()).event(a.name).data(&*a.data);
                Some((Ok(event), (rx, n + 1, closing)))
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(5)).text("ping"))
}
