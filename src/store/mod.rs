//! Persistence behind one trait, so the service never knows which database it runs on.
//!
//! The store is driven by a single writer thread (see `service::writer`), so its methods are
//! blocking and take `&mut self`: one connection, one transaction at a time, no pool needed for
//! the embedded database.

#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use crate::domain::{Canvas, ImageId};

/// One image as stored: its pixels, the version of its last change and how many commands it
/// has accepted (the `image_updates` statistic).
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub id: ImageId,
    pub canvas: Canvas,
    pub version: u64,
    pub updates: u64,
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

/// The net effect of one batch on one image.
pub enum Write<'a> {
    Upsert(&'a StoredImage),
    Delete(&'a ImageId),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH")]
    UnsupportedUrl(String),
    #[error("stored image {0:?} is corrupt: {1}")]
    Corrupt(String, String),
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
}

pub trait Store: Send + 'static {
    fn describe(&self) -> Describe;
    /// Everything needed to rebuild the in-memory cache at start.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Writes one batch atomically: all of it or, on error, none of it.
    fn commit(&mut self, writes: &[Write<'_>], counters: Counters) -> Result<(), StoreError>;
    /// A cheap round trip proving the database answers (readiness).
    fn ping(&mut self) -> Result<(), StoreError>;
}

/// Opens the store a `--database` URL names.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    #[cfg(feature = "sqlite")]
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        return Ok(Box::new(SqliteStore::open(path)?));
    }
    Err(StoreError::UnsupportedUrl(url.to_owned()))
}
