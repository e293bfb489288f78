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
    trace::{Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _},
};
use opentelemetry_semantic_conventions::attribute as attr;
use tokio::sync::{mpsc, oneshot};

use super::{
    Limits, ServiceError,
    live::{Delivery, Live, read, write},
};
use crate::{
    domain::{Command, ImageId, event, random_image_id},
    store::{Change, Counters, Describe, Locked, Notice, Store, StoredImage, Write},
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
    Applied { id: ImageId, generation: u64, version: u64, command: Command, pixels: u64, reply: Reply<()> },
    Deleted { id: ImageId, reply: Reply<()> },
    Pinged { reply: Reply<()> },
    Refused { reply: Box<dyn FnOnce(ServiceError) + Send>, error: ServiceError },
}

pub struct Writer {
    store: Box<dyn Store>,
    db: Describe,
    tracer: BoxedTracer,
    /// For an embedded store, every image (the truth); for a shared one, a cache whose touched
    /// rows are re-read under lock at the start of each batch.
    images: HashMap<ImageId, StoredImage>,
    /// Images in all (for a shared store, as counted under the batch's lock).
    total: usize,
    counters: Counters,
    live: Arc<Live>,
    limits: Limits,
    rng: fastrand::Rng,
    /// Random ids picked before locking, this batch (a shared store must lock them too).
    picked: Vec<ImageId>,
}

impl Writer {
    fn new(
        store: Box<dyn Store>,
        images: Vec<StoredImage>,
        counters: Counters,
        live: Arc<Live>,
        limits: Limits,
    ) -> Self {
        let images: HashMap<_, _> = images.into_iter().map(|img| (img.id.clone(), img)).collect();
        let db = store.describe();
        let tracer = global::tracer("draw64");
        let total = images.len();
        Self { store, db, tracer, images, total, counters, live, limits, rng: fastrand::Rng::new(), picked: Vec::new() }
    }

    /// Loads every image from the store (after its migrations) and makes them live.
    pub fn load(mut store: Box<dyn Store>, live: Arc<Live>, limits: Limits) -> Result<Self, crate::store::StoreError> {
        let snapshot = store.load()?;
        {
            let mut map = write(&live.images);
            for img in &snapshot.images {
                map.insert(img.id.clone(), live.new_image(img.generation, img.canvas.clone(), img.version));
            }
        }
        live.merge_counters(snapshot.counters);
        tracing::info!(images = snapshot.images.len(), "images loaded from the store");
        Ok(Self::new(store, snapshot.images, snapshot.counters, live, limits))
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
            self.maintain();
            if stop {
                tracing::info!("writer stopped; every queued change is committed");
                return;
            }
            next = queue.blocking_recv();
        }
    }

    /// The store's housekeeping, timed like any other database operation.
    fn maintain(&mut self) {
        let started = Instant::now();
        match self.store.maintain() {
            Ok(None) => {}
            Ok(Some(operation)) => self.record_db(operation, started.elapsed(), None),
            Err(e) => {
                tracing::warn!(error = %e, "database housekeeping failed; will retry");
                self.record_db("MAINTAIN", started.elapsed(), Some("maintenance_failed"));
            }
        }
    }

    fn process(&mut self, jobs: &mut Vec<Job>) {
        let shared = match self.lock(jobs) {
            Ok(shared) => shared,
            Err(e) => {
                tracing::error!(error = %e, operations = jobs.len(), "cannot lock the batch's rows");
                let error = ServiceError::Unavailable(e.to_string());
                jobs.drain(..).for_each(|(op, _)| op.fail(error.clone()));
                return;
            }
        };
        let counters_before = self.counters;
        let total_before = self.total;
        // The state of each touched image before the batch (None: it did not exist).
        let mut undo: HashMap<ImageId, Option<StoredImage>> = HashMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut contexts = Vec::with_capacity(jobs.len());
        for (op, cx) in jobs.drain(..) {
            outcomes.push(self.stage(op, &mut undo));
            contexts.push(cx);
        }
        self.picked.clear();
        if undo.is_empty() && self.counters == counters_before {
            self.store.rollback();
        } else {
            let writes: Vec<Write<'_>> = undo
                .keys()
                .map(|id| match self.images.get(id) {
                    Some(img) => Write::Upsert(img),
                    None => Write::Delete(id),
                })
                .collect();
            let (changes, notices) = if shared { log(&outcomes, &contexts) } else { Default::default() };
            let operation = if writes.iter().all(|w| matches!(w, Write::Upsert(_))) { "BATCH UPSERT" } else { "BATCH" };
            let mut span = self.db_span(operation, &contexts, writes.len());
            let started = Instant::now();
            self.live.committing.store(true, std::sync::atomic::Ordering::Relaxed);
            let result = self.store.commit(&writes, &changes, &notices, self.counters);
            self.live.committing.store(false, std::sync::atomic::Ordering::Relaxed);
            self.record_db(operation, started.elapsed(), result.as_ref().err().map(|_| "commit_failed"));
            metrics().batch_size.record(outcomes.len() as u64, &[]);
            if let (Some(span), Err(e)) = (&mut span, &result) {
                span.set_status(Status::error(e.to_string()));
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, "commit_failed"));
            }
            drop(span);
            drop(changes);
            if let Err(e) = result {
                tracing::error!(error = %e, operations = outcomes.len(), "commit failed; batch rolled back");
                for (id, before) in undo {
                    match before {
                        Some(img) => self.images.insert(id, img),
                        None => self.images.remove(&id),
                    };
                }
                self.counters = counters_before;
                self.total = total_before;
                let error = ServiceError::Unavailable(e.to_string());
                outcomes.into_iter().for_each(|o| o.fail(error.clone()));
                return;
            }
        }
        self.publish(outcomes, contexts);
    }

    /// For a shared store: opens the batch's transaction, locking and re-reading every image
    /// the batch names (and the counters when it may create or delete), so that the rules below
    /// decide on the database's current truth. Answers whether the store is shared.
    fn lock(&mut self, jobs: &mut [Job]) -> Result<bool, crate::store::StoreError> {
        if !self.store.shared() {
            return Ok(false);
        }
        let mut global = false;
        // A random id must be locked like any other: pick it now.
        for (op, _) in jobs.iter_mut() {
            if let Op::Create { id: id @ None, .. } = op
                && let Some(picked) = self.free_id()
            {
                self.picked.push(picked.clone());
                *id = Some(picked);
            }
        }
        let mut ids: Vec<&ImageId> = Vec::new();
        for (op, _) in jobs.iter() {
            match op {
                Op::Create { id, .. } => {
                    global = true;
                    ids.extend(id.as_ref());
                }
                Op::Ensure { id, .. } | Op::Delete { id, .. } => {
                    global = true;
                    ids.push(id);
                }
                Op::Apply { id, .. } => ids.push(id),
                Op::Ping { .. } | Op::Stop => {}
            }
        }
        if ids.is_empty() && !global {
            return Ok(false);
        }
        ids.sort_unstable();
        ids.dedup();
        let Some(Locked { images, global }) = self.store.lock(&ids, global)? else {
            return Ok(false);
        };
        let ids: Vec<ImageId> = ids.into_iter().cloned().collect();
        for id in ids {
            self.images.remove(&id);
        }
        for img in images {
            self.images.insert(img.id.clone(), img);
        }
        if let Some((counters, total)) = global {
            self.counters = counters;
            self.total = total;
        }
        Ok(true)
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
                    // A random pick taken since (rare): pick again.
                    Some(id) if self.images.contains_key(&id) && self.picked.contains(&id) => match self.free_id() {
                        Some(id) => id,
                        None => return refuse(reply, ServiceError::NoFreeId),
                    },
                    Some(id) if self.images.contains_key(&id) => return refuse(reply, ServiceError::AlreadyExists),
                    Some(id) => id,
                    None => match self.free_id() {
                        Some(id) => id,
                        None => return refuse(reply, ServiceError::NoFreeId),
                    },
                };
                if self.total >= self.limits.max_images {
                    return refuse(reply, ServiceError::TooManyImages);
                }
                self.insert_new(&id, undo);
                Outcome::Created { id, reply }
            }
            Op::Ensure { id, reply } => {
                if self.images.contains_key(&id) {
                    return Outcome::Ensured { id, created: false, reply };
                }
                if self.total >= self.limits.max_total_images {
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
                let (generation, version) = (img.generation, img.version);
                Outcome::Applied { id, generation, version, command, pixels, reply }
            }
            Op::Delete { id, reply } => {
                let Some(img) = self.images.remove(&id) else {
                    return refuse(reply, ServiceError::NotFound);
                };
                undo.entry(id.clone()).or_insert(Some(img));
                self.counters.images_deleted += 1;
                self.total -= 1;
                Outcome::Deleted { id, reply }
            }
            Op::Ping { reply } => Outcome::Pinged { reply },
            Op::Stop => unreachable!("run() filters Stop out"),
        }
    }

    fn insert_new(&mut self, id: &ImageId, undo: &mut HashMap<ImageId, Option<StoredImage>>) {
        undo.entry(id.clone()).or_insert(None);
        let generation = self.rng.u64(1..i64::MAX as u64);
        let img = StoredImage { id: id.clone(), generation, canvas: Default::default(), version: 0, updates: 0 };
        self.images.insert(id.clone(), img);
        self.counters.images_created += 1;
        self.total += 1;
    }

    fn free_id(&mut self) -> Option<ImageId> {
        (0..10_000).map(|_| random_image_id(&mut self.rng)).find(|id| !self.images.contains_key(id))
    }

    /// After a successful commit: make the batch visible, in the order it happened.
    fn publish(&mut self, outcomes: Vec<Outcome>, contexts: Vec<Context>) {
        let committed_at = Instant::now();
        self.live.merge_counters(self.counters);
        for (outcome, cx) in outcomes.into_iter().zip(contexts) {
            match outcome {
                Outcome::Created { id, reply } => {
                    self.make_live(&id, true);
                    let _ = reply.send(Ok(id));
                }
                Outcome::Ensured { id, created, reply } => {
                    // Made live here also when another instance created it and the bus has not
                    // said so yet: blank at version 0, and the catch-up brings it up to date.
                    // (A WebSocket's creation is announced when its user joins.)
                    if self.make_live(&id, false) && !created {
                        self.report_gap(&id);
                    }
                    let _ = reply.send(Ok(created));
                }
                Outcome::Applied { id, generation, version, command, pixels, reply } => {
                    let m = metrics();
                    m.commands_applied.add(1, &[KeyValue::new("draw64.command.type", command.kind())]);
                    m.pixels_drawn.add(pixels, &[]);
                    let live = read(&self.live.images).get(&id).cloned();
                    match live {
                        Some(live) if live.generation == generation => {
                            let text = event::image_updated(&id, &command).into();
                            let change = Delivery { version, command, text, committed_at, cx };
                            if live.deliver(&id, change) {
                                // Another instance's change comes first and is not here yet.
                                self.report_gap(&id);
                            }
                        }
                        // This instance has not seen the image's creation yet: the bus will.
                        _ => self.report_gap(&id),
                    }
                    let _ = reply.send(Ok(()));
                }
                Outcome::Deleted { id, reply } => {
                    self.live.remove_image(&id, None);
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

    fn report_gap(&self, id: &ImageId) {
        if let Some(catch_up) = self.live.catch_up.get() {
            let _ = catch_up.send((id.clone(), None));
        }
    }

    /// A newly created image becomes visible blank at version 0 (its changes in this batch follow
    /// as deliveries). Answers false if it was already live (the bus was faster).
    fn make_live(&self, id: &ImageId, announce: bool) -> bool {
        let Some(generation) = self.images.get(id).map(|img| img.generation) else {
            // Created and deleted again within this batch: its delete follows.
            return false;
        };
        if !announce {
            let mut images = write(&self.live.images);
            if images.get(id).is_some_and(|live| live.generation == generation) {
                return false;
            }
            images.insert(id.clone(), self.live.new_image(generation, Default::default(), 0));
            return true;
        }
        self.live.add_image(id, generation, Default::default(), 0)
    }
}

/// The change log rows and the notices of a batch bound for a shared store.
fn log<'a>(outcomes: &'a [Outcome], contexts: &[Context]) -> (Vec<Change<'a>>, Vec<Notice>) {
    let mut changes = Vec::new();
    let mut notices = Vec::new();
    let mut latest: HashMap<&ImageId, usize> = HashMap::new();
    for (outcome, cx) in outcomes.iter().zip(contexts) {
        match outcome {
            Outcome::Applied { id, generation, version, command, .. } => {
                let mut body = String::with_capacity(64);
                body.push_str(r#"{"command":"#);
                command.write_json(&mut body);
                body.push('}');
                let traceparent = traceparent(cx.span().span_context());
                changes.push(Change {
                    image: id,
                    generation: *generation,
                    version: *version,
                    command: body,
                    traceparent,
                });
                let notice = Notice::Updated { image: id.clone(), generation: *generation, version: *version };
                // One pointer per image and batch: the newest version.
                match latest.get(id) {
                    Some(&at) => notices[at] = notice,
                    None => {
                        latest.insert(id, notices.len());
                        notices.push(notice);
                    }
                }
            }
            Outcome::Created { id, .. } | Outcome::Ensured { id, created: true, .. } => {
                notices.push(Notice::Created(id.clone()))
            }
            Outcome::Deleted { id, .. } => notices.push(Notice::Deleted(id.clone())),
            _ => {}
        }
    }
    (changes, notices)
}

/// W3C `traceparent` of a span context, when there is one.
pub fn traceparent(sc: &SpanContext) -> Option<String> {
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

fn refuse<T: Send + 'static>(reply: Reply<T>, error: ServiceError) -> Outcome {
    Outcome::Refused { reply: Box::new(move |e| drop(reply.send(Err(e)))), error }
}

impl Op {
    fn fail(self, error: ServiceError) {
        match self {
            Op::Create { reply, .. } => drop(reply.send(Err(error))),
            Op::Ensure { reply, .. } => drop(reply.send(Err(error))),
            Op::Apply { reply, .. } | Op::Delete { reply, .. } | Op::Ping { reply } => drop(reply.send(Err(error))),
            Op::Stop => {}
        }
    }
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
