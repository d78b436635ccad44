//! The chat domain as a pure, deterministic state machine: the small state a server keeps
//! in memory.
//!
//! A write is checked against the current state ([`ChatState::validate`]) when a server
//! accepts it, and becomes an [`Event`] stamped with a unique id (origin server and that
//! server's sequence number) and a Lamport clock. [`ChatState::apply`] is total: it accepts
//! any well-formed event, from any server, in any order, any number of times, and the
//! resulting state depends only on the *set* of events applied (idempotent and commutative).
//! That is what lets replicas converge whatever the replication path does. History is
//! ordered by (Lamport clock, origin, sequence), the same on every replica.
//!
//! The state is small on purpose: users, channels, what was applied per origin, counters,
//! the digest, and a bounded window of recent request ids. Posts and private messages live
//! in the store (`chat-store`), which keeps the same visibility rule ([`shows`]) and serves
//! history pages ([`history_page`]) through an index; a server recovers this state from the
//! store's [`Summary`] without reading history.
//!
//! Two events with the same client request id are one write accepted twice (a retry that
//! reached another server before the first copy was replicated): only the one with the
//! smallest event id is visible. Deciding that needs the visible event of a request id;
//! the window answers for recent ones, and [`ChatState::apply_with`] asks its caller (the
//! store's index) for older ones, so the rule is exact however old the copy.
//!
//! It works on the plain data of [`crate::model`] and knows nothing of the wire: how events
//! travel and are stored is [`crate::wire`]'s business, requests are [`crate::protocol`]'s.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use crate::error::{ChatError, NameKind};
use crate::model::{Event, EventId, EventKind, HistoryPage, Stamp};
use crate::time::Timestamp;
use crate::validate::{validate_message, validate_name, Limits};

/// Sequence numbers applied from one origin: everything up to `contiguous`, plus `above`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AppliedSeqs {
    contiguous: u64,
    above: BTreeSet<u64>,
}

impl AppliedSeqs {
    /// Everything through `contiguous`, plus the sequence numbers `above` (those at or below
    /// `contiguous` are ignored).
    pub fn from_parts(contiguous: u64, above: impl IntoIterator<Item = u64>) -> Self {
        let mut a = AppliedSeqs {
            contiguous,
            above: BTreeSet::new(),
        };
        for s in above {
            a.insert(s);
        }
        a
    }

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

    /// Applied sequence numbers above [`AppliedSeqs::contiguous`], ascending.
    pub fn above(&self) -> impl Iterator<Item = u64> + '_ {
        self.above.iter().copied()
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

/// Whether an event with id `new` is the visible copy of its request, given the copy that
/// was visible so far (`None`: none, or the event has no request id). When it is and
/// `winner` is some, that copy becomes hidden.
pub fn shows(new: &EventId, winner: Option<&EventId>) -> bool {
    winner.is_none_or(|w| new < w)
}

/// The hash of an event's visible content that the state digest combines (by XOR).
pub fn event_hash(e: &Event) -> u64 {
    content_hash(&e.stamp(), &e.kind, e.timestamp)
}

/// The small state as a store keeps it, to recover a [`ChatState`] without replaying history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Users, each with its number of visible logins.
    pub users: BTreeMap<String, u64>,
    /// Channels, each with its number of visible creations.
    pub channels: BTreeMap<String, u64>,
    /// Sequence numbers applied per origin.
    pub applied: BTreeMap<String, AppliedSeqs>,
    /// Largest Lamport stamp of any event.
    pub max_clock: u64,
    /// Number of distinct events.
    pub events: u64,
    /// Visible channel posts plus private messages.
    pub messages: u64,
    /// XOR of [`event_hash`] over the visible events.
    pub digest: u64,
}

impl Summary {
    /// Accounts for event `e`, whose [`event_hash`] is `hash`, being shown (`show`) or
    /// hidden (`e`'s body may be cleared: only its kind and names are read).
    pub fn count_hashed(&mut self, e: &Event, hash: u64, show: bool) {
        fn bump(map: &mut BTreeMap<String, u64>, key: &str, show: bool) {
            if show {
                *map.entry(key.to_string()).or_default() += 1;
            } else if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        self.digest ^= hash;
        match &e.kind {
            EventKind::UserLoggedIn { user } => bump(&mut self.users, user, show),
            EventKind::ChannelCreated { channel } => bump(&mut self.channels, channel, show),
            EventKind::ChannelMessage { .. } | EventKind::DirectMessage { .. } => {
                if show {
                    self.messages += 1;
                } else {
                    self.messages = self.messages.saturating_sub(1);
                }
            }
        }
    }
}

/// How many request ids the window keeps in memory, by count and by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestWindow {
    /// Most request ids kept.
    pub max_count: usize,
    /// Oldest request id kept, in milliseconds of event time before the newest.
    pub max_age_ms: u64,
}

impl RequestWindow {
    /// No bound: every request id stays (for tests and tools that hold everything anyway).
    pub const UNBOUNDED: RequestWindow = RequestWindow {
        max_count: usize::MAX,
        max_age_ms: u64::MAX,
    };
}

impl Default for RequestWindow {
    /// 100,000 request ids or two minutes, whichever is fewer.
    fn default() -> Self {
        RequestWindow {
            max_count: 100_000,
            max_age_ms: 120_000,
        }
    }
}

/// The replicated chat state a server keeps in memory (see the module docs).
///
/// Two states are equal when their summaries are and their windows hold the same request
/// ids with the same visible events (in whatever order they entered).
#[derive(Debug, Clone, Default)]
pub struct ChatState {
    summary: Summary,
    /// Recent request ids and their visible event.
    requests: BTreeMap<Arc<str>, RequestWinner>,
    /// Request ids in the order they entered `requests`: (serial, event time, id).
    request_order: VecDeque<(u64, i64, Arc<str>)>,
    /// Serial of the next entry of `request_order`.
    serial: u64,
    /// Largest event timestamp applied since this state was built (milliseconds).
    newest_ms: i64,
    /// Events this state made invisible since it was built (copies that lost).
    hides: u64,
}

impl PartialEq for ChatState {
    fn eq(&self, other: &Self) -> bool {
        self.summary == other.summary
            && self.requests.len() == other.requests.len()
            && self.requests.iter().all(|(rid, w)| {
                other
                    .requests
                    .get(rid)
                    .is_some_and(|o| o.event == w.event && o.hash == w.hash)
            })
    }
}

impl Eq for ChatState {}

/// The visible event of a client request id, and what to remove if an earlier copy appears.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestWinner {
    /// The event, its body cleared (what `Summary::count_hashed` needs to hide it).
    event: Event,
    /// Its [`event_hash`].
    hash: u64,
    /// Serial of its entry in `request_order`.
    serial: u64,
}

impl ChatState {
    /// An empty state.
    pub fn new() -> Self {
        ChatState::default()
    }

    /// The state a store's summary describes (its request window empty).
    pub fn from_summary(summary: Summary) -> Self {
        ChatState {
            summary,
            ..ChatState::default()
        }
    }

    /// Checks whether a write may be accepted now; `Ok` means the origin may turn it into an event.
    pub fn validate(&self, kind: &EventKind, limits: &Limits) -> Result<(), ChatError> {
        match kind {
            EventKind::UserLoggedIn { user } => {
                validate_name(NameKind::User, user)?;
                if self.summary.channels.contains_key(user) {
                    return Err(ChatError::AlreadyExists(format!(
                        "`{user}` is a channel; users and channels share topics, choose another name"
                    )));
                }
            }
            EventKind::ChannelCreated { channel } => {
                validate_name(NameKind::Channel, channel)?;
                if self.summary.channels.contains_key(channel) {
                    return Err(ChatError::AlreadyExists(format!(
                        "channel `{channel}` already exists"
                    )));
                }
                if self.summary.users.contains_key(channel) {
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
                if !self.summary.channels.contains_key(channel) {
                    return Err(ChatError::UnknownChannel(channel.clone()));
                }
            }
            EventKind::DirectMessage { src, dst, message } => {
                validate_name(NameKind::User, src)?;
                validate_name(NameKind::User, dst)?;
                validate_message(message, limits)?;
                if !self.summary.users.contains_key(dst) {
                    return Err(ChatError::UnknownUser(dst.clone()));
                }
            }
        }
        Ok(())
    }

    /// Applies an event when every request id it may meet is in the window (an unbounded
    /// window, or a state that holds every event); idempotent and commutative.
    pub fn apply(&mut self, e: &Event) -> ApplyOutcome {
        match self.apply_with(e, |_| Ok::<_, Infallible>(None)) {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        }
    }

    /// Applies an event; idempotent and commutative. When the event's request id is not in
    /// the window, `lookup` gives the visible event of that request id among the events
    /// applied before and no longer in the window (the store's index). Nothing changes if
    /// `lookup` fails.
    pub fn apply_with<E>(
        &mut self,
        e: &Event,
        lookup: impl FnOnce(&str) -> Result<Option<Event>, E>,
    ) -> Result<ApplyOutcome, E> {
        if self.contains(&e.id) {
            return Ok(ApplyOutcome::Duplicate);
        }
        let mut hide = None;
        let hash = event_hash(e);
        if let Some(rid) = &e.request_id {
            let winner = match self.requests.get(rid.as_str()) {
                Some(w) => Some((w.event.clone(), w.hash)),
                None => lookup(rid)?.map(|w| {
                    let h = event_hash(&w);
                    (w, h)
                }),
            };
            if !shows(&e.id, winner.as_ref().map(|(w, _)| &w.id)) {
                self.record(e);
                self.hides += 1;
                return Ok(ApplyOutcome::Applied);
            }
            hide = winner;
            self.remember(rid, e, hash);
        }
        self.record(e);
        if let Some((loser, h)) = hide {
            self.summary.count_hashed(&loser, h, false);
            self.hides += 1;
        }
        self.summary.count_hashed(e, hash, true);
        Ok(ApplyOutcome::Applied)
    }

    /// Counts `e` as applied (visible or not).
    fn record(&mut self, e: &Event) {
        self.summary
            .applied
            .entry(e.id.origin.clone())
            .or_default()
            .insert(e.id.seq);
        self.summary.events += 1;
        self.summary.max_clock = self.summary.max_clock.max(e.clock);
        self.newest_ms = self.newest_ms.max(e.timestamp.millis());
    }

    /// Largest event timestamp applied since this state was built, in milliseconds (the
    /// "now" of the window's age bound: it follows the events, not a clock).
    pub fn newest_timestamp_ms(&self) -> i64 {
        self.newest_ms
    }

    /// Puts `e` in the window as the visible event of `rid`.
    fn remember(&mut self, rid: &str, e: &Event, hash: u64) {
        // Keep what hiding needs, not the message body nor the request id (the key).
        let mut event = e.clone();
        event.request_id = None;
        if let EventKind::ChannelMessage { message, .. }
        | EventKind::DirectMessage { message, .. } = &mut event.kind
        {
            message.clear();
        }
        let serial = self.serial;
        self.serial += 1;
        let rid: Arc<str> = Arc::from(rid);
        self.request_order
            .push_back((serial, e.timestamp.millis(), rid.clone()));
        self.requests.insert(
            rid,
            RequestWinner {
                event,
                hash,
                serial,
            },
        );
    }

    /// The serial the next request id entering the window gets: entries below it were
    /// applied before now.
    pub fn request_mark(&self) -> u64 {
        self.serial
    }

    /// Forgets request ids that entered the window before `mark` (their events are
    /// durable, so the store's index answers for them) while the window holds more than
    /// `window.max_count` ids or their event time is more than `window.max_age_ms` before
    /// `now_ms`. Returns how many were forgotten.
    pub fn trim_requests(&mut self, mark: u64, now_ms: i64, window: RequestWindow) -> usize {
        let mut forgotten = 0;
        let horizon = now_ms.saturating_sub(i64::try_from(window.max_age_ms).unwrap_or(i64::MAX));
        while let Some((serial, at, _)) = self.request_order.front() {
            let over = self.request_order.len() > window.max_count || *at < horizon;
            if *serial >= mark || !over {
                break;
            }
            if let Some((serial, _, rid)) = self.request_order.pop_front() {
                if self.requests.get(&*rid).is_some_and(|w| w.serial == serial) {
                    self.requests.remove(&*rid);
                    forgotten += 1;
                }
            }
        }
        forgotten
    }

    /// Events this state made invisible since it was built: new copies that lost to a
    /// known copy of their request, and known copies that lost to a new one (compared with
    /// what the store counted for the same events, it tells whether the window missed one).
    pub fn hides(&self) -> u64 {
        self.hides
    }

    /// Request ids in the window.
    pub fn window_len(&self) -> usize {
        self.requests.len()
    }

    /// Whether an event was applied.
    pub fn contains(&self, id: &EventId) -> bool {
        self.summary
            .applied
            .get(&id.origin)
            .is_some_and(|a| a.contains(id.seq))
    }

    /// The visible event of a client request id, if it is in the window.
    pub fn event_for_request(&self, request_id: &str) -> Option<&EventId> {
        self.requests.get(request_id).map(|w| &w.event.id)
    }

    /// Sequence numbers applied per origin.
    pub fn applied(&self) -> &BTreeMap<String, AppliedSeqs> {
        &self.summary.applied
    }

    /// Highest `n` such that events 1..=n of `origin` are all applied.
    pub fn applied_through(&self, origin: &str) -> u64 {
        self.summary
            .applied
            .get(origin)
            .map_or(0, AppliedSeqs::contiguous)
    }

    /// Largest Lamport stamp of any applied event.
    pub fn max_clock(&self) -> u64 {
        self.summary.max_clock
    }

    /// Number of distinct events applied.
    pub fn event_count(&self) -> u64 {
        self.summary.events
    }

    /// User names, sorted.
    pub fn users(&self) -> Vec<String> {
        self.summary.users.keys().cloned().collect()
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.summary.users.len()
    }

    /// Whether a user exists.
    pub fn has_user(&self, user: &str) -> bool {
        self.summary.users.contains_key(user)
    }

    /// Channel names, sorted.
    pub fn channels(&self) -> Vec<String> {
        self.summary.channels.keys().cloned().collect()
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.summary.channels.len()
    }

    /// Whether a channel exists.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.summary.channels.contains_key(channel)
    }

    /// Number of visible channel posts plus private messages.
    pub fn message_count(&self) -> u64 {
        self.summary.messages
    }

    /// The small state, as a store keeps it.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// A digest of the replicated content: equal on replicas that applied the same events.
    ///
    /// The XOR of a hash of every visible event (stamp, content, timestamp), kept up to date
    /// by `apply`, so reading it costs nothing whatever the size of the state.
    pub fn digest(&self) -> String {
        format!("{:016x}", self.summary.digest)
    }
}

/// A history page from the items before its cursor, newest first (at most `limit + 1` of
/// them are needed): the `limit` newest, cut earlier if their bodies add up to more than
/// [`HISTORY_PAGE_BYTES`] (at least one item is always returned, so paging always
/// progresses), oldest first, with the cursor of the next page when older items remain.
pub fn history_page(
    newest_first: impl IntoIterator<Item = Event>,
    limit: usize,
    heads: BTreeMap<String, u64>,
) -> HistoryPage {
    let mut budget = PageBudget::new(limit.max(1));
    let mut items = newest_first
        .into_iter()
        .filter_map(|e| e.publication().map(|p| (e.stamp(), p)));
    let mut page: Vec<(Stamp, _)> = items
        .by_ref()
        .take_while(|(_, p)| budget.admit(p.message().len()))
        .collect();
    let more = budget.refused || items.next().is_some();
    page.reverse();
    let next = if more {
        page.first().map(|(s, _)| s.cursor())
    } else {
        None
    };
    HistoryPage {
        items: page.into_iter().map(|(_, p)| p).collect(),
        next,
        heads: Some(heads),
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
    #[test]
    fn a_copy_older_than_the_window_is_decided_by_the_lookup() {
        let copy = |origin: &str, seq: u64, clock: u64| {
            let mut e = ev(origin, seq, clock, post("c", "ana", "hello"));
            e.request_id = Some("r1".into());
            e
        };
        let (a, b) = (copy("a", 1, 7), copy("b", 1, 3));
        // Reference: both copies met in the window.
        let mut both = ChatState::new();
        both.apply(&a);
        both.apply(&b);
        // `a` was applied, made durable and forgotten; `b` arrives later.
        let mut s = ChatState::new();
        s.apply(&a);
        assert_eq!(s.window_len(), 1);
        let mark = s.request_mark();
        let tight = RequestWindow {
            max_count: 0,
            max_age_ms: u64::MAX,
        };
        assert_eq!(s.trim_requests(mark, 0, tight), 1);
        assert_eq!(s.event_for_request("r1"), None);
        let looked = s.apply_with(&b, |rid| {
            assert_eq!(rid, "r1");
            Ok::<_, ()>(Some(a.clone()))
        });
        assert_eq!(looked, Ok(ApplyOutcome::Applied));
        assert_eq!(
            s.digest(),
            both.digest(),
            "b hides a as if both were in the window"
        );
        assert_eq!(s.message_count(), 1);
        // A failing lookup changes nothing.
        let mut t = ChatState::new();
        t.apply(&a);
        t.trim_requests(t.request_mark(), 0, tight);
        let before = t.clone();
        assert_eq!(t.apply_with(&b, |_| Err("disk")), Err("disk"));
        assert_eq!(t, before);
    }

    #[test]
    fn the_window_forgets_only_what_is_marked_and_over_its_bounds() {
        let mut s = ChatState::new();
        let with_rid = |seq: u64, ms: i64| {
            let mut e = ev("a", seq, seq, post("c", "ana", "x"));
            e.timestamp = Timestamp(ms);
            e.request_id = Some(format!("r{seq}"));
            e
        };
        for seq in 1..=10 {
            s.apply(&with_rid(seq, seq as i64 * 1_000));
        }
        let mark = s.request_mark();
        s.apply(&with_rid(11, 11_000)); // not yet durable: after the mark
        let by_count = RequestWindow {
            max_count: 4,
            max_age_ms: u64::MAX,
        };
        // Only the ten before the mark may go; the count bound keeps four in all.
        assert_eq!(s.trim_requests(mark, 11_000, by_count), 7);
        assert_eq!(s.window_len(), 4);
        assert!(s.event_for_request("r7").is_none());
        assert!(s.event_for_request("r8").is_some());
        // By age: ids older than 1.5 s before now go, the unmarked one stays.
        let by_age = RequestWindow {
            max_count: usize::MAX,
            max_age_ms: 1_500,
        };
        assert_eq!(s.trim_requests(mark, 11_000, by_age), 2);
        assert!(s.event_for_request("r9").is_none());
        assert!(s.event_for_request("r10").is_some());
        assert_eq!(s.trim_requests(u64::MAX, 1_000_000, by_age), 2);
        assert_eq!(s.window_len(), 0);
        assert_eq!(s.message_count(), 11, "forgetting ids hides nothing");
    }

    #[test]
    fn a_summary_recovers_the_same_state() {
        let mut s = ChatState::new();
        s.apply(&ev(
            "a",
            1,
            1,
            EventKind::UserLoggedIn { user: "ana".into() },
        ));
        s.apply(&ev(
            "a",
            2,
            2,
            EventKind::ChannelCreated {
                channel: "geral".into(),
            },
        ));
        s.apply(&ev("b", 3, 9, post("geral", "ana", "oi")));
        let back = ChatState::from_summary(s.summary().clone());
        assert_eq!(back.digest(), s.digest());
        assert_eq!(back.users(), ["ana"]);
        assert_eq!(back.channels(), ["geral"]);
        assert_eq!(back.message_count(), 1);
        assert_eq!(back.applied_through("a"), 2);
        assert_eq!(back.applied()["b"].gaps(), [1, 2]);
        assert_eq!(back.max_clock(), 9);
        assert_eq!(back.event_count(), 3);
    }

    #[test]
    fn history_pages_are_cut_by_bytes_and_count() {
        let big = "x".repeat(HISTORY_PAGE_BYTES / 3 + 1);
        let newest_first: Vec<Event> = (1..=7u64)
            .rev()
            .map(|i| ev("a", i, i, post("c", "ana", &big)))
            .collect();
        let page = history_page(newest_first.clone(), 1000, BTreeMap::new());
        assert_eq!(page.items.len(), 2, "two bodies fit the byte budget");
        assert_eq!(page.next.as_deref(), Some("6.6.a"));
        let small: Vec<Event> = (1..=3u64)
            .rev()
            .map(|i| ev("a", i, i, post("c", "ana", "y")))
            .collect();
        let all = history_page(small.clone(), 3, BTreeMap::new());
        assert_eq!((all.items.len(), all.next), (3, None));
        let cut = history_page(small, 2, BTreeMap::new());
        assert_eq!(cut.items.len(), 2);
        assert_eq!(
            cut.next.as_deref(),
            Some("2.2.a"),
            "oldest item of the page"
        );
        assert_eq!(history_page(Vec::new(), 5, BTreeMap::new()).items.len(), 0);
    }

    #[test]
    fn memory_stays_bounded_while_history_grows() {
        // 20,000 posts, committed in batches of 100, with a window of 500 request ids:
        // the window never holds more, and nothing else grows with the posts.
        let mut s = ChatState::new();
        s.apply(&ev(
            "a",
            1,
            1,
            EventKind::ChannelCreated {
                channel: "c".into(),
            },
        ));
        let window = RequestWindow {
            max_count: 500,
            max_age_ms: u64::MAX,
        };
        for batch in 0..200u64 {
            let mark = s.request_mark();
            for i in 0..100u64 {
                let n = batch * 100 + i + 2;
                let mut e = ev("a", n, n, post("c", "ana", "a hundred bytes or so"));
                e.request_id = Some(format!("r{n}"));
                s.apply(&e);
            }
            // The batch before this one is durable now.
            s.trim_requests(mark, 0, window);
            assert!(s.window_len() <= 600, "{}", s.window_len());
        }
        s.trim_requests(s.request_mark(), 0, window);
        assert_eq!(s.window_len(), 500);
        assert_eq!(s.message_count(), 20_000);
        let summary = s.summary();
        assert_eq!(
            (
                summary.users.len(),
                summary.channels.len(),
                summary.applied.len()
            ),
            (0, 1, 1)
        );
        assert_eq!(
            summary.applied["a"].above().count(),
            0,
            "one number per origin"
        );
    }
}
