//! The in-memory state every reader sees: the live images, the announcement channel, the
//! counters and the user counts. The only code that takes its locks.
//!
//! Who changes what: the writer thread makes its own commits visible (after they are durable);
//! the bus, through `Replica`, makes other instances' commits visible; connections count
//! themselves in and out through `Presence`. Readers never see a change that is not durable.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::{broadcast, mpsc, oneshot};

mod changes;

use super::{
    fanout::{FanoutQueue, Outgoing, SUBSCRIBER_BACKLOG},
    image::LiveImage,
    presence::{Presence, Users},
    sync::{lock, read},
};
use crate::{
    domain::{Canvas, ImageId, event},
    store::Counters,
};

/// A Server-Sent Event for `/sse/announce`: its name and its JSON data, encoded once.
#[derive(Clone, Debug)]
pub struct Announcement {
    pub name: &'static str,
    pub data: Arc<str>,
}

/// A request to catch an image up, with whom to tell when it is done (if anyone waits).
pub type CatchUp = (ImageId, Option<oneshot::Sender<()>>);

/// Catch-up requests waiting for the bus. Dropping one when full loses nothing: the bus's
/// periodic sweep catches every image up, and a waiting reader is answered at once.
const CATCH_UP_QUEUE: usize = 4096;

/// Who announces an image that becomes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// Now, as `image_created`.
    Now,
    /// The connection that created it, after its `user_connected` (the documented order).
    ByJoin,
}

/// What became of a delivered change.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Sent (or already sent) and nothing is missing before it.
    InOrder,
    /// An earlier version has not arrived: the image should be caught up.
    Gap,
    /// The image (of that generation) is not live here yet.
    NotLive,
}

pub struct State {
    images: RwLock<HashMap<ImageId, Arc<LiveImage>>>,
    counters: Mutex<Counters>,
    users: Users,
    /// Where to ask the bus to read what this instance has not heard of yet (shared stores).
    catch_up: Option<mpsc::Sender<CatchUp>>,
    /// Images this instance's writer is committing the creation of: the bus leaves them to the
    /// writer, which makes each live and announced once (a sweep between the commit and the
    /// writer's publish announced them twice).
    creating: Mutex<HashSet<ImageId>>,
    /// The writer's database connection is inside a commit (for `db.client.connection.count`).
    committing: AtomicBool,
    announce: broadcast::Sender<Announcement>,
    fanout: FanoutQueue,
}

impl State {
    /// Inside a Tokio runtime (it starts the fan-out task). With a shared store, also answers
    /// the receiving end of the catch-up requests, for the bus.
    pub fn new(shared: bool) -> (Self, Option<mpsc::Receiver<CatchUp>>) {
        let (catch_up, requests) = shared.then(|| mpsc::channel(CATCH_UP_QUEUE)).unzip();
        let state = Self {
            images: RwLock::default(),
            counters: Mutex::default(),
            users: Users::default(),
            catch_up,
            creating: Mutex::default(),
            committing: AtomicBool::new(false),
            announce: broadcast::Sender::new(SUBSCRIBER_BACKLOG),
            fanout: FanoutQueue::start(),
        };
        (state, requests)
    }

    // ---- readers ----

    pub fn contains(&self, id: &ImageId) -> bool {
        read(&self.images).contains_key(id)
    }

    pub fn ids(&self) -> Vec<ImageId> {
        let mut ids: Vec<ImageId> = read(&self.images).keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn image_count(&self) -> usize {
        read(&self.images).len()
    }

    pub fn canvas(&self, id: &ImageId) -> Option<Canvas> {
        self.image(id).map(|img| img.canvas())
    }

    pub fn subscribe(&self, id: &ImageId) -> Option<broadcast::Receiver<Outgoing>> {
        read(&self.images).get(id).map(|img| img.subscribe())
    }

    pub fn subscribe_announcements(&self) -> broadcast::Receiver<Announcement> {
        self.announce.subscribe()
    }

    pub fn counters(&self) -> Counters {
        *lock(&self.counters)
    }

    /// Each image's version (its accepted commands), where it has any.
    pub fn updates(&self) -> Vec<(ImageId, u64)> {
        read(&self.images).iter().map(|(id, img)| (id.clone(), img.version())).filter(|(_, n)| *n > 0).collect()
    }

    /// Users per image, busiest first.
    pub fn users_per_image(&self) -> Vec<u64> {
        let mut users: Vec<u64> =
            read(&self.images).values().map(|img| img.users.load(Ordering::Relaxed)).filter(|n| *n > 0).collect();
        users.sort_unstable_by(|a, b| b.cmp(a));
        users
    }

    /// Users on every instance.
    pub fn user_count(&self) -> u64 {
        self.users.total()
    }

    pub fn local_users(&self) -> u64 {
        self.users.local()
    }

    pub fn is_committing(&self) -> bool {
        self.committing.load(Ordering::Relaxed)
    }

    /// Asks the bus to read what this instance has not heard of `id` yet; `done` is told when
    /// it has (or dropped at once when there is no bus or its queue is full).
    pub fn request_catch_up(&self, id: &ImageId, done: Option<oneshot::Sender<()>>) -> bool {
        self.catch_up.as_ref().is_some_and(|queue| queue.try_send((id.clone(), done)).is_ok())
    }

    fn image(&self, id: &ImageId) -> Option<Arc<LiveImage>> {
        read(&self.images).get(id).cloned()
    }

    fn image_of(&self, id: &ImageId, generation: u64) -> Option<Arc<LiveImage>> {
        self.image(id).filter(|img| img.generation == generation)
    }

    // ---- presence ----

    /// Counts one more user on `image` and announces it (with the image, when the connection
    /// created it); the user leaves when the guard drops.
    pub fn join(self: &Arc<Self>, image: &ImageId, created: bool) -> Presence {
        let on_image = read(&self.images).get(image).map(|img| {
            img.users.fetch_add(1, Ordering::Relaxed);
            Arc::downgrade(img)
        });
        self.users.joined();
        self.say("user_connected", event::bare("user_connected"));
        if created {
            self.announce_image("image_created", image);
        }
        self.say("user_count_updated", event::user_count_updated(self.user_count()));
        Presence { state: self.clone(), image: on_image }
    }

    pub(in crate::service) fn leave(&self) {
        self.users.left();
        self.say("user_disconnected", event::bare("user_disconnected"));
        self.say("user_count_updated", event::user_count_updated(self.user_count()));
    }

    pub(in crate::service) fn presence_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.users.changed()
    }

    /// Records another instance's user count (`None`: it left; both `None`: only expire the
    /// silent ones); announces a changed total.
    pub(in crate::service) fn update_remote_users(&self, instance: Option<(&str, Option<u64>)>) {
        if let Some(total) = self.users.update_remote(instance) {
            self.say("user_count_updated", event::user_count_updated(total));
        }
    }

    fn new_image(&self, generation: u64, canvas: Canvas, version: u64) -> LiveImage {
        LiveImage::new(generation, canvas, version, self.fanout.clone())
    }

    fn deleted(&self, id: &ImageId, old: &LiveImage) {
        old.deleted(id);
        self.announce_image("image_deleted", id);
    }

    fn announce_image(&self, name: &'static str, id: &ImageId) {
        self.say(name, event::about_image(name, id));
    }

    fn say(&self, name: &'static str, data: String) {
        // No SSE listener is not an error.
        let _ = self.announce.send(Announcement { name, data: data.into() });
    }
}
