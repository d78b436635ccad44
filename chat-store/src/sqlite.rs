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
//! # Schema (version 2, in `PRAGMA user_version`)
//!
//! ```sql
//! CREATE TABLE events (
//!     row          INTEGER NOT NULL,                  -- append order (not indexed)
//!     origin       TEXT    NOT NULL,                  -- EventId.origin
//!     seq          INTEGER NOT NULL,                  -- EventId.seq
//!     clock        INTEGER NOT NULL,                  -- Lamport stamp
//!     timestamp_ms INTEGER NOT NULL,                  -- physical time, ms since the epoch
//!     operation    TEXT    NOT NULL,                  -- login | channel | publication | message
//!     request_id   TEXT,                              -- client request id, if any
//!     visible      INTEGER NOT NULL,                  -- 0: a copy that lost to an earlier copy of its request
//!     body         BLOB    NOT NULL,                  -- Event::encode(MsgPack): the event itself
//!     PRIMARY KEY (origin, seq)                       -- dedup key; clustered: one b-tree
//! ) WITHOUT ROWID;
//! CREATE INDEX events_request ON events (request_id) WHERE request_id IS NOT NULL;
//! -- History by topic (`#channel`, `@user`): visible posts, and private messages under
//! -- both the sender and the recipient (`head` = 1 for the recipient's row).
//! CREATE TABLE history (topic, clock, origin, seq, head, PRIMARY KEY (topic, clock, origin, seq)) WITHOUT ROWID;
//! CREATE INDEX history_heads ON history (topic, origin, seq) WHERE head = 1;
//! CREATE TABLE names (kind, name, count, PRIMARY KEY (kind, name)) WITHOUT ROWID; -- visible logins, creations
//! CREATE TABLE origins (origin PRIMARY KEY, through) WITHOUT ROWID;               -- gapless prefix
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;   -- term, rank, summary (counters)
//! ```
//!
//! `body` is the source of truth; the other columns and tables are indexes, written in the
//! same transaction as the events (`crate::index`), and every read checks that the decoded
//! event has the row's `(origin, seq)`. A history page, a request id, the small state of a
//! restart: each is an index lookup, whatever the size of the history. A version 1
//! database (no indexes beside the events) is migrated on open, in one transaction.
//!
//! Reads of a running server go through [`SqliteStore::reader`], a second connection: WAL
//! lets it read the last committed state while the writer commits the next batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_core::{AppliedSeqs, Event, EventId, HistoryTarget, Stamp, Summary};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use crate::checked::encode_batch;
use crate::index::{append_indexed, topic_key, Counters, IndexTx, NameKind, META_SUMMARY};
use crate::{Appended, HistoryRows, Store, StoreError, StoreRead, VisibleKind};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "chat.db";

/// Schema version this build reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE events (
    row          INTEGER NOT NULL,
    origin       TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    clock        INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    operation    TEXT    NOT NULL,
    request_id   TEXT,
    visible      INTEGER NOT NULL,
    body         BLOB    NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE INDEX events_request ON events (request_id) WHERE request_id IS NOT NULL;
CREATE TABLE history (
    topic  TEXT    NOT NULL,
    clock  INTEGER NOT NULL,
    origin TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    head   INTEGER NOT NULL,
    PRIMARY KEY (topic, clock, origin, seq)
) WITHOUT ROWID;
CREATE INDEX history_heads ON history (topic, origin, seq) WHERE head = 1;
CREATE TABLE names (
    kind  TEXT    NOT NULL,
    name  TEXT    NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
CREATE TABLE origins (
    origin  TEXT    PRIMARY KEY,
    through INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 2;
";

const CONTAINS: &str = "SELECT 1 FROM events WHERE origin = ?1 AND seq = ?2";

const INSERT_EVENT: &str = "INSERT OR IGNORE INTO events \
    (row, origin, seq, clock, timestamp_ms, operation, request_id, visible, body) \
    VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const WINNER: &str =
    "SELECT origin, seq, body FROM events WHERE request_id = ?1 AND visible = 1 LIMIT 1";

const HIDE: &str = "UPDATE events SET visible = 0 WHERE origin = ?1 AND seq = ?2";

const HISTORY_ADD: &str = "INSERT OR REPLACE INTO history (topic, clock, origin, seq, head) \
    VALUES (?1, ?2, ?3, ?4, ?5)";

const HISTORY_REMOVE: &str =
    "DELETE FROM history WHERE topic = ?1 AND clock = ?2 AND origin = ?3 AND seq = ?4";

const NAME_BUMP: &str = "INSERT INTO names (kind, name, count) VALUES (?1, ?2, ?3) \
    ON CONFLICT (kind, name) DO UPDATE SET count = count + excluded.count";

const NAME_DROP: &str = "DELETE FROM names WHERE kind = ?1 AND name = ?2 AND count <= 0";

const THROUGH: &str = "SELECT through FROM origins WHERE origin = ?1";

const SET_THROUGH: &str = "INSERT INTO origins (origin, through) VALUES (?1, ?2) \
    ON CONFLICT (origin) DO UPDATE SET through = excluded.through";

const LOAD_ALL: &str = "SELECT origin, seq, body FROM events ORDER BY row";

const EVENTS_AFTER: &str = "SELECT origin, seq, body FROM events \
    WHERE origin = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";

const ORIGINS: &str = "SELECT origin, through FROM origins ORDER BY origin";

const NAMES: &str = "SELECT kind, name, count FROM names";

const VISIBLE_IN_ORDER: &str = "SELECT origin, seq, body FROM events \
    WHERE visible = 1 AND operation = ?1 ORDER BY clock, origin, seq";

const HISTORY_ALL: &str = "SELECT e.origin, e.seq, e.body FROM history h \
    JOIN events e ON e.origin = h.origin AND e.seq = h.seq \
    WHERE h.topic = ?1 ORDER BY h.clock DESC, h.origin DESC, h.seq DESC LIMIT ?2";

const HISTORY_BEFORE: &str = "SELECT e.origin, e.seq, e.body FROM history h \
    JOIN events e ON e.origin = h.origin AND e.seq = h.seq \
    WHERE h.topic = ?1 AND (h.clock, h.origin, h.seq) < (?2, ?3, ?4) \
    ORDER BY h.clock DESC, h.origin DESC, h.seq DESC LIMIT ?5";

/// Used when the cursor's `seq` is beyond any storable one: every row at or before
/// `(clock, origin)` is strictly before the cursor.
const HISTORY_THROUGH: &str = "SELECT e.origin, e.seq, e.body FROM history h \
    JOIN events e ON e.origin = h.origin AND e.seq = h.seq \
    WHERE h.topic = ?1 AND (h.clock, h.origin) <= (?2, ?3) \
    ORDER BY h.clock DESC, h.origin DESC, h.seq DESC LIMIT ?4";

const HEADS: &str = "SELECT o.origin, (SELECT MAX(h.seq) FROM history h \
    WHERE h.topic = ?1 AND h.origin = o.origin AND h.seq <= o.through AND h.head = 1) \
    FROM origins o";

const LAST_PUBLISHED: &str = "SELECT MAX(seq) FROM history \
    WHERE topic = ?1 AND origin = ?2 AND seq < ?3 AND head = 1";

const GET_META: &str = "SELECT value FROM meta WHERE key = ?1";

const SET_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The durable [`Store`]: an SQLite database `chat.db` in a data directory.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

/// A second connection to a [`SqliteStore`]'s database, for reads only
/// ([`SqliteStore::reader`]).
#[derive(Debug)]
pub struct SqliteReader {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the directory `dir` and the database `dir/chat.db`.
    ///
    /// Fails with [`StoreError::UnsupportedSchema`] if the database has a schema version
    /// this build does not know; migrates a version 1 database.
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
        conn.set_prepared_statement_cache_capacity(48);
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

    /// A read-only connection to the same database: it reads the last committed state,
    /// without waiting for a commit in progress (WAL).
    pub fn open_reader(&self) -> Result<SqliteReader, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(SqliteReader { conn })
    }
}

/// Creates the schema in a new database, migrates a version 1 one; refuses a database of
/// an unknown version.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    if user_version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    // Another process may be creating the schema at the same time: decide under the lock.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match user_version(&tx)? {
        SCHEMA_VERSION => return Ok(()),
        0 => tx.execute_batch(SCHEMA)?,
        1 => migrate_v1(&tx)?,
        found => {
            return Err(StoreError::UnsupportedSchema {
                found,
                supported: SCHEMA_VERSION,
            })
        }
    }
    tx.commit()?;
    Ok(())
}

/// Version 1 kept only the events (and a channel index): builds every index from them.
fn migrate_v1(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "DROP INDEX IF EXISTS events_channel_history; ALTER TABLE events RENAME TO events_v1;",
    )?;
    tx.execute_batch(SCHEMA)?;
    let mut counters = Counters::default();
    {
        let mut stmt = tx.prepare("SELECT origin, seq, body FROM events_v1 ORDER BY row")?;
        let mut rows = stmt.query([])?;
        let mut chunk = Vec::new();
        loop {
            let row = rows.next()?;
            if let Some(row) = row {
                chunk.push(decode_row(row)?);
            }
            if chunk.len() >= 1024 || (row.is_none() && !chunk.is_empty()) {
                let bodies = encode_batch(&chunk)?;
                let mut itx = SqlTx {
                    tx,
                    counters: &mut counters,
                };
                append_indexed(&mut itx, &chunk, &bodies)?;
                chunk.clear();
            }
            if row.is_none() {
                break;
            }
        }
    }
    tx.execute_batch("DROP TABLE events_v1;")?;
    write_counters(tx, &counters)?;
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

fn write_counters(conn: &Connection, counters: &Counters) -> Result<(), StoreError> {
    conn.prepare_cached(SET_META)?
        .execute([META_SUMMARY, counters.to_meta().as_str()])?;
    Ok(())
}

fn read_counters(conn: &Connection) -> Result<Counters, StoreError> {
    Counters::from_meta(get_meta(conn, META_SUMMARY)?.as_deref())
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

/// An integer column that may be NULL (an aggregate over no rows).
fn maybe_integer(v: ValueRef<'_>, column: &str) -> Result<Option<u64>, StoreError> {
    match v {
        ValueRef::Null => Ok(None),
        other => integer(other, column).map(Some),
    }
}

/// A value for an SQLite INTEGER column of an event being stored.
fn to_sql_int(v: u64, what: &str, e: &Event) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::InvalidEvent(format!("{}: {what} {v} is above {}", e.id, i64::MAX))
    })
}

/// A stored sequence number or clock (both fit in i64 once stored).
fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `LIMIT` value (SQLite takes a signed 64-bit integer).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Reads a query's `(origin, seq, body)` rows as events.
fn read_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_row(row)?);
    }
    Ok(out)
}

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached(GET_META)?;
    let mut rows = stmt.query([key])?;
    match rows.next()? {
        Some(row) => Ok(Some(text(row.get_ref(0)?, "value")?.to_string())),
        None => Ok(None),
    }
}

fn origins(conn: &Connection) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(ORIGINS)?;
    let mut rows = stmt.query([])?;
    let mut out = BTreeMap::new();
    while let Some(row) = rows.next()? {
        out.insert(
            text(row.get_ref(0)?, "origin")?.to_string(),
            integer(row.get_ref(1)?, "through")?,
        );
    }
    Ok(out)
}

/// The reads both connections answer.
fn read_summary(conn: &Connection) -> Result<Summary, StoreError> {
    // One snapshot for every table.
    let tx = conn.unchecked_transaction()?;
    let mut summary = Summary::default();
    {
        let mut stmt = tx.prepare_cached(NAMES)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let kind = text(row.get_ref(0)?, "kind")?;
            let name = text(row.get_ref(1)?, "name")?.to_string();
            let count = integer(row.get_ref(2)?, "count")?;
            match kind {
                "user" => summary.users.insert(name, count),
                "channel" => summary.channels.insert(name, count),
                other => return Err(StoreError::Corrupt(format!("name kind {other:?}"))),
            };
        }
    }
    for (origin, through) in origins(&tx)? {
        let mut stmt = tx
            .prepare_cached("SELECT seq FROM events WHERE origin = ?1 AND seq > ?2 ORDER BY seq")?;
        let mut rows = stmt.query(params![origin, sql_u64(through)])?;
        let mut above = Vec::new();
        while let Some(row) = rows.next()? {
            above.push(integer(row.get_ref(0)?, "seq")?);
        }
        summary
            .applied
            .insert(origin, AppliedSeqs::from_parts(through, above));
    }
    let c = read_counters(&tx)?;
    summary.max_clock = c.max_clock;
    summary.events = c.events;
    summary.messages = c.messages;
    summary.digest = c.digest;
    tx.finish()?;
    Ok(summary)
}

fn read_history(
    conn: &Connection,
    target: &HistoryTarget,
    before: Option<&Stamp>,
    limit: usize,
) -> Result<HistoryRows, StoreError> {
    if limit == 0 {
        return Ok(HistoryRows::default());
    }
    let topic = topic_key(target);
    let limit = sql_limit(limit);
    // Items and heads from one snapshot.
    let tx = conn.unchecked_transaction()?;
    // Stored clocks and sequence numbers fit in i64; a cursor beyond that range is after
    // every stored event in that component.
    let bound = before.and_then(|b| i64::try_from(b.clock).ok().map(|c| (c, b)));
    let newest_first = match bound {
        None => read_events(&tx, HISTORY_ALL, params![topic, limit])?,
        Some((clock, b)) => match i64::try_from(b.seq) {
            Ok(seq) => read_events(
                &tx,
                HISTORY_BEFORE,
                params![topic, clock, b.origin, seq, limit],
            )?,
            Err(_) => read_events(&tx, HISTORY_THROUGH, params![topic, clock, b.origin, limit])?,
        },
    };
    let mut heads = BTreeMap::new();
    {
        let mut stmt = tx.prepare_cached(HEADS)?;
        let mut rows = stmt.query([&topic])?;
        while let Some(row) = rows.next()? {
            if let Some(seq) = maybe_integer(row.get_ref(1)?, "seq")? {
                heads.insert(text(row.get_ref(0)?, "origin")?.to_string(), seq);
            }
        }
    }
    tx.finish()?;
    Ok(HistoryRows {
        newest_first,
        heads,
    })
}

fn read_events_after(
    conn: &Connection,
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
    read_events(conn, EVENTS_AFTER, params![origin, after, sql_limit(limit)])
}

fn read_winner(conn: &Connection, request_id: &str) -> Result<Option<Event>, StoreError> {
    Ok(read_events(conn, WINNER, [request_id])?.into_iter().next())
}

fn read_last_published(
    conn: &Connection,
    target: &HistoryTarget,
    origin: &str,
    below: u64,
) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = conn
        .prepare_cached(LAST_PUBLISHED)?
        .query_row(params![topic_key(target), origin, sql_u64(below)], |r| {
            r.get(0)
        })
        .optional()?
        .flatten();
    Ok(v.and_then(|s| u64::try_from(s).ok()))
}

macro_rules! store_reads {
    ($t:ty) => {
        impl StoreRead for $t {
            fn events_after(
                &self,
                origin: &str,
                after_seq: u64,
                limit: usize,
            ) -> Result<Vec<Event>, StoreError> {
                read_events_after(&self.conn, origin, after_seq, limit)
            }
            fn summary(&self) -> Result<Summary, StoreError> {
                read_summary(&self.conn)
            }
            fn request_winner(&self, request_id: &str) -> Result<Option<Event>, StoreError> {
                read_winner(&self.conn, request_id)
            }
            fn history(
                &self,
                target: &HistoryTarget,
                before: Option<&Stamp>,
                limit: usize,
            ) -> Result<HistoryRows, StoreError> {
                read_history(&self.conn, target, before, limit)
            }
            fn last_published(
                &self,
                target: &HistoryTarget,
                origin: &str,
                below: u64,
            ) -> Result<Option<u64>, StoreError> {
                read_last_published(&self.conn, target, origin, below)
            }
            fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
                get_meta(&self.conn, key)
            }
        }
    };
}

store_reads!(SqliteStore);
store_reads!(SqliteReader);

/// The index logic's view of one SQLite transaction.
struct SqlTx<'a, 'c> {
    tx: &'a rusqlite::Transaction<'c>,
    counters: &'a mut Counters,
}

impl IndexTx for SqlTx<'_, '_> {
    fn contains(&mut self, id: &EventId) -> Result<bool, StoreError> {
        let Ok(seq) = i64::try_from(id.seq) else {
            return Ok(false);
        };
        Ok(self
            .tx
            .prepare_cached(CONTAINS)?
            .exists(params![id.origin, seq])?)
    }

    fn insert(&mut self, e: &Event, body: &[u8], visible: bool) -> Result<bool, StoreError> {
        let n = self.tx.prepare_cached(INSERT_EVENT)?.execute(params![
            e.id.origin,
            to_sql_int(e.id.seq, "sequence number", e)?,
            to_sql_int(e.clock, "clock", e)?,
            e.timestamp.millis(),
            e.kind.operation(),
            e.request_id,
            visible,
            body,
            // Append order: one more than the events stored before (the counter is
            // incremented after an insert that stored something).
            sql_u64(self.counters.events + 1),
        ])?;
        Ok(n == 1)
    }

    fn winner(&mut self, rid: &str) -> Result<Option<Event>, StoreError> {
        read_winner(self.tx, rid)
    }

    fn set_hidden(&mut self, id: &EventId) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(HIDE)?
            .execute(params![id.origin, sql_u64(id.seq)])?;
        Ok(())
    }

    fn history_row(
        &mut self,
        topic: &str,
        stamp: &Stamp,
        head: bool,
        add: bool,
    ) -> Result<(), StoreError> {
        let (clock, seq) = (sql_u64(stamp.clock), sql_u64(stamp.seq));
        if add {
            self.tx.prepare_cached(HISTORY_ADD)?.execute(params![
                topic,
                clock,
                stamp.origin,
                seq,
                head
            ])?;
        } else {
            self.tx.prepare_cached(HISTORY_REMOVE)?.execute(params![
                topic,
                clock,
                stamp.origin,
                seq
            ])?;
        }
        Ok(())
    }

    fn bump_name(&mut self, kind: NameKind, name: &str, delta: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(NAME_BUMP)?
            .execute(params![kind.as_str(), name, delta])?;
        if delta < 0 {
            self.tx
                .prepare_cached(NAME_DROP)?
                .execute(params![kind.as_str(), name])?;
        }
        Ok(())
    }

    fn counters(&mut self) -> &mut Counters {
        self.counters
    }

    fn through(&mut self, origin: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = self
            .tx
            .prepare_cached(THROUGH)?
            .query_row([origin], |r| r.get(0))
            .optional()?;
        Ok(v.and_then(|t| u64::try_from(t).ok()))
    }

    fn set_through(&mut self, origin: &str, through: u64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(SET_THROUGH)?
            .execute(params![origin, sql_u64(through)])?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn append_counting(&mut self, events: &[Event]) -> Result<Appended, StoreError> {
        if events.is_empty() {
            return Ok(Appended::default());
        }
        let bodies = encode_batch(events)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read under the write lock: another handle on the same database may have
        // appended since.
        let mut counters = read_counters(&tx)?;
        let added = append_indexed(
            &mut SqlTx {
                tx: &tx,
                counters: &mut counters,
            },
            events,
            &bodies,
        )?;
        if added.added > 0 {
            write_counters(&tx, &counters)?;
        }
        tx.commit()?;
        Ok(added)
    }

    fn load_all(&self) -> Result<Vec<Event>, StoreError> {
        read_events(&self.conn, LOAD_ALL, [])
    }

    fn visible_in_order(
        &self,
        kind: VisibleKind,
        f: &mut dyn FnMut(Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let op = match kind {
            VisibleKind::Logins => "login",
            VisibleKind::Messages => "message",
            VisibleKind::Posts => "publication",
        };
        let mut stmt = self.conn.prepare_cached(VISIBLE_IN_ORDER)?;
        let mut rows = stmt.query([op])?;
        while let Some(row) = rows.next()? {
            f(decode_row(row)?)?;
        }
        Ok(())
    }

    /// Also lists origins whose event 1 is missing, with 0.
    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        origins(&self.conn)
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        // One autocommit statement: its own transaction, fsynced like `append`.
        self.conn.prepare_cached(SET_META)?.execute([key, value])?;
        Ok(())
    }

    fn reader(&self) -> Result<Option<Box<dyn StoreRead + Send>>, StoreError> {
        Ok(Some(Box::new(self.open_reader()?)))
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

    #[test]
    fn every_read_of_a_running_server_is_an_index_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let plan = |sql: &str, n: usize| -> String {
            let params: Vec<i64> = (0..n as i64).collect();
            let mut stmt = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            stmt.query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("\n")
        };
        for (name, sql, n) in [
            ("history", HISTORY_ALL, 2),
            ("history before", HISTORY_BEFORE, 5),
            ("history through", HISTORY_THROUGH, 4),
            ("heads", HEADS, 1),
            ("last published", LAST_PUBLISHED, 3),
            ("winner", WINNER, 1),
            ("events after", EVENTS_AFTER, 3),
            ("contains", CONTAINS, 2),
        ] {
            let p = plan(sql, n);
            assert!(!p.contains("TEMP B-TREE"), "{name} sorts: {p}");
            // Scanning `origins` (one row per server) is fine; nothing else is scanned.
            for line in p.lines().filter(|l| l.contains("SCAN")) {
                assert!(line.contains("SCAN o"), "{name} scans: {p}");
            }
        }
    }
}
