//! The exclusive lock that makes one process the only writer of an SQLite file.

use crate::store::StoreError;

/// Takes the exclusive lock that makes this process the file's only writer, and records our pid
/// in it so the refusal can name the holder. `None` for an in-memory database (nothing to share).
pub(super) fn claim(path: &str) -> Result<Option<std::fs::File>, StoreError> {
    use std::io::{Read, Seek, Write};
    if path.is_empty() || path == ":memory:" || path.starts_with("file::memory:") {
        return Ok(None);
    }
    let lock_path = format!("{path}-lock");
    let cannot = |e: std::io::Error| StoreError::Unusable(format!("cannot open the lock file {lock_path}: {e}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => {
            // The pid is for people; the lock itself is what counts.
            let _ = file.set_len(0).and_then(|()| writeln!(file, "pid {}", std::process::id()));
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
            let holder = match holder.trim() {
                "" => "pid unknown".to_owned(),
                pid => pid.to_owned(),
            };
            Err(StoreError::InUse { path: path.to_owned(), holder })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(cannot(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::store::StoreError;

    #[test]
    fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let path = path.to_str().unwrap();
        let first = SqliteStore::open(path).unwrap();
        // Locks of this kind belong to the open file, so a second open in the same process
        // conflicts just as another process's would.
        let err = SqliteStore::open(path).err().expect("a second store on the same file");
        let message = err.to_string();
        assert!(matches!(err, StoreError::InUse { .. }), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "names the holder: {message}");
        assert!(message.contains(path), "names the database: {message}");
        drop(first);
        SqliteStore::open(path).expect("free again once the first store is gone");
        // An in-memory database shares nothing, so it needs no lock.
        let _a = SqliteStore::open(":memory:").unwrap();
        let _b = SqliteStore::open(":memory:").unwrap();
    }
}
