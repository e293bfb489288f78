//! The use cases: create, delete, draw, subscribe, count users. Owns the in-memory canvases
//! and the fan-out; reaches the database only through the writer thread and the `Store` trait.
//!
//! - `state`: the in-memory state (private; the only code that takes its locks), made of
//!   `image`s whose events go out through `fanout`;
//! - `writer`: the one thread that commits every change, then makes it visible;
//! - `replica`: the door through which the bus brings other instances' commits in;
//! - `presence`: connected users, here and on the other instances.

mod fanout;
mod gauges;
mod image;
mod presence;
mod replica;
mod state;
mod sync;
mod writer;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot};

pub use fanout::{EventText, Outgoing, RESYNC, SUBSCRIBER_BACKLOG};
pub use image::Delivery;
pub use presence::{PRESENCE_TTL, Presence};
pub use replica::Replica;
use state::State;
pub use state::{Announcement, CatchUp};
use sync::lock;
use writer::{Job, Op, Writer};

use crate::{
    domain::{Canvas, Command, ImageId},
    store::{Store, StoreError},
    telemetry::errors,
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
    state: Arc<State>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// For the bus, taken once (shared stores only).
    replica: Arc<Mutex<Option<Replica>>>,
}

impl Service {
    /// Starts the writer thread, which loads every image from the store into memory (all store
    /// calls happen on that thread), and answers once they are loaded.
    pub async fn start(store: Box<dyn Store>, limits: Limits) -> Result<Self, StoreError> {
        let pool_size = store.describe().pool_size;
        let (state, requests) = State::new(store.shared());
        let state = Arc::new(state);
        let (ops, queue) = mpsc::channel(QUEUE);
        let (loaded_tx, loaded) = oneshot::channel();
        let writer_state = state.clone();
        let handle = std::thread::Builder::new()
            .name("draw64-writer".into())
            .spawn(move || match Writer::load(store, writer_state, limits) {
                Ok(writer) => {
                    let _ = loaded_tx.send(Ok(()));
                    writer.run(queue);
                }
                Err(e) => drop(loaded_tx.send(Err(e))),
            })
            .map_err(StoreError::database)?;
        match loaded.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => return Err(StoreError::Unusable("the writer thread stopped while loading".into())),
        }
        let replica = requests.map(|requests| Replica::new(state.clone(), requests));
        let service =
            Self { ops, state, writer: Arc::new(Mutex::new(Some(handle))), replica: Arc::new(Mutex::new(replica)) };
        gauges::register(&service, pool_size);
        Ok(service)
    }

    /// The door for the bus that keeps this instance fresh from the others (once; `None` for
    /// an embedded store).
    pub fn take_replica(&self) -> Option<Replica> {
        lock(&self.replica).take()
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, ServiceError>>) -> Op,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        // The caller's trace context travels with the change into the writer's spans.
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
            Err(_) => {
                let e = ServiceError::Unavailable(format!("no answer within {timeout:?}"));
                let cx = opentelemetry::Context::current();
                errors::record(&cx, &errors::WRITER_TIMEOUT, &e);
                Err(e)
            }
        }
    }

    pub fn exists(&self, id: &ImageId) -> bool {
        self.state.contains(id)
    }

    pub fn list(&self) -> Vec<ImageId> {
        self.state.ids()
    }

    /// The image with every change committed before this call, whichever instance made it:
    /// with several instances, first reads what this one has not heard of yet (bounded wait;
    /// if the bus is down, what this instance has). A page that subscribes and then loads the
    /// image through a balancer therefore never loads an older state than its socket continues.
    pub async fn committed_canvas(&self, id: &ImageId) -> Option<Canvas> {
        let (done, caught_up) = oneshot::channel();
        if self.state.request_catch_up(id, Some(done)) {
            let _ = tokio::time::timeout(Duration::from_secs(1), caught_up).await;
        }
        self.canvas(id)
    }

    pub fn canvas(&self, id: &ImageId) -> Option<Canvas> {
        self.state.canvas(id)
    }

    pub fn subscribe(&self, id: &ImageId) -> Option<broadcast::Receiver<Outgoing>> {
        self.state.subscribe(id)
    }

    pub fn announcements(&self) -> broadcast::Receiver<Announcement> {
        self.state.subscribe_announcements()
    }

    pub fn statistics(&self) -> Statistics {
        let counters = self.state.counters();
        Statistics {
            images_created: counters.images_created,
            images_deleted: counters.images_deleted,
            user_count: self.state.user_count(),
            image_updates: self.state.updates().into_iter().map(|(id, n)| (id.to_string(), n)).collect(),
        }
    }

    pub fn user_count(&self) -> u64 {
        self.state.user_count()
    }

    /// Operations waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        QUEUE - self.ops.capacity()
    }

    /// Whether the store's connection is busy committing right now.
    pub fn store_busy(&self) -> bool {
        self.state.is_committing()
    }

    pub fn image_count(&self) -> usize {
        self.state.image_count()
    }

    /// Users per image, busiest first (for a bounded metric: the caller keeps the top few).
    pub fn users_per_image(&self) -> Vec<u64> {
        self.state.users_per_image()
    }

    /// Counts one more user on `image` and announces it; the user leaves when the guard drops.
    pub fn join(&self, image: &ImageId, created: bool) -> Presence {
        self.state.join(image, created)
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
