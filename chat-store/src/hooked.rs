//! [`HookedStore`]: a store that runs a caller's hook before every append, for tests and
//! benchmarks that need a slow or stalled disk in front of a real store.

use std::collections::BTreeMap;

use chat_core::{Event, HistoryTarget, Stamp, Summary};

use crate::{Appended, HistoryRows, Store, StoreError, StoreRead, VisibleKind};

/// What runs before each batch is appended (it may block, sleep, or record the batch).
pub type AppendHook = Box<dyn FnMut(&[Event]) + Send>;

/// `inner`, with `hook` run before every [`Store::append`]. It counts as a disk
/// ([`Store::is_durable`]), so a server commits it off its loop like one.
pub struct HookedStore {
    inner: Box<dyn Store>,
    hook: AppendHook,
}

impl HookedStore {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Store>, hook: AppendHook) -> Self {
        HookedStore { inner, hook }
    }
}

impl StoreRead for HookedStore {
    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events_after(origin, after_seq, limit)
    }
    fn summary(&self) -> Result<Summary, StoreError> {
        self.inner.summary()
    }
    fn request_winner(&self, request_id: &str) -> Result<Option<Event>, StoreError> {
        self.inner.request_winner(request_id)
    }
    fn history(
        &self,
        target: &HistoryTarget,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<HistoryRows, StoreError> {
        self.inner.history(target, before, limit)
    }
    fn last_published(
        &self,
        target: &HistoryTarget,
        origin: &str,
        below: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.last_published(target, origin, below)
    }
    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.get_meta(key)
    }
}

impl Store for HookedStore {
    fn append_counting(&mut self, events: &[Event]) -> Result<Appended, StoreError> {
        (self.hook)(events);
        self.inner.append_counting(events)
    }
    fn load_all(&self) -> Result<Vec<Event>, StoreError> {
        self.inner.load_all()
    }
    fn visible_in_order(
        &self,
        kind: VisibleKind,
        f: &mut dyn FnMut(Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.visible_in_order(kind, f)
    }
    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.inner.applied()
    }
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_meta(key, value)
    }
    fn is_durable(&self) -> bool {
        true
    }
    fn reader(&self) -> Result<Option<Box<dyn StoreRead + Send>>, StoreError> {
        self.inner.reader()
    }
}
