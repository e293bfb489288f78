//! `GET /ws/images/{image_id}`: one task per socket. It forwards the image's shared event texts
//! to the client and submits the client's commands, answering a bad frame with an error event.
//! A client that falls `SUBSCRIBER_BACKLOG` events behind is closed with 1013 (try again later)
//! rather than buffered without bound; the page then reconnects and reloads the image.

use std::time::{Duration, Instant};

use axum::{
    extract::{
        Path, State,
        rejection::PathRejection,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use tokio::sync::broadcast::error::RecvError;

use super::{AppState, error::ApiError};
use crate::domain::{Command, ImageId, event};

/// Largest frame or message a client may send (close 1009 beyond).
const MAX_MESSAGE: usize = 1 << 20;

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Draw64's own code (4000–4999 are for applications): the image was deleted.
pub const CLOSE_IMAGE_DELETED: u16 = 4404;

pub async fn upgrade(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let id = match path.map_err(ApiError::from).and_then(|Path(raw)| Ok(ImageId::parse(&raw)?)) {
        Ok(id) => id,
        Err(e) => {
            let detail = super::error::Detail { detail: e.to_string() };
            return (StatusCode::FORBIDDEN, axum::Json(detail)).into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let detail = super::error::Detail { detail: format!("WebSocket handshake required: {}", e.body_text()) };
            return (e.status(), axum::Json(detail)).into_response();
        }
    };
    let created = match app.service.ensure(id.clone()).await {
        Ok(created) => created,
        Err(e) => return ApiError::from(e).into_response(),
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| session(socket, id, created, app))
}

type Sink = SplitSink<WebSocket, Message>;

async fn session(socket: WebSocket, id: ImageId, created: bool, app: AppState) {
    let _presence = app.service.join(created.then_some(&id));
    let (mut sink, mut stream) = socket.split();
    let Some(mut events) = app.service.subscribe(&id) else {
        // Deleted between the handshake and now.
        return close(&mut sink, CLOSE_IMAGE_DELETED, "Image deleted.").await;
    };
    let closing = app.lifecycle.closing();
    tokio::pin!(closing);
    let interval = app.ws_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();

    loop {
        tokio::select! {
            biased;
            _ = &mut closing => {
                return close(&mut sink, CLOSE_GOING_AWAY, "Server shutting down; reconnect.").await;
            }
            event = events.recv() => match event {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(image_id = %id, missed, "subscriber lagged; closing it");
                    let reason = format!("Fell {missed} events behind; reconnect and reload the image.");
                    return close(&mut sink, CLOSE_TRY_AGAIN_LATER, &reason).await;
                }
                Err(RecvError::Closed) => {
                    return close(&mut sink, CLOSE_IMAGE_DELETED, "Image deleted.").await;
                }
            },
            frame = stream.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(detail) = handle_command(&app, &id, text.as_bytes()).await {
                            if sink.send(Message::Text(event::error(&detail).into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let text = event::error("Binary frames are not accepted; send the command as JSON text.");
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(e)) => {
                        if is_too_big(e) {
                            return close(&mut sink, CLOSE_TOO_BIG, "Message larger than 1 MiB.").await;
                        }
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > interval * 2 + Duration::from_secs(1) {
                    tracing::info!(image_id = %id, "WebSocket client silent for two ping intervals; dropping it");
                    return;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Parses and applies one frame; `Some(detail)` when it was refused.
async fn handle_command(app: &AppState, id: &ImageId, frame: &[u8]) -> Option<String> {
    let command = match Command::parse_json(frame) {
        Ok(command) => command,
        Err(e) => return Some(e.to_string()),
    };
    match app.service.apply(id.clone(), command).await {
        Ok(()) => None,
        Err(e) => Some(ApiError::from(e).to_string()),
    }
}

fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::{Error, error::CapacityError};
    matches!(e.into_inner().downcast_ref::<Error>(), Some(Error::Capacity(CapacityError::MessageTooLong { .. })))
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}
