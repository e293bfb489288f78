//! The writer's rules, with no I/O: each operation of a batch is staged in arrival order on
//! the writer's working copy of the images (limits, ids, versions), remembering how to undo
//! the whole batch if its commit fails.

use std::collections::HashMap;

use super::{Op, Reply};
use crate::{
    domain::{Command, ImageId, random_image_id},
    service::{Limits, ServiceError},
    store::{Counters, Locked, StoredImage, Write},
};

/// What an operation did to the working copy, kept until the commit decides its fate.
pub enum Staged {
    Created { id: ImageId, reply: Reply<ImageId> },
    Ensured { id: ImageId, created: bool, reply: Reply<bool> },
    Applied { id: ImageId, generation: u64, version: u64, command: Command, reply: Reply<()> },
    Deleted { id: ImageId, reply: Reply<()> },
    Pinged { reply: Reply<()> },
    Refused { reply: Box<dyn FnOnce(ServiceError) + Send>, error: ServiceError },
}

/// How to put the working copy back as it was before a batch.
pub struct Undo {
    /// The state of each touched image before the batch (`None`: it did not exist).
    images: HashMap<ImageId, Option<StoredImage>>,
    counters: Counters,
    total: usize,
}

impl Undo {
    /// Whether the batch changed anything that must be written.
    pub fn is_empty(&self, working: &Working) -> bool {
        self.images.is_empty() && self.counters == working.counters
    }
}

/// The writer's copy of the images: for an embedded store every image (the truth); for a
/// shared one a cache whose touched rows are re-read under lock at the start of each batch.
pub struct Working {
    images: HashMap<ImageId, StoredImage>,
    /// Images in all (for a shared store, as counted under the batch's lock).
    total: usize,
    counters: Counters,
    limits: Limits,
    rng: fastrand::Rng,
    /// Random ids picked before locking, this batch (a shared store must lock them too).
    picked: Vec<ImageId>,
}

impl Working {
    pub fn new(images: Vec<StoredImage>, counters: Counters, limits: Limits, rng: fastrand::Rng) -> Self {
        let total = images.len();
        let images = images.into_iter().map(|img| (img.id.clone(), img)).collect();
        Self { images, total, counters, limits, rng, picked: Vec::new() }
    }

    /// The same limits and id picker over what the store holds now (after a panic). An
    /// image keeps the generation readers know it by: SQLite stores none.
    pub fn reloaded(&self, mut images: Vec<StoredImage>, counters: Counters) -> Self {
        for img in &mut images {
            if let Some(known) = self.images.get(&img.id) {
                img.generation = known.generation;
            }
        }
        Self::new(images, counters, self.limits, self.rng.clone())
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn generation(&self, id: &ImageId) -> Option<u64> {
        self.images.get(id).map(|img| img.generation)
    }

    /// For a shared store: gives every random create its id now, so it is locked like any other.
    pub fn pick_ids<'a>(&mut self, ops: impl IntoIterator<Item = &'a mut Op>) {
        for op in ops {
            if let Op::Create { id: id @ None, .. } = op
                && let Some(picked) = self.free_id()
            {
                self.picked.push(picked.clone());
                *id = Some(picked);
            }
        }
    }

    /// Puts the rows a shared store locked for this batch in place of the cached ones.
    pub fn refresh(&mut self, ids: &[ImageId], locked: Locked) {
        for id in ids {
            self.images.remove(id);
        }
        for img in locked.images {
            self.images.insert(img.id.clone(), img);
        }
        if let Some((counters, total)) = locked.global {
            self.counters = counters;
            self.total = total;
        }
    }

    pub fn begin(&self) -> Undo {
        Undo { images: HashMap::new(), counters: self.counters, total: self.total }
    }

    /// Applies one operation and records how to answer it.
    pub fn stage(&mut self, op: Op, undo: &mut Undo) -> Staged {
        match op {
            Op::Create { id, reply } => match self.create(id, undo) {
                Ok(id) => Staged::Created { id, reply },
                Err(error) => refuse(reply, error),
            },
            Op::Ensure { id, reply } => {
                if self.images.contains_key(&id) {
                    return Staged::Ensured { id, created: false, reply };
                }
                if self.total >= self.limits.max_total_images {
                    return refuse(reply, ServiceError::TooManyTotal(self.limits.max_total_images));
                }
                self.insert_new(&id, undo);
                Staged::Ensured { id, created: true, reply }
            }
            Op::Apply { id, command, reply } => {
                let Some(img) = self.images.get_mut(&id) else {
                    return refuse(reply, ServiceError::NotFound);
                };
                undo.images.entry(id.clone()).or_insert_with(|| Some(img.clone()));
                command.apply(&mut img.canvas);
                img.version += 1;
                let (generation, version) = (img.generation, img.version);
                Staged::Applied { id, generation, version, command, reply }
            }
            Op::Delete { id, reply } => {
                let Some(img) = self.images.remove(&id) else {
                    return refuse(reply, ServiceError::NotFound);
                };
                undo.images.entry(id.clone()).or_insert(Some(img));
                self.counters.images_deleted += 1;
                self.total -= 1;
                Staged::Deleted { id, reply }
            }
            Op::Ping { reply } => Staged::Pinged { reply },
            Op::Stop => unreachable!("the writer's loop filters Stop out"),
        }
    }

    /// The net effect of the batch on each image it touched.
    pub fn writes<'a>(&'a self, undo: &'a Undo) -> Vec<Write<'a>> {
        undo.images
            .keys()
            .map(|id| match self.images.get(id) {
                Some(img) => Write::Upsert(img),
                None => Write::Delete(id),
            })
            .collect()
    }

    /// The batch is over (committed or undone): random picks are spent.
    pub fn end(&mut self) {
        self.picked.clear();
    }

    /// Puts back what the batch changed (its commit failed).
    pub fn undo(&mut self, undo: Undo) {
        for (id, before) in undo.images {
            match before {
                Some(img) => self.images.insert(id, img),
                None => self.images.remove(&id),
            };
        }
        self.counters = undo.counters;
        self.total = undo.total;
        self.end();
    }

    fn create(&mut self, id: Option<ImageId>, undo: &mut Undo) -> Result<ImageId, ServiceError> {
        let id = match id {
            // A random pick that another instance took since (rare): pick again.
            Some(id) if self.images.contains_key(&id) && self.picked.contains(&id) => {
                self.free_id().ok_or(ServiceError::NoFreeId)?
            }
            Some(id) if self.images.contains_key(&id) => return Err(ServiceError::AlreadyExists),
            Some(id) => id,
            None => self.free_id().ok_or(ServiceError::NoFreeId)?,
        };
        if self.total >= self.limits.max_images {
            return Err(ServiceError::TooManyImages);
        }
        self.insert_new(&id, undo);
        Ok(id)
    }

    fn insert_new(&mut self, id: &ImageId, undo: &mut Undo) {
        undo.images.entry(id.clone()).or_insert(None);
        let generation = self.rng.u64(1..i64::MAX as u64);
        let img = StoredImage { id: id.clone(), generation, canvas: Default::default(), version: 0 };
        self.images.insert(id.clone(), img);
        self.counters.images_created += 1;
        self.total += 1;
    }

    fn free_id(&mut self) -> Option<ImageId> {
        (0..10_000).map(|_| random_image_id(&mut self.rng)).find(|id| !self.images.contains_key(id))
    }
}

fn refuse<T: Send + 'static>(reply: Reply<T>, error: ServiceError) -> Staged {
    Staged::Refused { reply: Box::new(move |e| drop(reply.send(Err(e)))), error }
}

impl Staged {
    /// Answers the caller with `error` (the batch did not commit).
    pub fn fail(self, error: ServiceError) {
        match self {
            Staged::Created { reply, .. } => drop(reply.send(Err(error))),
            Staged::Ensured { reply, .. } => drop(reply.send(Err(error))),
            Staged::Applied { reply, .. } | Staged::Deleted { reply, .. } | Staged::Pinged { reply } => {
                drop(reply.send(Err(error)))
            }
            // Refused for its own reason, which stays the more useful answer.
            Staged::Refused { reply, error } => reply(error),
        }
    }
}

#[cfg(test)]
mod tests;
