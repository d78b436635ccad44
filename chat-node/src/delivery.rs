//! Live delivery for a subscriber, with no IO: [`Delivery`] makes what a client receives on
//! its subscribed topics exactly once and gap-free, from the moment each topic's baseline
//! read answered ([`Delivery::baselined_at`]).
//!
//! Pub/sub loses what is in flight (a proxy restart, a subscriber that reconnects, a server
//! that dies between its commit and its publication) and a write accepted twice (a retry
//! that reached a second server before the first copy was replicated) may be published
//! twice. Publications carry what a subscriber needs to fix both (`docs/replication.md`,
//! "Live delivery"): the event id `origin/seq`, the write's request id `rid`, and `prev`, the
//! sequence number of the previous publication of the same origin on the same topic;
//! `history` replies carry `heads`, per origin the highest sequence number of a visible
//! post on the topic that the answering server holds without a gap from that origin.
//!
//! Everything is reckoned **per origin, by sequence number**: an origin numbers its events
//! in the order it accepts them, so within one origin sequence order is the order of
//! acceptance, whatever the Lamport clocks of other origins (a server cut off from the
//! others keeps a low clock, so clocks do not order commits across servers). Per subscribed
//! topic and per origin the core keeps `covered`: every post of that origin on the topic
//! with a sequence number up to it was delivered, or is older than the subscription.
//!
//! - **Baseline**: on subscription the first history page is read and never delivered; its
//!   `heads` are the first `covered` (what the answering server held is the past). From the
//!   moment it answered, a write whose request is sent later is accepted with a higher
//!   sequence number than its origin's head there, so it is delivered, once.
//! - **Repeats** are dropped by event id and by request id (a window of the newest
//!   [`DeliveryConfig::window`] deliveries per topic).
//! - **Gaps**: a live publication whose `prev` is above its origin's `covered` reveals a
//!   loss; it is kept as a *hole* (`prev` is missing, the publication itself is not).
//!   `covered` moves up along the chain: a publication whose `prev` is covered covers it.
//! - **Tails**: a history reply whose `heads` show an origin above its `covered` reveals
//!   what nothing live revealed (a lost tail, a post lost before anything followed it).
//! - **Repairs** read `history` newest first ([`Delivery::poll_fetch`]) and page back until,
//!   for every origin wanted, an item of that origin at or below its `covered` (or the end
//!   of history); every item above its origin's `covered` not delivered yet is delivered
//!   ([`Delivery::handle_history`]). Then `covered` rises to the smallest head the pages
//!   showed for that origin (every visible post of it up to there was on the pages).
//!   Triggers: a hole (after [`DeliveryConfig::gap_delay`]), a reconnection of the SUB
//!   socket ([`Delivery::handle_reconnect`]), and a periodic check every
//!   [`DeliveryConfig::check_interval`], which costs one small read when nothing is missing.
//!
//! A server that sends no `heads` (an older one) still works, degraded: the baseline's
//! heads are taken from its items, an origin first heard of after the baseline starts where
//! it is first heard of, and a check sees a lost tail only within its first page.
//!
//! Inputs are `handle_*` calls with the time passed in; outputs come from `poll_*`. One
//! history read is in flight at a time: the driver sends the [`Fetch`] that
//! [`Delivery::poll_fetch`] returns, answers it with [`Delivery::handle_history`] (the
//! page, or the error code, [`ErrorCode::Timeout`] when nobody answered), and asks for the
//! next fetch only then. After every input it drains [`Delivery::poll_delivery`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chat_core::{
    ErrorCode, EventId, HistoryPage, HistoryTarget, Publication, TOPIC_REPLICATION, TOPIC_SERVERS,
};

/// How often each topic's history heads are read for losses nothing else revealed.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// Deliveries remembered per topic to drop repeats.
pub const DEFAULT_WINDOW: usize = 10_000;
/// Items asked per history page (after the first page of a read).
pub const DEFAULT_PAGE_LIMIT: u32 = 500;
/// Most pages one read goes back.
pub const DEFAULT_MAX_PAGES: u32 = 40;
/// Items asked in the first page of a repair (something is known to be missing: it is
/// usually among the newest items; a busy topic pages on with
/// [`DeliveryConfig::page_limit`]).
pub const FIRST_PAGE_LIMIT: u32 = 64;
/// Items asked in a baseline, and in the first page of a check with nothing known to be
/// missing (its `heads` tell whether anything is).
pub const CHECK_PAGE_LIMIT: u32 = 16;
/// Most holes waiting for their repair per origin and topic (the oldest is given up beyond).
pub const MAX_WANTED: usize = 64;
/// Most origins tracked per topic (the one heard of longest ago is forgotten beyond).
pub const MAX_ORIGINS: usize = 1024;
/// How soon a failed history read is tried again.
const FETCH_RETRY: Duration = Duration::from_millis(500);

/// How [`Delivery`] is tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Repair from history; false: drop repeats only (no history reads at all).
    pub repair: bool,
    /// How often each topic's history heads are read for lost tails.
    pub check_interval: Duration,
    /// Wait between a noticed gap and the history read (gaps noticed together merge).
    pub gap_delay: Duration,
    /// Wait after the SUB socket reconnected before reading history.
    pub reconnect_delay: Duration,
    /// First wait before a loss history did not show yet is looked for again (doubles).
    pub gap_retry: Duration,
    /// How many reads look for a loss before it is given up (counted `unresolved`).
    pub gap_attempts: u32,
    /// Items asked per history page.
    pub page_limit: u32,
    /// Most pages one read goes back (counted `truncated` when reached).
    pub max_pages: u32,
    /// Deliveries remembered per topic (event ids and request ids).
    pub window: usize,
    /// How long a history read may take before it is abandoned and tried again.
    pub fetch_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            repair: true,
            check_interval: DEFAULT_CHECK_INTERVAL,
            gap_delay: Duration::from_millis(20),
            reconnect_delay: Duration::from_millis(300),
            gap_retry: Duration::from_millis(250),
            gap_attempts: 6,
            page_limit: DEFAULT_PAGE_LIMIT,
            max_pages: DEFAULT_MAX_PAGES,
            window: DEFAULT_WINDOW,
            fetch_timeout: Duration::from_secs(15),
        }
    }
}

impl DeliveryConfig {
    /// Drop repeats only: no history reads at all (a subscriber without a broker to ask).
    pub fn dedup_only() -> Self {
        DeliveryConfig {
            repair: false,
            ..DeliveryConfig::default()
        }
    }
}

/// A `history` read the driver should send (through the broker) and answer with
/// [`Delivery::handle_history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Id to answer with.
    pub id: u64,
    /// The subscribed topic it is for.
    pub topic: String,
    /// What to ask for: the channel, or the user's private messages.
    pub target: HistoryTarget,
    /// Only items before this cursor (`None`: the newest page).
    pub before: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// What [`Delivery`] did, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Publications handed to the application (live and repaired).
    pub delivered: u64,
    /// Of those, found in history (lost live, or not yet arrived when a read found them).
    pub repaired: u64,
    /// Publications dropped because the same event was already delivered.
    pub duplicates: u64,
    /// Publications dropped because another copy of the same request (another event id,
    /// same `rid`) was already delivered.
    pub losers: u64,
    /// Gaps noticed from `prev` (a live publication whose predecessor was not delivered).
    pub gaps: u64,
    /// Origins whose head in a history reply was above what was delivered of them (a lost
    /// tail, or a post still in flight).
    pub tails: u64,
    /// Losses given up after [`DeliveryConfig::gap_attempts`] reads did not show them (a
    /// copy that lost to an earlier copy of its request is never shown), or forgotten
    /// beyond [`MAX_WANTED`].
    pub unresolved: u64,
    /// History reads started (baselines included; a read may have several pages).
    pub checks: u64,
    /// Baselines read (one per subscription, once history answered).
    pub baselines: u64,
    /// History pages asked.
    pub pages: u64,
    /// History reads that failed or timed out (each is tried again).
    pub fetch_failures: u64,
    /// Reads that stopped at [`DeliveryConfig::max_pages`].
    pub truncated: u64,
    /// Reconnections of the SUB socket reported by the driver.
    pub reconnects: u64,
    /// The longest time from noticing a loss to delivering what filled it.
    pub slowest_gap_repair: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unknown,
    Channel,
    User,
}

/// The newest deliveries of a topic, in the order they were delivered, with their request
/// ids.
#[derive(Debug, Default)]
struct Window {
    order: VecDeque<EventId>,
    ids: HashSet<EventId>,
    rids: HashMap<String, u32>,
    rid_of: HashMap<EventId, String>,
}

impl Window {
    fn contains(&self, id: &EventId) -> bool {
        self.ids.contains(id)
    }

    fn has_rid(&self, rid: &str) -> bool {
        self.rids.contains_key(rid)
    }

    fn insert(&mut self, id: EventId, rid: Option<&str>) {
        if !self.ids.insert(id.clone()) {
            return;
        }
        if let Some(r) = rid {
            *self.rids.entry(r.to_string()).or_default() += 1;
            self.rid_of.insert(id.clone(), r.to_string());
        }
        self.order.push_back(id);
    }

    /// Forgets the oldest delivery; returns it.
    fn evict(&mut self) -> Option<EventId> {
        let id = self.order.pop_front()?;
        self.ids.remove(&id);
        if let Some(r) = self.rid_of.remove(&id) {
            if let Some(n) = self.rids.get_mut(&r) {
                *n -= 1;
                if *n == 0 {
                    self.rids.remove(&r);
                }
            }
        }
        Some(id)
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// A loss being looked for: since when, which reads count for it, how many did.
#[derive(Debug, Clone, Copy)]
struct Want {
    since: Instant,
    /// Reads numbered above this one count as attempts.
    after: u64,
    attempts: u32,
}

/// What is known of one origin on one topic.
#[derive(Debug, Default)]
struct Origin {
    /// Every post of this origin on the topic up to this sequence number was delivered, or
    /// is older than the subscription (or was forgotten by the window).
    covered: u64,
    /// Holes: live publications above `covered` whose predecessor is not covered, as
    /// `prev -> seq` (`prev` is missing; the origin is known contiguous from `prev` to
    /// `seq` on the topic).
    holes: BTreeMap<u64, u64>,
    /// A history reply showed this origin's head on the topic here, above `covered`.
    tail: u64,
    want: Option<Want>,
    /// When it was last heard of (a counter of the topic), to forget the oldest origin.
    heard: u64,
}

impl Origin {
    fn wanted(&self) -> bool {
        !self.holes.is_empty() || self.tail > self.covered
    }

    /// Raises `covered` to `seq` and follows the holes it fills.
    fn cover(&mut self, seq: u64) {
        self.covered = self.covered.max(seq);
        while let Some((&prev, &seq)) = self.holes.first_key_value() {
            if prev > self.covered {
                break;
            }
            self.holes.pop_first();
            self.covered = self.covered.max(seq);
        }
        if self.tail <= self.covered {
            self.tail = 0;
        }
    }

    /// Records that `prev` is missing and that the origin is contiguous from `prev` to
    /// `seq`; returns whether that is a new hole (not the chain going on from one), and the
    /// number of holes given up to stay within [`MAX_WANTED`].
    fn add_hole(&mut self, prev: u64, seq: u64) -> (bool, u64) {
        let (mut start, mut end) = (prev, seq);
        // A hole whose publication was `prev`: the chain goes on from it.
        let goes_on = self
            .holes
            .iter()
            .find_map(|(&k, &v)| (v == prev).then_some(k));
        if let Some(k) = goes_on {
            self.holes.remove(&k);
            start = k;
        }
        // A hole whose missing event is `seq` (arrived out of order): it is here now.
        if let Some(v) = self.holes.remove(&seq) {
            end = end.max(v);
        }
        let e = self.holes.entry(start).or_insert(end);
        *e = (*e).max(end);
        let mut dropped = 0;
        while self.holes.len() > MAX_WANTED {
            self.holes.pop_first();
            dropped += 1;
        }
        (goes_on.is_none(), dropped)
    }
}

#[derive(Debug)]
struct Topic {
    kind: Kind,
    /// The baseline was read (or there is no history to read).
    baselined: bool,
    /// When the baseline read answered.
    baselined_at: Option<Instant>,
    /// The baseline came with `heads` (a server that sends them): an origin unknown then
    /// had no post on the topic.
    exact: bool,
    window: Window,
    origins: BTreeMap<String, Origin>,
    heard: u64,
    /// When the next read is due.
    due: Option<Instant>,
    next_check: Instant,
    /// Reads started on this topic.
    checks: u64,
}

impl Topic {
    fn new(now: Instant, cfg: &DeliveryConfig) -> Topic {
        Topic {
            kind: Kind::Unknown,
            baselined: !cfg.repair,
            baselined_at: None,
            exact: false,
            window: Window::default(),
            origins: BTreeMap::new(),
            heard: 0,
            due: cfg.repair.then_some(now),
            next_check: now + cfg.check_interval,
            checks: 0,
        }
    }

    fn learn_kind(&mut self, p: &Publication) {
        if self.kind == Kind::Unknown {
            self.kind = match p {
                Publication::Channel(_) => Kind::Channel,
                Publication::Direct(_) => Kind::User,
            };
        }
    }

    /// A read at `at` at the latest.
    fn schedule(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// The state of `origin`, created if new (the origin heard of longest ago is forgotten
    /// beyond [`MAX_ORIGINS`]).
    fn origin(&mut self, origin: &str) -> &mut Origin {
        self.heard += 1;
        if !self.origins.contains_key(origin) && self.origins.len() >= MAX_ORIGINS {
            let oldest = self
                .origins
                .iter()
                .min_by_key(|(_, o)| o.heard)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.origins.remove(&k);
            }
        }
        let heard = self.heard;
        let o = self.origins.entry(origin.to_string()).or_default();
        o.heard = heard;
        o
    }

    /// Remembers a delivery; a delivery the window forgets counts as covered.
    fn remember(&mut self, id: EventId, rid: Option<&str>, cap: usize) {
        self.window.insert(id, rid);
        while self.window.len() > cap.max(1) {
            if let Some(old) = self.window.evict() {
                if let Some(o) = self.origins.get_mut(&old.origin) {
                    o.cover(old.seq);
                }
            }
        }
    }
}

/// A history read in progress (one page asked at a time).
#[derive(Debug)]
struct Sweep {
    /// Id of the page asked (or about to be).
    id: u64,
    topic: String,
    /// The topic's read number.
    number: u64,
    baseline: bool,
    /// What is asked: a channel's history or a user's.
    probe: Kind,
    /// Origins to read back for, down to an item at or below this sequence number.
    pending: BTreeMap<String, u64>,
    /// Per origin, the smallest head the pages showed (`None` before the first page).
    heads: Option<BTreeMap<String, u64>>,
    /// Items asked in the first page.
    first_limit: u32,
    pages: u32,
    before: Option<String>,
    /// When the page was handed to the driver (`None`: not yet).
    sent: Option<Instant>,
}

/// Exactly-once, gap-free live delivery for one subscriber. See the module documentation.
#[derive(Debug)]
pub struct Delivery {
    cfg: DeliveryConfig,
    topics: BTreeMap<String, Topic>,
    sweep: Option<Sweep>,
    next_id: u64,
    out: VecDeque<Publication>,
    stats: DeliveryStats,
}

impl Delivery {
    /// A core with no subscriptions.
    pub fn new(cfg: DeliveryConfig) -> Delivery {
        Delivery {
            cfg,
            topics: BTreeMap::new(),
            sweep: None,
            next_id: 0,
            out: VecDeque::new(),
            stats: DeliveryStats::default(),
        }
    }

    // ----- getters ------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &DeliveryConfig {
        &self.cfg
    }

    /// What it did so far.
    pub fn stats(&self) -> DeliveryStats {
        self.stats
    }

    /// Whether `topic` is tracked.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// When `topic`'s baseline read answered: every write whose request is sent after it is
    /// delivered exactly once (`None`: not yet, not subscribed, or no repair configured).
    pub fn baselined_at(&self, topic: &str) -> Option<Instant> {
        self.topics.get(topic).and_then(|t| t.baselined_at)
    }

    /// Request ids and event ids remembered for `topic` (bounded by the window).
    pub fn remembered(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |t| t.window.len())
    }

    /// Whether every subscribed topic has its baseline and no loss waits for a repair.
    pub fn is_settled(&self) -> bool {
        self.topics
            .values()
            .all(|t| t.baselined && t.origins.values().all(|o| !o.wanted()))
    }

    // ----- application commands -----------------------------------------------------

    /// Starts tracking `topic` (a channel or a user name); its first history page is the
    /// baseline. Internal topics (`servers`, `replication`) are not tracked.
    pub fn subscribe(&mut self, now: Instant, topic: &str) {
        if topic == TOPIC_SERVERS || topic == TOPIC_REPLICATION {
            return;
        }
        if !self.topics.contains_key(topic) {
            self.topics
                .insert(topic.to_string(), Topic::new(now, &self.cfg));
        }
    }

    /// Stops tracking `topic` and forgets what it knew (a later subscription starts over).
    pub fn unsubscribe(&mut self, topic: &str) {
        self.topics.remove(topic);
        if self.sweep.as_ref().is_some_and(|s| s.topic == topic) {
            // Its answer, if it still comes, is ignored (unknown id).
            self.sweep = None;
        }
    }

    // ----- inputs -------------------------------------------------------------------

    /// A live publication received on `topic` (already checked to be exactly that topic).
    pub fn handle_publication(&mut self, now: Instant, topic: &str, p: Publication) {
        let Some(t) = self.topics.get_mut(topic) else {
            self.stats.delivered += 1;
            self.out.push_back(p);
            return;
        };
        t.learn_kind(&p);
        let Some(id) = p.event_id() else {
            // No event id (a seed server): nothing to compare; deliver as it comes.
            self.stats.delivered += 1;
            self.out.push_back(p);
            return;
        };
        if t.window.contains(&id) {
            self.stats.duplicates += 1;
            return;
        }
        let (repair, baselined, exact) = (self.cfg.repair, t.baselined, t.exact);
        let known = t.origins.contains_key(&id.origin);
        let checks = t.checks;
        let o = t.origin(&id.origin);
        match p.prev() {
            Some(prev) if prev > o.covered => {
                if !repair {
                    // A gap, with nothing to repair it with.
                    self.stats.gaps += 1;
                    o.cover(id.seq);
                } else if baselined && !exact && !known {
                    // An origin first heard of after a baseline without heads: its past
                    // cannot be told from a loss; it starts here.
                    o.cover(id.seq);
                } else {
                    let (new, dropped) = o.add_hole(prev, id.seq);
                    self.stats.unresolved += dropped;
                    if baselined {
                        // Before the baseline the hole may be the past: counted then.
                        self.stats.gaps += u64::from(new);
                        o.want.get_or_insert(Want {
                            since: now,
                            after: checks,
                            attempts: 0,
                        });
                        t.schedule(now + self.cfg.gap_delay);
                    }
                }
            }
            // The chain goes on (or an older server that does not send `prev`).
            _ => {
                o.cover(id.seq);
                settle(o, now, &mut self.stats);
            }
        }
        let repeat = p.rid().is_some_and(|r| t.window.has_rid(r));
        t.remember(id, p.rid(), self.cfg.window);
        if repeat {
            self.stats.losers += 1;
            return;
        }
        self.stats.delivered += 1;
        self.out.push_back(p);
    }

    /// The SUB socket lost its connection to the proxy and has it again: what was
    /// published meanwhile was lost; every topic gets a check soon.
    pub fn handle_reconnect(&mut self, now: Instant) {
        self.stats.reconnects += 1;
        if !self.cfg.repair {
            return;
        }
        let delay = self.cfg.reconnect_delay;
        for t in self.topics.values_mut().filter(|t| t.baselined) {
            t.schedule(now + delay);
        }
    }

    /// The answer to [`Fetch`] `id`: a history page, or why there is none
    /// ([`ErrorCode::Timeout`] when no server answered).
    pub fn handle_history(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<HistoryPage, ErrorCode>,
    ) {
        let Some(mut s) = self.sweep.take_if(|s| s.id == id && s.sent.is_some()) else {
            return; // late answer of an abandoned read
        };
        let Some(t) = self.topics.get_mut(&s.topic) else {
            return;
        };
        let page = match result {
            Ok(page) => {
                if t.kind == Kind::Unknown {
                    // It answered: the channel (or user) exists.
                    t.kind = s.probe;
                }
                page
            }
            Err(ErrorCode::UnknownChannel)
                if t.kind == Kind::Unknown && s.probe == Kind::Channel =>
            {
                // Not a channel: perhaps a user (the two share the topic namespace).
                s.probe = Kind::User;
                self.next_id += 1;
                s.id = self.next_id;
                s.sent = None;
                self.sweep = Some(s);
                return;
            }
            Err(ErrorCode::UnknownChannel | ErrorCode::UnknownUser) => {
                // No such channel or user (yet, on that server): nothing posted there.
                HistoryPage {
                    heads: Some(BTreeMap::new()),
                    ..HistoryPage::default()
                }
            }
            Err(_) => {
                self.stats.fetch_failures += 1;
                t.schedule(now + FETCH_RETRY);
                return;
            }
        };
        s.pages += 1;
        let topic = s.topic.clone();
        // A user's history also holds what the user sent: only what arrives on the user's
        // topic counts.
        let items: Vec<(EventId, Publication)> = page
            .items
            .into_iter()
            .filter(|p| p.topic() == topic)
            .filter_map(|p| p.event_id().map(|id| (id, p)))
            .collect();
        let exact = page.heads.is_some();
        let heads = page.heads.unwrap_or_else(|| {
            // An older server: the heads of what the page shows.
            let mut h = BTreeMap::new();
            for (id, _) in &items {
                let e = h.entry(id.origin.clone()).or_insert(0);
                *e = id.seq.max(*e);
            }
            h
        });
        let first = s.heads.is_none();
        match s.heads.as_mut() {
            None => s.heads = Some(heads.clone()),
            // Pages may come from different servers: only what every page's server held
            // without a gap is sure to have been on the pages.
            Some(h) if exact => {
                for (origin, v) in h.iter_mut() {
                    *v = (*v).min(heads.get(origin).copied().unwrap_or(0));
                }
            }
            Some(_) => {}
        }
        if s.baseline {
            for (origin, &h) in &heads {
                t.origin(origin).cover(h);
            }
            t.exact = exact;
            t.baselined = true;
            t.baselined_at = Some(now);
            t.next_check = now + self.cfg.check_interval;
            self.stats.baselines += 1;
            // Holes noticed before the baseline that it did not cover: losses after all.
            let checks = t.checks;
            for o in t.origins.values_mut() {
                settle(o, now, &mut self.stats);
                if !o.holes.is_empty() {
                    self.stats.gaps += o.holes.len() as u64;
                    // Looked for by the next read (see `finish`).
                    o.want = Some(Want {
                        since: now,
                        after: checks,
                        attempts: 0,
                    });
                }
            }
            self.finish(now, s, true);
            return;
        }
        if first {
            // What a server holds above what was delivered: a lost tail (or in flight).
            for (origin, &h) in &heads {
                let known = t.origins.contains_key(origin);
                if !exact && !known {
                    continue; // an older server: an unknown origin starts on this page
                }
                let before = s.number.saturating_sub(1);
                let o = t.origin(origin);
                if h > o.covered && h > o.tail {
                    if o.tail <= o.covered {
                        self.stats.tails += 1;
                    }
                    o.tail = h;
                    let w = o.want.get_or_insert(Want {
                        since: now,
                        after: before,
                        attempts: 0,
                    });
                    w.after = w.after.min(before);
                    let bound = o.covered;
                    let b = s.pending.entry(origin.clone()).or_insert(bound);
                    *b = (*b).min(bound);
                }
            }
        }
        let mut reached = Vec::new();
        for (id, p) in items {
            if let Some(&bound) = s.pending.get(&id.origin) {
                if id.seq <= bound {
                    s.pending.remove(&id.origin);
                    reached.push(id.origin.clone());
                }
            }
            let covered = t.origin(&id.origin).covered;
            if id.seq <= covered || t.window.contains(&id) {
                continue;
            }
            let repeat = p.rid().is_some_and(|r| t.window.has_rid(r));
            t.remember(id, p.rid(), self.cfg.window);
            if !repeat {
                self.stats.delivered += 1;
                self.stats.repaired += 1;
                self.out.push_back(p);
            } else {
                self.stats.losers += 1;
            }
        }
        if !exact && first {
            // An older server: an origin unknown before this page starts here.
            for (origin, &h) in &heads {
                if !s.pending.contains_key(origin) && !reached.contains(origin) {
                    let o = t.origin(origin);
                    if o.covered == 0 && o.holes.is_empty() {
                        o.cover(h);
                    }
                }
            }
        }
        if page.next.is_none() {
            reached.extend(std::mem::take(&mut s.pending).into_keys());
        }
        let sure = s.heads.clone().unwrap_or_default();
        for origin in reached {
            if let Some(o) = t.origins.get_mut(&origin) {
                o.cover(sure.get(&origin).copied().unwrap_or(0));
                settle(o, now, &mut self.stats);
            }
        }
        if s.pending.is_empty() {
            self.finish(now, s, true);
        } else if s.pages >= self.cfg.max_pages {
            self.stats.truncated += 1;
            self.finish(now, s, false);
        } else {
            self.next_id += 1;
            s.id = self.next_id;
            s.before = page.next;
            s.sent = None;
            self.sweep = Some(s);
        }
    }

    /// Runs what is due at `now`: periodic checks, abandoned reads.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.cfg.repair {
            return;
        }
        let interval = self.cfg.check_interval;
        for t in self.topics.values_mut() {
            if t.baselined && t.next_check <= now {
                t.next_check = now + interval;
                t.schedule(now);
            }
        }
        let expired = self
            .sweep
            .as_ref()
            .and_then(|s| s.sent)
            .is_some_and(|at| now >= at + self.cfg.fetch_timeout);
        if expired {
            if let Some(id) = self.sweep.as_ref().map(|s| s.id) {
                self.handle_history(now, id, Err(ErrorCode::Timeout));
            }
        }
    }

    // ----- outputs ------------------------------------------------------------------

    /// The next publication to hand to the application.
    pub fn poll_delivery(&mut self) -> Option<Publication> {
        self.out.pop_front()
    }

    /// The next history page to ask for, if one is due and none is in flight.
    pub fn poll_fetch(&mut self, now: Instant) -> Option<Fetch> {
        if !self.cfg.repair {
            return None;
        }
        if self.sweep.is_none() {
            self.start_sweep(now)?;
        }
        let s = self.sweep.as_mut()?;
        if s.sent.is_some() {
            return None;
        }
        s.sent = Some(now);
        self.stats.pages += 1;
        let target = match s.probe {
            Kind::User => HistoryTarget::User(s.topic.clone()),
            _ => HistoryTarget::Channel(s.topic.clone()),
        };
        let limit = if s.pages == 0 {
            s.first_limit
        } else {
            self.cfg.page_limit
        };
        Some(Fetch {
            id: s.id,
            topic: s.topic.clone(),
            target,
            before: s.before.clone(),
            limit: limit.max(1),
        })
    }

    /// When [`Delivery::handle_timeout`] (or [`Delivery::poll_fetch`]) has something to do
    /// next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.cfg.repair {
            return None;
        }
        let checks = self
            .topics
            .values()
            .filter(|t| t.baselined)
            .map(|t| t.next_check);
        match &self.sweep {
            // One read at a time: what is due waits for its answer (or its deadline).
            Some(s) => checks
                .chain(s.sent.map(|at| at + self.cfg.fetch_timeout))
                .min(),
            None => checks
                .chain(self.topics.values().filter_map(|t| t.due))
                .min(),
        }
    }

    // ----- internals ----------------------------------------------------------------

    fn start_sweep(&mut self, now: Instant) -> Option<()> {
        let (name, t) = self
            .topics
            .iter_mut()
            .filter(|(_, t)| t.due.is_some_and(|d| d <= now))
            .min_by_key(|(_, t)| t.due)?;
        t.due = None;
        t.checks += 1;
        self.next_id += 1;
        self.stats.checks += 1;
        let pending: BTreeMap<String, u64> = if t.baselined {
            t.origins
                .iter()
                .filter(|(_, o)| o.wanted())
                .map(|(k, o)| (k.clone(), o.covered))
                .collect()
        } else {
            BTreeMap::new()
        };
        let first_limit = if pending.is_empty() {
            CHECK_PAGE_LIMIT
        } else {
            FIRST_PAGE_LIMIT
        };
        self.sweep = Some(Sweep {
            id: self.next_id,
            topic: name.clone(),
            number: t.checks,
            baseline: !t.baselined,
            probe: if t.kind == Kind::User {
                Kind::User
            } else {
                Kind::Channel
            },
            pending,
            heads: None,
            first_limit: first_limit.min(self.cfg.page_limit),
            pages: 0,
            before: None,
            sent: None,
        });
        Some(())
    }

    /// A read ended (`complete`: it read down to where it meant to).
    fn finish(&mut self, now: Instant, s: Sweep, complete: bool) {
        let Some(t) = self.topics.get_mut(&s.topic) else {
            return;
        };
        if complete && !s.baseline {
            // The heads were just compared: the next periodic check can wait.
            t.next_check = now + self.cfg.check_interval;
        }
        // Losses this read should have found but history did not show (yet: the server
        // that answered may not hold them yet): look again later, a few times.
        let (base, attempts, gap_delay) = (
            self.cfg.gap_retry,
            self.cfg.gap_attempts,
            self.cfg.gap_delay,
        );
        let mut next: Option<Instant> = None;
        for o in t.origins.values_mut() {
            if !o.wanted() {
                o.want = None;
                continue;
            }
            let w = o.want.get_or_insert(Want {
                since: now,
                after: s.number,
                attempts: 0,
            });
            let at = if w.after >= s.number {
                // Noticed while this read was under way: the next read looks for it.
                now + gap_delay
            } else {
                w.attempts += 1;
                w.after = s.number;
                if w.attempts >= attempts {
                    // Given up; a later check reads the heads again (a copy that lost to
                    // an earlier copy of its request is never shown).
                    self.stats.unresolved += o.holes.len() as u64 + u64::from(o.tail > o.covered);
                    o.holes.clear();
                    o.tail = 0;
                    o.want = None;
                    continue;
                }
                now + base * 2u32.saturating_pow(w.attempts - 1)
            };
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if let Some(at) = next {
            t.schedule(at);
        }
    }
}

/// A loss that is no longer wanted was repaired: how long it took.
fn settle(o: &mut Origin, now: Instant, stats: &mut DeliveryStats) {
    if !o.wanted() {
        if let Some(w) = o.want.take() {
            let took = now.saturating_duration_since(w.since);
            stats.slowest_gap_repair = stats.slowest_gap_repair.max(took);
        }
    }
}

#[cfg(test)]
mod tests;
