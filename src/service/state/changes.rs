//! Changes to the state: the writer's own commits, and (through `Replica`) the other
//! instances'. Each is applied once: a second arrival of the same image or version is a no-op.

use std::sync::{Arc, atomic::Ordering};

use super::{Announce, Delivered, State};
use crate::{
    domain::{Canvas, ImageId},
    service::{
        image::Delivery,
        sync::{lock, read, write},
    },
    store::{Counters, StoredImage},
};

impl State {
    /// The images as stored at start: live, not announced.
    pub(in crate::service) fn load(&self, images: &[StoredImage], counters: Counters) {
        let mut map = write(&self.images);
        for img in images {
            map.insert(img.id.clone(), Arc::new(self.new_image(img.generation, img.canvas.clone(), img.version)));
        }
        drop(map);
        self.merge_counters(counters);
    }

    /// Counters only grow, so the largest value seen (from this writer or another instance)
    /// is the current one.
    pub(in crate::service) fn merge_counters(&self, seen: Counters) {
        let mut counters = lock(&self.counters);
        counters.images_created = counters.images_created.max(seen.images_created);
        counters.images_deleted = counters.images_deleted.max(seen.images_deleted);
    }

    pub(in crate::service) fn set_committing(&self, committing: bool) {
        self.committing.store(committing, Ordering::Relaxed);
    }

    /// Marks `ids` as being created by this instance until the guard drops (after publishing).
    pub(in crate::service) fn creating(self: &Arc<Self>, ids: Vec<ImageId>) -> Creating {
        if !ids.is_empty() {
            lock(&self.creating).extend(ids.iter().cloned());
        }
        Creating { state: self.clone(), ids }
    }

    pub(in crate::service) fn is_creating(&self, id: &ImageId) -> bool {
        lock(&self.creating).contains(id)
    }

    /// Makes an image live unless one of that generation already is; a live namesake of
    /// another generation (deleted and re-created) is replaced. Answers whether it did.
    pub(in crate::service) fn add_image(
        &self,
        id: &ImageId,
        generation: u64,
        canvas: Canvas,
        version: u64,
        announce: Announce,
    ) -> bool {
        let replaced = {
            let mut images = write(&self.images);
            if images.get(id).is_some_and(|live| live.generation == generation) {
                return false;
            }
            images.insert(id.clone(), Arc::new(self.new_image(generation, canvas, version)))
        };
        if let Some(old) = replaced {
            self.deleted(id, &old);
        }
        if announce == Announce::Now {
            self.announce_image("image_created", id);
        }
        true
    }

    /// Removes a live image if it is of `generation` (or any, when `None`); tells its
    /// subscribers and the announcement stream. Answers whether it removed one.
    pub(in crate::service) fn remove_image(&self, id: &ImageId, generation: Option<u64>) -> bool {
        let removed = {
            let mut images = write(&self.images);
            match (images.get(id), generation) {
                (Some(live), Some(generation)) if live.generation != generation => None,
                _ => images.remove(id),
            }
        };
        removed.inspect(|old| self.deleted(id, old)).is_some()
    }

    pub(in crate::service) fn deliver(&self, id: &ImageId, generation: u64, change: Delivery) -> Delivered {
        match self.image_of(id, generation) {
            Some(img) if img.deliver(id, change) => Delivered::Gap,
            Some(_) => Delivered::InOrder,
            None => Delivered::NotLive,
        }
    }

    pub(in crate::service) fn live(&self, id: &ImageId) -> Option<(u64, u64)> {
        self.image(id).map(|img| (img.generation, img.version()))
    }

    /// The last version sent of the live image `id` of `generation`.
    pub(in crate::service) fn version_of(&self, id: &ImageId, generation: u64) -> Option<u64> {
        self.image_of(id, generation).map(|img| img.version())
    }

    /// Every live image: id, generation and last version sent.
    pub(in crate::service) fn versions(&self) -> Vec<(ImageId, u64, u64)> {
        read(&self.images).iter().map(|(id, img)| (id.clone(), img.generation, img.version())).collect()
    }

    pub(in crate::service) fn reset(&self, id: &ImageId, generation: u64, canvas: Canvas, version: u64) {
        if let Some(img) = self.image_of(id, generation) {
            img.reset(canvas, version);
        }
    }
}

/// Images whose creation this instance is committing; forgotten on drop.
pub struct Creating {
    state: Arc<State>,
    ids: Vec<ImageId>,
}

impl Drop for Creating {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut creating = lock(&self.state.creating);
            for id in &self.ids {
                creating.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{replica::Replica, state::Announcement};

    /// The state of an instance on a shared store, the bus's door into it, and an SSE listener.
    fn shared_state() -> (Arc<State>, Replica, tokio::sync::broadcast::Receiver<Announcement>) {
        let (state, requests) = State::new(true);
        let state = Arc::new(state);
        let replica = Replica::new(state.clone(), requests.unwrap());
        let sse = state.subscribe_announcements();
        (state, replica, sse)
    }

    fn names(rx: &mut tokio::sync::broadcast::Receiver<Announcement>) -> Vec<&'static str> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|a| a.name).collect()
    }

    /// The race the PostgreSQL CI run lost: the bus's sweep sees a connection's new image
    /// after the writer's commit and before the writer's publish.
    #[tokio::test]
    async fn an_image_this_instance_creates_is_announced_once_after_its_user_connected() {
        let (state, replica, mut sse) = shared_state();
        let id = ImageId::parse("fresh").unwrap();

        let creating = state.creating(vec![id.clone()]);
        replica.add(&id, 7, Canvas::default(), 0);
        assert!(!state.contains(&id), "the bus leaves an image being created to the writer");
        assert!(state.add_image(&id, 7, Canvas::default(), 0, Announce::ByJoin));
        drop(creating);
        replica.add(&id, 7, Canvas::default(), 0);
        assert!(names(&mut sse).is_empty());
        let _user = state.join(&id, true);
        assert_eq!(names(&mut sse), ["user_connected", "image_created", "user_count_updated"]);
    }

    #[tokio::test]
    async fn an_image_created_elsewhere_is_announced_once_whoever_sees_it_first() {
        let (state, replica, mut sse) = shared_state();
        let id = ImageId::parse("remote").unwrap();
        assert!(state.add_image(&id, 3, Canvas::default(), 0, Announce::Now));
        replica.add(&id, 3, Canvas::default(), 0);
        assert_eq!(names(&mut sse), ["image_created"]);
        // Deleted and re-created elsewhere: the namesake is replaced, both announced.
        replica.add(&id, 4, Canvas::default(), 0);
        assert_eq!(names(&mut sse), ["image_deleted", "image_created"]);
        assert!(state.remove_image(&id, Some(4)));
        assert!(!state.remove_image(&id, None), "a second removal announces nothing");
        assert_eq!(names(&mut sse), ["image_deleted"]);
    }
}
