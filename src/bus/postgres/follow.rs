//! Following the other instances: what each notice means for this one, the sweep that
//! reconciles the image list with the database, and the catch-up that reads an image's missed
//! changes from the log in version order.

use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt as _;
use tokio_postgres::Client;

use crate::{
    domain::{ImageId, event},
    service::{Delivery, Replica},
    store::{
        StoreError,
        postgres::{
            self as store,
            notice::{self, Notice},
        },
    },
    telemetry::errors,
};

/// Presence heartbeat, and the sweep that compares every live image with the database (the
/// safety net for a pointer lost with an instance that died right after its commit).
pub const TICK: Duration = Duration::from_secs(2);
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Follower {
    pub instance: String,
    pub replica: Replica,
}

impl Follower {
    pub async fn say_presence(&self, client: &Client) -> Result<(), StoreError> {
        store::notify(client, &self.instance, &Notice::Presence(self.replica.local_users())).await
    }

    pub async fn say_goodbye(&self, client: &Client) {
        let _ = store::notify(client, &self.instance, &Notice::Goodbye).await;
    }

    pub async fn tick(&self, client: &Client) -> Result<(), StoreError> {
        self.replica.expire_remote_users();
        self.say_presence(client).await?;
        self.sweep(client).await
    }

    pub async fn prune(&self, client: &Client) -> Result<(), StoreError> {
        let pruned = store::prune(client).await?;
        if pruned > 0 {
            tracing::debug!(pruned, "old changes pruned from the log");
        }
        Ok(())
    }

    pub async fn on_notice(&self, client: &Client, payload: &str) -> Result<(), StoreError> {
        let (from, notice) = match notice::decode(payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                errors::record(&opentelemetry::Context::new(), &errors::MALFORMED_NOTICE, &e);
                return Ok(());
            }
        };
        if from == self.instance {
            return Ok(());
        }
        match notice {
            Notice::Updated { image, generation, version } => match self.replica.version_of(&image, generation) {
                Some(sent) if sent < version => self.catch_up(client, &image, generation, sent).await,
                Some(_) => Ok(()),
                // Created elsewhere and not seen yet (or re-created): the list is stale.
                None => self.sweep(client).await,
            },
            Notice::Created(_) | Notice::Deleted(_) => self.sweep(client).await,
            Notice::Presence(users) => {
                self.replica.remote_users(from, Some(users));
                Ok(())
            }
            Notice::Goodbye => {
                self.replica.remote_users(from, None);
                Ok(())
            }
        }
    }

    /// Compares the live images with the database: adds the ones created elsewhere, removes
    /// the ones deleted elsewhere, catches up every image that is behind; refreshes counters.
    pub async fn sweep(&self, client: &Client) -> Result<(), StoreError> {
        // Taken before the query: a live image missing from the answer was deleted since.
        let before = self.replica.versions();
        let (stored, counters) = store::versions(client).await?;
        self.replica.merge_counters(counters);
        for (id, generation, _) in &before {
            if stored.get(id).is_none_or(|(stored, _)| stored != generation) {
                self.replica.remove(id, *generation);
            }
        }
        for (id, (generation, version)) in stored {
            match self.replica.version_of(&id, generation) {
                Some(sent) if sent < version => self.catch_up(client, &id, generation, sent).await?,
                Some(_) => {}
                // Start from the stored image rather than replaying a log that may be pruned.
                None => {
                    if let Some(img) = store::image(client, &id, generation).await? {
                        self.replica.add(&id, img.generation, img.canvas, img.version);
                    }
                }
            }
        }
        Ok(())
    }

    pub async fn catch_up_id(&self, client: &Client, id: &ImageId) -> Result<(), StoreError> {
        match self.replica.live(id) {
            Some((generation, sent)) => self.catch_up(client, id, generation, sent).await,
            None => self.sweep(client).await,
        }
    }

    /// Reads and delivers, in version order, every change of the image after `from`.
    async fn catch_up(&self, client: &Client, id: &ImageId, generation: u64, from: u64) -> Result<(), StoreError> {
        let changes = store::changes_after(client, id, generation, from).await?;
        if changes.first().map(|c| c.version) != Some(from + 1) {
            self.reload_if_pruned(client, id, generation, from).await?;
        }
        let received = Instant::now();
        for change in changes {
            let command = match change.command {
                Ok(command) => command,
                Err(e) => {
                    errors::record(&opentelemetry::Context::new(), &errors::UNREADABLE_CHANGE, &e);
                    if let Some(stored) = store::image(client, id, generation).await? {
                        self.replica.reset(id, generation, stored.canvas, stored.version);
                    }
                    return Ok(());
                }
            };
            let cx = change.parent.map_or_else(opentelemetry::Context::new, |sc| {
                opentelemetry::Context::new().with_remote_span_context(sc)
            });
            let text = event::image_updated(id, &command).into();
            self.replica.deliver(
                id,
                generation,
                Delivery { version: change.version, command, text, committed_at: received, cx },
            );
        }
        Ok(())
    }

    /// The next version after `from` is not in the log: if it never will be (pruned), start
    /// again from the stored image.
    async fn reload_if_pruned(
        &self,
        client: &Client,
        id: &ImageId,
        generation: u64,
        from: u64,
    ) -> Result<(), StoreError> {
        let Some(stored) = store::image(client, id, generation).await? else { return Ok(()) };
        // The two reads are two snapshots: a change committed between them makes the image
        // newer than an (empty) answer from the log without anything being pruned. Pruned
        // means the next version is not in the log now either.
        if stored.version > from && !store::is_logged(client, id, generation, from + 1).await? {
            tracing::warn!(image = %id, from, to = stored.version, "changes pruned from the log; reloading the image");
            self.replica.reset(id, generation, stored.canvas, stored.version);
        }
        Ok(())
    }
}
