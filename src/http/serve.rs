//! The accept loop of both ports, in place of `axum::serve`, for what it cannot do: a seat per
//! connection (in all and per client address, refused with a 503 before any byte is read), a
//! deadline for request headers (hyper's, on a timer of our own, `deadlines`; it also ends idle
//! keep-alive connections and slow WebSocket handshakes), and a JSON `{"detail"}` body on the answers hyper writes by itself
//! when a request cannot be parsed (400, 414, 431); and a deadline for each write, so a
//! client that stops reading (an SSE stream, a slow download) is closed, not held forever on
//! a full kernel buffer.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tower_service::Service as _;

use super::{
    client::{TrustedProxies, canonical},
    deadlines::Sweep,
};
use crate::limits::{Full, Limit, Limits, Occupancy, Seat};

/// Who may connect to one port, and for how long they may take to ask.
#[derive(Clone)]
pub struct Gate {
    pub seats: Arc<Occupancy>,
    pub trusted: TrustedProxies,
    pub header_timeout: Duration,
    pub send_timeout: Duration,
    /// Where refusals are counted and logged.
    pub limits: Arc<Limits>,
}

/// Connections being refused politely (answer written, the client's bytes drained) at once;
/// beyond, a refused connection is just closed, so a flood cannot hold descriptors this way.
const POLITE_REFUSALS: usize = 256;

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// (upgraded connections are their handlers' to end).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    // Each connection's task holds a receiver: the signal to finish, and, as they drop, the
    // count of connections still open.
    let (finish, finishing) = watch::channel(false);
    let polite = Arc::new(Semaphore::new(POLITE_REFUSALS));
    let sweep = Sweep::new(gate.header_timeout);
    let swept = tokio::spawn(sweep.clone().run());
    let mut accept_failed_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e, &mut accept_failed_logged).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // No Nagle: a socket's next small write (a WebSocket event, an SSE line) would otherwise
        // wait for the ACK of the previous one, which the peer may delay by 40 ms.
        let _ = stream.set_nodelay(true);
        // A trusted proxy speaks for many clients: it counts in the total only.
        let client = (!gate.trusted.trusts(peer.ip())).then(|| canonical(peer.ip()));
        let seat = match gate.seats.enter(client) {
            Ok(seat) => seat,
            Err(full) => {
                let limit = if full == Full::InAll { Limit::Connections } else { Limit::ConnectionsPerClient };
                gate.limits.refused(limit, client);
                refuse(stream, &polite);
                continue;
            }
        };
        let router = router.clone();
        let state = Arc::new(State::default());
        let deadline = SendDeadline(state.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(deadline.clone());
            router.clone().call(req)
        });
        let connection = http1::Builder::new()
            .timer(sweep.timer())
            .header_read_timeout(gate.header_timeout)
            .serve_connection(TokioIo::new(Connection::new(stream, seat, state.clone(), gate.send_timeout)), service)
            .with_upgrades();
        let limits = gate.limits.clone();
        let mut finishing = finishing.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = async { drop(finishing.wait_for(|finish| *finish).await) } => {
                    // Answers the request in hand, then closes; an idle connection closes now.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // An idle keep-alive connection ends the same way, and is no refusal: only one that
            // had begun a request it did not finish is.
            if let Err(e) = served
                && e.is_timeout()
                && state.asking.load(Ordering::Relaxed)
            {
                limits.refused(Limit::HeaderTimeout, client);
            }
            if state.stalled.load(Ordering::Relaxed) {
                limits.refused(Limit::SendTimeout, client);
            }
            drop(finishing);
        });
    }
    drop(listener);
    swept.abort();
    drop(finishing);
    finish.send_replace(true);
    finish.closed().await;
    Ok(())
}

/// Out of descriptors (or another failure to accept): said once every 10 s, and a short pause
/// so the loop does not spin while connections close.
async fn accept_failed(e: &io::Error, logged: &mut Option<Instant>) {
    if logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
        tracing::error!(error = %e, "cannot accept connections (out of file descriptors?); lower --max-connections");
        *logged = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 67\r\n\r\n\
{\"detail\":\"Too many connections; try again in a moment, or fewer.\"}";

/// Answers 503 and closes. Reading what the client sent before closing keeps the kernel from
/// resetting the connection and the answer with it.
fn refuse(mut stream: TcpStream, polite: &Arc<Semaphore>) {
    let Ok(permit) = polite.clone().try_acquire_owned() else {
        let _ = stream.try_write(REFUSAL);
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(REFUSAL).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
    });
}

/// A served connection: the socket, its seat (given back when the connection, or the
/// WebSocket it became, closes), and the JSON body for hyper's own error answers.
struct Connection {
    stream: TcpStream,
    _seat: Seat,
    state: Arc<State>,
    /// A rewritten answer still to be sent, and how much of it went.
    rewritten: Option<(Vec<u8>, usize)>,
    send_timeout: Duration,
    /// Running while a write waits for the client to read.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What a connection's task, its IO and its handlers share.
#[derive(Default)]
struct State {
    /// Whether bytes came in since the last answer went out (a request has begun).
    asking: AtomicBool,
    /// Set when a WebSocket takes the connection over: its own send deadline (with the close
    /// reason it records) replaces this one.
    handed_over: AtomicBool,
    /// Set when a write waited past the deadline and the connection was closed for it.
    stalled: AtomicBool,
}

/// A request's handle on its connection's send deadline (a request extension).
#[derive(Clone)]
pub struct SendDeadline(Arc<State>);

impl SendDeadline {
    /// For a handler that takes the connection over and bounds its writes itself.
    pub fn hand_over(&self) {
        self.0.handed_over.store(true, Ordering::Relaxed);
    }
}

impl Connection {
    fn new(stream: TcpStream, seat: Seat, state: Arc<State>, send_timeout: Duration) -> Self {
        Self { stream, _seat: seat, state, rewritten: None, send_timeout, stall: None }
    }

    /// A write that waits runs the deadline; one that does not wait, or ends, stops it.
    fn bounded<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() || self.state.handed_over.load(Ordering::Relaxed) {
            self.stall = None;
            return poll;
        }
        let timeout = self.send_timeout;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stall = None;
        self.state.stalled.store(true, Ordering::Relaxed);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client did not read for --send-timeout")))
    }

    /// Sends what is left of a rewritten answer.
    fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.rewritten {
            let poll = Pin::new(&mut self.stream).poll_write(cx, &bytes[*sent..]);
            let n = ready!(self.bounded(cx, poll))?;
            let Some((bytes, sent)) = &mut self.rewritten else { break };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
            if *sent == bytes.len() {
                self.rewritten = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.asking.store(true, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_rewritten(cx))?;
        self.state.asking.store(false, Ordering::Relaxed);
        if let Some(answer) = with_detail(buf) {
            self.rewritten = Some((answer, 0));
            // Taken whole: the rest goes out on the next write, flush or shutdown.
            let _ = self.poll_rewritten(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.bounded(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// hyper answers a request it cannot parse by itself, with a status and no body. Those answers
/// are told from the router's by what they lack: every answer of the router carries
/// `cache-control` (`middleware::stamp`). The rewrite gives them the API's `{"detail"}` body.
fn with_detail(buf: &[u8]) -> Option<Vec<u8>> {
    const CAP: usize = 512;
    let head = buf.strip_prefix(b"HTTP/1.1 ")?;
    if buf.len() > CAP || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let detail = match text.get(..3)? {
        "400" => "Bad request: the request line or a header could not be parsed.",
        "414" => "The request's URI is too long.",
        "431" => "The request's headers are too large.",
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    if lower.contains("cache-control:") || !lower.contains("content-length: 0\r\n") {
        return None;
    }
    let status_line = &text[..text.find("\r\n")?];
    let body = serde_json::json!({ "detail": detail }).to_string();
    Some(
        format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// The peer as the limits see it (for handlers: `TrustedProxies::client` on top of it).
pub fn peer_ip(connect: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    connect.map_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), |c| canonical(c.0.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_s_own_answers_get_a_detail_and_the_router_s_are_left_alone() {
        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 20:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(with_detail(own).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer}");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{answer}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["detail"],
            "The request's headers are too large."
        );
        let routed = b"HTTP/1.1 400 Bad Request\r\ncache-control: no-cache, no-store\r\ncontent-length: 0\r\n\r\n";
        assert!(with_detail(routed).is_none());
        assert!(with_detail(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(with_detail(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
    }

    #[test]
    fn the_refusal_is_a_whole_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(body).unwrap()["detail"].is_string());
    }
}
