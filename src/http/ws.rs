//! `GET /ws/images/{image_id}`: one task per socket. It forwards the image's shared event texts
//! to the client and submits the client's commands, answering a bad frame with an error event.
//! A client that falls `SUBSCRIBER_BACKLOG` events behind is closed with 1013 (try again later)
//! rather than buffered without bound; the page then reconnects and reloads the image.

use std::{
    collections::VecDeque,
    pin::Pin,
    time::{Duration, Instant},
};

use axum::{
    extract::{
        Path, State,
        rejection::PathRejection,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use opentelemetry::{
    Context, KeyValue,
    trace::{FutureExt as _, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer as _},
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use opentelemetry_semantic_conventions::attribute as attr;

use super::{
    AppState,
    error::{ApiError, count_rejection},
};
use crate::{
    domain::{Command, ImageId, event},
    service::RESYNC,
    telemetry::metrics,
};

/// Events written to a socket with one flush, at most.
const SEND_BATCH: usize = 64;

/// Commands one client may have queued before its socket stops being read.
const MAX_IN_FLIGHT: usize = 256;

/// Initial read buffer of a socket, and the most read from it at once. Commands are a few dozen
/// bytes; a larger one is read in several calls. Tungstenite zero-fills this much before every
/// read attempt, and a subscriber's task attempts one each time it is woken for an event, so it
/// is kept small: 1 KiB instead of 4 KiB took idle sockets from 7.5 to 4.3 KB each.
const READ_BUFFER: usize = 1024;

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
    // Frames here are small (a command is tens of bytes): a 4 KiB read buffer instead of
    // tungstenite's 128 KiB keeps an idle socket at a few KB (larger messages still grow it).
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        // Split here, not inside the task: the socket then lives once, on the heap, rather
        // than also in the long-lived task's state.
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            session(sink, stream, id, created, app)
        })
}

type Sink = SplitSink<WebSocket, Message>;

/// Why a socket ended, for the disconnections metric and the close span.
#[derive(Clone, Copy)]
enum End {
    Client,
    Lagged,
    Deleted,
    Shutdown,
    TooBig,
    Silent,
    Error,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Client => "client",
            End::Lagged => "lagged",
            End::Deleted => "deleted",
            End::Shutdown => "shutdown",
            End::TooBig => "too_big",
            End::Silent => "silent",
            End::Error => "error",
        }
    }
}

fn count_out(kind: &'static str) {
    count_out_n(kind, 1);
}

fn count_out_n(kind: &'static str, n: u64) {
    metrics()
        .ws_messages
        .add(n, &[KeyValue::new("draw64.direction", "out"), KeyValue::new("draw64.message.type", kind)]);
}

fn count_in(kind: &'static str) {
    metrics()
        .ws_messages
        .add(1, &[KeyValue::new("draw64.direction", "in"), KeyValue::new("draw64.message.type", kind)]);
}

async fn session(sink: Sink, stream: SplitStream<WebSocket>, id: ImageId, created: bool, app: AppState) {
    let session_id = format!("{:016x}", fastrand::u64(..));
    let opened = Instant::now();
    // Short spans for the connect and the close; none held open for the socket's lifetime,
    // so an idle socket costs no tracing state. Commands link back to the connect.
    let connect = tracing::info_span!("ws connect", otel.name = "ws connect", otel.kind = "server");
    connect.set_attribute("draw64.image.id", id.to_string());
    connect.set_attribute("draw64.ws.session_id", session_id.clone());
    connect.set_attribute("draw64.image.created", created);
    let connect_cx = connect.context().span().span_context().clone();
    drop(connect);

    metrics().ws_connections.add(1, &[]);
    let _presence = app.service.join(&id, created);
    let end = run(sink, stream, &id, &session_id, &connect_cx, &app).await;
    metrics().ws_connections.add(-1, &[]);
    metrics().ws_disconnections.add(1, &[KeyValue::new("draw64.close.reason", end.as_str())]);

    let close = tracing::info_span!("ws close", otel.name = "ws close", otel.kind = "server");
    close.add_link(connect_cx);
    close.set_attribute("draw64.image.id", id.to_string());
    close.set_attribute("draw64.ws.session_id", session_id);
    close.set_attribute("draw64.close.reason", end.as_str());
    close.set_attribute("draw64.ws.duration", opened.elapsed().as_secs_f64());
}

async fn run(
    mut sink: Sink,
    mut stream: SplitStream<WebSocket>,
    id: &ImageId,
    session_id: &str,
    connect: &SpanContext,
    app: &AppState,
) -> End {
    let Some(mut events) = app.service.subscribe(id) else {
        // Deleted between the handshake and now.
        close(&mut sink, CLOSE_IMAGE_DELETED, "Image deleted.").await;
        return End::Deleted;
    };
    let closing = app.lifecycle.closing();
    tokio::pin!(closing);
    let interval = app.ws_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    // Commands queued to the writer and not answered yet, oldest first. A client may pipeline
    // commands: each still commits before its echo, and they keep the order it sent them in.
    let mut pending: VecDeque<Outcome> = VecDeque::new();

    loop {
        tokio::select! {
            biased;
            _ = &mut closing => {
                close(&mut sink, CLOSE_GOING_AWAY, "Server shutting down; reconnect.").await;
                return End::Shutdown;
            }
            event = events.recv() => match event {
                Ok(event) if event.kind == RESYNC => {
                    close(&mut sink, CLOSE_TRY_AGAIN_LATER, "The image was reloaded; reconnect and reload it.").await;
                    return End::Lagged;
                }
                Ok(event) => {
                    // Every event already waiting goes out with it, in one write. The metrics
                    // are recorded once per write, not per event: at a million events a second
                    // per-event recording was a tenth of the server's time. The latency sample
                    // is the oldest event's, the worst of the write.
                    metrics().fanout_latency.record(event.committed_at.elapsed().as_secs_f64(), &[]);
                    let (mut kind, mut run) = (event.kind, 0);
                    let mut next = Some(event);
                    let mut batched = 0;
                    while let Some(event) = next.take() {
                        if event.kind != kind {
                            count_out_n(kind, run);
                            (kind, run) = (event.kind, 0);
                        }
                        run += 1;
                        if sink.feed(Message::Text(event.text)).await.is_err() {
                            return End::Error;
                        }
                        batched += 1;
                        if batched < SEND_BATCH {
                            next = match events.try_recv() {
                                Ok(event) if event.kind != RESYNC => Some(event),
                                Err(TryRecvError::Lagged(missed)) => {
                                    let _ = sink.flush().await;
                                    return lagged(&mut sink, id, missed).await;
                                }
                                // A resync (left for `recv` to handle), or nothing waiting.
                                _ => None,
                            };
                        }
                    }
                    count_out_n(kind, run);
                    if sink.flush().await.is_err() {
                        return End::Error;
                    }
                }
                Err(RecvError::Lagged(missed)) => return lagged(&mut sink, id, missed).await,
                Err(RecvError::Closed) => {
                    close(&mut sink, CLOSE_IMAGE_DELETED, "Image deleted.").await;
                    return End::Deleted;
                }
            },
            // The oldest command's outcome (the writer answers in order): refusals go back
            // to this client only.
            outcome = async { pending.front_mut().expect("guarded by the condition").as_mut().await }, if !pending.is_empty() => {
                pending.pop_front();
                if let Some(detail) = outcome {
                    count_out("error");
                    if sink.send(Message::Text(event::error(&detail).into())).await.is_err() {
                        return End::Error;
                    }
                }
            }
            // Stops reading while too many of this client's commands are in flight: backpressure.
            frame = stream.next(), if pending.len() < MAX_IN_FLIGHT => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        // Boxed: parsing and queueing is a large future, alive only briefly; an
                        // idle socket's task stays small without it.
                        match Box::pin(handle_command(app, id, session_id, connect, text.as_bytes())).await {
                            Ok(outcome) => pending.push_back(outcome),
                            Err(detail) => {
                                count_out("error");
                                if sink.send(Message::Text(event::error(&detail).into())).await.is_err() {
                                    return End::Error;
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        count_in("binary");
                        count_out("error");
                        let text = event::error("Binary frames are not accepted; send the command as JSON text.");
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            return End::Error;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return End::Client,
                    Some(Err(e)) => {
                        if is_too_big(e) {
                            close(&mut sink, CLOSE_TOO_BIG, "Message larger than 1 MiB.").await;
                            return End::TooBig;
                        }
                        return End::Error;
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > interval * 2 + Duration::from_secs(1) {
                    tracing::info!(image_id = %id, "WebSocket client silent for two ping intervals; dropping it");
                    return End::Silent;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return End::Error;
                }
            }
        }
    }
}

/// The outcome of a queued command: `Some(detail)` when it was refused.
type Outcome = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// Parses one frame and queues it to the writer, in a span of its own (a new trace, linked to
/// the socket's connect) that lasts until the outcome; `Err(detail)` when refused at once.
///
/// The spans are made with the OpenTelemetry API directly, as for HTTP requests (`observe`):
/// through the `tracing` bridge, three spans per frame took 4.3 % of the server's CPU samples at
/// 10,000 frames a second (users-1000) even with no trace exported. Attributes and the link only
/// for a span that records.
async fn handle_command(
    app: &AppState,
    id: &ImageId,
    session_id: &str,
    connect: &SpanContext,
    frame: &[u8],
) -> Result<Outcome, String> {
    let tracer = crate::telemetry::span::tracer();
    let mut span =
        tracer.span_builder("ws command").with_kind(SpanKind::Consumer).start_with_context(tracer, &Context::new());
    if span.is_recording() {
        span.add_link(connect.clone(), Vec::new());
        span.set_attribute(KeyValue::new("draw64.image.id", id.to_string()));
        span.set_attribute(KeyValue::new("draw64.ws.session_id", session_id.to_owned()));
    }
    let cx = Context::new().with_span(span);
    let parsed = {
        let mut validate = tracer.start_with_context("validate", &cx);
        let parsed = Command::parse_json(frame);
        validate.end();
        parsed
    };
    let command = match parsed {
        Ok(command) => command,
        Err(e) => {
            count_in("invalid");
            let e = ApiError::from(e);
            count_rejection(&e);
            cx.span().set_attribute(KeyValue::new(attr::ERROR_TYPE, "invalid_command"));
            cx.span().end();
            return Err(e.to_string());
        }
    };
    count_in(command.kind());
    if cx.span().is_recording() {
        cx.span().set_attribute(KeyValue::new("draw64.command.type", command.kind()));
        if let Command::Draw(pixels) = &command {
            cx.span().set_attribute(KeyValue::new("draw64.pixel.count", pixels.len() as i64));
        }
    }
    // Attached while the queueing and the outcome are polled: the writer links its batch to it.
    let commit = cx.with_span(tracer.start_with_context("commit", &cx));
    let queued = app.service.submit(id.clone(), command).with_context(commit.clone()).await;
    let outcome = match queued {
        Ok(outcome) => outcome,
        Err(e) => {
            let detail = refused(&cx, e);
            end(&cx, &commit);
            return Err(detail);
        }
    };
    Ok(Box::pin(async move {
        let detail = outcome.with_context(commit.clone()).await.err().map(|e| refused(&cx, e));
        end(&cx, &commit);
        detail
    }))
}

/// A refusal from the service: counted, recorded on the command's span, and its detail for the client.
fn refused(command: &Context, e: crate::service::ServiceError) -> String {
    let e = ApiError::from(e);
    count_rejection(&e);
    command.span().set_attribute(KeyValue::new(attr::ERROR_TYPE, e.status().as_str().to_owned()));
    e.to_string()
}

/// Ends a command's spans, the child first.
fn end(command: &Context, commit: &Context) {
    commit.span().end();
    command.span().end();
}

/// Boxed, like `close`: rare paths kept out of every socket's task.
fn lagged<'a>(sink: &'a mut Sink, id: &'a ImageId, missed: u64) -> Pin<Box<dyn Future<Output = End> + Send + 'a>> {
    Box::pin(async move {
        tracing::info!(image_id = %id, missed, "subscriber lagged; closing it");
        metrics().subscriber_lagged.add(1, &[]);
        let reason = format!("Fell {missed} events behind; reconnect and reload the image.");
        close(sink, CLOSE_TRY_AGAIN_LATER, &reason).await;
        End::Lagged
    })
}

fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::{Error, error::CapacityError};
    matches!(e.into_inner().downcast_ref::<Error>(), Some(Error::Capacity(CapacityError::MessageTooLong { .. })))
}

/// Sends a close frame. Boxed: it happens once per socket, and inline its future would make
/// every idle socket's task larger.
fn close<'a>(sink: &'a mut Sink, code: u16, reason: &str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
    Box::pin(async move {
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
}
