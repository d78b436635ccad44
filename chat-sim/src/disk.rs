//! A simulated disk with a volatile write cache.
//!
//! What a batch commit made durable (it "returned": fsync done) sits in `synced`; the batch
//! being written sits apart, in `writing`, until its commit completes. A process crash
//! (`kill -9`) may or may not leave the batch in flight behind (SQLite wrote it to the OS
//! page cache, or not; the transaction is all or nothing); a power loss always drops it.
//! Everything the server reads back comes from `synced` only.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use chat_core::EventId;
use chat_node::server::{Batch, Recovered};
use chat_store::{MemoryStore, ReadsThrough, Store, StoreError};

/// One server's disk.
#[derive(Debug, Default)]
pub struct SimDisk {
    synced: MemoryStore,
    /// Request id → the stored events that carry it (to check acknowledgements quickly).
    rids: BTreeMap<String, BTreeSet<EventId>>,
    events: usize,
    writing: Option<Batch>,
}

/// A disk shared by the world and the server core's reader.
pub type SharedDisk = Rc<RefCell<SimDisk>>;

impl SimDisk {
    /// Starts writing `batch` (one at a time).
    pub fn start(&mut self, batch: Batch) {
        debug_assert!(self.writing.is_none(), "one batch at a time");
        self.writing = Some(batch);
    }

    /// The batch in flight is durable; returns its epoch and how many events it made
    /// invisible.
    pub fn complete(&mut self) -> Option<(u64, usize)> {
        let batch = self.writing.take()?;
        let hidden = self.persist(&batch);
        Some((batch.epoch, hidden))
    }

    fn persist(&mut self, batch: &Batch) -> usize {
        let mut hidden = 0;
        // The memory store cannot fail on well-formed events; a failure would be a bug in
        // the core (an event that cannot be stored), which the checkers then report.
        if let Ok(a) = self.synced.append_counting(&batch.events) {
            let n = a.added;
            hidden = a.hidden;
            self.events += n;
            for e in &batch.events {
                if let Some(rid) = &e.request_id {
                    self.rids
                        .entry(rid.clone())
                        .or_default()
                        .insert(e.id.clone());
                }
            }
        }
        for (k, v) in &batch.meta {
            let _ = self.synced.set_meta(k, v);
        }
        hidden
    }

    /// The process died: the batch in flight survives if `kept` (it reached the OS).
    pub fn crash(&mut self, kept: bool) {
        if let Some(batch) = self.writing.take() {
            if kept {
                let _ = self.persist(&batch);
            }
        }
    }

    /// Whether a batch is being written.
    pub fn busy(&self) -> bool {
        self.writing.is_some()
    }

    /// Whether a durable event answers request `rid`.
    pub fn holds_request(&self, rid: &str) -> bool {
        self.rids.contains_key(rid)
    }

    /// Request ids with more than one durable event (a request accepted twice).
    pub fn twice_accepted(&self) -> usize {
        self.rids.values().filter(|ids| ids.len() > 1).count()
    }

    /// What a restarting server recovers.
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        Recovered::from_store(&self.synced)
    }

    /// Durable events.
    pub fn events(&self) -> usize {
        self.events
    }

    /// The durable store (for the final checks).
    pub fn store(&self) -> &MemoryStore {
        &self.synced
    }
}

/// The core's view of its disk.
pub struct DiskReader(pub SharedDisk);

impl ReadsThrough for DiskReader {
    fn read_through<R>(&self, f: impl FnOnce(&dyn chat_store::StoreRead) -> R) -> R {
        f(&self.0.borrow().synced)
    }
}
