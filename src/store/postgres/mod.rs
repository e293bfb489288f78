//! PostgreSQL, shared by any number of instances.
//!
//! Each batch is one transaction: lock the counters row (only when the batch creates or
//! deletes) and then the touched image rows in id order — one lock order for every instance,
//! so two instances never deadlock — re-read them, let the writer decide on that truth, write
//! the images, append the accepted commands to the `changes` log with their per-image versions,
//! notify the other instances (`pg_notify`, delivered on commit and only if it commits) and
//! commit. The version of an image is therefore assigned inside the transaction that holds its
//! row lock: every instance sees one order per image.
//!
//! The store runs on the writer thread (blocking), over a small bounded pool of async
//! connections driven by the Tokio runtime it was opened in.

mod log;
pub mod notice;
mod schema;

pub use log::{Change, changes_after, image, is_logged, listen, notify, prune, versions};

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::runtime::Handle;
use tokio_postgres::{NoTls, types::ToSql};

use self::log::Rows;
use super::{Commit, Counters, Describe, Locked, Snapshot, Store, StoreError, StoredImage, Write};
use crate::domain::ImageId;

/// Connections per instance: the writer uses one at a time, readiness and catch-up the rest.
const POOL_SIZE: usize = 4;
/// Waiting for a connection, making one, checking one: each bounded, so an outage answers
/// 503 quickly instead of piling requests up.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);
/// Key of the advisory lock that serialises migrations between instances starting at once.
const MIGRATION_LOCK: i64 = 6_464_064;

/// A PostgreSQL error as an operator needs it: the server's code and message, not "db error".
#[derive(Debug)]
pub struct PgError(tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{}: {}", db.code().code(), db.message()),
            None => self.0.fmt(f),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::database(PgError(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::database(other),
        }
    }
}

/// The settings every Draw64 connection needs, added to the operator's.
pub fn configure(config: &tokio_postgres::Config, application: &str) -> tokio_postgres::Config {
    let mut config = config.clone();
    if config.get_application_name().is_none() {
        config.application_name(application);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(POOL_TIMEOUT);
    }
    // A stuck statement or an instance frozen inside a transaction must not hold image locks
    // forever: the server ends either after a few seconds.
    config.options("-c statement_timeout=5000 -c lock_timeout=5000 -c idle_in_transaction_session_timeout=10000");
    config.keepalives(true).keepalives_idle(Duration::from_secs(10));
    config
}

pub struct PostgresStore {
    pool: Pool,
    runtime: Handle,
    namespace: String,
    instance: String,
    /// The connection holding the open batch transaction, between `lock` and `commit`.
    open: Option<Object>,
    global: bool,
}

impl PostgresStore {
    /// Makes the pool; connections are opened on first use (on the writer thread).
    pub fn open(config: &tokio_postgres::Config, instance: &str) -> Result<Self, StoreError> {
        let config = configure(config, "draw64");
        let namespace = config.get_dbname().unwrap_or("postgres").to_owned();
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(StoreError::database)?;
        let runtime = Handle::try_current()
            .map_err(|_| StoreError::Unusable("the PostgreSQL store needs a Tokio runtime".into()))?;
        Ok(Self { pool, runtime, namespace, instance: instance.to_owned(), open: None, global: false })
    }

    fn block_on<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.runtime.block_on(f)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        self.block_on(async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // Instances starting together: the first takes the lock and migrates, the others
            // wait here and then find nothing left to do.
            tx.execute(schema::MIGRATION_LOCK, &[&MIGRATION_LOCK]).await?;
            tx.batch_execute(schema::MIGRATIONS_TABLE).await?;
            let done: i32 = tx.query_one(schema::MIGRATED, &[]).await?.get(0);
            let done = done as usize;
            let known = schema::MIGRATIONS.len();
            if done > known {
                return Err(StoreError::Unusable(format!(
                    "database schema version {done} is newer than this build knows ({known}); upgrade draw64"
                )));
            }
            for (n, sql) in schema::MIGRATIONS.iter().enumerate().skip(done) {
                tx.batch_execute(sql).await?;
                tx.execute(schema::RECORD_MIGRATION, &[&(n as i32 + 1)]).await?;
                tracing::info!(version = n + 1, "database migration applied");
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn finish(
        client: &Object,
        writes: &[Write<'_>],
        rows: &Rows,
        counters: Option<Counters>,
    ) -> Result<(), StoreError> {
        let upserts: Vec<&StoredImage> =
            writes.iter().filter_map(|w| if let Write::Upsert(img) = w { Some(*img) } else { None }).collect();
        let deletes: Vec<&str> =
            writes.iter().filter_map(|w| if let Write::Delete(id) = w { Some(id.as_str()) } else { None }).collect();
        if !upserts.is_empty() {
            let ids: Vec<&str> = upserts.iter().map(|img| img.id.as_str()).collect();
            let generations: Vec<i64> = upserts.iter().map(|img| img.generation as i64).collect();
            let pixels: Vec<&[u8]> = upserts.iter().map(|img| img.canvas.as_bytes()).collect();
            let versions: Vec<i64> = upserts.iter().map(|img| img.version as i64).collect();
            let params: [&(dyn ToSql + Sync); 4] = [&ids, &generations, &pixels, &versions];
            client.execute(schema::UPSERT, &params).await?;
        }
        rows.append(client).await?;
        // After the log: a change to an image deleted later in this batch goes with it.
        if !deletes.is_empty() {
            client.execute(schema::DELETE, &[&deletes]).await?;
            client.execute(schema::DELETE_CHANGES, &[&deletes]).await?;
        }
        if let Some(c) = counters {
            client.execute(schema::SET_COUNTERS, &[&(c.images_created as i64), &(c.images_deleted as i64)]).await?;
        }
        if !rows.notices.is_empty() {
            client.execute(schema::NOTIFY_ALL, &[&rows.notices]).await?;
        }
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

impl Store for PostgresStore {
    fn describe(&self) -> Describe {
        Describe {
            system: "postgresql",
            namespace: self.namespace.clone(),
            commit_query: schema::COMMIT_QUERY,
            pool_size: POOL_SIZE,
        }
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.migrate()?;
        let pool = self.pool.clone();
        self.block_on(async move {
            let client = pool.get().await?;
            let rows = client.query(schema::ALL_IMAGES, &[]).await?;
            let images = rows.iter().map(schema::image_from_row).collect::<Result<Vec<_>, _>>()?;
            let counters = schema::counters_from_row(&client.query_one(schema::COUNTERS, &[]).await?)?;
            Ok(Snapshot { images, counters })
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn lock(&mut self, ids: &[ImageId], global: bool) -> Result<Option<Locked>, StoreError> {
        self.rollback();
        let pool = self.pool.clone();
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let result = self.block_on(async move {
            let client = pool.get().await?;
            client.batch_execute("BEGIN").await?;
            let locked = async {
                let mut locked = Locked::default();
                if global {
                    let counters = schema::counters_from_row(&client.query_one(schema::LOCK_COUNTERS, &[]).await?)?;
                    // After the lock, in its own statement: sees every create committed before.
                    let total: i64 = client.query_one(schema::COUNT, &[]).await?.get(0);
                    locked.global = Some((counters, total as usize));
                }
                if !ids.is_empty() {
                    let rows = client.query(schema::LOCK_IMAGES, &[&ids]).await?;
                    locked.images = rows.iter().map(schema::image_from_row).collect::<Result<_, _>>()?;
                }
                Ok::<_, StoreError>(locked)
            }
            .await;
            match locked {
                Ok(locked) => Ok((client, locked)),
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        });
        let (client, locked) = result?;
        self.open = Some(client);
        self.global = global;
        Ok(Some(locked))
    }

    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let Some(client) = self.open.take() else {
            return Err(StoreError::Unusable("commit without a locked batch".into()));
        };
        let rows = Rows::of(&self.instance, &commit.log);
        let counters = self.global.then_some(commit.counters);
        self.block_on(async move {
            let result = Self::finish(&client, &commit.writes, &rows, counters).await;
            if result.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            result
        })
    }

    fn rollback(&mut self) {
        if let Some(client) = self.open.take() {
            self.runtime.block_on(async move {
                let _ = client.batch_execute("ROLLBACK").await;
            });
        }
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        self.block_on(async move {
            pool.get().await?.query_one(schema::PING, &[]).await?;
            Ok(())
        })
    }
}
