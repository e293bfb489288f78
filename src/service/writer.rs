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

use std::{collections::HashMap, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use super::{
    Limits, ServiceError,
    live::{Live, LiveImage, lock, read, write},
};
use crate::{
    domain::{Command, ImageId, event, random_image_id},
    store::{Counters, Store, StoredImage, Write},
};

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
    Applied { id: ImageId, text: String, reply: Reply<()> },
    Deleted { id: ImageId, reply: Reply<()> },
    Pinged { reply: Reply<()> },
    Refused { reply: Box<dyn FnOnce(ServiceError) + Send>, error: ServiceError },
}

pub struct Writer {
    store: Box<dyn Store>,
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
        Self { store, images, counters, live, limits, rng: fastrand::Rng::new() }
    }

    /// Runs until every sender is gone, committing what is queued before returning.
    pub fn run(mut self, mut queue: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(64);
        let mut next = queue.blocking_recv();
        while let Some(op) = next.take() {
            let mut stop = matches!(op, Op::Stop);
            batch.push(op);
            while !stop && batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(op) => {
                        stop = matches!(op, Op::Stop);
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.process(batch.drain(..).filter(|op| !matches!(op, Op::Stop)));
            if stop {
                tracing::info!("writer stopped; every queued change is committed");
                return;
            }
            next = queue.blocking_recv();
        }
    }

    fn process(&mut self, ops: impl Iterator<Item = Op>) {
        let counters_before = self.counters;
        // The state of each touched image before the batch (None: it did not exist).
        let mut undo: HashMap<ImageId, Option<StoredImage>> = HashMap::new();
        let mut outcomes = Vec::new();
        for op in ops {
            outcomes.push(self.stage(op, &mut undo));
        }
        if !undo.is_empty() || self.counters != counters_before {
            let writes: Vec<Write<'_>> = undo
                .keys()
                .map(|id| match self.images.get(id) {
                    Some(img) => Write::Upsert(img),
                    None => Write::Delete(id),
                })
                .collect();
            if let Err(e) = self.store.commit(&writes, self.counters) {
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
        self.publish(undo.keys(), outcomes);
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
                Outcome::Applied { text: event::image_updated(&id, &command), id, reply }
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
    fn publish<'a>(&mut self, touched: impl Iterator<Item = &'a ImageId>, outcomes: Vec<Outcome>) {
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
        for outcome in outcomes {
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
                Outcome::Applied { id, text, reply } => {
                    if let Some(live) = read(&self.live.images).get(&id) {
                        // No subscriber is fine: the change is stored.
                        let _ = live.events.send(text.into());
                    }
                    let _ = reply.send(Ok(()));
                }
                Outcome::Deleted { id, reply } => {
                    if let Some(live) = write(&self.live.images).remove(&id) {
                        let _ = live.events.send(event::about_image("image_deleted", &id).into());
                    }
                    self.live.announce_image("image_deleted", &id);
                    let _ = reply.send(Ok(()));
                }
                Outcome::Pinged { reply } => {
                    let _ = reply.send(self.store.ping().map_err(|e| ServiceError::Unavailable(e.to_string())));
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
