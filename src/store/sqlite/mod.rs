//! Embedded SQLite: WAL journal with `synchronous=FULL`, so an acknowledged batch survives a
//! power loss, not only a process kill. One row per image holds its whole canvas (12 KiB):
//! a batch rewrites each touched image once, whatever the number of commands in it.
//!
//! Checkpoints (copying the WAL back into the database file) are the writer's, run between
//! batches once a second, after the batch's callers were answered: SQLite's automatic checkpoint
//! would run inside a commit, holding every reply and event behind a copy and two fsyncs. The
//! writer being the only writer is what lets each checkpoint copy the whole log, so the next
//! commit starts the log over: the WAL stays the size of one second of changes, and a commit
//! overwrites blocks the file already has, which syncs faster than growing it (0.13 ms against
//! 0.21 ms per fsync on the benchmark machine). A checkpoint on a thread of its own never caught
//! up with a busy writer, so the log never restarted: 180 MB of WAL after 20 s of PUTs.
//!
//! Memory being the truth needs the writer to be the only one: a second process on the same file
//! would load its own copy and overwrite the first one's canvases with it. So the store holds an
//! exclusive lock on `PATH-lock` for its life, and a second process refuses to start. The lock is
//! on a file of its own, not on the database: SQLite's POSIX locks are dropped when any descriptor
//! of their file closes, and `sqlite3 PATH ".backup"` must still be able to read while we run.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

mod claim;
mod wal;

use super::{Check, Commit, Counters, Describe, Snapshot, Store, StoreError, StoredImage, Write};
use crate::domain::{Canvas, ImageId};

/// Versioned migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &["CREATE TABLE images (
        image_id TEXT PRIMARY KEY NOT NULL,
        pixels   BLOB NOT NULL,
        version  INTEGER NOT NULL,
        updates  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) STRICT;
    INSERT INTO counters (name, value) VALUES ('images_created', 0), ('images_deleted', 0);"];

pub struct SqliteStore {
    conn: Connection,
    /// Held, never read: the lock is the open file (released by the kernel however we exit).
    _owner: Option<std::fs::File>,
    path: String,
    /// The counters as stored: a batch that leaves them alone does not rewrite their page.
    stored: Option<Counters>,
    /// When the WAL was last copied back into the database file.
    checkpointed: std::time::Instant,
    checkpoint_every: std::time::Duration,
    /// The files as opened (device and inode): a file removed or replaced under a running
    /// store would take every later commit with it at the next start.
    files: Vec<(PathBuf, (u64, u64))>,
    /// Sticky once the files are not the ones opened: nothing more is acknowledged.
    lost: Option<String>,
    /// Set by a commit that failed for want of space: until the log has been checkpointed and
    /// cut back, no new write may regrow it into the space the checkpoint needs.
    full: bool,
}

/// How often the writer copies the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Pages (of 4 KiB) the log may hold before the commit that passes it checkpoints at once,
/// whatever the clock: a burst cannot grow the log without bound, so what a checkpoint needs
/// after the disk fills (room for the log's pages in the database file) stays within this.
const CHECKPOINT_PAGES: i64 = 1000;

/// A WAL left larger than this by a burst is cut back to it when the log starts over.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

// Macros, so the statements and the `db.query.text` built from them are one text.
macro_rules! upsert {
    () => {
        "INSERT INTO images (image_id, pixels, version, updates) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (image_id) DO UPDATE SET pixels = excluded.pixels, version = excluded.version, \
         updates = excluded.updates"
    };
}
macro_rules! delete {
    () => {
        "DELETE FROM images WHERE image_id = ?1"
    };
}
macro_rules! set_counter {
    () => {
        "UPDATE counters SET value = ?2 WHERE name = ?1"
    };
}
const UPSERT: &str = upsert!();
const DELETE: &str = delete!();
const SET_COUNTER: &str = set_counter!();
const COMMIT_QUERY: &str = concat!("BEGIN IMMEDIATE; ", upsert!(), "; ", delete!(), "; ", set_counter!(), "; COMMIT");

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::database(e)
    }
}

/// Why a commit or a check found the store unable to take writes.
fn is_out_of_space(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure))
}

fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A transaction in progress: rolled back when dropped uncommitted, also while unwinding.
struct Open<'c>(&'c Connection);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            // What failed is the error to report; a failed rollback leaves SQLite to roll
            // back itself, as it does for a transaction that cannot go on.
            let _ = self.0.prepare_cached("ROLLBACK").and_then(|mut s| s.execute([]));
        }
    }
}

impl SqliteStore {
    pub fn open(path: &str) -> Result<Self, StoreError> {
        Self::open_checked(path, Check::Quick)
    }

    /// Opens `path` after inspecting its write-ahead log, and refuses a file that fails
    /// `check`, that is read-only, or whose log would silently lose committed transactions.
    pub fn open_checked(path: &str, check: Check) -> Result<Self, StoreError> {
        let owner = claim::claim(path)?;
        let in_memory = path.is_empty() || path == ":memory:";
        if !in_memory {
            let log = format!("{path}-wal");
            if let Ok(bytes) = std::fs::read(&log)
                && let wal::Verdict::Damaged(why) = wal::inspect(&bytes)
            {
                return Err(StoreError::Unusable(format!(
                    "{log} is damaged: {why}. Restore the database from a backup; or, to start with only what \
                     {path} holds, move {log} aside (its changes since the last checkpoint are then lost)"
                )));
            }
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let mut store = Self {
            conn,
            _owner: owner,
            path: path.to_owned(),
            stored: None,
            checkpointed: std::time::Instant::now(),
            checkpoint_every: CHECKPOINT_EVERY,
            files: Vec::new(),
            lost: None,
            full: false,
        };
        store.migrate()?;
        store.check(check)?;
        if !in_memory {
            for file in [PathBuf::from(path), PathBuf::from(format!("{path}-wal"))] {
                if let Some(id) = identity(&file) {
                    store.files.push((file, id));
                }
            }
        }
        Ok(store)
    }

    /// Refuses a file SQLite finds damaged, or cannot write.
    fn check(&mut self, check: Check) -> Result<(), StoreError> {
        if self.conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(StoreError::Unusable(format!(
                "{} is read-only: draw64 could serve it but never store a change; fix its permissions",
                self.path
            )));
        }
        let pragma = match check {
            Check::Quick => "PRAGMA quick_check(20)",
            Check::Full => "PRAGMA integrity_check(20)",
            Check::None => return Ok(()),
        };
        let mut stmt = self.conn.prepare(pragma)?;
        let findings: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        if findings != ["ok"] {
            return Err(StoreError::Unusable(format!(
                "{} is damaged ({pragma} found: {}); restore it from a backup",
                self.path,
                findings.join("; ")
            )));
        }
        Ok(())
    }

    /// Fails once the files on disk are no longer the ones this store writes.
    fn still_ours(&mut self) -> Result<(), StoreError> {
        if self.lost.is_none() {
            for (file, opened) in &self.files {
                if identity(file) != Some(*opened) {
                    let why = format!(
                        "{} was removed or replaced while draw64 ran: changes can no longer be stored \
                         durably; restart draw64 (and find out who touched the file)",
                        file.display()
                    );
                    tracing::error!(file = %file.display(), "database file removed or replaced; refusing writes");
                    self.lost = Some(why);
                    break;
                }
            }
        }
        match &self.lost {
            Some(why) => Err(StoreError::Unusable(why.clone())),
            None => Ok(()),
        }
    }

    /// After running out of space: checkpoint the whole log and cut it back to nothing before
    /// anything else is written. Fails while there is still not enough room.
    fn make_room(&mut self) -> Result<(), StoreError> {
        if !self.full {
            return Ok(());
        }
        let (busy, _, _): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| StoreError::Unusable(format!("out of disk space; the log cannot be checkpointed yet: {e}")))?;
        if busy != 0 {
            return Err(StoreError::Unusable("out of disk space; the log checkpoint is waiting for a reader".into()));
        }
        tracing::info!(path = %self.path, "disk space is back: the log is checkpointed; writes resume");
        self.full = false;
        Ok(())
    }

    /// `body` in one `BEGIN IMMEDIATE` transaction, rolled back if anything in it fails or
    /// panics. The three statements are prepared once: rusqlite's `Transaction` parses
    /// `BEGIN IMMEDIATE` and `COMMIT` from text on every call (callgrind: the writer's 86,800
    /// instructions a commit became 83,400).
    fn transaction(&mut self, body: impl FnOnce(&Connection) -> rusqlite::Result<()>) -> rusqlite::Result<()> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let open = Open(&self.conn);
        body(open.0).and_then(|()| open.0.prepare_cached("COMMIT")?.execute([]).map(drop))
    }

    /// One batch in one transaction.
    fn write(&mut self, commit: &Commit<'_>) -> rusqlite::Result<()> {
        let counters = commit.counters;
        let rewrite_counters = self.stored != Some(counters);
        self.transaction(|tx| {
            let mut upsert = tx.prepare_cached(UPSERT)?;
            let mut delete = tx.prepare_cached(DELETE)?;
            for write in &commit.writes {
                match write {
                    Write::Upsert(img) => {
                        // `updates` keeps the version too, for older builds reading the file.
                        let version = img.version as i64;
                        upsert.execute(params![img.id.as_str(), img.canvas.as_bytes(), version, version])?;
                    }
                    Write::Delete(id) => {
                        delete.execute([id.as_str()])?;
                    }
                }
            }
            if rewrite_counters {
                let mut set = tx.prepare_cached(SET_COUNTER)?;
                set.execute(params!["images_created", counters.images_created as i64])?;
                set.execute(params!["images_deleted", counters.images_deleted as i64])?;
            }
            Ok(())
        })
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if done > MIGRATIONS.len() {
            return Err(StoreError::Unusable(format!(
                "database schema version {done} is newer than this build knows ({}); upgrade draw64",
                MIGRATIONS.len()
            )));
        }
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(done) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", n + 1)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> Describe {
        Describe { system: "sqlite", namespace: self.path.clone(), commit_query: COMMIT_QUERY, pool_size: 1 }
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut stmt = self.conn.prepare("SELECT image_id, pixels, version FROM images")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?)))?;
        let mut images = Vec::new();
        for row in rows {
            let (id, pixels, version) = row?;
            let corrupt = |why: String| StoreError::Corrupt(id.clone(), why);
            images.push(StoredImage {
                id: ImageId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
                canvas: Canvas::from_bytes(&pixels).ok_or_else(|| corrupt(format!("{} pixel bytes", pixels.len())))?,
                generation: 0,
                version: version as u64,
            });
        }
        let counter = |name: &str| -> Result<u64, StoreError> {
            let v: Option<i64> =
                self.conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0)).optional()?;
            Ok(v.unwrap_or(0) as u64)
        };
        let counters =
            Counters { images_created: counter("images_created")?, images_deleted: counter("images_deleted")? };
        self.stored = Some(counters);
        Ok(Snapshot { images, counters })
    }

    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), StoreError> {
        self.still_ours()?;
        self.make_room()?;
        self.write(commit).map_err(|e| {
            if is_out_of_space(&e) {
                self.full = true;
            }
            StoreError::from(e)
        })?;
        self.stored = Some(commit.counters);
        Ok(())
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.still_ours()?;
        self.make_room()?;
        self.conn.query_row("SELECT count(*) FROM counters", [], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.ping()?;
        // A write that changes nothing, synced like any commit.
        self.transaction(|tx| {
            tx.prepare_cached("UPDATE counters SET value = value WHERE name = 'images_created'")?.execute([]).map(drop)
        })
        .map_err(|e| {
            if is_out_of_space(&e) {
                self.full = true;
            }
            StoreError::from(e)
        })
    }

    fn maintain(&mut self) -> Result<Option<&'static str>, StoreError> {
        if self.checkpointed.elapsed() < self.checkpoint_every {
            return Ok(None);
        }
        self.checkpointed = std::time::Instant::now();
        // PASSIVE never waits for anyone; with no other writer it copies the whole log.
        let (busy, logged, copied): (i64, i64, i64) =
            self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if busy != 0 || copied < logged {
            tracing::debug!(
                logged,
                copied,
                "SQLite checkpoint incomplete (a reader holds the log); next one continues"
            );
        }
        Ok(Some("CHECKPOINT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Color;

    fn batch(writes: Vec<Write<'_>>, counters: Counters) -> Commit<'_> {
        Commit { writes, counters, log: Vec::new() }
    }

    #[test]
    fn a_failed_transaction_is_rolled_back_and_the_next_one_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path().join("t.db").to_str().unwrap()).unwrap();
        let set = |value: i64| move |c: &Connection| c.execute(SET_COUNTER, params!["images_created", value]).map(drop);
        let failed = store.transaction(|c| {
            set(7)(c)?;
            c.execute("INSERT INTO nowhere VALUES (1)", []).map(drop)
        });
        assert!(failed.is_err());
        assert!(store.conn.is_autocommit(), "the failed transaction was left open");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.transaction(|c| {
                set(8)(c)?;
                panic!("a panic inside the transaction")
            })
        }));
        assert!(panicked.is_err());
        assert!(store.conn.is_autocommit(), "the panicked transaction was left open");
        store.transaction(set(9)).unwrap();
        let value: i64 =
            store.conn.query_row("SELECT value FROM counters WHERE name = 'images_created'", [], |r| r.get(0)).unwrap();
        assert_eq!(value, 9);
    }

    #[test]
    fn commits_survive_reopen_and_deletes_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let path = path.to_str().unwrap();
        let mut canvas = Canvas::default();
        canvas.set(1, 1, Color { r: 0, g: 0, b: 0 });
        let a = StoredImage { id: ImageId::parse("a").unwrap(), generation: 0, canvas, version: 3 };
        let b = StoredImage { id: ImageId::parse("b").unwrap(), generation: 0, canvas: Canvas::default(), version: 0 };
        {
            let mut s = SqliteStore::open(path).unwrap();
            let counters = Counters { images_created: 2, images_deleted: 0 };
            s.commit(&batch(vec![Write::Upsert(&a), Write::Upsert(&b)], counters)).unwrap();
            let counters = Counters { images_created: 2, images_deleted: 1 };
            s.commit(&batch(vec![Write::Delete(&b.id)], counters)).unwrap();
        }
        let mut s = SqliteStore::open(path).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.counters, Counters { images_created: 2, images_deleted: 1 });
        assert_eq!(snap.images.len(), 1);
        assert_eq!(snap.images[0].canvas, a.canvas);
        assert_eq!(snap.images[0].version, 3);
        s.ping().unwrap();
    }

    #[test]
    fn checkpoints_copy_the_log_and_let_it_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let wal = dir.path().join("t.db-wal");
        let mut s = SqliteStore::open(path.to_str().unwrap()).unwrap();
        let mut images: Vec<StoredImage> = (0..50)
            .map(|i| StoredImage {
                id: ImageId::parse(&format!("i{i}")).unwrap(),
                generation: 0,
                canvas: Canvas::default(),
                version: 1,
            })
            .collect();
        let mut commit = |s: &mut SqliteStore, version: u64| {
            images.iter_mut().for_each(|img| img.version = version);
            let writes: Vec<Write<'_>> = images.iter().map(Write::Upsert).collect();
            s.commit(&batch(writes, Counters::default())).unwrap();
        };
        commit(&mut s, 1);
        assert_eq!(s.maintain().unwrap(), None, "no checkpoint before its time");
        s.checkpoint_every = std::time::Duration::ZERO;
        assert_eq!(s.maintain().unwrap(), Some("CHECKPOINT"));
        // In WAL mode only a checkpoint writes the database file: 50 canvases of 12 KiB are there.
        assert!(std::fs::metadata(&path).unwrap().len() >= 50 * 64 * 64 * 3);
        let one_batch = std::fs::metadata(&wal).unwrap().len();
        // Each checkpoint copied the whole log, so each batch reuses the same blocks of it.
        for version in 2..=20 {
            commit(&mut s, version);
            s.maintain().unwrap();
        }
        let after = std::fs::metadata(&wal).unwrap().len();
        assert!(after <= one_batch, "the WAL grew from {one_batch} to {after} bytes: it never started over");
        drop(s);
        let loaded = SqliteStore::open(path.to_str().unwrap()).unwrap().load().unwrap();
        assert_eq!(loaded.images.len(), 50);
        assert!(loaded.images.iter().all(|img| img.version == 20));
    }

    /// A store's files as a crash leaves them: copied while it runs, the log not checkpointed.
    fn crashed_copy(images: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = SqliteStore::open(path.to_str().unwrap()).unwrap();
        for i in 0..images {
            let img = StoredImage {
                id: ImageId::parse(&format!("i{i}")).unwrap(),
                generation: 0,
                canvas: Canvas::default(),
                version: 1,
            };
            s.commit(&batch(vec![Write::Upsert(&img)], Counters::default())).unwrap();
        }
        let copy = tempfile::tempdir().unwrap();
        for suffix in ["", "-wal"] {
            std::fs::copy(format!("{}{suffix}", path.display()), copy.path().join(format!("t.db{suffix}"))).unwrap();
        }
        drop(s);
        let path = copy.path().join("t.db");
        (copy, path)
    }

    #[test]
    fn a_log_damaged_in_the_middle_is_refused_and_a_torn_tail_is_not() {
        let (_dir, path) = crashed_copy(20);
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let log = std::fs::read(&wal).unwrap();
        assert!(
            matches!(wal::inspect(&log), wal::Verdict::Intact { frames } if frames >= 20),
            "{:?}",
            wal::inspect(&log)
        );
        // Garbage at the end, as a torn write leaves: SQLite drops it, nothing committed is lost.
        let mut torn = log.clone();
        torn.extend_from_slice(&[0xA5; 64]);
        std::fs::write(&wal, &torn).unwrap();
        let loaded = SqliteStore::open(path.to_str().unwrap()).unwrap().load().unwrap();
        assert_eq!(loaded.images.len(), 20);

        // 64 bytes of garbage in the middle: the commits after it would vanish.
        let (_dir, path) = crashed_copy(20);
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let mut log = std::fs::read(&wal).unwrap();
        let middle = log.len() / 2;
        log[middle..middle + 64].fill(0xA5);
        std::fs::write(&wal, &log).unwrap();
        let err = SqliteStore::open(path.to_str().unwrap()).err().expect("a damaged log was opened");
        let text = err.to_string();
        assert!(text.contains("-wal is damaged") && text.contains("committed transactions"), "{text}");

        // A damaged header: SQLite would ignore the whole log.
        let (_dir, path) = crashed_copy(3);
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let mut log = std::fs::read(&wal).unwrap();
        log[20] ^= 0xFF;
        std::fs::write(&wal, &log).unwrap();
        let err = SqliteStore::open(path.to_str().unwrap()).err().expect("a log with a damaged header was opened");
        assert!(err.to_string().contains("header is damaged"), "{err}");
    }

    #[test]
    fn a_removed_file_stops_commits_and_pings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = SqliteStore::open(path.to_str().unwrap()).unwrap();
        s.ping().unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = s.ping().unwrap_err();
        assert!(err.to_string().contains("removed or replaced"), "{err}");
        assert!(s.commit(&batch(Vec::new(), Counters { images_created: 1, images_deleted: 0 })).is_err());
    }

    #[test]
    fn a_read_only_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(SqliteStore::open(path.to_str().unwrap()).unwrap());
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = Connection::open_with_flags(&path, flags).unwrap();
        assert!(conn.is_readonly(rusqlite::MAIN_DB).unwrap());
        // Root ignores file modes, so read-only is shown through SQLite's own flag here; the
        // store asks SQLite the same question.
        let mut store = SqliteStore::open(path.to_str().unwrap()).unwrap();
        store.conn = conn;
        let err = store.check(Check::None).unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let err = SqliteStore::open(path.to_str().unwrap()).err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
