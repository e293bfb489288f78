//! The single writer: the hot path's middle. It owns the authoritative image state and the
//! store, takes every change from one bounded queue, and handles them in batches:
//!
//! 1. drain the queue (up to `MAX_BATCH` operations) and apply each in arrival order to its
//!    own copy of the state, assigning each image's next version;
//! 2. commit the batch's net effect in one transaction (one fsync for the whole batch);
//! 3. only then publish: canvases to readers, events to subscribers, replies to callers.
//!
//! If the commit fails the batch is undone and every caller gets the error, so nothing that was
//! acknowledged is missing and nothing unacknowledged is visible. One thread doing all of this
//! is what makes the order of an image's changes the same in the database, in memory and on
//! every socket.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::{
    Context, KeyValue,
    global::{self, BoxedTracer},
    trace::{Link, Span as _, SpanKind, Status, TraceContextExt, Tracer as _},
};
use opentelemetry_semantic_conventions::attribute as attr;
use tokio::sync::{mpsc, oneshot};

use super::{
    Limits, Outgoing, ServiceError,
    live::{Live, LiveImage, lock, read, write},
};
use crate::{
    domain::{Command, ImageId, event, random_image_id},
    store::{Counters, Describe, Store, StoredImage, Write},
    telemetry::metrics,
};

/// At most this many requests are linked from one batch's database span.
const MAX_LINKS: usize = 64;

/// An operation and the trace context of the request that queued it.
pub type Job = (Op, Context);

/// Upper bound on operations per transaction, so one batch cannot hold replies back for long.
const MAX_BATCH: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

pub enum Op {
    /// `POST /images[/{id}]`: subject to the active-image limit. `None` picks a random id.
    Create {
        id: Option<ImageId>,
        reply: Reply<ImageId>,
    },
    /// WebSocket connect: creates the image if missing (capped by the total limit); answers
    /// whether it was created.
    Ensure {
        id: ImageId,
        reply: Reply<bool>,
    },
    Apply {
        id: ImageId,
        command: Command,
        reply: Reply<()>,
    },
    Delete {
        id: ImageId,
        reply: Reply<()>,
    },
    Ping {
        reply: Reply<()>,
    },
    /// Commit what came before, then exit; later callers get `ServiceError::Stopped`.
    Stop,
}

/// What an operation did to the working state, kept until the commit decides its fate.
enum Outcome {
    Created { id: ImageId, reply: Reply<ImageId> },
    Ensured { id: ImageId, created: bool, reply: Reply<bool> },
    Applied { id: ImageId, text: String, kind: &'static str, pixels: u64, reply: Reply<()> },
    Deleted { id: ImageId, reply: Reply<()> },
    Pinged { reply: Reply<()> },
    Refused { reply: Box<dyn FnOnce(ServiceError) + Send>, error: ServiceError },
}

pub struct Writer {
    store: Box<dyn Store>,
    db: Describe,
    tracer: BoxedTracer,
    images: HashMap<ImageId, StoredImage>,
    counters: Counters,
    live: Arc<Live>,
    limits: Limits,
    rng: fastrand::Rng,
}

impl Writer {
    pub fn new(
        store: Box<dyn Store>,
        images: Vec<StoredImage>,
        counters: Counters,
        live: Arc<Live>,
        limits: Limits,
    ) -> Self {
        let images = images.into_iter().map(|img| (img.id.clone(), img)).collect();
        let db = store.describe();
        let tracer = global::tracer("draw64");
        Self { store, db, tracer, images, counters, live, limits, rng: fastrand::Rng::new() }
    }

    /// Runs until every sender is gone, committing what is queued before returning.
    pub fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(64);
        let mut next = queue.blocking_recv();
        while let Some(job) = next.take() {
            let mut stop = matches!(job.0, Op::Stop);
            batch.push(job);
            while !stop && batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => {
                        stop = matches!(job.0, Op::Stop);
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            batch.retain(|job| !matches!(job.0, Op::Stop));
            self.process(&mut batch);
            if stop {
                tracing::info!("writer stopped; every queued change is committed");
                return;
            }
            next = queue.blocking_recv();
        }
    }

    fn process(&mut self, jobs: &mut Vec<Job>) {
        let counters_before = self.counters;
        // The state of each touched image before the batch (None: it did not exist).
        let mut undo: HashMap<ImageId, Option<StoredImage>> = HashMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut contexts = Vec::with_capacity(jobs.len());
        for (op, cx) in jobs.drain(..) {
            outcomes.push(self.stage(op, &mut undo));
            contexts.push(cx);
        }
        if !undo.is_empty() || self.counters != counters_before {
            let writes: Vec<Write<'_>> = undo
                .keys()
                .map(|id| match self.images.get(id) {
                    Some(img) => Write::Upsert(img),
                    None => Write::Delete(id),
                })
                .collect();
            let operation = if writes.iter().all(|w| matches!(w, Write::Upsert(_))) { "BATCH UPSERT" } else { "BATCH" };
            let mut span = self.db_span(operation, &contexts, writes.len());
            let started = Instant::now();
            self.live.committing.store(true, std::sync::atomic::Ordering::Relaxed);
            let result = self.store.commit(&writes, self.counters);
            self.live.committing.store(false, std::sync::atomic::Ordering::Relaxed);
            self.record_db(operation, started.elapsed(), result.as_ref().err().map(|_| "commit_failed"));
            metrics().batch_size.record(outcomes.len() as u64, &[]);
            if let (Some(span), Err(e)) = (&mut span, &result) {
                span.set_status(Status::error(e.to_string()));
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, "commit_failed"));
            }
            drop(span);
            if let Err(e) = result {
                tracing::error!(error = %e, operations = outcomes.len(), "commit failed; batch rolled back");
                for (id, before) in undo {
                    match before {
                        Some(img) => self.images.insert(id, img),
                        None => self.images.remove(&id),
                    };
                }
                self.counters = counters_before;
                let error = ServiceError::Unavailable(e.to_string());
                outcomes.into_iter().for_each(|o| o.fail(error.clone()));
                return;
            }
        }
        self.publish(undo.keys(), outcomes, contexts);
    }

    /// A client span for one commit, when a request in it is traced: parented to the first
    /// traced request, linked to the others (one transaction serves them all).
    fn db_span(&self, operation: &'static str, contexts: &[Context], writes: usize) -> Option<global::BoxedSpan> {
        let mut sampled = contexts.iter().filter(|cx| cx.span().span_context().is_sampled());
        let parent = sampled.next()?;
        let links = sampled.take(MAX_LINKS).map(|cx| Link::with_context(cx.span().span_context().clone())).collect();
        let mut attributes = vec![
            KeyValue::new(attr::DB_SYSTEM_NAME, self.db.system),
            KeyValue::new(attr::DB_NAMESPACE, self.db.namespace.clone()),
            KeyValue::new(attr::DB_OPERATION_NAME, operation),
            KeyValue::new(attr::DB_COLLECTION_NAME, "images"),
            KeyValue::new(attr::DB_QUERY_TEXT, self.db.commit_query),
        ];
        if writes > 1 {
            attributes.push(KeyValue::new(attr::DB_OPERATION_BATCH_SIZE, writes as i64));
        }
        let span = self
            .tracer
            .span_builder(format!("{operation} images"))
            .with_kind(SpanKind::Client)
            .with_links(links)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        Some(span)
    }

    fn record_db(&self, operation: &'static str, took: Duration, error: Option<&'static str>) {
        let mut attrs = vec![
            KeyValue::new(attr::DB_SYSTEM_NAME, self.db.system),
            KeyValue::new(attr::DB_OPERATION_NAME, operation),
        ];
        if let Some(e) = error {
            attrs.push(KeyValue::new(attr::ERROR_TYPE, e));
        }
        metrics().db_duration.record(took.as_secs_f64(), &attrs);
    }

    /// Applies one operation to the working state and records how to answer it.
    fn stage(&mut self, op: Op, undo: &mut HashMap<ImageId, Option<StoredImage>>) -> Outcome {
        match op {
            Op::Create { id, reply } => {
                let id = match id {
                    Some(id) if self.images.contains_key(&id) => return refuse(reply, ServiceError::AlreadyExists),
                    Some(id) => id,
                    None => match self.free_id() {
                        Some(id) => id,
                        None => return refuse(reply, ServiceError::NoFreeId),
                    },
                };
                if self.images.len() >= self.limits.max_images {
                    return refuse(reply, ServiceError::TooManyImages);
                }
                self.insert_new(&id, undo);
                Outcome::Created { id, reply }
            }
            Op::Ensure { id, reply } => {
                if self.images.contains_key(&id) {
                    return Outcome::Ensured { id, created: false, reply };
                }
                if self.images.len() >= self.limits.max_total_images {
                    return refuse(reply, ServiceError::TooManyTotal(self.limits.max_total_images));
                }
                self.insert_new(&id, undo);
                Outcome::Ensured { id, created: true, reply }
            }
            Op::Apply { id, command, reply } => {
                let Some(img) = self.images.get_mut(&id) else {
                    return refuse(reply, ServiceError::NotFound);
                };
                undo.entry(id.clone()).or_insert_with(|| Some(img.clone()));
                command.apply(&mut img.canvas);
                img.version += 1;
                img.updates += 1;
                let pixels = match &command {
                    Command::Draw(px) => {
                        px.iter().filter(|p| (0..64).contains(&p.x) && (0..64).contains(&p.y)).count() as u64
                    }
                    Command::ClearCanvas => 0,
                };
                Outcome::Applied { text: event::image_updated(&id, &command), kind: command.kind(), pixels, id, reply }
            }
            Op::Delete { id, reply } => {
                let Some(img) = self.images.remove(&id) else {
                    return refuse(reply, ServiceError::NotFound);
                };
                undo.entry(id.clone()).or_insert(Some(img));
                self.counters.images_deleted += 1;
                Outcome::Deleted { id, reply }
            }
            Op::Ping { reply } => Outcome::Pinged { reply },
            Op::Stop => unreachable!("run() filters Stop out"),
        }
    }

    fn insert_new(&mut self, id: &ImageId, undo: &mut HashMap<ImageId, Option<StoredImage>>) {
        undo.entry(id.clone()).or_insert(None);
        let img = StoredImage { id: id.clone(), canvas: Default::default(), version: 0, updates: 0 };
        self.images.insert(id.clone(), img);
        self.counters.images_created += 1;
    }

    fn free_id(&mut self) -> Option<ImageId> {
        (0..10_000).map(|_| random_image_id(&mut self.rng)).find(|id| !self.images.contains_key(id))
    }

    /// After a successful commit: make the batch visible, in the order it happened.
    fn publish<'a>(
        &mut self,
        touched: impl Iterator<Item = &'a ImageId>,
        outcomes: Vec<Outcome>,
        contexts: Vec<Context>,
    ) {
        let committed_at = Instant::now();
        *lock(&self.live.counters) = self.counters;
        {
            let map = read(&self.live.images);
            for id in touched {
                if let (Some(img), Some(live)) = (self.images.get(id), map.get(id)) {
                    write(&live.canvas).clone_from(&img.canvas);
                    live.updates.store(img.updates, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        for (outcome, cx) in outcomes.into_iter().zip(contexts) {
            match outcome {
                Outcome::Created { id, reply } => {
                    self.make_live(&id);
                    self.live.announce_image("image_created", &id);
                    let _ = reply.send(Ok(id));
                }
                Outcome::Ensured { id, created, reply } => {
                    if created {
                        self.make_live(&id);
                    }
                    let _ = reply.send(Ok(created));
                }
                Outcome::Applied { id, text, kind, pixels, reply } => {
                    let m = metrics();
                    m.commands_applied.add(1, &[KeyValue::new("draw64.command.type", kind)]);
                    m.pixels_drawn.add(pixels, &[]);
                    if let Some(live) = read(&self.live.images).get(&id) {
                        // A fan-out span only when there is someone to fan out to.
                        let receivers = live.events.receiver_count();
                        let span = (receivers > 0 && cx.span().span_context().is_sampled()).then(|| {
                            self.tracer
                                .span_builder("fan-out")
                                .with_kind(SpanKind::Producer)
                                .with_attributes([
                                    KeyValue::new("draw64.image.id", id.to_string()),
                                    KeyValue::new("draw64.subscribers", receivers as i64),
                                ])
                                .start_with_context(&self.tracer, &cx)
                        });
                        let event = Outgoing { text: text.into(), committed_at, kind: "image_updated" };
                        // No subscriber is fine: the change is stored.
                        let _ = live.events.send(event);
                        drop(span);
                    }
                    let _ = reply.send(Ok(()));
                }
                Outcome::Deleted { id, reply } => {
                    if let Some(live) = write(&self.live.images).remove(&id) {
                        let text = event::about_image("image_deleted", &id).into();
                        let _ = live.events.send(Outgoing { text, committed_at, kind: "image_deleted" });
                    }
                    self.live.announce_image("image_deleted", &id);
                    let _ = reply.send(Ok(()));
                }
                Outcome::Pinged { reply } => {
                    let started = Instant::now();
                    let result = self.store.ping();
                    self.record_db("SELECT", started.elapsed(), result.as_ref().err().map(|_| "ping_failed"));
                    let _ = reply.send(result.map_err(|e| ServiceError::Unavailable(e.to_string())));
                }
                Outcome::Refused { reply, error } => reply(error),
            }
        }
    }

    fn make_live(&self, id: &ImageId) {
        // The image may already be gone again later in this batch; its delete removes it then.
        let canvas = self.images.get(id).map(|img| img.canvas.clone()).unwrap_or_default();
        let updates = self.images.get(id).map_or(0, |img| img.updates);
        write(&self.live.images).entry(id.clone()).or_insert_with(|| Arc::new(LiveImage::new(canvas, updates)));
    }
}

fn refuse<T: Send + 'static>(reply: Reply<T>, error: ServiceError) -> Outcome {
    Outcome::Refused { reply: Box::new(move |e| drop(reply.send(Err(e)))), error }
}

impl Outcome {
    fn fail(self, error: ServiceError) {
        match self {
            Outcome::Created { reply, .. } => drop(reply.send(Err(error))),
            Outcome::Ensured { reply, .. } => drop(reply.send(Err(error))),
            Outcome::Applied { reply, .. } | Outcome::Deleted { reply, .. } | Outcome::Pinged { reply } => {
                drop(reply.send(Err(error)))
            }
            // Refused for its own reason, which stays the more useful answer.
            Outcome::Refused { reply, error } => reply(error),
        }
    }
}
