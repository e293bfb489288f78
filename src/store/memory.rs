//! An in-memory `Store` for the writer's unit tests: no database, and commits that fail on
//! demand.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use super::{Commit, Counters, Describe, Snapshot, Store, StoreError, StoredImage, Write};
use crate::domain::ImageId;

/// What the store holds, shared with the test that inspects it.
#[derive(Default)]
pub struct Contents {
    pub images: HashMap<ImageId, StoredImage>,
    pub counters: Counters,
    pub commits: usize,
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    pub contents: Arc<Mutex<Contents>>,
    /// The next commit fails (and writes nothing) while set.
    pub fail_commits: Arc<AtomicBool>,
}

impl Store for MemoryStore {
    fn describe(&self) -> Describe {
        Describe { system: "memory", namespace: "test".into(), commit_query: "COMMIT", pool_size: 1 }
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let contents = self.contents.lock().unwrap();
        Ok(Snapshot { images: contents.images.values().cloned().collect(), counters: contents.counters })
    }

    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), StoreError> {
        if self.fail_commits.load(Ordering::Relaxed) {
            return Err(StoreError::database("disk on fire"));
        }
        let mut contents = self.contents.lock().unwrap();
        for write in &commit.writes {
            match write {
                Write::Upsert(img) => drop(contents.images.insert(img.id.clone(), (*img).clone())),
                Write::Delete(id) => drop(contents.images.remove(*id)),
            }
        }
        contents.counters = commit.counters;
        contents.commits += 1;
        Ok(())
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
