//! Durable storage of chat events behind the [`Store`] trait.
//!
//! # Layout
//! - [`Store`]: the seam between a server and its disk: append a batch of events atomically
//!   and durably with their indexes, keep a few named values (rank, term); [`StoreRead`]:
//!   what a running server reads (the small state on start, ranges for catch-up, history
//!   pages, request ids older than its memory window), each cheap whatever the history.
//! - `index`: the indexes both stores keep beside the events (visible copy of a request,
//!   history by topic, users and channels, counters, gapless prefix per origin), maintained
//!   by one function.
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

use chat_core::{Event, HistoryTarget, Stamp, Summary};

mod checked;
pub mod export;
pub mod hooked;
mod index;
pub mod memory;
pub mod sqlite;

pub use export::write_json_atomic;
pub use hooked::HookedStore;
pub use index::topic_key;
pub use memory::MemoryStore;
pub use sqlite::{sync_dir, SqliteStore};

/// A page of history rows as a store returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRows {
    /// The visible items before the cursor, newest first.
    pub newest_first: Vec<Event>,
    /// Per origin, the highest sequence number of a visible post on the topic among the
    /// events stored without a gap from that origin (see `chat_core::HistoryPage::heads`).
    pub heads: BTreeMap<String, u64>,
}

/// What one [`Store::append_counting`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Events that were new.
    pub added: usize,
    /// Events the batch made invisible: new copies that lose to a stored copy of their
    /// request, and stored copies that lose to a new one.
    pub hidden: usize,
}

/// Which visible events [`Store::visible_in_order`] walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisibleKind {
    /// Logins.
    Logins,
    /// Private messages.
    Messages,
    /// Channel posts.
    Posts,
}

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

/// Reads of what a store holds: what a running server needs, cheap whatever the history.
pub trait StoreRead {
    /// Events of `origin` with sequence numbers greater than `after_seq`, ascending, at most `limit`.
    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The small state (users, channels, what is held per origin, counters, digest), read
    /// from the indexes without reading history.
    fn summary(&self) -> Result<Summary, StoreError>;

    /// The visible event of a client request id, if one is stored.
    fn request_winner(&self, request_id: &str) -> Result<Option<Event>, StoreError>;

    /// The visible history items of `target` strictly before `before` (all when `None`),
    /// newest first, at most `limit`, with the topic's heads (one consistent snapshot).
    /// A channel's history holds its posts; a user's, the private messages they sent or
    /// received (heads count those received).
    fn history(
        &self,
        target: &HistoryTarget,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<HistoryRows, StoreError>;

    /// The highest sequence number below `below` of a visible item of `origin` published
    /// on `target`'s topic (a channel's posts, or the private messages sent to a user).
    fn last_published(
        &self,
        target: &HistoryTarget,
        origin: &str,
        below: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// A named value (e.g. `term`, `lamport`), if set.
    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError>;
}

/// Where events live between restarts.
pub trait Store: StoreRead + Send {
    /// Appends events in one atomic, durable transaction, with their indexes. Events
    /// already stored (same origin and sequence number) are skipped. Returns how many were new.
    fn append(&mut self, events: &[Event]) -> Result<usize, StoreError> {
        Ok(self.append_counting(events)?.added)
    }

    /// [`Store::append`], also saying how many events the batch made invisible (a server
    /// compares that with what it decided in memory).
    fn append_counting(&mut self, events: &[Event]) -> Result<Appended, StoreError>;

    /// Every stored event, in the order they were appended (for tests and tools: it reads
    /// the whole history into memory).
    fn load_all(&self) -> Result<Vec<Event>, StoreError>;

    /// Calls `f` with each visible event of `kind`, in history order (Lamport clock,
    /// origin, sequence number), streaming: for exports.
    fn visible_in_order(
        &self,
        kind: VisibleKind,
        f: &mut dyn FnMut(Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// For each origin, the highest sequence number `n` such that 1..=n are all stored.
    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// Sets a named value durably.
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Whether writes go to a disk (worth committing off the caller's thread).
    fn is_durable(&self) -> bool {
        true
    }

    /// A reader of the same data on its own connection, when the store has one: reads
    /// then need not wait for a commit in progress (`None`: share this store).
    fn reader(&self) -> Result<Option<Box<dyn StoreRead + Send>>, StoreError> {
        Ok(None)
    }
}

/// Something that holds a store behind a lock, a `RefCell` or a wrapper, and reads like it
/// (one delegation for every such holder instead of one per holder).
pub trait ReadsThrough {
    /// Calls `f` with the store.
    fn read_through<R>(&self, f: impl FnOnce(&dyn StoreRead) -> R) -> R;
}

impl<T: ReadsThrough> StoreRead for T {
    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_through(|s| s.events_after(origin, after_seq, limit))
    }
    fn summary(&self) -> Result<Summary, StoreError> {
        self.read_through(|s| s.summary())
    }
    fn request_winner(&self, request_id: &str) -> Result<Option<Event>, StoreError> {
        self.read_through(|s| s.request_winner(request_id))
    }
    fn history(
        &self,
        target: &HistoryTarget,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<HistoryRows, StoreError> {
        self.read_through(|s| s.history(target, before, limit))
    }
    fn last_published(
        &self,
        target: &HistoryTarget,
        origin: &str,
        below: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.read_through(|s| s.last_published(target, origin, below))
    }
    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read_through(|s| s.get_meta(key))
    }
}

/// A store shared within one thread (tests, simulations) reads like the store itself.
impl<T: StoreRead> ReadsThrough for std::rc::Rc<std::cell::RefCell<T>> {
    fn read_through<R>(&self, f: impl FnOnce(&dyn StoreRead) -> R) -> R {
        f(&*self.borrow())
    }
}
