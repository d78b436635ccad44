//! Durable storage of chat events behind the [`Store`] trait.
//!
//! # Layout
//! - [`Store`]: the seam between a server and its disk: append a batch of events atomically
//!   and durably, load everything on start, read ranges for catch-up and history, keep a few
//!   named values (own sequence, Lamport clock, term).
//! - [`sqlite::SqliteStore`]: the durable default (SQLite, WAL, `synchronous=FULL`): when
//!   `append` returns, the batch survives `kill -9` and power loss.
//! - [`memory::MemoryStore`]: the same contract in memory, for tests.
//! - [`hooked::HookedStore`]: a hook before every append (a slow or stalled disk).
//! - [`export`]: writes the seeds' JSON files (`users.json`, `channels.json`,
//!   `messages.json`, `publications.json`).
//!
//! A server groups every write that arrived while its previous batch was being committed
//! into one `append` call, so a burst of requests costs one fsync, not one per request
//! (group commit; `chat-net`'s server commits on a writer thread, one batch in flight).

use std::collections::BTreeMap;

use chat_core::{Event, Stamp};

mod checked;
pub mod export;
pub mod hooked;
pub mod memory;
pub mod sqlite;

pub use export::write_json_atomic;
pub use hooked::HookedStore;
pub use memory::MemoryStore;
pub use sqlite::{sync_dir, SqliteStore};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("storage error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored event could not be decoded.
    #[error("corrupt event in storage: {0}")]
    Corrupt(String),
    /// A file could not be read or written.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// An event given to `append` cannot be stored faithfully (nothing of the batch was written).
    #[error("event cannot be stored: {0}")]
    InvalidEvent(String),
    /// The database was written by a build with a schema this build does not know.
    #[error("database schema version {found} is not supported (this build reads version {supported}); use a matching build or another data directory")]
    UnsupportedSchema {
        /// Version found in the database (`PRAGMA user_version`).
        found: i64,
        /// Version this build reads and writes.
        supported: i64,
    },
}

/// Where events live between restarts.
pub trait Store: Send {
    /// Appends events in one atomic, durable transaction. Events already stored (same
    /// origin and sequence number) are skipped. Returns how many were new.
    fn append(&mut self, events: &[Event]) -> Result<usize, StoreError>;

    /// Every stored event, in the order they were appended.
    fn load_all(&self) -> Result<Vec<Event>, StoreError>;

    /// Events of `origin` with sequence numbers greater than `after_seq`, ascending, at most `limit`.
    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// For each origin, the highest sequence number `n` such that 1..=n are all stored.
    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// Channel posts of `channel` strictly before `before` (all when `None`), newest `limit`
    /// of them, returned oldest first.
    fn channel_history(
        &self,
        channel: &str,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// A named value (e.g. `term`, `lamport`), if set.
    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Sets a named value durably.
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Whether writes go to a disk (worth committing off the caller's thread).
    fn is_durable(&self) -> bool {
        true
    }
}
