//! The indexes every store keeps beside its events, maintained by one function for both
//! stores: which copy of a request is visible, history by topic, users and channels, the
//! summary counters, and the gapless prefix per origin.
//!
//! The rule is the domain's ([`chat_core::domain::shows`]): of the events that carry one
//! request id, the one with the smallest event id is visible. Every index depends only on
//! the set of events appended, not on their order, so replicas agree.

use std::collections::{BTreeMap, BTreeSet};

use chat_core::domain::{event_hash, shows};
use chat_core::{Event, EventId, EventKind, HistoryTarget, Stamp};

use crate::{Appended, StoreError};

/// Kind of a counted name: a user (visible logins) or a channel (visible creations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum NameKind {
    User,
    Channel,
}

impl NameKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NameKind::User => "user",
            NameKind::Channel => "channel",
        }
    }
}

/// The summary counters a store keeps (in its metadata, written with every batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub max_clock: u64,
    pub events: u64,
    pub messages: u64,
    pub digest: u64,
}

/// Metadata key of the counters: one row, `max_clock events messages digest` (the digest in
/// hex), read and written once per batch.
pub(crate) const META_SUMMARY: &str = "summary";

impl Counters {
    /// The counters as their metadata value.
    pub(crate) fn to_meta(self) -> String {
        format!(
            "{} {} {} {:016x}",
            self.max_clock, self.events, self.messages, self.digest
        )
    }

    /// Counters from their metadata value (absent: zero).
    pub(crate) fn from_meta(value: Option<&str>) -> Result<Counters, StoreError> {
        let Some(v) = value else {
            return Ok(Counters::default());
        };
        let bad = || StoreError::Corrupt(format!("metadata {META_SUMMARY} is {v:?}"));
        let mut parts = v.split(' ');
        let mut num = || -> Result<u64, StoreError> {
            parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)
        };
        let (max_clock, events, messages) = (num()?, num()?, num()?);
        let digest = parts
            .next()
            .and_then(|p| u64::from_str_radix(p, 16).ok())
            .ok_or_else(bad)?;
        Ok(Counters {
            max_clock,
            events,
            messages,
            digest,
        })
    }
}

/// The history topic of a target, as stored: `#channel` or `@user` (users and channels
/// never share a key, whatever their names).
pub fn topic_key(target: &HistoryTarget) -> String {
    match target {
        HistoryTarget::Channel(c) => format!("#{c}"),
        HistoryTarget::User(u) => format!("@{u}"),
    }
}

/// What one store's transaction offers the index logic.
pub(crate) trait IndexTx {
    /// Whether the event is stored.
    fn contains(&mut self, id: &EventId) -> Result<bool, StoreError>;
    /// Stores an event, visible or not; false (nothing written) if it is stored already.
    fn insert(&mut self, e: &Event, body: &[u8], visible: bool) -> Result<bool, StoreError>;
    /// The visible event of a request id.
    fn winner(&mut self, rid: &str) -> Result<Option<Event>, StoreError>;
    /// Marks a stored event hidden.
    fn set_hidden(&mut self, id: &EventId) -> Result<(), StoreError>;
    /// Adds or removes a history row (`head`: it counts for the topic's heads).
    fn history_row(
        &mut self,
        topic: &str,
        stamp: &Stamp,
        head: bool,
        add: bool,
    ) -> Result<(), StoreError>;
    /// Adds `delta` to a name's count (removing it at zero).
    fn bump_name(&mut self, kind: NameKind, name: &str, delta: i64) -> Result<(), StoreError>;
    /// The counters being updated.
    fn counters(&mut self) -> &mut Counters;
    /// The highest `n` with 1..=n of `origin` stored, as last recorded (`None`: the origin
    /// has no record yet).
    fn through(&mut self, origin: &str) -> Result<Option<u64>, StoreError>;
    /// Records a new gapless prefix for `origin`.
    fn set_through(&mut self, origin: &str, through: u64) -> Result<(), StoreError>;
}

/// Appends a batch through `tx`: each new event stored and indexed, the gapless prefix of
/// each origin advanced.
pub(crate) fn append_indexed(
    tx: &mut impl IndexTx,
    events: &[Event],
    bodies: &[Vec<u8>],
) -> Result<Appended, StoreError> {
    let mut added = 0;
    let mut hidden = 0;
    // Per origin, the sequence numbers this batch added.
    let mut origins: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (e, body) in events.iter().zip(bodies) {
        let winner = match &e.request_id {
            Some(rid) => tx.winner(rid)?,
            None => None,
        };
        // (An event stored already is its own winner: not shown, and not inserted.)
        let show = shows(&e.id, winner.as_ref().map(|w| &w.id));
        if !tx.insert(e, body, show)? {
            continue;
        }
        if !show {
            hidden += 1; // a copy that loses to one stored before
        }
        let c = tx.counters();
        c.events += 1;
        c.max_clock = c.max_clock.max(e.clock);
        if show {
            if let Some(loser) = winner {
                hidden += 1;
                tx.set_hidden(&loser.id)?;
                visibility(tx, &loser, false)?;
            }
            visibility(tx, e, true)?;
        }
        origins.entry(&e.id.origin).or_default().insert(e.id.seq);
        added += 1;
    }
    for (origin, added) in origins {
        let start = tx.through(origin)?;
        let mut through = start.unwrap_or(0);
        // In order, the batch itself says how far the prefix goes; the store is asked
        // only where the batch has no answer (events stored earlier, out of order).
        while added.contains(&(through + 1))
            || tx.contains(&EventId {
                origin: origin.to_string(),
                seq: through + 1,
            })?
        {
            through += 1;
        }
        if start != Some(through) {
            tx.set_through(origin, through)?;
        }
    }
    Ok(Appended { added, hidden })
}

/// Shows or hides an event in the indexes.
fn visibility(tx: &mut impl IndexTx, e: &Event, show: bool) -> Result<(), StoreError> {
    let delta = if show { 1 } else { -1 };
    tx.counters().digest ^= event_hash(e);
    let stamp = e.stamp();
    match &e.kind {
        EventKind::UserLoggedIn { user } => tx.bump_name(NameKind::User, user, delta)?,
        EventKind::ChannelCreated { channel } => tx.bump_name(NameKind::Channel, channel, delta)?,
        EventKind::ChannelMessage { channel, .. } => {
            bump_messages(tx, show);
            let topic = topic_key(&HistoryTarget::Channel(channel.clone()));
            tx.history_row(&topic, &stamp, true, show)?;
        }
        EventKind::DirectMessage { src, dst, .. } => {
            bump_messages(tx, show);
            let to = topic_key(&HistoryTarget::User(dst.clone()));
            tx.history_row(&to, &stamp, true, show)?;
            if src != dst {
                let from = topic_key(&HistoryTarget::User(src.clone()));
                tx.history_row(&from, &stamp, false, show)?;
            }
        }
    }
    Ok(())
}

fn bump_messages(tx: &mut impl IndexTx, show: bool) {
    let c = tx.counters();
    c.messages = if show {
        c.messages + 1
    } else {
        c.messages.saturating_sub(1)
    };
}
