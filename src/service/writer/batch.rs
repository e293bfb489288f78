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
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    fn working(images: &[&str], max_images: usize, max_total_images: usize) -> Working {
        let images = images
            .iter()
            .map(|id| StoredImage {
                id: ImageId::parse(id).unwrap(),
                generation: 1,
                canvas: Default::default(),
                version: 0,
            })
            .collect();
        Working::new(images, Counters::default(), Limits { max_images, max_total_images }, fastrand::Rng::with_seed(1))
    }

    fn id(s: &str) -> ImageId {
        ImageId::parse(s).unwrap()
    }

    fn create(
        w: &mut Working,
        undo: &mut Undo,
        name: Option<&str>,
    ) -> (Staged, oneshot::Receiver<Result<ImageId, ServiceError>>) {
        let (reply, rx) = oneshot::channel();
        (w.stage(Op::Create { id: name.map(id), reply }, undo), rx)
    }

    fn ensure(w: &mut Working, undo: &mut Undo, name: &str) -> Staged {
        let (reply, _rx) = oneshot::channel();
        w.stage(Op::Ensure { id: id(name), reply }, undo)
    }

    fn refused(staged: &Staged) -> Option<&ServiceError> {
        match staged {
            Staged::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    #[test]
    fn the_active_image_limit_is_exact() {
        let mut w = working(&["a"], 3, 100);
        let mut undo = w.begin();
        assert!(refused(&create(&mut w, &mut undo, Some("b")).0).is_none());
        assert!(refused(&create(&mut w, &mut undo, None).0).is_none());
        // Three exist: the limit is 3, not 4.
        assert!(matches!(refused(&create(&mut w, &mut undo, Some("d")).0), Some(ServiceError::TooManyImages)));
        // A delete makes room again, within the same batch.
        let (reply, _rx) = oneshot::channel();
        assert!(matches!(w.stage(Op::Delete { id: id("a"), reply }, &mut undo), Staged::Deleted { .. }));
        assert!(refused(&create(&mut w, &mut undo, Some("d")).0).is_none());
        assert_eq!(w.counters(), Counters { images_created: 3, images_deleted: 1 });
    }

    #[test]
    fn the_total_limit_caps_creating_connects_and_existing_images_still_connect() {
        let mut w = working(&["a", "b"], 1, 3);
        let mut undo = w.begin();
        assert!(matches!(ensure(&mut w, &mut undo, "c"), Staged::Ensured { created: true, .. }));
        match ensure(&mut w, &mut undo, "d") {
            Staged::Refused { error: ServiceError::TooManyTotal(3), .. } => {}
            _ => panic!("a fourth image must be refused"),
        }
        assert!(matches!(ensure(&mut w, &mut undo, "a"), Staged::Ensured { created: false, .. }));
        // POST's own limit is lower and counts every image.
        assert!(matches!(refused(&create(&mut w, &mut undo, Some("e")).0), Some(ServiceError::TooManyImages)));
    }

    #[test]
    fn a_random_id_taken_since_it_was_picked_is_picked_again() {
        let mut w = working(&[], 10, 100);
        let (reply, _rx) = oneshot::channel();
        let mut ops = vec![Op::Create { id: None, reply }];
        w.pick_ids(&mut ops);
        let Op::Create { id: Some(picked), .. } = &ops[0] else { panic!("an id was picked") };
        let picked = picked.clone();
        // Another instance created that very id before this batch locked it.
        let taken = StoredImage { id: picked.clone(), generation: 9, canvas: Default::default(), version: 0 };
        w.refresh(
            std::slice::from_ref(&picked),
            Locked { images: vec![taken], global: Some((Counters::default(), 1)) },
        );
        let mut undo = w.begin();
        let Staged::Created { id: got, .. } = w.stage(ops.pop().unwrap(), &mut undo) else { panic!("created") };
        assert_ne!(got, picked);
        assert_eq!(w.generation(&picked), Some(9), "the other instance's image is untouched");
        // A name the client chose is not re-picked: it already exists.
        let mut ops = vec![];
        let (reply, _rx) = oneshot::channel();
        ops.push(Op::Create { id: Some(got.clone()), reply });
        assert!(matches!(refused(&w.stage(ops.pop().unwrap(), &mut undo)), Some(ServiceError::AlreadyExists)));
    }

    #[test]
    fn create_then_delete_in_one_batch_writes_a_delete_and_counts_both() {
        let mut w = working(&[], 10, 100);
        let mut undo = w.begin();
        assert!(matches!(create(&mut w, &mut undo, Some("brief")).0, Staged::Created { .. }));
        let (reply, _rx) = oneshot::channel();
        let command = Command::ClearCanvas;
        assert!(matches!(
            w.stage(Op::Apply { id: id("brief"), command, reply }, &mut undo),
            Staged::Applied { version: 1, .. }
        ));
        let (reply, _rx) = oneshot::channel();
        assert!(matches!(w.stage(Op::Delete { id: id("brief"), reply }, &mut undo), Staged::Deleted { .. }));
        let writes = w.writes(&undo);
        assert!(matches!(writes.as_slice(), [Write::Delete(gone)] if gone.as_str() == "brief"));
        assert_eq!(w.counters(), Counters { images_created: 1, images_deleted: 1 });
        assert_eq!(w.generation(&id("brief")), None);
    }

    #[test]
    fn undo_puts_back_every_image_and_counter() {
        let mut w = working(&["a"], 10, 100);
        let mut undo = w.begin();
        let (reply, _rx) = oneshot::channel();
        w.stage(Op::Apply { id: id("a"), command: Command::ClearCanvas, reply }, &mut undo);
        create(&mut w, &mut undo, Some("b"));
        let (reply, _rx) = oneshot::channel();
        w.stage(Op::Delete { id: id("a"), reply }, &mut undo);
        w.undo(undo);
        assert_eq!(w.generation(&id("a")), Some(1));
        assert_eq!(w.generation(&id("b")), None);
        assert_eq!(w.counters(), Counters::default());
        let mut undo = w.begin();
        let (reply, _rx) = oneshot::channel();
        let Staged::Applied { version, .. } =
            w.stage(Op::Apply { id: id("a"), command: Command::ClearCanvas, reply }, &mut undo)
        else {
            panic!("applied")
        };
        assert_eq!(version, 1, "the undone version is given again");
    }
}
