//! [`MemoryStore`]: the [`Store`] contract kept in memory, for tests and the simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use chat_core::{AppliedSeqs, Event, EventId, EventKind, HistoryTarget, Stamp, Summary};

use crate::checked::encode_batch;
use crate::index::{append_indexed, topic_key, Counters, IndexTx, NameKind};
use crate::{Appended, HistoryRows, Store, StoreError, StoreRead, VisibleKind};

/// A [`Store`] that keeps everything in memory and forgets it when dropped.
///
/// It accepts and refuses exactly the events [`crate::SqliteStore`] does and answers every
/// query the same way; the property tests hold the two to that.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    /// Every event, in append order, and whether it is visible.
    log: Vec<(Event, bool)>,
    /// Origin -> sequence number -> index in `log`.
    by_origin: BTreeMap<String, BTreeMap<u64, usize>>,
    /// Request id -> indexes in `log` of the events that carry it.
    by_request: BTreeMap<String, BTreeSet<usize>>,
    /// Topic key -> history position -> whether it counts for heads.
    history: BTreeMap<String, BTreeMap<Stamp, bool>>,
    /// Visible logins per user, creations per channel.
    names: BTreeMap<(NameKind, String), u64>,
    /// Gapless prefix per origin.
    through: BTreeMap<String, u64>,
    counters: Counters,
    /// Named values.
    meta: BTreeMap<String, String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn event(&self, id: &EventId) -> Option<&(Event, bool)> {
        let i = *self.by_origin.get(&id.origin)?.get(&id.seq)?;
        self.log.get(i)
    }
}

impl IndexTx for MemoryStore {
    fn contains(&mut self, id: &EventId) -> Result<bool, StoreError> {
        Ok(self
            .by_origin
            .get(&id.origin)
            .is_some_and(|s| s.contains_key(&id.seq)))
    }

    fn insert(&mut self, e: &Event, _body: &[u8], visible: bool) -> Result<bool, StoreError> {
        if self.contains(&e.id)? {
            return Ok(false);
        }
        let index = self.log.len();
        self.by_origin
            .entry(e.id.origin.clone())
            .or_default()
            .insert(e.id.seq, index);
        if let Some(rid) = &e.request_id {
            self.by_request
                .entry(rid.clone())
                .or_default()
                .insert(index);
        }
        self.log.push((e.clone(), visible));
        Ok(true)
    }

    fn winner(&mut self, rid: &str) -> Result<Option<Event>, StoreError> {
        self.request_winner(rid)
    }

    fn set_hidden(&mut self, id: &EventId) -> Result<(), StoreError> {
        if let Some(&i) = self.by_origin.get(&id.origin).and_then(|s| s.get(&id.seq)) {
            if let Some(entry) = self.log.get_mut(i) {
                entry.1 = false;
            }
        }
        Ok(())
    }

    fn history_row(
        &mut self,
        topic: &str,
        stamp: &Stamp,
        head: bool,
        add: bool,
    ) -> Result<(), StoreError> {
        if add {
            self.history
                .entry(topic.to_string())
                .or_default()
                .insert(stamp.clone(), head);
        } else if let Some(rows) = self.history.get_mut(topic) {
            rows.remove(stamp);
            if rows.is_empty() {
                self.history.remove(topic);
            }
        }
        Ok(())
    }

    fn bump_name(&mut self, kind: NameKind, name: &str, delta: i64) -> Result<(), StoreError> {
        let key = (kind, name.to_string());
        let n = self.names.get(&key).copied().unwrap_or(0);
        let n = n.saturating_add_signed(delta);
        if n == 0 {
            self.names.remove(&key);
        } else {
            self.names.insert(key, n);
        }
        Ok(())
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }

    fn through(&mut self, origin: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.through.get(origin).copied())
    }

    fn set_through(&mut self, origin: &str, through: u64) -> Result<(), StoreError> {
        self.through.insert(origin.to_string(), through);
        Ok(())
    }
}

impl StoreRead for MemoryStore {
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
            .map(|(_, &i)| self.log[i].0.clone())
            .collect())
    }

    fn summary(&self) -> Result<Summary, StoreError> {
        let names = |kind: NameKind| -> BTreeMap<String, u64> {
            self.names
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, n), c)| (n.clone(), *c))
                .collect()
        };
        let applied = self
            .by_origin
            .iter()
            .map(|(origin, seqs)| {
                let through = self.through.get(origin).copied().unwrap_or(0);
                let above = seqs
                    .range((Bound::Excluded(through), Bound::Unbounded))
                    .map(|(s, _)| *s);
                (origin.clone(), AppliedSeqs::from_parts(through, above))
            })
            .collect();
        Ok(Summary {
            users: names(NameKind::User),
            channels: names(NameKind::Channel),
            applied,
            max_clock: self.counters.max_clock,
            events: self.counters.events,
            messages: self.counters.messages,
            digest: self.counters.digest,
        })
    }

    fn request_winner(&self, request_id: &str) -> Result<Option<Event>, StoreError> {
        Ok(self
            .by_request
            .get(request_id)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.log.get(i))
            .find(|(_, visible)| *visible)
            .map(|(e, _)| e.clone()))
    }

    fn history(
        &self,
        target: &HistoryTarget,
        before: Option<&Stamp>,
        limit: usize,
    ) -> Result<HistoryRows, StoreError> {
        let Some(rows) = self.history.get(&topic_key(target)) else {
            return Ok(HistoryRows::default());
        };
        let upper = match before {
            Some(b) => Bound::Excluded(b),
            None => Bound::Unbounded,
        };
        let newest_first = rows
            .range::<Stamp, _>((Bound::Unbounded, upper))
            .rev()
            .take(limit)
            .filter_map(|(s, _)| {
                self.event(&EventId {
                    origin: s.origin.clone(),
                    seq: s.seq,
                })
            })
            .map(|(e, _)| e.clone())
            .collect();
        let mut heads = BTreeMap::new();
        for (stamp, head) in rows {
            let through = self.through.get(&stamp.origin).copied().unwrap_or(0);
            if *head && stamp.seq <= through {
                let h = heads.entry(stamp.origin.clone()).or_insert(0);
                *h = (*h).max(stamp.seq);
            }
        }
        Ok(HistoryRows {
            newest_first,
            heads,
        })
    }

    fn last_published(
        &self,
        target: &HistoryTarget,
        origin: &str,
        below: u64,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self.history.get(&topic_key(target)).and_then(|rows| {
            rows.iter()
                .filter(|(s, head)| **head && s.origin == origin && s.seq < below)
                .map(|(s, _)| s.seq)
                .max()
        }))
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.meta.get(key).cloned())
    }
}

impl Store for MemoryStore {
    fn is_durable(&self) -> bool {
        false
    }

    fn append_counting(&mut self, events: &[Event]) -> Result<Appended, StoreError> {
        let bodies = encode_batch(events)?;
        append_indexed(self, events, &bodies)
    }

    fn load_all(&self) -> Result<Vec<Event>, StoreError> {
        Ok(self.log.iter().map(|(e, _)| e.clone()).collect())
    }

    fn visible_in_order(
        &self,
        kind: VisibleKind,
        f: &mut dyn FnMut(Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut events: Vec<&Event> = self
            .log
            .iter()
            .filter(|(e, visible)| *visible && kind_of(e) == Some(kind))
            .map(|(e, _)| e)
            .collect();
        events.sort_by_key(|e| e.stamp());
        for e in events {
            f(e.clone())?;
        }
        Ok(())
    }

    fn applied(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .by_origin
            .keys()
            .map(|o| (o.clone(), self.through.get(o).copied().unwrap_or(0)))
            .collect())
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

/// Which [`VisibleKind`] an event is, if any.
pub(crate) fn kind_of(e: &Event) -> Option<VisibleKind> {
    match e.kind {
        EventKind::UserLoggedIn { .. } => Some(VisibleKind::Logins),
        EventKind::DirectMessage { .. } => Some(VisibleKind::Messages),
        EventKind::ChannelMessage { .. } => Some(VisibleKind::Posts),
        EventKind::ChannelCreated { .. } => None,
    }
}
