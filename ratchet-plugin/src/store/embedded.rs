//! The default store for a single node: one SQLite file.
//!
//! SQLite gives what a CNI plugin needs without running a server: many plugin
//! processes may open it at once (kubelet runs ADDs in parallel), `BEGIN
//! IMMEDIATE` makes a transaction exclusive among writers, and its journal
//! makes every commit all-or-nothing even if the process is killed mid-write.

use std::{fs, os::unix::fs::DirBuilderExt, path::Path};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{Store, StoreError, Transaction};

use crate::files::LOCK_WAIT;

/// The file name inside the state directory.
const FILE_NAME: &str = "store.sqlite";

/// The SQLite file in `state_dir`, through this process's own connection.
pub struct EmbeddedStore {
    conn: Connection,
    path: String,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `state_dir`, which is made
    /// root-only because records name every pod's netns and interfaces.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(FILE_NAME);
        let display = path.display().to_string();
        let io = |message: String| StoreError::Io { path: display.clone(), message };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(|e| io(e.to_string()))?;
        let conn = Connection::open(&path).map_err(|e| io(e.to_string()))?;
        conn.busy_timeout(LOCK_WAIT).map_err(|e| io(e.to_string()))?;
        // Every verb is a short-lived process, so the journal is what each
        // one pays for: a WAL is checkpointed, synced and deleted at every
        // close (or, kept, rebuilt from its frames at every open), while a
        // persistent rollback journal costs a commit its two syncs and no
        // more (measured: DEL 1.5 ms faster). FULL syncs each commit so a
        // crash or power cut never loses an acknowledged ADD. Readers (the
        // CLI) wait out a writer's commit through the busy timeout.
        conn.execute_batch(
            "PRAGMA journal_mode = PERSIST;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
        )
        .map_err(|e| sql_error(&display, e))?;
        Ok(Self { conn, path: display })
    }

    /// True when the store holds no record at all: new, or deleted,
    /// truncated or emptied since (SQLite takes an empty file, and the table
    /// is made again above, so each of those reads as new).
    pub fn is_blank(&self) -> Result<bool, StoreError> {
        let any: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM kv LIMIT 1", [], |row| row.get(0))
            .optional()
            .map_err(|e| sql_error(&self.path, e))?;
        Ok(any.is_none())
    }

    /// Where the store's file is.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Store for EmbeddedStore {
    type Tx<'a> = EmbeddedTx<'a>;

    async fn begin(&mut self) -> Result<EmbeddedTx<'_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sql_error(&self.path, e))?;
        Ok(EmbeddedTx { tx, path: &self.path })
    }
}

/// A `BEGIN IMMEDIATE` transaction: other writers wait until it commits,
/// or is dropped and rolled back.
pub struct EmbeddedTx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a str,
}

impl Transaction for EmbeddedTx<'_> {
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.tx
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| row.get(0))
            .optional()
            .map_err(|e| sql_error(self.path, e))
    }

    async fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Keys are ASCII, so U+10FFFF sorts after every key with this prefix.
        let end = format!("{prefix}\u{10FFFF}");
        let mut stmt = self
            .tx
            .prepare_cached("SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
            .map_err(|e| sql_error(self.path, e))?;
        let rows = stmt.query_map(params![prefix, end], |row| Ok((row.get(0)?, row.get(1)?)));
        rows.and_then(Iterator::collect).map_err(|e| sql_error(self.path, e))
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, value],
            )
            .map(drop)
            .map_err(|e| sql_error(self.path, e))
    }

    async fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM kv WHERE key = ?1", [key]).map(drop).map_err(|e| sql_error(self.path, e))
    }

    async fn commit(self) -> Result<(), StoreError> {
        let path = self.path;
        self.tx.commit().map_err(|e| sql_error(path, e))
    }
}

fn sql_error(path: &str, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy { path: path.into(), waited: LOCK_WAIT }
        }
        _ => StoreError::Io { path: path.into(), message: error.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (dir, store)
    }

    /// Runs a store test on a one-thread runtime, as the verbs run.
    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    #[test]
    fn commits_and_scans_by_prefix() {
        block_on(async {
            let (_dir, mut store) = temp_store();
            let mut tx = store.begin().await.unwrap();
            tx.put("/r/a/1", b"one").await.unwrap();
            tx.put("/r/a/2", b"two").await.unwrap();
            tx.put("/r/b/1", b"other").await.unwrap();
            tx.commit().await.unwrap();

            let mut tx = store.begin().await.unwrap();
            let keys: Vec<_> = tx.scan("/r/a/").await.unwrap().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["/r/a/1", "/r/a/2"]);
            tx.delete("/r/a/1").await.unwrap();
            tx.delete("/r/never").await.unwrap();
            assert_eq!(tx.get("/r/a/1").await.unwrap(), None);
        });
    }

    #[test]
    fn dropping_rolls_back() {
        block_on(async {
            let (_dir, mut store) = temp_store();
            let mut tx = store.begin().await.unwrap();
            tx.put("/k", b"v").await.unwrap();
            drop(tx);
            assert_eq!(store.begin().await.unwrap().get("/k").await.unwrap(), None);
        });
    }

    #[test]
    fn a_second_writer_waits_for_the_first() {
        block_on(async {
            let (dir, mut first) = temp_store();
            let mut tx = first.begin().await.unwrap();
            tx.put("/k", b"1").await.unwrap();
            let path = dir.path().to_owned();
            let second = std::thread::spawn(move || {
                block_on(async {
                    let mut store = EmbeddedStore::open(&path).unwrap();
                    let mut tx = store.begin().await.unwrap();
                    let seen = tx.get("/k").await.unwrap();
                    tx.put("/k", b"2").await.unwrap();
                    tx.commit().await.unwrap();
                    seen
                })
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            tx.commit().await.unwrap();
            assert_eq!(second.join().unwrap().as_deref(), Some(&b"1"[..]));
        });
    }
}
