//! [`MemoryStore`]: the [`Store`] contract kept in memory, for tests.

use std::collections::BTreeMap;
use std::ops::Bound;

use chat_core::{Event, EventKind, Stamp};

use crate::checked::encode_batch;
use crate::{Store, StoreError};

/// A [`Store`] that keeps everything in memory and forgets it when dropped.
///
/// It accepts and refuses exactly the events [`crate::SqliteStore`] does and answers every
/// query the same way; the property tests hold the two to that.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    /// Every event, in append order.
    log: Vec<Event>,
    /// Origin -> sequence number -> index in `log`.
    by_origin: BTreeMap<String, BTreeMap<u64, usize>>,
    /// Channel -> history position -> index in `log`, for channel posts only.
    by_channel: BTreeMap<String, BTreeMap<Stamp, usize>>,
    /// Named values.
    meta: BTreeMap<String, String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn is_durable(&self) -> bool {
        false
    }

    fn append(&mut self, events: &[Event]) -> Result<usize, StoreError> {
        encode_batch(events)?;
        let mut added = 0;
        for e in events {
            let seqs = self.by_origin.entry(e.id.origin.clone()).or_default();
            if seqs.contains_key(&e.id.seq) {
                continue;
            }
            let index = self.log.len();
            seqs.insert(e.id.seq, index);
            if let EventKind::ChannelMessage { channel, .. } = &e.kind {
                self.by_channel
                    .entry(channel.clone())
                    .or_default()
                    .insert(e.stamp(), index);
            }
            self.log.push(e.clone());
            added += 1;
        }
        Ok(added)
    }

    fn load_all(&self) -> Result<Vec<Event>, StoreError> {
        Ok(self.log.clone())
    }

    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let Some(seqs) = self.by_origin.get(origin) else {
            return Ok(Vec::new());
        };
        Ok(seqs
            .range((Bound::Excluded(after_seq), Bound::Unbounded))
            .take(limit)
            .map(|(_, &i)| self.log[i].clone())
            .collect())
    }

    /// Also lists origins whose event 1 is missing, with 0.
    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .by_origin
            .iter()
            .map(|(origin, seqs)| {
                let mut through = 0;
                for &seq in seqs.keys() {
                    if seq != through + 1 {
                        break;
                    }
                    through = seq;
                }
                (origin.clone(), through)
            })
            .collect())
    }

    fn channel_history(
        &self,
        channel: &str,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let Some(posts) = self.by_channel.get(channel) else {
            return Ok(Vec::new());
        };
        let upper = match before {
            Some(b) => Bound::Excluded(b),
            None => Bound::Unbounded,
        };
        let mut page: Vec<Event> = posts
            .range::<Stamp, _>((Bound::Unbounded, upper))
            .rev()
            .take(limit)
            .map(|(_, &i)| self.log[i].clone())
            .collect();
        page.reverse();
        Ok(page)
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.meta.get(key).cloned())
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.insert(key.to_string(), value.to_string());
        Ok(())
    }
}
