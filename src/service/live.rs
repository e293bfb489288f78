//! The in-memory side every reader sees: canvases as last committed, the per-image event
//! channels, the announcement channel, the counters and the user count.
//!
//! Only the writer thread changes canvases and the image map, and only after a commit, so a
//! reader never sees a change that is not durable.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;

use crate::{
    domain::{Canvas, ImageId, event},
    store::Counters,
};

/// An encoded event: reference-counted UTF-8, cloned (not copied) into every subscriber's
/// socket. Axum's type is used so the bytes reach the WebSocket without re-validation.
pub type EventText = Utf8Bytes;

/// What a subscriber receives: the shared text, when it was committed (for the fan-out latency
/// metric) and its event type (for the message counter).
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub text: EventText,
    pub committed_at: std::time::Instant,
    pub kind: &'static str,
}

/// How far a subscriber may fall behind before it is told to resynchronise.
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// A Server-Sent Event for `/sse/announce`: its name and its JSON data, encoded once.
#[derive(Clone, Debug)]
pub struct Announcement {
    pub name: &'static str,
    pub data: Arc<str>,
}

pub struct LiveImage {
    pub canvas: RwLock<Canvas>,
    pub updates: AtomicU64,
    /// Users connected to this image, for the bounded per-image users metric.
    pub users: AtomicU64,
    pub events: broadcast::Sender<Outgoing>,
}

impl LiveImage {
    pub fn new(canvas: Canvas, updates: u64) -> Self {
        Self {
            canvas: RwLock::new(canvas),
            updates: AtomicU64::new(updates),
            users: AtomicU64::new(0),
            events: broadcast::Sender::new(SUBSCRIBER_BACKLOG),
        }
    }
}

pub struct Live {
    pub images: RwLock<HashMap<ImageId, Arc<LiveImage>>>,
    pub counters: Mutex<Counters>,
    pub users: AtomicU64,
    /// The writer's database connection is inside a commit (for `db.client.connection.count`).
    pub committing: std::sync::atomic::AtomicBool,
    announce: broadcast::Sender<Announcement>,
}

impl Live {
    pub fn new(counters: Counters) -> Self {
        Self {
            images: RwLock::default(),
            counters: Mutex::new(counters),
            users: AtomicU64::new(0),
            committing: std::sync::atomic::AtomicBool::new(false),
            announce: broadcast::Sender::new(SUBSCRIBER_BACKLOG),
        }
    }

    pub fn announce(&self, name: &'static str, data: String) {
        // No SSE listener is not an error.
        let _ = self.announce.send(Announcement { name, data: data.into() });
    }

    pub fn announce_image(&self, name: &'static str, id: &ImageId) {
        self.announce(name, event::about_image(name, id));
    }

    pub fn subscribe_announcements(&self) -> broadcast::Receiver<Announcement> {
        self.announce.subscribe()
    }

    pub fn user_count(&self) -> u64 {
        self.users.load(Ordering::Relaxed)
    }
}

/// Lock helpers: a panic elsewhere must not make every later request panic too.
pub fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

pub fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}
