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

use std::{str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::runtime::Handle;
use tokio_postgres::{NoTls, types::ToSql};

use super::{Change, Counters, Describe, Locked, Notice, Snapshot, Store, StoreError, StoredImage, Write};
use crate::domain::{Canvas, ImageId};

/// The channel every instance listens on.
pub const CHANNEL: &str = "draw64";
/// Connections per instance: the writer uses one at a time, readiness and catch-up the rest.
const POOL_SIZE: usize = 4;
/// Waiting for a connection, making one, checking one: each bounded, so an outage answers
/// 503 quickly instead of piling requests up.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);
/// Changes older than this are pruned from the log (see `prune`).
pub const RETENTION: &str = "10 minutes";
/// Key of the advisory lock that serialises migrations between instances starting at once.
const MIGRATION_LOCK: i64 = 6_464_064;

/// Versioned migrations, recorded in `schema_migrations`.
const MIGRATIONS: &[&str] = &["CREATE TABLE images (
        image_id   text PRIMARY KEY,
        generation bigint NOT NULL,
        pixels     bytea NOT NULL,
        version    bigint NOT NULL,
        updates    bigint NOT NULL
    );
    CREATE TABLE counters (
        id             int PRIMARY KEY CHECK (id = 1),
        images_created bigint NOT NULL,
        images_deleted bigint NOT NULL
    );
    INSERT INTO counters VALUES (1, 0, 0);
    CREATE TABLE changes (
        image_id     text NOT NULL,
        generation   bigint NOT NULL,
        version      bigint NOT NULL,
        command      text NOT NULL,
        traceparent  text,
        committed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (image_id, generation, version)
    );
    CREATE INDEX changes_committed_at ON changes (committed_at);"];

const LOCK_GLOBAL: &str = "SELECT images_created, images_deleted FROM counters WHERE id = 1 FOR UPDATE";
const COUNT: &str = "SELECT count(*) FROM images";
const LOCK_IMAGES: &str = "SELECT image_id, generation, pixels, version, updates FROM images \
     WHERE image_id = ANY($1) ORDER BY image_id FOR UPDATE";
const UPSERT: &str = "INSERT INTO images (image_id, generation, pixels, version, updates) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int8[], $5::int8[]) \
     ON CONFLICT (image_id) DO UPDATE SET generation = excluded.generation, pixels = excluded.pixels, \
     version = excluded.version, updates = excluded.updates";
const DELETE: &str = "DELETE FROM images WHERE image_id = ANY($1)";
const DELETE_CHANGES: &str = "DELETE FROM changes WHERE image_id = ANY($1)";
const LOG: &str = "INSERT INTO changes (image_id, generation, version, command, traceparent) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[])";
const SET_COUNTERS: &str = "UPDATE counters SET images_created = $1, images_deleted = $2 WHERE id = 1";
const NOTIFY: &str = "SELECT pg_notify('draw64', n) FROM unnest($1::text[]) AS n";
const COMMIT_QUERY: &str = "BEGIN; SELECT images_created, images_deleted FROM counters WHERE id = 1 FOR UPDATE; \
     SELECT image_id, generation, pixels, version, updates FROM images WHERE image_id = ANY($1) ORDER BY image_id \
     FOR UPDATE; INSERT INTO images ... ON CONFLICT (image_id) DO UPDATE ...; DELETE FROM images WHERE image_id = \
     ANY($1); INSERT INTO changes ...; UPDATE counters ...; SELECT pg_notify('draw64', n) FROM unnest($1); COMMIT";

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's message (and its detail) is what an operator needs, not just "db error".
        match e.as_db_error() {
            Some(db) => StoreError::Database(format!("{}: {}", db.code().code(), db.message())),
            None => StoreError::Database(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Database(format!("no database connection: {other}")),
        }
    }
}

/// Parses a `postgres://` URL and adds the settings every Draw64 connection needs.
pub fn config(url: &str, application: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?;
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
    Ok(config)
}

/// A notice as it travels in a `pg_notify` payload: `kind instance image [generation version]`.
pub fn encode_notice(instance: &str, notice: &Notice) -> String {
    match notice {
        Notice::Updated { image, generation, version } => format!("u {instance} {image} {generation} {version}"),
        Notice::Created(image) => format!("c {instance} {image}"),
        Notice::Deleted(image) => format!("d {instance} {image}"),
    }
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
    pub fn open(url: &str, instance: &str) -> Result<Self, StoreError> {
        let config = config(url, "draw64")?;
        let namespace = config.get_dbname().unwrap_or("postgres").to_owned();
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))?;
        let runtime = Handle::try_current()
            .map_err(|_| StoreError::Database("the PostgreSQL store needs a Tokio runtime".into()))?;
        Ok(Self { pool, runtime, namespace, instance: instance.to_owned(), open: None, global: false })
    }

    /// The pool, for the bus's catch-up reads.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
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
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    int PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
            let done: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
            let done = done as usize;
            if done > MIGRATIONS.len() {
                return Err(StoreError::Database(format!(
                    "database schema version {done} is newer than this build knows ({}); upgrade draw64",
                    MIGRATIONS.len()
                )));
            }
            for (n, sql) in MIGRATIONS.iter().enumerate().skip(done) {
                tx.batch_execute(sql).await?;
                tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&(n as i32 + 1)]).await?;
                tracing::info!(version = n + 1, "database migration applied");
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn finish(
        client: &Object,
        writes: &[Write<'_>],
        changes: &[Change<'_>],
        notices: Vec<String>,
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
            let updates: Vec<i64> = upserts.iter().map(|img| img.updates as i64).collect();
            let params: [&(dyn ToSql + Sync); 5] = [&ids, &generations, &pixels, &versions, &updates];
            client.execute(UPSERT, &params).await?;
        }
        if !changes.is_empty() {
            let images: Vec<&str> = changes.iter().map(|c| c.image.as_str()).collect();
            let generations: Vec<i64> = changes.iter().map(|c| c.generation as i64).collect();
            let versions: Vec<i64> = changes.iter().map(|c| c.version as i64).collect();
            let commands: Vec<&str> = changes.iter().map(|c| c.command.as_str()).collect();
            let parents: Vec<Option<&str>> = changes.iter().map(|c| c.traceparent.as_deref()).collect();
            let params: [&(dyn ToSql + Sync); 5] = [&images, &generations, &versions, &commands, &parents];
            client.execute(LOG, &params).await?;
        }
        // After the log: a change to an image deleted later in this batch goes with it.
        if !deletes.is_empty() {
            client.execute(DELETE, &[&deletes]).await?;
            client.execute(DELETE_CHANGES, &[&deletes]).await?;
        }
        if let Some(c) = counters {
            client.execute(SET_COUNTERS, &[&(c.images_created as i64), &(c.images_deleted as i64)]).await?;
        }
        if !notices.is_empty() {
            client.execute(NOTIFY, &[&notices]).await?;
        }
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// Reads an image row (`image_id, generation, pixels, version, updates`).
pub fn image_from_row(row: &tokio_postgres::Row) -> Result<StoredImage, StoreError> {
    let id: String = row.try_get(0)?;
    let corrupt = |why: String| StoreError::Corrupt(id.clone(), why);
    let pixels: &[u8] = row.try_get(2)?;
    Ok(StoredImage {
        id: ImageId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        generation: row.try_get::<_, i64>(1)? as u64,
        canvas: Canvas::from_bytes(pixels).ok_or_else(|| corrupt(format!("{} pixel bytes", pixels.len())))?,
        version: row.try_get::<_, i64>(3)? as u64,
        updates: row.try_get::<_, i64>(4)? as u64,
    })
}

impl Store for PostgresStore {
    fn describe(&self) -> Describe {
        Describe { system: "postgresql", namespace: self.namespace.clone(), commit_query: COMMIT_QUERY }
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.migrate()?;
        let pool = self.pool.clone();
        self.block_on(async move {
            let client = pool.get().await?;
            let rows = client.query("SELECT image_id, generation, pixels, version, updates FROM images", &[]).await?;
            let images = rows.iter().map(image_from_row).collect::<Result<Vec<_>, _>>()?;
            let row = client.query_one("SELECT images_created, images_deleted FROM counters WHERE id = 1", &[]).await?;
            let counters =
                Counters { images_created: row.get::<_, i64>(0) as u64, images_deleted: row.get::<_, i64>(1) as u64 };
            Ok(Snapshot { images, counters })
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn lock(&mut self, ids: &[&ImageId], global: bool) -> Result<Option<Locked>, StoreError> {
        self.rollback();
        let pool = self.pool.clone();
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let result = self.block_on(async move {
            let client = pool.get().await?;
            client.batch_execute("BEGIN").await?;
            let locked = async {
                let mut locked = Locked::default();
                if global {
                    let row = client.query_one(LOCK_GLOBAL, &[]).await?;
                    let counters = Counters {
                        images_created: row.get::<_, i64>(0) as u64,
                        images_deleted: row.get::<_, i64>(1) as u64,
                    };
                    // After the lock, in its own statement: sees every create committed before.
                    let total: i64 = client.query_one(COUNT, &[]).await?.get(0);
                    locked.global = Some((counters, total as usize));
                }
                if !ids.is_empty() {
                    let rows = client.query(LOCK_IMAGES, &[&ids]).await?;
                    locked.images = rows.iter().map(image_from_row).collect::<Result<_, _>>()?;
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

    fn commit(
        &mut self,
        writes: &[Write<'_>],
        changes: &[Change<'_>],
        notices: &[Notice],
        counters: Counters,
    ) -> Result<(), StoreError> {
        let Some(client) = self.open.take() else {
            return Err(StoreError::Database("commit without a locked batch".into()));
        };
        let notices = notices.iter().map(|n| encode_notice(&self.instance, n)).collect();
        let counters = self.global.then_some(counters);
        self.block_on(async move {
            let result = Self::finish(&client, writes, changes, notices, counters).await;
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
            pool.get().await?.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
    }
}
