//! [`HookedStore`]: a store that runs a caller's hook before every append, for tests and
//! benchmarks that need a slow or stalled disk in front of a real store.

use std::collections::BTreeMap;

use chat_core::Event;

use crate::{Appended, ReadsThrough, Store, StoreError, StoreRead, VisibleKind};

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

impl ReadsThrough for HookedStore {
    fn read_through<R>(&self, f: impl FnOnce(&dyn StoreRead) -> R) -> R {
        f(&*self.inner)
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
