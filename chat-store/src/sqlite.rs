//! [`SqliteStore`]: the durable [`Store`], one SQLite database per server.
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=FULL`. A commit appends the
//! transaction's pages to `chat.db-wal` and fsyncs that file before `COMMIT` returns, so
//! once [`Store::append`] or [`Store::set_meta`] returns `Ok`:
//! - a `kill -9` of the process loses nothing: the pages are in the operating system's
//!   file cache, and the next open replays the WAL;
//! - a power loss or kernel crash loses nothing either: the pages reached the disk.
//!
//! (`synchronous=NORMAL`, the usual WAL setting, only fsyncs at checkpoints: it survives
//! `kill -9` but may lose the last commits on power loss, which would break the promise an
//! acknowledged write makes.) A crashed, uncommitted transaction leaves no trace: the WAL
//! frames without a commit record are ignored on recovery. If the file system cannot do
//! WAL (no shared memory), SQLite keeps its rollback journal, which `synchronous=FULL`
//! makes just as durable. On open, the data directory and its parent are fsynced too, so a
//! newly created database file is not lost with its directory entry.
//!
//! # Schema (version 1, in `PRAGMA user_version`)
//!
//! ```sql
//! CREATE TABLE events (
//!     row          INTEGER PRIMARY KEY AUTOINCREMENT, -- append order
//!     origin       TEXT    NOT NULL,                  -- EventId.origin
//!     seq          INTEGER NOT NULL,                  -- EventId.seq
//!     clock        INTEGER NOT NULL,                  -- Lamport stamp
//!     timestamp_ms INTEGER NOT NULL,                  -- physical time, ms since the epoch
//!     operation    TEXT    NOT NULL,                  -- login | channel | publication | message
//!     channel      TEXT,                              -- channel of a post, NULL otherwise
//!     body         BLOB    NOT NULL,                  -- Event::encode(MsgPack): the event itself
//!     UNIQUE (origin, seq)                            -- dedup key, and the index of events_after/applied
//! );
//! CREATE INDEX events_channel_history ON events (channel, clock, origin, seq)
//!     WHERE channel IS NOT NULL;
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
//! ```
//!
//! `body` is the source of truth; the other columns exist to be indexed and queried, and
//! every read checks that the decoded event has the row's `(origin, seq)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_core::{Event, EventKind, Stamp};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, Row, TransactionBehavior};

use crate::checked::encode_batch;
use crate::{Store, StoreError};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "chat.db";

/// Schema version this build reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE events (
    row          INTEGER PRIMARY KEY AUTOINCREMENT,
    origin       TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    clock        INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    operation    TEXT    NOT NULL,
    channel      TEXT,
    body         BLOB    NOT NULL,
    UNIQUE (origin, seq)
);
CREATE INDEX events_channel_history ON events (channel, clock, origin, seq)
    WHERE channel IS NOT NULL;
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

const INSERT_EVENT: &str = "INSERT OR IGNORE INTO events \
    (origin, seq, clock, timestamp_ms, operation, channel, body) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

const LOAD_ALL: &str = "SELECT origin, seq, body FROM events ORDER BY row";

const EVENTS_AFTER: &str = "SELECT origin, seq, body FROM events \
    WHERE origin = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";

/// Per origin, the largest `seq` equal to its position `pos` among that origin's sequence numbers:
/// since they are distinct and start at 1, `seq = pos` holds exactly on the gapless prefix.
const APPLIED: &str = "SELECT origin, MAX(CASE WHEN seq = pos THEN seq ELSE 0 END) FROM ( \
    SELECT origin, seq, ROW_NUMBER() OVER (PARTITION BY origin ORDER BY seq) AS pos \
    FROM events) GROUP BY origin";

const HISTORY_ALL: &str = "SELECT origin, seq, body FROM events WHERE channel = ?1 \
    ORDER BY clock DESC, origin DESC, seq DESC LIMIT ?2";

const HISTORY_BEFORE: &str = "SELECT origin, seq, body FROM events WHERE channel = ?1 \
    AND (clock, origin, seq) < (?2, ?3, ?4) \
    ORDER BY clock DESC, origin DESC, seq DESC LIMIT ?5";

/// Used when the cursor's `seq` is beyond any storable one: every row at or before
/// `(clock, origin)` is strictly before the cursor.
const HISTORY_THROUGH: &str = "SELECT origin, seq, body FROM events WHERE channel = ?1 \
    AND (clock, origin) <= (?2, ?3) \
    ORDER BY clock DESC, origin DESC, seq DESC LIMIT ?4";

const GET_META: &str = "SELECT value FROM meta WHERE key = ?1";

const SET_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The durable [`Store`]: an SQLite database `chat.db` in a data directory.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the directory `dir` and the database `dir/chat.db`.
    ///
    /// Fails with [`StoreError::UnsupportedSchema`] if the database has a schema version
    /// this build does not know.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The answer is the mode in effect: `wal`, or the rollback journal where the file
        // system cannot do WAL; both are durable with synchronous=FULL (module docs).
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(32);
        migrate(&mut conn)?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            sync_dir(parent)?;
        }
        Ok(SqliteStore { conn, path })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a query's `(origin, seq, body)` rows as events.
    fn read_events(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(decode_row(row)?);
        }
        Ok(out)
    }
}

/// Creates the schema in a new database; refuses a database of an unknown version.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    if has_schema(conn)? {
        return Ok(());
    }
    // Another process may be creating the schema at the same time: decide under the lock.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !has_schema(&tx)? {
        tx.execute_batch(SCHEMA)?;
        tx.commit()?;
    }
    Ok(())
}

/// Whether the database holds this build's schema (`false`: an empty database); an error
/// for a version this build does not know.
fn has_schema(conn: &Connection) -> Result<bool, StoreError> {
    match user_version(conn)? {
        SCHEMA_VERSION => Ok(true),
        0 => Ok(false),
        found => Err(StoreError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Fsyncs a directory so that entries just created in it survive power loss (Unix only;
/// file systems that cannot sync a directory are tolerated).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    match std::fs::File::open(dir).and_then(|f| f.sync_all()) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) => {}
        Err(e) => return Err(e.into()),
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Decodes an `(origin, seq, body)` row, checking that the body is the row's event.
fn decode_row(row: &Row<'_>) -> Result<Event, StoreError> {
    let origin = text(row.get_ref(0)?, "origin")?;
    let seq = integer(row.get_ref(1)?, "seq")?;
    let body = match row.get_ref(2)? {
        ValueRef::Blob(b) => b,
        other => {
            return Err(StoreError::Corrupt(format!(
                "event {origin}/{seq}: body is {:?}, not a blob",
                other.data_type()
            )))
        }
    };
    let event = Event::decode(body)
        .map_err(|e| StoreError::Corrupt(format!("event {origin}/{seq}: {e}")))?;
    if event.id.origin != origin || event.id.seq != seq {
        return Err(StoreError::Corrupt(format!(
            "row {origin}/{seq} holds event {}",
            event.id
        )));
    }
    Ok(event)
}

fn text<'a>(v: ValueRef<'a>, column: &str) -> Result<&'a str, StoreError> {
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map_err(|e| StoreError::Corrupt(format!("column {column} is not UTF-8: {e}"))),
        other => Err(StoreError::Corrupt(format!(
            "column {column} is {:?}, not text",
            other.data_type()
        ))),
    }
}

fn integer(v: ValueRef<'_>, column: &str) -> Result<u64, StoreError> {
    match v {
        ValueRef::Integer(i) => u64::try_from(i)
            .map_err(|_| StoreError::Corrupt(format!("column {column} is negative: {i}"))),
        other => Err(StoreError::Corrupt(format!(
            "column {column} is {:?}, not an integer",
            other.data_type()
        ))),
    }
}

/// A value for an SQLite INTEGER column of an event being stored.
fn to_sql_int(v: u64, what: &str, e: &Event) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::InvalidEvent(format!("{}: {what} {v} is above {}", e.id, i64::MAX))
    })
}

/// A `LIMIT` value (SQLite takes a signed 64-bit integer).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn append(&mut self, events: &[Event]) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let bodies = encode_batch(events)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut added = 0;
        {
            let mut insert = tx.prepare_cached(INSERT_EVENT)?;
            for (e, body) in events.iter().zip(&bodies) {
                let channel = match &e.kind {
                    EventKind::ChannelMessage { channel, .. } => Some(channel.as_str()),
                    _ => None,
                };
                added += insert.execute(params![
                    e.id.origin,
                    to_sql_int(e.id.seq, "sequence number", e)?,
                    to_sql_int(e.clock, "clock", e)?,
                    e.timestamp.millis(),
                    e.kind.operation(),
                    channel,
                    body,
                ])?;
            }
        }
        tx.commit()?;
        Ok(added)
    }

    fn load_all(&self) -> Result<Vec<Event>, StoreError> {
        self.read_events(LOAD_ALL, [])
    }

    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new()); // no stored sequence number is that large
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read_events(EVENTS_AFTER, params![origin, after, sql_limit(limit)])
    }

    /// Also lists origins whose event 1 is missing, with 0.
    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(APPLIED)?;
        let mut rows = stmt.query([])?;
        let mut out = BTreeMap::new();
        while let Some(row) = rows.next()? {
            let origin = text(row.get_ref(0)?, "origin")?;
            let through = integer(row.get_ref(1)?, "seq")?;
            out.insert(origin.to_string(), through);
        }
        Ok(out)
    }

    fn channel_history(
        &self,
        channel: &str,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = sql_limit(limit);
        // Stored clocks and sequence numbers fit in i64; a cursor beyond that range is
        // after every stored event in that component.
        let bound = before.and_then(|b| i64::try_from(b.clock).ok().map(|c| (c, b)));
        let mut page = match bound {
            None => self.read_events(HISTORY_ALL, params![channel, limit])?,
            Some((clock, b)) => match i64::try_from(b.seq) {
                Ok(seq) => self.read_events(
                    HISTORY_BEFORE,
                    params![channel, clock, b.origin, seq, limit],
                )?,
                Err(_) => {
                    self.read_events(HISTORY_THROUGH, params![channel, clock, b.origin, limit])?
                }
            },
        };
        page.reverse();
        Ok(page)
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(GET_META)?;
        let mut rows = stmt.query([key])?;
        match rows.next()? {
            Some(row) => Ok(Some(text(row.get_ref(0)?, "value")?.to_string())),
            None => Ok(None),
        }
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        // One autocommit statement: its own transaction, fsynced like `append`.
        self.conn.prepare_cached(SET_META)?.execute([key, value])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_is_configured_for_durability() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let pragma = |name: &str| -> String {
            store
                .conn
                .query_row(&format!("PRAGMA {name}"), [], |r| {
                    Ok(match r.get_ref(0)? {
                        ValueRef::Integer(i) => i.to_string(),
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        other => format!("{other:?}"),
                    })
                })
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "2"); // FULL
        assert_eq!(pragma("busy_timeout"), "5000");
        assert_eq!(pragma("user_version"), SCHEMA_VERSION.to_string());
    }
}
