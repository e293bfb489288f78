//! One live image: its canvas as last committed, its subscribers' channel, and the order in
//! which its changes are applied and sent.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry::{
    KeyValue,
    trace::{SpanKind, TraceContextExt as _, Tracer as _},
};
use tokio::sync::broadcast;

use super::{
    fanout::{EventText, FanoutQueue, Outgoing, RESYNC, SUBSCRIBER_BACKLOG},
    sync::{lock, read, write},
};
use crate::domain::{Canvas, Command, ImageId, event};

/// One committed change on its way to an image's subscribers.
pub struct Delivery {
    pub version: u64,
    pub command: Command,
    pub text: EventText,
    pub committed_at: std::time::Instant,
    /// The trace of the request that made the change (on this instance or another).
    pub cx: opentelemetry::Context,
}

/// Changes are applied and sent strictly in version order; one that arrives early (another
/// instance's change before it is still on its way) waits here.
struct Order {
    version: u64,
    early: BTreeMap<u64, Delivery>,
}

pub struct LiveImage {
    /// Random per creation, as stored: tells a re-created image from its deleted namesake.
    pub(super) generation: u64,
    canvas: RwLock<Canvas>,
    /// The last version applied and sent, readable without the order lock (statistics).
    version: AtomicU64,
    /// Users connected to this image, for the bounded per-image users metric.
    pub(super) users: AtomicU64,
    events: broadcast::Sender<Outgoing>,
    order: Mutex<Order>,
    fanout: FanoutQueue,
}

impl LiveImage {
    pub(super) fn new(generation: u64, canvas: Canvas, version: u64, fanout: FanoutQueue) -> Self {
        Self {
            fanout,
            generation,
            canvas: RwLock::new(canvas),
            version: AtomicU64::new(version),
            users: AtomicU64::new(0),
            events: broadcast::Sender::new(SUBSCRIBER_BACKLOG),
            order: Mutex::new(Order { version, early: BTreeMap::new() }),
        }
    }

    /// The last version applied and sent (every accepted command is one version).
    pub(super) fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    pub(super) fn canvas(&self) -> Canvas {
        read(&self.canvas).clone()
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Outgoing> {
        self.events.subscribe()
    }

    /// Applies and sends `change` when it is the next version, then any early ones it unblocks;
    /// ignores a version already sent (a duplicate). Answers whether a gap remains (a version
    /// is missing: the caller should fetch it).
    pub(super) fn deliver(&self, id: &ImageId, change: Delivery) -> bool {
        let mut order = lock(&self.order);
        if change.version <= order.version {
            return !order.early.is_empty();
        }
        let order = &mut *order;
        if change.version == order.version + 1 && order.early.is_empty() {
            // The usual case, and the only one with one instance: no waiting room needed.
            self.apply(id, order, change);
            return false;
        }
        order.early.insert(change.version, change);
        while let Some(entry) = order.early.first_entry() {
            if *entry.key() != order.version + 1 {
                break;
            }
            let change = entry.remove();
            self.apply(id, order, change);
        }
        !order.early.is_empty()
    }

    fn apply(&self, id: &ImageId, order: &mut Order, change: Delivery) {
        change.command.apply(&mut write(&self.canvas));
        order.version = change.version;
        self.version.store(change.version, Ordering::Relaxed);
        // A fan-out span only when there is someone to fan out to.
        let receivers = self.events.receiver_count();
        let span = (receivers > 0 && change.cx.span().span_context().is_sampled()).then(|| {
            let tracer = crate::telemetry::span::tracer();
            tracer
                .span_builder("fan-out")
                .with_kind(SpanKind::Producer)
                .with_attributes([
                    KeyValue::new("draw64.image.id", id.to_string()),
                    KeyValue::new("draw64.image.version", change.version as i64),
                    KeyValue::new("draw64.subscribers", receivers as i64),
                ])
                .start_with_context(tracer, &change.cx)
        });
        self.emit(Outgoing { text: change.text, committed_at: change.committed_at, kind: "image_updated" });
        drop(span);
    }

    /// Replaces the canvas with the database's (the missing changes are no longer in the log)
    /// and tells subscribers to reload.
    pub(super) fn reset(&self, canvas: Canvas, version: u64) {
        let mut order = lock(&self.order);
        *write(&self.canvas) = canvas;
        order.version = version;
        order.early = order.early.split_off(&(version + 1));
        self.version.store(version, Ordering::Relaxed);
        let text = event::bare(RESYNC).into();
        self.emit(Outgoing { text, committed_at: std::time::Instant::now(), kind: RESYNC });
    }

    /// Tells the image's subscribers it is gone.
    pub(super) fn deleted(&self, id: &ImageId) {
        let text = event::about_image("image_deleted", id).into();
        self.emit(Outgoing { text, committed_at: std::time::Instant::now(), kind: "image_deleted" });
    }

    /// Through the fan-out task, so every event of the image keeps one order.
    fn emit(&self, event: Outgoing) {
        self.fanout.send(&self.events, event);
    }
}
