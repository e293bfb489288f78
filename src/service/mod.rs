//! The use cases: create, delete, draw, subscribe, count users. Owns the in-memory canvases
//! and the fan-out; reaches the database only through the writer thread and the `Store` trait.

mod live;
mod observe;
mod writer;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot};

pub use live::{Announcement, CatchUp, Delivery, EventText, Live, LiveImage, Outgoing, RESYNC, SUBSCRIBER_BACKLOG};
use live::{lock, read};
pub use writer::traceparent;
use writer::{Job, Op, Writer};

use crate::{
    domain::{Canvas, Command, ImageId, event},
    store::{Store, StoreError},
};

/// Capacity of the writer's queue: callers wait (backpressure) rather than grow memory.
const QUEUE: usize = 8192;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Active images that `POST /images` may bring the total to.
    pub max_images: usize,
    /// Images in all, including those WebSocket connections create on the fly.
    pub max_total_images: usize,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("Image ID not found.")]
    NotFound,
    #[error("Image ID already exists.")]
    AlreadyExists,
    #[error("Too many images already created.")]
    TooManyImages,
    #[error("Too many images exist ({0}, the --max-total-images limit); delete some first.")]
    TooManyTotal(usize),
    #[error("No free random image id is left; choose one with POST /images/{{image_id}}.")]
    NoFreeId,
    #[error("Storage unavailable: {0}")]
    Unavailable(String),
    #[error("The service is shutting down.")]
    Stopped,
}

#[derive(serde::Serialize, utoipa::ToSchema, Debug)]
pub struct Statistics {
    pub images_created: u64,
    pub images_deleted: u64,
    pub user_count: u64,
    pub image_updates: BTreeMap<String, u64>,
}

#[derive(Clone)]
pub struct Service {
    ops: mpsc::Sender<Job>,
    live: Arc<Live>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Service {
    /// Starts the writer thread, which loads every image from the store into memory (all store
    /// calls happen on that thread), and answers once they are loaded.
    pub async fn start(store: Box<dyn Store>, limits: Limits) -> Result<Self, StoreError> {
        let live = Arc::new(Live::new(Default::default()));
        let _ = live.fanout_queue.set(live::start_fanout());
        let (ops, queue) = mpsc::channel(QUEUE);
        let (loaded_tx, loaded) = oneshot::channel();
        let writer_live = live.clone();
        let handle = std::thread::Builder::new()
            .name("draw64-writer".into())
            .spawn(move || match Writer::load(store, writer_live, limits) {
                Ok(writer) => {
                    let _ = loaded_tx.send(Ok(()));
                    writer.run(queue);
                }
                Err(e) => drop(loaded_tx.send(Err(e))),
            })
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        match loaded.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => return Err(StoreError::Database("the writer thread stopped while loading".into())),
        }
        let service = Self { ops, live, writer: Arc::new(Mutex::new(Some(handle))) };
        observe::register(&service);
        Ok(service)
    }

    /// The shared in-memory state, for the bus that keeps it fresh from other instances.
    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.live
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, ServiceError>>) -> Op,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        // The caller's trace context travels with the change into the writer's spans. (HTTP
        // requests attach theirs; `tracing` spans attach theirs when entered.)
        let cx = opentelemetry::Context::current();
        self.ops.send((op(tx), cx)).await.map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)?
    }

    pub async fn create(&self, id: Option<ImageId>) -> Result<ImageId, ServiceError> {
        self.call(|reply| Op::Create { id, reply }).await
    }

    /// Creates the image if missing; answers whether this call created it.
    pub async fn ensure(&self, id: ImageId) -> Result<bool, ServiceError> {
        // Most connects are to existing images: skip the writer's queue for them. A delete
        // racing with this is caught by `subscribe` answering `None`.
        if self.exists(&id) {
            return Ok(false);
        }
        self.call(|reply| Op::Ensure { id, reply }).await
    }

    /// Returns once the change is committed and pushed to the image's subscribers.
    pub async fn apply(&self, id: ImageId, command: Command) -> Result<(), ServiceError> {
        self.submit(id, command).await?.await
    }

    /// Queues a change (waiting only for room in the queue) and answers its outcome to await:
    /// a client can have several in flight, committed in the order it queued them.
    pub async fn submit(
        &self,
        id: ImageId,
        command: Command,
    ) -> Result<impl Future<Output = Result<(), ServiceError>> + Send + 'static, ServiceError> {
        let (reply, outcome) = oneshot::channel();
        let cx = opentelemetry::Context::current();
        self.ops.send((Op::Apply { id, command, reply }, cx)).await.map_err(|_| ServiceError::Stopped)?;
        Ok(async move { outcome.await.map_err(|_| ServiceError::Stopped)? })
    }

    pub async fn delete(&self, id: ImageId) -> Result<(), ServiceError> {
        self.call(|reply| Op::Delete { id, reply }).await
    }

    /// Proves the whole write path answers: queue, writer thread and database.
    pub async fn ping(&self, timeout: Duration) -> Result<(), ServiceError> {
        match tokio::time::timeout(timeout, self.call(|reply| Op::Ping { reply })).await {
            Ok(result) => result,
            Err(_) => Err(ServiceError::Unavailable(format!("no answer within {timeout:?}"))),
        }
    }

    pub fn exists(&self, id: &ImageId) -> bool {
        read(&self.live.images).contains_key(id)
    }

    pub fn list(&self) -> Vec<ImageId> {
        let mut ids: Vec<ImageId> = read(&self.live.images).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The image with every change committed before this call, whichever instance made it:
    /// with several instances, first reads what this one has not heard of yet (bounded wait;
    /// if the bus is down, what this instance has). A page that subscribes and then loads the
    /// image through a balancer therefore never loads an older state than its socket continues.
    pub async fn committed_canvas(&self, id: &ImageId) -> Option<Canvas> {
        if let Some(catch_up) = self.live.catch_up.get() {
            let (done, caught_up) = oneshot::channel();
            if catch_up.send((id.clone(), Some(done))).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), caught_up).await;
            }
        }
        self.canvas(id)
    }

    pub fn canvas(&self, id: &ImageId) -> Option<Canvas> {
        read(&self.live.images).get(id).map(|img| read(&img.canvas).clone())
    }

    pub fn subscribe(&self, id: &ImageId) -> Option<broadcast::Receiver<Outgoing>> {
        read(&self.live.images).get(id).map(|img| img.events.subscribe())
    }

    pub fn announcements(&self) -> broadcast::Receiver<Announcement> {
        self.live.subscribe_announcements()
    }

    pub fn statistics(&self) -> Statistics {
        let counters = *lock(&self.live.counters);
        let image_updates = read(&self.live.images)
            .iter()
            .map(|(id, img)| (id.to_string(), img.updates.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Statistics {
            images_created: counters.images_created,
            images_deleted: counters.images_deleted,
            user_count: self.live.user_count(),
            image_updates,
        }
    }

    pub fn user_count(&self) -> u64 {
        self.live.user_count()
    }

    /// Operations waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        QUEUE - self.ops.capacity()
    }

    /// Whether the store's connection is busy committing right now.
    pub fn store_busy(&self) -> bool {
        self.live.committing.load(Ordering::Relaxed)
    }

    pub fn image_count(&self) -> usize {
        read(&self.live.images).len()
    }

    /// Users per image, busiest first (for a bounded metric: the caller keeps the top few).
    pub fn users_per_image(&self) -> Vec<u64> {
        let mut users: Vec<u64> =
            read(&self.live.images).values().map(|img| img.users.load(Ordering::Relaxed)).filter(|n| *n > 0).collect();
        users.sort_unstable_by(|a, b| b.cmp(a));
        users
    }

    /// Counts one more user on `image` and announces it; the user leaves when the guard drops.
    pub fn join(&self, image: &ImageId, created: bool) -> Presence {
        // Weak: a connected user must not keep a deleted image's event channel open.
        let on_image = read(&self.live.images).get(image).map(|img| {
            img.users.fetch_add(1, Ordering::Relaxed);
            Arc::downgrade(img)
        });
        let created = created.then_some(image);
        self.live.users.fetch_add(1, Ordering::Relaxed);
        self.live.presence_changed.notify_one();
        self.live.announce("user_connected", event::bare("user_connected"));
        if let Some(id) = created {
            self.live.announce_image("image_created", id);
        }
        self.live.announce("user_count_updated", event::user_count_updated(self.live.user_count()));
        Presence { live: self.live.clone(), image: on_image }
    }

    /// Lets queued writes commit, then stops the writer. Call after the server stopped serving.
    pub async fn shutdown(&self) {
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle {
            let _ = self.ops.send((Op::Stop, opentelemetry::Context::new())).await;
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

pub struct Presence {
    live: Arc<Live>,
    image: Option<std::sync::Weak<live::LiveImage>>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(img) = self.image.as_ref().and_then(std::sync::Weak::upgrade) {
            img.users.fetch_sub(1, Ordering::Relaxed);
        }
        self.live.users.fetch_sub(1, Ordering::Relaxed);
        self.live.presence_changed.notify_one();
        self.live.announce("user_disconnected", event::bare("user_disconnected"));
        self.live.announce("user_count_updated", event::user_count_updated(self.live.user_count()));
    }
}
