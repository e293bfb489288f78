//! The bare baseline for benchmarks: an axum server with no storage, no validation beyond a
//! JSON parse, no telemetry — the practical ceiling Draw64 is measured against.
//!
//! - `PUT /images/{id}` parses the JSON command and answers `null`;
//! - `POST /images/{id}` answers 201 (so load tools can "create" their image);
//! - `GET /ws/images/{id}` relays every command a socket sends, as Draw64's `image_updated`
//!   event encoded once, to every socket on that image (a broadcast channel per image), frames
//!   already waiting written with one flush;
//! - `GET /images/{id}`, `/images/{id}.png` and `/images/{id}/data` answer a fixed 12 KiB body
//!   (the size of a canvas), and `GET /sse/announce` holds an event stream open without events,
//!   so the `users` scenario's reads and listeners have something to talk to.
//!
//! Run with `cargo run --release --example baseline -- 127.0.0.1:8001`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path, State,
        ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::Response,
    response::sse::{Event, Sse},
    routing::{any, get, put},
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;

type Images = Arc<Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>>;

async fn put_image(body: Bytes) -> Result<Json<()>, StatusCode> {
    serde_json::from_slice::<serde_json::Value>(&body).map_err(|_| StatusCode::UNPROCESSABLE_ENTITY)?;
    Ok(Json(()))
}

async fn create() -> StatusCode {
    StatusCode::CREATED
}

async fn read() -> &'static [u8] {
    static CANVAS: [u8; 64 * 64 * 3] = [0xff; 64 * 64 * 3];
    &CANVAS
}

async fn announce() -> Sse<futures_util::stream::Pending<Result<Event, std::convert::Infallible>>> {
    Sse::new(futures_util::stream::pending())
}

async fn ws(Path(id): Path<String>, State(images): State<Images>, upgrade: WebSocketUpgrade) -> Response {
    let events = {
        let mut images = images.lock().unwrap_or_else(|e| e.into_inner());
        images.entry(id.clone()).or_insert_with(|| broadcast::Sender::new(1024)).clone()
    };
    // The same 4 KiB read buffer as Draw64, so memory per socket compares like with like.
    upgrade.read_buffer_size(4 * 1024).on_upgrade(move |socket| relay(socket, id, events))
}

async fn relay(socket: WebSocket, id: String, events: broadcast::Sender<Utf8Bytes>) {
    let (mut sink, mut stream) = socket.split();
    let mut receiver = events.subscribe();
    let forward = tokio::spawn(async move {
        // Frames already waiting go out together, with one flush: the same batching Draw64 does.
        while let Ok(text) = receiver.recv().await {
            let mut next = Some(text);
            while let Some(text) = next.take() {
                if sink.feed(Message::Text(text)).await.is_err() {
                    return;
                }
                next = receiver.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let event =
            serde_json::json!({"event": {"event_type": "image_updated", "image_id": id, "command": body["command"]}});
        let _ = events.send(event.to_string().into());
    }
    forward.abort();
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    draw64::lifecycle::raise_fd_limit();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8001".into());
    let app = Router::new()
        .route("/images/{image_id}", put(put_image).post(create).get(read))
        .route("/images/{image_id}/data", get(read))
        .route("/sse/announce", get(announce))
        .route("/ws/images/{image_id}", any(ws))
        .with_state(Images::default());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    // Like Draw64: no Nagle, so a small write never waits for the previous one's ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
