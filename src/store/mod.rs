//! Persistence behind one trait, so the service never knows which database it runs on.
//!
//! The store is driven by a single writer thread (see `service::writer`), so its methods are
//! blocking and take `&mut self`: one transaction at a time per instance. An embedded store
//! (SQLite) is the only writer of its file, so the writer's memory is the truth; a shared store
//! (PostgreSQL) is written by several instances, so each batch first locks and re-reads the rows
//! it touches (`lock`) and the writer decides on those.

mod database;
mod instrumented;
#[cfg(test)]
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use database::Database;
pub use instrumented::Instrumented;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use opentelemetry::trace::SpanContext;

use crate::domain::{Canvas, Command, ImageId};

/// One image as stored: its pixels and its version, which is also how many commands it has
/// accepted (the `image_updates` statistic).
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub id: ImageId,
    /// Random per creation: tells a re-created image from its deleted namesake across instances.
    pub generation: u64,
    pub canvas: Canvas,
    pub version: u64,
}

/// Counters that survive restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub images_created: u64,
    pub images_deleted: u64,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub images: Vec<StoredImage>,
    pub counters: Counters,
}

/// The rows a shared store locked for one batch, as they are in the database now.
#[derive(Debug, Default)]
pub struct Locked {
    /// The touched images that exist (an absent id does not exist).
    pub images: Vec<StoredImage>,
    /// When the batch creates or deletes: the counters and how many images exist in all,
    /// locked so that limits hold across instances.
    pub global: Option<(Counters, usize)>,
}

/// The net effect of one batch on one image.
pub enum Write<'a> {
    Upsert(&'a StoredImage),
    Delete(&'a ImageId),
}

/// What one batch did, in order, for the other instances of a shared store (its change log
/// and notices); empty for an embedded store.
pub enum Logged<'a> {
    Applied { image: &'a ImageId, generation: u64, version: u64, command: &'a Command, trace: SpanContext },
    Created(&'a ImageId),
    Deleted(&'a ImageId),
}

/// One batch, written atomically.
pub struct Commit<'a> {
    pub writes: Vec<Write<'a>>,
    pub counters: Counters,
    pub log: Vec<Logged<'a>>,
}

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached; the cause says what it answered.
    #[error("database error: {0}")]
    Database(#[source] Cause),
    /// Something about the database that this build cannot work with (a newer schema, say).
    #[error("{0}")]
    Unusable(String),
    #[error("stored image {0:?} is corrupt: {1}")]
    Corrupt(String, String),
    #[error(
        "database {path} is in use by another draw64 process ({holder}); an SQLite database serves one \
         instance: stop the other first, or use PostgreSQL for several"
    )]
    InUse { path: String, holder: String },
}

impl StoreError {
    pub fn database(cause: impl Into<Cause>) -> Self {
        StoreError::Database(cause.into())
    }
}

/// What a database span and metric say about the store (semantic conventions `db.*`).
#[derive(Clone, Debug)]
pub struct Describe {
    /// `db.system.name`, e.g. `sqlite`.
    pub system: &'static str,
    /// `db.namespace`: the database (for SQLite, its file).
    pub namespace: String,
    /// `db.query.text` of a batch commit: statements with placeholders, never values.
    pub commit_query: &'static str,
    /// Most connections the store holds (`db.client.connection.max`).
    pub pool_size: usize,
}

pub trait Store: Send + 'static {
    fn describe(&self) -> Describe;
    /// Everything needed to rebuild the in-memory cache at start (and migrations before it).
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Whether several instances write this store (then `lock` matters and the writer logs
    /// changes for the others).
    fn shared(&self) -> bool {
        false
    }
    /// Shared stores open the batch's transaction and lock the rows of `ids` (and, when `global`,
    /// the counters) until `commit` or `rollback`. Embedded stores answer `None`: memory is the truth.
    fn lock(&mut self, _ids: &[ImageId], _global: bool) -> Result<Option<Locked>, StoreError> {
        Ok(None)
    }
    /// Writes one batch atomically: all of it or, on error, none of it.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), StoreError>;
    /// Ends a transaction `lock` opened without writing (the batch changed nothing).
    fn rollback(&mut self) {}
    /// A cheap round trip proving the database answers (readiness).
    fn ping(&mut self) -> Result<(), StoreError>;
    /// After failed commits: a write that changes nothing, committed like any other, proving
    /// that writes succeed again (readiness while commits fail).
    fn probe(&mut self) -> Result<(), StoreError> {
        self.ping()
    }
    /// Housekeeping between batches, after their callers were answered (SQLite: copy the WAL
    /// back into the database file now and then). Answers the operation's name when it did
    /// something, for the database metrics.
    fn maintain(&mut self) -> Result<Option<&'static str>, StoreError> {
        Ok(None)
    }
}

/// How thoroughly an embedded database is checked before it serves (`--database-check`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Check {
    /// `PRAGMA quick_check`: every page and record is well-formed (seconds per GB).
    #[default]
    Quick,
    /// `PRAGMA integrity_check`: also that indexes match their tables (slower).
    Full,
    /// None (the log is still inspected).
    None,
}

/// Opens the store `database` names. `instance` is this process's `service.instance.id`
/// (a shared store tags its notices with it).
pub fn open(database: &Database, instance: &str, check: Check) -> Result<Box<dyn Store>, StoreError> {
    let _ = (instance, check);
    match database {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(path) => Ok(Box::new(SqliteStore::open_checked(path, check)?)),
        #[cfg(feature = "postgres")]
        Database::Postgres(config) => Ok(Box::new(PostgresStore::open(config, instance)?)),
    }
}
