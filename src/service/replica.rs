//! `Replica`: the one door through which another instance's commits change this instance.
//! The bus holds it; it sees the in-memory state only through these methods.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{
    image::Delivery,
    state::{Announce, CatchUp, Delivered, State},
};
use crate::{
    domain::{Canvas, ImageId},
    store::Counters,
};

pub struct Replica {
    state: Arc<State>,
    /// Behind an async lock only so that the bus can wait for a request and for presence at
    /// once; the bus's one task is its only user.
    requests: tokio::sync::Mutex<mpsc::Receiver<CatchUp>>,
}

impl Replica {
    pub(super) fn new(state: Arc<State>, requests: mpsc::Receiver<CatchUp>) -> Self {
        Self { state, requests: tokio::sync::Mutex::new(requests) }
    }

    /// Every live image: id, generation and the last version sent to its subscribers.
    pub fn versions(&self) -> Vec<(ImageId, u64, u64)> {
        self.state.versions()
    }

    /// The generation and last version sent of the live image `id`.
    pub fn live(&self, id: &ImageId) -> Option<(u64, u64)> {
        self.state.live(id)
    }

    /// The last version sent of `id` if it is live with this `generation`.
    pub fn version_of(&self, id: &ImageId, generation: u64) -> Option<u64> {
        self.state.version_of(id, generation)
    }

    /// An image created elsewhere (or re-created), as stored: made live and announced — unless
    /// this instance's writer is creating it right now, which then does both itself.
    pub fn add(&self, id: &ImageId, generation: u64, canvas: Canvas, version: u64) {
        if !self.state.is_creating(id) {
            self.state.add_image(id, generation, canvas, version, Announce::Now);
        }
    }

    /// An image deleted elsewhere: removed if it is still of `generation`.
    pub fn remove(&self, id: &ImageId, generation: u64) {
        self.state.remove_image(id, Some(generation));
    }

    /// Another instance's change, in version order with this instance's own; answers whether
    /// an earlier version is still missing.
    pub fn deliver(&self, id: &ImageId, generation: u64, change: Delivery) -> bool {
        self.state.deliver(id, generation, change) == Delivered::Gap
    }

    /// The image as stored replaces the live one (its missing changes left the log); its
    /// subscribers are told to reload.
    pub fn reset(&self, id: &ImageId, generation: u64, canvas: Canvas, version: u64) {
        self.state.reset(id, generation, canvas, version);
    }

    pub fn merge_counters(&self, seen: Counters) {
        self.state.merge_counters(seen);
    }

    /// Users connected to this instance, for its heartbeat.
    pub fn local_users(&self) -> u64 {
        self.state.local_users()
    }

    /// Resolves when this instance's user count changed.
    pub async fn presence_changed(&self) {
        self.state.presence_changed().await
    }

    /// Another instance's heartbeat (`None`: it said goodbye).
    pub fn remote_users(&self, instance: &str, users: Option<u64>) {
        self.state.update_remote_users(Some((instance, users)));
    }

    /// Forgets instances not heard from within the presence TTL.
    pub fn expire_remote_users(&self) {
        self.state.update_remote_users(None);
    }

    /// The next image this instance asked to catch up (`None`: the service is gone).
    pub async fn next_catch_up(&self) -> Option<CatchUp> {
        self.requests.lock().await.recv().await
    }

    /// Every request waiting now, without waiting.
    pub async fn pending_catch_ups(&self) -> Vec<CatchUp> {
        let mut requests = self.requests.lock().await;
        std::iter::from_fn(|| requests.try_recv().ok()).collect()
    }
}
