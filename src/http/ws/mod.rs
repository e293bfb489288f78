//! `GET /ws/images/{image_id}`: one task per socket. It forwards the image's shared event texts
//! to the client and submits the client's commands (`command`), answering a bad frame with an
//! error event. A client that falls `SUBSCRIBER_BACKLOG` events behind is closed with 1013 (try
//! again later) rather than buffered without bound; the page then reconnects and reloads the
//! image (`close`).

mod close;
mod command;
mod gated;

use std::{
    collections::VecDeque,
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use axum::{
    extract::{
        Path, State,
        rejection::PathRejection,
        ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::{
    FutureExt as _, SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use opentelemetry::{KeyValue, trace::TraceContextExt as _};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use self::close::{
    CLOSE_GOING_AWAY, CLOSE_IMAGE_DELETED, CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR,
    CLOSE_SERVICE_RESTART, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER,
};
use self::{
    close::{Ended, close, for_read_error, lagged},
    command::{Allowance, Origin, Pending},
    gated::Gated,
};
use super::{AppState, caller::Caller, error::ApiError};
use crate::{
    domain::{ImageId, event},
    faults::Fate,
    lifecycle::Farewell,
    limits::{Limit, Seat, within},
    service::{Outgoing, RESYNC},
    telemetry::metrics,
};

/// A socket's read half, polled only when it was woken (`gated`).
type Incoming = Gated<SplitStream<WebSocket>>;

/// Events written to a socket with one flush, at most.
const SEND_BATCH: usize = 64;

/// Commands one client may have queued before its socket stops being read.
const MAX_IN_FLIGHT: usize = 256;

/// Initial read buffer of a socket, and the most read from it at once. Commands are a few dozen
/// bytes; a larger one is read in several calls. Tungstenite zero-fills this much before every
/// read attempt, so it is kept small: 1 KiB instead of 4 KiB took idle sockets from 7.5 to
/// 4.3 KB each (when a subscriber's task still attempted a read each time an event woke it).
const READ_BUFFER: usize = 1024;

/// Largest frame or message a client may send (close 1009 beyond).
const MAX_MESSAGE: usize = 1 << 20;

pub async fn upgrade(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
    path: Result<Path<String>, PathRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    deadline: Option<axum::Extension<crate::http::serve::SendDeadline>>,
) -> Response {
    let id = match path.map_err(ApiError::from).and_then(|Path(raw)| Ok(ImageId::parse(&raw)?)) {
        Ok(id) => id,
        Err(e) => {
            let detail = crate::http::error::Detail { detail: e.to_string() };
            return (StatusCode::FORBIDDEN, axum::Json(detail)).into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let detail =
                crate::http::error::Detail { detail: format!("WebSocket handshake required: {}", e.body_text()) };
            return (e.status(), axum::Json(detail)).into_response();
        }
    };
    match admit(&app, caller, &id).await {
        Ok((caller, seat, created)) => {
            // The socket's `Sink` bounds every write from here, and says why it closed.
            if let Some(axum::Extension(deadline)) = deadline {
                deadline.hand_over();
            }
            // Subscribed before the 101 goes out: every change committed once the client
            // sees its socket open reaches it (its task may start later than the client's
            // next request).
            let events = app.service.subscribe(&id);
            ws.max_message_size(MAX_MESSAGE)
                .max_frame_size(MAX_MESSAGE)
                // Frames here are small (a command is tens of bytes): a 1 KiB read buffer instead
                // of tungstenite's 128 KiB keeps an idle socket at a few KB (larger messages still
                // grow it).
                .read_buffer_size(READ_BUFFER)
                // The page offers `draw64` beside the entry that carries its admin token.
                .protocols(["draw64"])
                // Split here, not inside the task: the socket then lives once, on the heap, rather
                // than also in the long-lived task's state.
                .on_upgrade(move |socket| {
                    let (sink, stream) = socket.split();
                    let sink = Sink { inner: sink, timeout: app.limits.options.send_timeout };
                    session(sink, Gated::new(stream), events, id, created, app, caller, seat)
                })
        }
        Err(e) => e.into_response(),
    }
}

/// A handshake from an allowed origin, within the client's sockets and, when it creates the
/// image, its image rate; answers whether it created the image.
async fn admit(
    app: &AppState,
    caller: Result<Caller, ApiError>,
    id: &ImageId,
) -> Result<(Caller, Seat, bool), ApiError> {
    let caller = caller?;
    let seat = app.limits.websockets.enter(Some(caller.client)).map_err(|_| {
        app.limits.refused(Limit::WebsocketsPerClient, Some(caller.client));
        ApiError::TooManyOpen("WebSockets")
    })?;
    if !app.service.exists(id) {
        caller.may_create(app)?;
    }
    let created = app.service.ensure(id.clone()).await?;
    Ok((caller, seat, created))
}

/// The socket's sending half. Every write waits at most `--send-timeout` for the client to
/// read (then the socket is given up as stalled): a full kernel buffer never holds the task.
pub struct Sink {
    inner: SplitSink<WebSocket, Message>,
    timeout: Duration,
}

impl Sink {
    async fn within(&mut self, op: Op) -> Result<(), Ended> {
        let done = match op {
            Op::Send(m) => within(self.timeout, self.inner.send(m)).await,
            Op::Feed(m) => within(self.timeout, self.inner.feed(m)).await,
            Op::Flush => within(self.timeout, self.inner.flush()).await,
        };
        match done {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(Ended::Error),
            None => Err(Ended::Stalled),
        }
    }

    pub async fn send(&mut self, message: Message) -> Result<(), Ended> {
        self.within(Op::Send(message)).await
    }

    async fn feed(&mut self, message: Message) -> Result<(), Ended> {
        self.within(Op::Feed(message)).await
    }

    pub async fn flush(&mut self) -> Result<(), Ended> {
        self.within(Op::Flush).await
    }

    /// Sends what is queued (a close frame) and ends the sending half, briefly.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(self.timeout.min(Duration::from_secs(1)), self.inner.close()).await;
    }
}

enum Op {
    Send(Message),
    Feed(Message),
    Flush,
}

/// `draw64.ws.messages` by direction and type: once per batch per socket on the fan-out path.
static WS_MESSAGES: metrics::CounterBy<2> = metrics::CounterBy::new(["draw64.direction", "draw64.message.type"]);

fn count_out(kind: &'static str, n: u64) {
    WS_MESSAGES.add(&metrics().ws_messages, n, ["out", kind]);
}

fn count_in(kind: &'static str) {
    WS_MESSAGES.add(&metrics().ws_messages, 1, ["in", kind]);
}

#[allow(clippy::too_many_arguments)]
async fn session(
    sink: Sink,
    stream: Incoming,
    events: Option<broadcast::Receiver<Outgoing>>,
    id: ImageId,
    created: bool,
    app: AppState,
    caller: Caller,
    _seat: Seat,
) {
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
    let origin = Origin { image: &id, session_id: &session_id, connect: &connect_cx, caller: &caller };
    // A panic ends this socket only (its presence guard still leaves); the others go on.
    let ended = AssertUnwindSafe(run(sink, stream, events, &origin, &app)).catch_unwind().await.unwrap_or(Ended::Panic);
    let limit = match ended {
        Ended::Stalled => Some(Limit::SendTimeout),
        Ended::Silent => Some(Limit::SilentClient),
        Ended::Policy => Some(Limit::Persistent),
        _ => None,
    };
    if let Some(limit) = limit {
        app.limits.refused(limit, Some(caller.client));
    }
    metrics().ws_connections.add(-1, &[]);
    metrics().ws_disconnections.add(1, &[KeyValue::new("draw64.close.reason", ended.as_str())]);

    let close = tracing::info_span!("ws close", otel.name = "ws close", otel.kind = "server");
    close.add_link(connect_cx);
    close.set_attribute("draw64.image.id", id.to_string());
    close.set_attribute("draw64.ws.session_id", session_id);
    close.set_attribute("draw64.close.reason", ended.as_str());
    close.set_attribute("draw64.ws.duration", opened.elapsed().as_secs_f64());
}

/// The socket's loop: shutdown first, then events out, command outcomes, frames in, pings.
async fn run(
    mut sink: Sink,
    mut stream: Incoming,
    events: Option<broadcast::Receiver<Outgoing>>,
    origin: &Origin<'_>,
    app: &AppState,
) -> Ended {
    let ended = exchange(&mut sink, &mut stream, events, origin, app).await;
    if ended.sent_close() {
        linger(&mut stream).await;
    }
    ended
}

/// After our close frame, reads (and drops) what the client still sends until its own close,
/// for a second at most: closing with its frames unread would make the kernel reset the
/// connection, and the client could lose our close frame, and its reason, with it.
async fn linger(stream: &mut Incoming) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How long a closed socket waits for the client's close.
const LINGER: Duration = Duration::from_secs(1);

async fn exchange(
    sink: &mut Sink,
    stream: &mut Incoming,
    events: Option<broadcast::Receiver<Outgoing>>,
    origin: &Origin<'_>,
    app: &AppState,
) -> Ended {
    let id = origin.image;
    let Some(mut events) = events else {
        // Deleted between the handshake's check and its subscription.
        return close(sink, CLOSE_IMAGE_DELETED, "Image deleted.", Ended::Deleted).await;
    };
    let closing = app.lifecycle.closing();
    tokio::pin!(closing);
    let interval = app.ws_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    // Commands queued to the writer and not answered yet, oldest first. A client may pipeline
    // commands: each still commits before its echo, and they keep the order it sent them in.
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut allowance = Allowance::new(&app.limits);
    // Which subscribers a fan-out fault flag picks: the same ones for as long as it is on.
    static SUBSCRIBERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let subscriber = SUBSCRIBERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    loop {
        let step = tokio::select! {
            biased;
            _ = &mut closing => {
                return match app.lifecycle.farewell() {
                    Farewell::Shutdown => close(sink, CLOSE_GOING_AWAY, "Server shutting down; reconnect.", Ended::Shutdown),
                    Farewell::Retired => {
                        close(sink, CLOSE_SERVICE_RESTART, "Instance retired by a release; reconnect.", Ended::Shutdown)
                    }
                }
                .await;
            }
            event = events.recv() => match event {
                Ok(event) if event.kind == RESYNC => {
                    let reason = "The image was reloaded; reconnect and reload it.";
                    return close(sink, CLOSE_TRY_AGAIN_LATER, reason, Ended::Lagged).await;
                }
                Ok(event) => match crate::faults::fanout_fate(subscriber) {
                    Fate::Deliver => forward(sink, &mut events, event, id).await,
                    Fate::Delay(delay) => {
                        tokio::time::sleep(delay).await;
                        forward(sink, &mut events, event, id).await
                    }
                    Fate::Drop => {
                        metrics().fanout_undelivered.add(1, &[]);
                        Ok(())
                    }
                },
                Err(RecvError::Lagged(missed)) => return lagged(sink, id, missed).await,
                Err(RecvError::Closed) => {
                    return close(sink, CLOSE_IMAGE_DELETED, "Image deleted.", Ended::Deleted).await;
                }
            },
            // The oldest command's outcome (the writer answers in order): refusals go back
            // to this client only.
            outcome = async { pending.front_mut().expect("guarded by the condition").as_mut().await }, if !pending.is_empty() => {
                pending.pop_front();
                match outcome {
                    Some(detail) => send_error(sink, &detail).await,
                    None => Ok(()),
                }
            }
            // Stops reading while too many of this client's commands are in flight: backpressure.
            frame = stream.next(), if pending.len() < MAX_IN_FLIGHT => {
                last_heard = Instant::now();
                on_frame(sink, frame, &mut pending, &mut allowance, origin, app).await
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > interval * 2 + Duration::from_secs(1) {
                    return Ended::Silent;
                }
                sink.send(Message::Ping(Default::default())).await
            }
        };
        if let Err(ended) = step {
            return ended;
        }
    }
}

/// Sends `first` and every event already waiting behind it (up to `SEND_BATCH`), in one write.
/// The metrics are recorded once per write, not per event: at a million events a second
/// per-event recording was a tenth of the server's time. The latency sample is the oldest
/// event's, the worst of the write.
async fn forward(
    sink: &mut Sink,
    events: &mut broadcast::Receiver<Outgoing>,
    first: Outgoing,
    id: &ImageId,
) -> Result<(), Ended> {
    metrics().fanout_latency.record(first.committed_at.elapsed().as_secs_f64(), &[]);
    let (mut kind, mut run) = (first.kind, 0);
    let mut next = Some(first);
    let mut batched = 0;
    while let Some(event) = next.take() {
        if event.kind != kind {
            count_out(kind, run);
            (kind, run) = (event.kind, 0);
        }
        run += 1;
        sink.feed(Message::Text(event.text)).await?;
        batched += 1;
        if batched < SEND_BATCH {
            next = match events.try_recv() {
                Ok(event) if event.kind != RESYNC => Some(event),
                Err(TryRecvError::Lagged(missed)) => {
                    let _ = sink.flush().await;
                    return Err(Box::pin(lagged(sink, id, missed)).await);
                }
                // A resync (left for `recv` to handle), or nothing waiting.
                _ => None,
            };
        }
    }
    count_out(kind, run);
    sink.flush().await
}

/// One frame from the client: a command is queued (its outcome joins `pending`), anything
/// else answered or ended.
async fn on_frame(
    sink: &mut Sink,
    frame: Option<Result<Message, axum::Error>>,
    pending: &mut VecDeque<Pending>,
    allowance: &mut Allowance,
    origin: &Origin<'_>,
    app: &AppState,
) -> Result<(), Ended> {
    match frame {
        Some(Ok(Message::Text(text))) => {
            // Boxed: parsing and queueing is a large future, alive only briefly; an idle
            // socket's task stays small without it.
            match Box::pin(command::handle(app, origin, allowance, text.as_bytes())).await {
                Ok(outcome) => {
                    pending.push_back(outcome);
                    Ok(())
                }
                Err(refusal) if refusal.throttled && !allowance.strike() => {
                    let reason = "Too many commands over the rate limit; slow down before reconnecting.";
                    Err(close(sink, CLOSE_POLICY, reason, Ended::Policy).await)
                }
                Err(refusal) => send_error(sink, &refusal.detail).await,
            }
        }
        Some(Ok(Message::Binary(_))) => {
            count_in("binary");
            send_error(sink, "Binary frames are not accepted; send the command as JSON text.").await
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
        // The close is echoed (tungstenite queued the reply as it read the frame).
        Some(Ok(Message::Close(_))) => {
            let _ = sink.flush().await;
            Err(Ended::Client)
        }
        None => Err(Ended::Client),
        Some(Err(e)) => match for_read_error(&e) {
            Some((code, reason, ended)) => Err(close(sink, code, reason, ended).await),
            None => Err(Ended::Error),
        },
    }
}

/// An error event for this client only.
async fn send_error(sink: &mut Sink, detail: &str) -> Result<(), Ended> {
    count_out("error", 1);
    sink.send(Message::Text(event::error(detail).into())).await
}
