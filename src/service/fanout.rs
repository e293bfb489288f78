//! How encoded events reach an image's subscribers: one shared text per event, sent into the
//! image's broadcast channel by a single task on the runtime.

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{broadcast, mpsc};

/// An encoded event: reference-counted UTF-8, cloned (not copied) into every subscriber's
/// socket. Axum's type is used so the bytes reach the WebSocket without re-validation.
pub type EventText = Utf8Bytes;

/// How far a subscriber may fall behind before it is told to resynchronise.
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// The `kind` of the event that tells subscribers their image was reloaded from the database
/// (they missed changes the log no longer holds) and they must reload too.
pub const RESYNC: &str = "resync";

/// What a subscriber receives: the shared text, when it was committed (for the fan-out latency
/// metric) and its event type (for the message counter).
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub text: EventText,
    pub committed_at: std::time::Instant,
    pub kind: &'static str,
}

/// Where an image's events go out: sent into the image's channel by one task on the runtime, in
/// the order they were handed over. Sending there (rather than on the writer thread) wakes the
/// subscribers' tasks from inside the runtime, onto a worker's own queue, instead of 100 wake-ups
/// from a foreign thread each through the runtime's shared queue (fan-out 100 × 1,000/s: p99
/// 2.34–2.92 ms → 2.30–2.42 ms; docs/performance.md). Unbounded, but only ever behind by what
/// the writer handed over since the task last ran: the task never waits on anything.
#[derive(Clone)]
pub struct FanoutQueue(mpsc::UnboundedSender<(broadcast::Sender<Outgoing>, Outgoing)>);

impl FanoutQueue {
    /// Starts the fan-out task (inside a Tokio runtime); it ends when every queue handle is gone.
    pub fn start() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(broadcast::Sender<Outgoing>, Outgoing)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            while rx.recv_many(&mut batch, 64).await > 0 {
                for (events, event) in batch.drain(..) {
                    // No subscriber is fine: the change is stored.
                    let _ = events.send(event);
                }
            }
        });
        Self(tx)
    }

    /// Sends `event` to `channel`'s subscribers after everything handed over before it.
    pub fn send(&self, channel: &broadcast::Sender<Outgoing>, event: Outgoing) {
        // Handed back only when the runtime is shutting down: then it is sent from here.
        if let Err(unsent) = self.0.send((channel.clone(), event)) {
            let _ = channel.send(unsent.0.1);
        }
    }
}
