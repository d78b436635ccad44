//! [`HookedStore`]: a store that runs a caller's hook before every append, for tests and
//! benchmarks that need a slow or stalled disk in front of a real store.

use std::collections::BTreeMap;

use chat_core::{Event, Stamp};

use crate::{Store, StoreError};

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

impl Store for HookedStore {
    fn append(&mut self, events: &[Event]) -> Result<usize, StoreError> {
        (self.hook)(events);
        self.inner.append(events)
    }
    fn load_all(&self) -> Result<Vec<Event>, StoreError> {
        self.inner.load_all()
    }
    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events_after(origin, after_seq, limit)
    }
    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.inner.applied()
    }
    fn channel_history(
        &self,
        channel: &str,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.channel_history(channel, before, limit)
    }
    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.get_meta(key)
    }
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_meta(key, value)
    }
    fn is_durable(&self) -> bool {
        true
    }
}
