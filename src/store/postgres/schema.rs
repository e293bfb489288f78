//! The PostgreSQL schema: its migrations, every statement Draw64 runs against it, and the
//! mapping of its rows. Nothing outside `store::postgres` names a table.

use tokio_postgres::Row;

use crate::{
    domain::{Canvas, ImageId},
    store::{Counters, StoreError, StoredImage},
};

/// Versioned migrations, recorded in `schema_migrations`.
pub const MIGRATIONS: &[&str] = &["CREATE TABLE images (
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

pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
        version    int PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now())";
pub const MIGRATED: &str = "SELECT coalesce(max(version), 0) FROM schema_migrations";
pub const RECORD_MIGRATION: &str = "INSERT INTO schema_migrations (version) VALUES ($1)";
pub const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

// Every image-row read selects these columns in this order, for `image_from_row`.
macro_rules! image_columns {
    () => {
        "image_id, generation, pixels, version"
    };
}

pub const ALL_IMAGES: &str = concat!("SELECT ", image_columns!(), " FROM images");
pub const ONE_IMAGE: &str =
    concat!("SELECT ", image_columns!(), " FROM images WHERE image_id = $1 AND generation = $2");
pub const LOCK_IMAGES: &str =
    concat!("SELECT ", image_columns!(), " FROM images WHERE image_id = ANY($1) ORDER BY image_id FOR UPDATE");
pub const VERSIONS: &str = "SELECT image_id, generation, version FROM images";
pub const COUNTERS: &str = "SELECT images_created, images_deleted FROM counters WHERE id = 1";
pub const LOCK_COUNTERS: &str = "SELECT images_created, images_deleted FROM counters WHERE id = 1 FOR UPDATE";
pub const COUNT: &str = "SELECT count(*) FROM images";
/// `updates` keeps the version too, for older builds reading the table.
pub const UPSERT: &str = "INSERT INTO images (image_id, generation, pixels, version, updates) \
     SELECT i, g, p, v, v FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int8[]) AS u(i, g, p, v) \
     ON CONFLICT (image_id) DO UPDATE SET generation = excluded.generation, pixels = excluded.pixels, \
     version = excluded.version, updates = excluded.updates";
pub const DELETE: &str = "DELETE FROM images WHERE image_id = ANY($1)";
pub const DELETE_CHANGES: &str = "DELETE FROM changes WHERE image_id = ANY($1)";
pub const LOG: &str = "INSERT INTO changes (image_id, generation, version, command, traceparent) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[])";
pub const SET_COUNTERS: &str = "UPDATE counters SET images_created = $1, images_deleted = $2 WHERE id = 1";
pub const NOTIFY_ALL: &str = "SELECT pg_notify('draw64', n) FROM unnest($1::text[]) AS n";
pub const NOTIFY: &str = "SELECT pg_notify('draw64', $1)";
pub const LISTEN: &str = "LISTEN draw64";
pub const CHANGES_AFTER: &str = "SELECT version, command, traceparent FROM changes \
     WHERE image_id = $1 AND generation = $2 AND version > $3 ORDER BY version LIMIT $4";
pub const IS_LOGGED: &str =
    "SELECT EXISTS (SELECT 1 FROM changes WHERE image_id = $1 AND generation = $2 AND version = $3)";
/// The retention rule: the log keeps the last 10 minutes of changes (instances further behind
/// reload the stored image instead).
pub const PRUNE: &str = "DELETE FROM changes WHERE committed_at < now() - interval '10 minutes'";
pub const PING: &str = "SELECT 1";

/// `db.query.text` of one batch: its statements with placeholders, never values.
pub const COMMIT_QUERY: &str = "BEGIN; SELECT images_created, images_deleted FROM counters WHERE id = 1 FOR UPDATE; \
     SELECT image_id, generation, pixels, version FROM images WHERE image_id = ANY($1) ORDER BY image_id \
     FOR UPDATE; INSERT INTO images ... ON CONFLICT (image_id) DO UPDATE ...; DELETE FROM images WHERE image_id = \
     ANY($1); INSERT INTO changes ...; UPDATE counters ...; SELECT pg_notify('draw64', n) FROM unnest($1); COMMIT";

/// Reads an image row (`image_columns!`).
pub fn image_from_row(row: &Row) -> Result<StoredImage, StoreError> {
    let id: String = row.try_get(0)?;
    let corrupt = |why: String| StoreError::Corrupt(id.clone(), why);
    let pixels: &[u8] = row.try_get(2)?;
    Ok(StoredImage {
        id: ImageId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        generation: row.try_get::<_, i64>(1)? as u64,
        canvas: Canvas::from_bytes(pixels).ok_or_else(|| corrupt(format!("{} pixel bytes", pixels.len())))?,
        version: row.try_get::<_, i64>(3)? as u64,
    })
}

/// Reads the counters row (`COUNTERS`, `LOCK_COUNTERS`).
pub fn counters_from_row(row: &Row) -> Result<Counters, StoreError> {
    Ok(Counters { images_created: row.try_get::<_, i64>(0)? as u64, images_deleted: row.try_get::<_, i64>(1)? as u64 })
}
