//! The chat domain as a pure, deterministic state machine.
//!
//! A write is checked against the current state ([`ChatState::validate`]) when a server
//! accepts it, and becomes an [`Event`] stamped with a unique id (origin server and that
//! server's sequence number) and a Lamport clock. [`ChatState::apply`] is total: it accepts
//! any well-formed event, from any server, in any order, any number of times, and the
//! resulting state depends only on the *set* of events applied (idempotent and commutative).
//! That is what lets replicas converge whatever the replication path does. History is
//! ordered by (Lamport clock, origin, sequence), the same on every replica.
//!
//! It works on the plain data of [`crate::model`] and knows nothing of the wire: how events
//! travel and are stored is [`crate::wire`]'s business, requests are [`crate::protocol`]'s.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{ChatError, NameKind};
use crate::model::{
    ChannelPost, DirectPost, Event, EventId, EventKind, HistoryPage, HistoryTarget, Publication,
    Stamp,
};
use crate::time::Timestamp;
use crate::validate::{validate_message, validate_name, Limits};

/// Sequence numbers applied from one origin: everything up to `contiguous`, plus `above`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AppliedSeqs {
    contiguous: u64,
    above: BTreeSet<u64>,
}

impl AppliedSeqs {
    /// Whether `seq` was applied.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.contiguous || self.above.contains(&seq)
    }

    /// Marks `seq` applied; returns false if it already was.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }

    /// Highest `n` such that 1..=n are all applied.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// Highest sequence number applied.
    pub fn max(&self) -> u64 {
        self.above.last().copied().unwrap_or(self.contiguous)
    }

    /// Sequence numbers missing below the highest applied one.
    pub fn gaps(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut next = self.contiguous + 1;
        for &s in &self.above {
            out.extend(next..s);
            next = s + 1;
        }
        out
    }
}

/// What `apply` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The event was new and is now part of the state.
    Applied,
    /// The event had been applied before; nothing changed.
    Duplicate,
}

/// The replicated chat state: users, channels, posts and private messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatState {
    users: BTreeMap<String, BTreeMap<Stamp, Timestamp>>,
    channels: BTreeMap<String, BTreeSet<Stamp>>,
    posts: BTreeMap<String, BTreeMap<Stamp, ChannelPost>>,
    directs: BTreeMap<Stamp, DirectPost>,
    direct_index: BTreeMap<String, BTreeSet<Stamp>>,
    applied: BTreeMap<String, AppliedSeqs>,
    /// Per channel, per origin, the sequence numbers of its visible posts there.
    channel_seqs: BTreeMap<String, BTreeMap<String, BTreeSet<u64>>>,
    /// Per recipient, per origin, the sequence numbers of the visible private messages to
    /// them (what is published on the recipient's topic).
    inbox_seqs: BTreeMap<String, BTreeMap<String, BTreeSet<u64>>>,
    requests: BTreeMap<String, RequestWinner>,
    max_clock: u64,
    events: u64,
    digest_acc: u64,
}

/// The visible event of a client request id, and what to remove if an earlier copy appears.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestWinner {
    id: EventId,
    stamp: Stamp,
    kind: EventKind,
    hash: u64,
}

impl ChatState {
    /// An empty state.
    pub fn new() -> Self {
        ChatState::default()
    }

    /// Checks whether a write may be accepted now; `Ok` means the origin may turn it into an event.
    pub fn validate(&self, kind: &EventKind, limits: &Limits) -> Result<(), ChatError> {
        match kind {
            EventKind::UserLoggedIn { user } => {
                validate_name(NameKind::User, user)?;
                if self.channels.contains_key(user) {
                    return Err(ChatError::AlreadyExists(format!(
                        "`{user}` is a channel; users and channels share topics, choose another name"
                    )));
                }
            }
            EventKind::ChannelCreated { channel } => {
                validate_name(NameKind::Channel, channel)?;
                if self.channels.contains_key(channel) {
                    return Err(ChatError::AlreadyExists(format!(
                        "channel `{channel}` already exists"
                    )));
                }
                if self.users.contains_key(channel) {
                    return Err(ChatError::AlreadyExists(format!(
                        "`{channel}` is a user; users and channels share topics, choose another name"
                    )));
                }
            }
            EventKind::ChannelMessage {
                channel,
                user,
                message,
            } => {
                validate_name(NameKind::User, user)?;
                validate_name(NameKind::Channel, channel)?;
                validate_message(message, limits)?;
                if !self.channels.contains_key(channel) {
                    return Err(ChatError::UnknownChannel(channel.clone()));
                }
            }
            EventKind::DirectMessage { src, dst, message } => {
                validate_name(NameKind::User, src)?;
                validate_name(NameKind::User, dst)?;
                validate_message(message, limits)?;
                if !self.users.contains_key(dst) {
                    return Err(ChatError::UnknownUser(dst.clone()));
                }
            }
        }
        Ok(())
    }

    /// Applies an event; idempotent and commutative.
    ///
    /// Events that carry the same client request id are one write accepted twice (a retry
    /// that reached another server before the first copy was replicated): all of them are
    /// recorded as applied, but only the one with the smallest event id is visible in
    /// users, channels and history. Which one that is does not depend on arrival order.
    pub fn apply(&mut self, e: &Event) -> ApplyOutcome {
        if !self
            .applied
            .entry(e.id.origin.clone())
            .or_default()
            .insert(e.id.seq)
        {
            return ApplyOutcome::Duplicate;
        }
        self.events += 1;
        self.max_clock = self.max_clock.max(e.clock);
        let stamp = e.stamp();
        let hash = content_hash(&stamp, &e.kind, e.timestamp);
        if let Some(rid) = &e.request_id {
            match self.requests.get(rid) {
                Some(winner) if winner.id < e.id => return ApplyOutcome::Applied,
                Some(winner) => {
                    let loser = winner.clone();
                    self.hide(&loser.stamp, &loser.kind);
                    self.digest_acc ^= loser.hash;
                }
                None => {}
            }
            // Keep what `hide` needs, not the message body.
            let mut kind = e.kind.clone();
            if let EventKind::ChannelMessage { message, .. }
            | EventKind::DirectMessage { message, .. } = &mut kind
            {
                message.clear();
            }
            self.requests.insert(
                rid.clone(),
                RequestWinner {
                    id: e.id.clone(),
                    stamp: stamp.clone(),
                    kind,
                    hash,
                },
            );
        }
        self.digest_acc ^= hash;
        match &e.kind {
            EventKind::UserLoggedIn { user } => {
                self.users
                    .entry(user.clone())
                    .or_default()
                    .insert(stamp, e.timestamp);
            }
            EventKind::ChannelCreated { channel } => {
                self.channels
                    .entry(channel.clone())
                    .or_default()
                    .insert(stamp);
            }
            EventKind::ChannelMessage { channel, .. } => {
                if let Some(Publication::Channel(post)) = e.publication() {
                    add_seq(&mut self.channel_seqs, channel, &e.id);
                    self.posts
                        .entry(channel.clone())
                        .or_default()
                        .insert(stamp, post);
                }
            }
            EventKind::DirectMessage { src, dst, .. } => {
                if let Some(Publication::Direct(post)) = e.publication() {
                    add_seq(&mut self.inbox_seqs, dst, &e.id);
                    self.direct_index
                        .entry(src.clone())
                        .or_default()
                        .insert(stamp.clone());
                    self.direct_index
                        .entry(dst.clone())
                        .or_default()
                        .insert(stamp.clone());
                    self.directs.insert(stamp, post);
                }
            }
        }
        ApplyOutcome::Applied
    }

    /// Removes a visible event's content (it lost to an earlier copy of the same request).
    fn hide(&mut self, stamp: &Stamp, kind: &EventKind) {
        match kind {
            EventKind::ChannelMessage { channel, .. } => {
                remove_seq(&mut self.channel_seqs, channel, &stamp.origin, stamp.seq);
            }
            EventKind::DirectMessage { dst, .. } => {
                remove_seq(&mut self.inbox_seqs, dst, &stamp.origin, stamp.seq);
            }
            _ => {}
        }
        fn remove_empty<K: Ord + Clone, V>(
            map: &mut BTreeMap<K, V>,
            key: &K,
            empty: impl Fn(&V) -> bool,
        ) {
            if map.get(key).is_some_and(empty) {
                map.remove(key);
            }
        }
        match kind {
            EventKind::UserLoggedIn { user } => {
                if let Some(logins) = self.users.get_mut(user) {
                    logins.remove(stamp);
                }
                remove_empty(&mut self.users, user, BTreeMap::is_empty);
            }
            EventKind::ChannelCreated { channel } => {
                if let Some(creations) = self.channels.get_mut(channel) {
                    creations.remove(stamp);
                }
                remove_empty(&mut self.channels, channel, BTreeSet::is_empty);
            }
            EventKind::ChannelMessage { channel, .. } => {
                if let Some(log) = self.posts.get_mut(channel) {
                    log.remove(stamp);
                }
                remove_empty(&mut self.posts, channel, BTreeMap::is_empty);
            }
            EventKind::DirectMessage { src, dst, .. } => {
                self.directs.remove(stamp);
                for u in [src, dst] {
                    if let Some(index) = self.direct_index.get_mut(u) {
                        index.remove(stamp);
                    }
                    remove_empty(&mut self.direct_index, u, BTreeSet::is_empty);
                }
            }
        }
    }

    /// Whether an event was applied.
    pub fn contains(&self, id: &EventId) -> bool {
        self.applied
            .get(&id.origin)
            .is_some_and(|a| a.contains(id.seq))
    }

    /// The event that a client request id produced, if any.
    pub fn event_for_request(&self, request_id: &str) -> Option<&EventId> {
        self.requests.get(request_id).map(|w| &w.id)
    }

    /// Sequence numbers applied per origin.
    pub fn applied(&self) -> &BTreeMap<String, AppliedSeqs> {
        &self.applied
    }

    /// Highest `n` such that events 1..=n of `origin` are all applied.
    pub fn applied_through(&self, origin: &str) -> u64 {
        self.applied.get(origin).map_or(0, AppliedSeqs::contiguous)
    }

    /// Largest Lamport stamp of any applied event.
    pub fn max_clock(&self) -> u64 {
        self.max_clock
    }

    /// Number of distinct events applied.
    pub fn event_count(&self) -> u64 {
        self.events
    }

    /// User names, sorted.
    pub fn users(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Whether a user exists.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Login times of a user, in event order.
    pub fn logins(&self, user: &str) -> Vec<Timestamp> {
        self.users
            .get(user)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default()
    }

    /// Channel names, sorted.
    pub fn channels(&self) -> Vec<String> {
        self.channels.keys().cloned().collect()
    }

    /// Whether a channel exists.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Number of channel posts plus private messages.
    pub fn message_count(&self) -> u64 {
        let posts: usize = self.posts.values().map(BTreeMap::len).sum();
        (posts + self.directs.len()) as u64
    }

    /// All channel posts, in history order per channel (channels sorted).
    pub fn all_posts(&self) -> impl Iterator<Item = &ChannelPost> {
        self.posts.values().flat_map(BTreeMap::values)
    }

    /// All private messages, in history order.
    pub fn all_directs(&self) -> impl Iterator<Item = &DirectPost> {
        self.directs.values()
    }

    /// A page of history, oldest first: the `limit` newest items strictly before `before`,
    /// cut earlier if their bodies add up to more than [`HISTORY_PAGE_BYTES`] (at least one
    /// item is always returned, so paging always progresses).
    pub fn history(
        &self,
        target: &HistoryTarget,
        before: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, ChatError> {
        let before = before.map(Stamp::parse_cursor).transpose()?;
        let limit = limit.max(1);
        let (mut items, more): (Vec<(Stamp, Publication)>, bool) = match target {
            HistoryTarget::Channel(c) => {
                let Some(log) = self.posts.get(c) else {
                    if self.channels.contains_key(c) {
                        return Ok(HistoryPage {
                            heads: Some(BTreeMap::new()),
                            ..HistoryPage::default()
                        });
                    }
                    return Err(ChatError::UnknownChannel(c.clone()));
                };
                let it = match &before {
                    Some(b) => {
                        Box::new(log.range(..b.clone()).rev()) as Box<dyn Iterator<Item = _>>
                    }
                    None => Box::new(log.iter().rev()),
                };
                newest_first(it.map(|(s, p)| (s, Publication::Channel(p.clone()))), limit)
            }
            HistoryTarget::User(u) => {
                let Some(index) = self.direct_index.get(u) else {
                    if self.users.contains_key(u) {
                        return Ok(HistoryPage {
                            heads: Some(BTreeMap::new()),
                            ..HistoryPage::default()
                        });
                    }
                    return Err(ChatError::UnknownUser(u.clone()));
                };
                let it = match &before {
                    Some(b) => {
                        Box::new(index.range(..b.clone()).rev()) as Box<dyn Iterator<Item = _>>
                    }
                    None => Box::new(index.iter().rev()),
                };
                let it = it.filter_map(|s| {
                    self.directs
                        .get(s)
                        .map(|p| (s, Publication::Direct(p.clone())))
                });
                newest_first(it, limit)
            }
        };
        items.reverse();
        let next = if more {
            items.first().map(|(s, _)| s.cursor())
        } else {
            None
        };
        Ok(HistoryPage {
            items: items.into_iter().map(|(_, p)| p).collect(),
            next,
            heads: Some(self.heads(target)),
        })
    }

    /// Per origin, the highest sequence number of a visible post published on `target`'s
    /// topic (a channel's posts; for a user, the private messages sent to them), counting
    /// only the events held without a gap from that origin (sequence numbers up to
    /// [`ChatState::applied_through`]): every visible post of that origin on the topic up to
    /// that number is here. A copy hidden because it lost to an earlier copy of the same
    /// request does not count. Origins with no such post are absent.
    ///
    /// Sequence numbers of one origin grow with the time it accepted the writes, so a
    /// subscriber can tell from these what of an origin it has not seen yet, whatever the
    /// Lamport clocks of different origins (see `chat_node::delivery`).
    pub fn heads(&self, target: &HistoryTarget) -> BTreeMap<String, u64> {
        let seqs = match target {
            HistoryTarget::Channel(c) => self.channel_seqs.get(c),
            HistoryTarget::User(u) => self.inbox_seqs.get(u),
        };
        let mut out = BTreeMap::new();
        for (origin, set) in seqs.into_iter().flatten() {
            let through = self.applied_through(origin);
            if let Some(&seq) = set.range(..=through).next_back() {
                out.insert(origin.clone(), seq);
            }
        }
        out
    }

    /// A digest of the replicated content: equal on replicas that applied the same events.
    ///
    /// The XOR of a hash of every visible event (stamp, content, timestamp), kept up to date
    /// by `apply`, so reading it costs nothing whatever the size of the state.
    pub fn digest(&self) -> String {
        format!("{:016x}", self.digest_acc)
    }
}

/// Records that `id` is a visible post on `topic`.
fn add_seq(map: &mut BTreeMap<String, BTreeMap<String, BTreeSet<u64>>>, topic: &str, id: &EventId) {
    map.entry(topic.to_string())
        .or_default()
        .entry(id.origin.clone())
        .or_default()
        .insert(id.seq);
}

/// Forgets that `origin/seq` is a visible post on `topic` (it was hidden).
fn remove_seq(
    map: &mut BTreeMap<String, BTreeMap<String, BTreeSet<u64>>>,
    topic: &str,
    origin: &str,
    seq: u64,
) {
    let Some(origins) = map.get_mut(topic) else {
        return;
    };
    if let Some(set) = origins.get_mut(origin) {
        set.remove(&seq);
        if set.is_empty() {
            origins.remove(origin);
        }
    }
    if origins.is_empty() {
        map.remove(topic);
    }
}

/// Hash of one event's visible content, combined by XOR into the state digest.
fn content_hash(stamp: &Stamp, kind: &EventKind, timestamp: Timestamp) -> u64 {
    let mut h = Fnv64::new();
    h.stamp(stamp);
    h.u64(timestamp.millis() as u64);
    h.str(kind.operation());
    match kind {
        EventKind::UserLoggedIn { user } => h.str(user),
        EventKind::ChannelCreated { channel } => h.str(channel),
        EventKind::ChannelMessage {
            channel,
            user,
            message,
        } => {
            h.str(channel);
            h.str(user);
            h.str(message);
        }
        EventKind::DirectMessage { src, dst, message } => {
            h.str(src);
            h.str(dst);
            h.str(message);
        }
    }
    // Spread the bits (FNV's low bits are weak for XOR combination).
    let mut x = h.0;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// Takes history items, newest first, while they fit a page; returns them and whether
/// older items remain.
fn newest_first<'a>(
    mut items: impl Iterator<Item = (&'a Stamp, Publication)>,
    limit: usize,
) -> (Vec<(Stamp, Publication)>, bool) {
    let mut budget = PageBudget::new(limit);
    let page: Vec<_> = items
        .by_ref()
        .take_while(|(_, p)| budget.admit(p.message().len()))
        .map(|(s, p)| (s.clone(), p))
        .collect();
    (page, budget.refused || items.next().is_some())
}

/// Most message bytes in one history page, so a reply stays well under the 1 MiB frame limit.
pub const HISTORY_PAGE_BYTES: usize = 512 * 1024;

/// Counts items and bytes admitted to a history page.
struct PageBudget {
    items: usize,
    bytes: usize,
    limit: usize,
    /// An item was refused (so there is more history before this page).
    refused: bool,
}

impl PageBudget {
    fn new(limit: usize) -> Self {
        PageBudget {
            items: 0,
            bytes: 0,
            limit,
            refused: false,
        }
    }

    /// Whether one more item of `len` body bytes fits (the first always does).
    fn admit(&mut self, len: usize) -> bool {
        let fits =
            self.items == 0 || (self.items < self.limit && self.bytes + len <= HISTORY_PAGE_BYTES);
        if fits {
            self.items += 1;
            self.bytes += len;
        } else {
            self.refused = true;
        }
        fits
    }
}

/// FNV-1a, 64 bits: a small, stable, dependency-free hash for state digests.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
    fn stamp(&mut self, s: &Stamp) {
        self.u64(s.clock);
        self.str(&s.origin);
        self.u64(s.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn ev(origin: &str, seq: u64, clock: u64, kind: EventKind) -> Event {
        Event {
            id: EventId {
                origin: origin.into(),
                seq,
            },
            clock,
            timestamp: Timestamp(1_000 * clock as i64),
            request_id: None,
            kind,
        }
    }

    fn post(channel: &str, user: &str, message: &str) -> EventKind {
        EventKind::ChannelMessage {
            channel: channel.into(),
            user: user.into(),
            message: message.into(),
        }
    }

    #[test]
    fn validation_follows_state() {
        let mut s = ChatState::new();
        let l = Limits::default();
        let publish = post("geral", "ana", "oi");
        assert_eq!(
            s.validate(&publish, &l).unwrap_err().code(),
            ErrorCode::UnknownChannel
        );
        s.apply(&ev(
            "a",
            1,
            1,
            EventKind::ChannelCreated {
                channel: "geral".into(),
            },
        ));
        assert_eq!(s.validate(&publish, &l), Ok(()));
        let again = EventKind::ChannelCreated {
            channel: "geral".into(),
        };
        assert_eq!(
            s.validate(&again, &l).unwrap_err().code(),
            ErrorCode::AlreadyExists
        );
        let user_as_channel = EventKind::UserLoggedIn {
            user: "geral".into(),
        };
        assert_eq!(
            s.validate(&user_as_channel, &l).unwrap_err().code(),
            ErrorCode::AlreadyExists
        );
        let dm = EventKind::DirectMessage {
            src: "ana".into(),
            dst: "bia".into(),
            message: "x".into(),
        };
        assert_eq!(
            s.validate(&dm, &l).unwrap_err().code(),
            ErrorCode::UnknownUser
        );
    }

    #[test]
    fn apply_is_idempotent() {
        let mut s = ChatState::new();
        let e = ev("a", 1, 1, EventKind::UserLoggedIn { user: "ana".into() });
        assert_eq!(s.apply(&e), ApplyOutcome::Applied);
        let snapshot = s.clone();
        assert_eq!(s.apply(&e), ApplyOutcome::Duplicate);
        assert_eq!(s, snapshot);
    }

    #[test]
    fn copies_of_one_request_show_once_whatever_the_order() {
        let copy = |origin: &str, clock: u64, kind: EventKind| {
            let mut e = ev(origin, 1, clock, kind);
            e.request_id = Some("r1".into());
            e
        };
        let kinds = [
            post("c", "ana", "hello"),
            EventKind::UserLoggedIn { user: "ana".into() },
            EventKind::ChannelCreated {
                channel: "c".into(),
            },
            EventKind::DirectMessage {
                src: "ana".into(),
                dst: "bia".into(),
                message: "x".into(),
            },
        ];
        for kind in kinds {
            let a = copy("a", 7, kind.clone());
            let b = copy("b", 3, kind.clone());
            let mut one = ChatState::new();
            one.apply(&a);
            one.apply(&b);
            let mut two = ChatState::new();
            two.apply(&b);
            two.apply(&a);
            assert_eq!(one, two, "{kind:?}");
            assert_eq!(one.digest(), two.digest());
            assert_eq!(
                one.event_for_request("r1").map(|id| id.origin.as_str()),
                Some("a")
            );
            assert_eq!(one.event_count(), 2);
            let mut single = ChatState::new();
            single.apply(&a);
            assert_eq!(one.digest(), single.digest(), "only the winner is visible");
        }
    }

    #[test]
    fn post_before_channel_creation_is_kept() {
        let mut s = ChatState::new();
        s.apply(&ev("b", 1, 5, post("geral", "ana", "early")));
        s.apply(&ev(
            "a",
            1,
            1,
            EventKind::ChannelCreated {
                channel: "geral".into(),
            },
        ));
        let page = s
            .history(&HistoryTarget::Channel("geral".into()), None, 10)
            .unwrap();
        assert_eq!(page.items.len(), 1);
    }

    #[test]
    fn history_pages_backwards_in_stamp_order() {
        let mut s = ChatState::new();
        s.apply(&ev(
            "a",
            1,
            1,
            EventKind::ChannelCreated {
                channel: "c".into(),
            },
        ));
        // Same clock on two origins: ordered by origin.
        for (i, origin) in [(2, "b"), (2, "a"), (3, "a"), (4, "c"), (5, "a")] {
            let seq = s.applied_through(origin) + 1;
            s.apply(&ev(
                origin,
                seq,
                i,
                post("c", origin, &format!("{i}{origin}")),
            ));
        }
        let target = HistoryTarget::Channel("c".into());
        let p1 = s.history(&target, None, 2).unwrap();
        let bodies: Vec<_> = p1
            .items
            .iter()
            .map(|p| match p {
                Publication::Channel(c) => c.message.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(bodies, ["4c", "5a"]);
        let p2 = s.history(&target, p1.next.as_deref(), 2).unwrap();
        let bodies: Vec<_> = p2
            .items
            .iter()
            .map(|p| match p {
                Publication::Channel(c) => c.message.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(bodies, ["2b", "3a"]);
        let p3 = s.history(&target, p2.next.as_deref(), 2).unwrap();
        assert_eq!(p3.items.len(), 1);
        assert_eq!(p3.next, None);
        assert!(s.history(&target, Some("garbage"), 2).is_err());
    }

    #[test]
    fn history_pages_are_cut_by_bytes_and_still_page_through() {
        let mut s = ChatState::new();
        s.apply(&ev(
            "a",
            1,
            1,
            EventKind::ChannelCreated {
                channel: "c".into(),
            },
        ));
        let big = "x".repeat(HISTORY_PAGE_BYTES / 3 + 1);
        for i in 0..7u64 {
            s.apply(&ev("a", i + 2, i + 2, post("c", "ana", &big)));
        }
        let target = HistoryTarget::Channel("c".into());
        let (mut seen, mut before, mut pages) = (0, None, 0);
        loop {
            let page = s.history(&target, before.as_deref(), 1000).unwrap();
            assert!(!page.items.is_empty() && page.items.len() <= 2);
            seen += page.items.len();
            pages += 1;
            match page.next {
                Some(n) => before = Some(n),
                None => break,
            }
            assert!(pages < 10);
        }
        assert_eq!(seen, 7);
    }

    #[test]
    fn direct_history_includes_sent_and_received() {
        let mut s = ChatState::new();
        let dm = |src: &str, dst: &str| EventKind::DirectMessage {
            src: src.into(),
            dst: dst.into(),
            message: format!("{src}->{dst}"),
        };
        s.apply(&ev("a", 1, 1, dm("ana", "bia")));
        s.apply(&ev("a", 2, 2, dm("bia", "ana")));
        s.apply(&ev("a", 3, 3, dm("bia", "caio")));
        let ana = s
            .history(&HistoryTarget::User("ana".into()), None, 10)
            .unwrap();
        assert_eq!(ana.items.len(), 2);
        let caio = s
            .history(&HistoryTarget::User("caio".into()), None, 10)
            .unwrap();
        assert_eq!(caio.items.len(), 1);
    }

    #[test]
    fn heads_follow_visible_posts_per_origin_and_topic() {
        let mut s = ChatState::new();
        let geral = HistoryTarget::Channel("geral".into());
        let bia = HistoryTarget::User("bia".into());
        let with_rid = |mut e: Event, rid: &str| {
            e.request_id = Some(rid.into());
            e
        };
        // A low Lamport clock does not matter: heads are per origin, by sequence number.
        s.apply(&ev("a", 1, 50, post("geral", "ana", "a1")));
        s.apply(&ev("a", 2, 51, post("tech", "ana", "a2")));
        s.apply(&ev("b", 1, 3, post("geral", "ana", "b1")));
        s.apply(&ev(
            "b",
            2,
            4,
            EventKind::DirectMessage {
                src: "ana".into(),
                dst: "bia".into(),
                message: "oi".into(),
            },
        ));
        let heads = |s: &ChatState, t: &HistoryTarget| s.heads(t).into_iter().collect::<Vec<_>>();
        assert_eq!(heads(&s, &geral), [("a".into(), 1), ("b".into(), 1)]);
        assert_eq!(heads(&s, &bia), [("b".into(), 2)]);
        assert!(s.heads(&HistoryTarget::User("ana".into())).is_empty());
        let page = s.history(&geral, None, 1).unwrap();
        assert_eq!(page.heads, Some(s.heads(&geral)), "every page carries them");
        // Only what is held without a gap counts: a/4 arrives before a/3.
        s.apply(&ev("a", 4, 60, post("geral", "ana", "a4")));
        assert_eq!(s.heads(&geral).get("a"), Some(&1));
        s.apply(&ev("a", 3, 59, post("random", "ana", "a3")));
        assert_eq!(s.heads(&geral).get("a"), Some(&4));
        // A copy that loses to an earlier copy of its request is hidden: the head goes back.
        s.apply(&with_rid(
            ev("c", 1, 70, post("geral", "ana", "twice")),
            "r",
        ));
        assert_eq!(s.heads(&geral).get("c"), Some(&1));
        s.apply(&with_rid(ev("b", 3, 5, post("geral", "ana", "twice")), "r"));
        assert_eq!(s.heads(&geral).get("c"), None);
        assert_eq!(s.heads(&geral).get("b"), Some(&3));
        // An empty channel has empty heads, not none.
        s.apply(&ev(
            "a",
            5,
            61,
            EventKind::ChannelCreated {
                channel: "vazio".into(),
            },
        ));
        let empty = s
            .history(&HistoryTarget::Channel("vazio".into()), None, 10)
            .unwrap();
        assert_eq!(empty.heads, Some(BTreeMap::new()));
    }

    #[test]
    fn applied_seqs_track_gaps() {
        let mut a = AppliedSeqs::default();
        assert!(a.insert(1));
        assert!(a.insert(3));
        assert!(a.insert(5));
        assert!(!a.insert(3));
        assert_eq!(a.contiguous(), 1);
        assert_eq!(a.gaps(), vec![2, 4]);
        assert!(a.insert(2));
        assert_eq!(a.contiguous(), 3);
        assert_eq!(a.max(), 5);
    }
}
