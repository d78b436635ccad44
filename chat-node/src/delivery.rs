//! Live delivery for a subscriber, with no IO: [`Delivery`] makes what a client receives on
//! its subscribed topics exactly once and gap-free.
//!
//! Pub/sub loses what is in flight (a proxy restart, a subscriber that reconnects, a server
//! that dies between its commit and its publication) and a write accepted twice (a retry
//! that reached a second server before the first copy was replicated) may be published
//! twice. Publications carry what a subscriber needs to fix both (`docs/replication.md`,
//! "Live delivery"): the event id `origin/seq`, the write's request id `rid`, and `prev`, the
//! sequence number of the previous publication of the same origin on the same topic.
//!
//! Per subscribed topic the core:
//!
//! - **drops repeats**: a publication whose event id, or whose request id, was already
//!   delivered (a window of the newest [`DeliveryConfig::window`] deliveries per topic);
//! - **notices gaps**: per origin it keeps the last sequence number seen on the topic; a
//!   publication whose `prev` is beyond it means something was lost in between;
//! - **repairs from history**: on a gap, when the driver reports that the SUB socket
//!   reconnected ([`Delivery::handle_reconnect`]), and every
//!   [`DeliveryConfig::check_interval`] (a lost tail has no successor to reveal it), it asks
//!   for `history` pages of the topic ([`Delivery::poll_fetch`]), newest first, paging back
//!   as far as needed (at most [`DeliveryConfig::max_pages`]), and delivers what it had not
//!   delivered yet ([`Delivery::handle_history`]).
//!
//! On subscription the first history page is a **baseline** (the zguide "Clone" pattern):
//! what history holds then is the past, never delivered; its newest position is the topic's
//! *floor*. Repairs deliver only items above the floor. When the window forgets an item, the
//! floor rises to it, so memory stays bounded and nothing forgotten is delivered again.
//!
//! Inputs are `handle_*` calls with the time passed in; outputs come from `poll_*`. One
//! history read is in flight at a time: the driver sends the [`Fetch`] that
//! [`Delivery::poll_fetch`] returns, answers it with [`Delivery::handle_history`] (the
//! page, or the error code, [`ErrorCode::Timeout`] when nobody answered), and asks for the
//! next fetch only then. After every input it drains [`Delivery::poll_delivery`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chat_core::{
    ErrorCode, EventId, HistoryPage, HistoryTarget, Publication, Stamp, TOPIC_REPLICATION,
    TOPIC_SERVERS,
};

/// How often each topic's recent history is read for losses nothing else revealed.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// How far back in time a periodic or reconnect check reads.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(10);
/// Deliveries remembered per topic to drop repeats.
pub const DEFAULT_WINDOW: usize = 10_000;
/// Items asked per history page.
pub const DEFAULT_PAGE_LIMIT: u32 = 500;
/// Most pages one check reads back.
pub const DEFAULT_MAX_PAGES: u32 = 40;
/// Items asked in the first page of a check (a quiet topic needs no more; a busy one pages
/// on with [`DeliveryConfig::page_limit`]).
pub const FIRST_PAGE_LIMIT: u32 = 64;
/// Most gaps waiting for their repair per topic (the oldest is given up beyond).
pub const MAX_WANTED: usize = 1024;
/// Most origins tracked per topic (the one heard of longest ago is forgotten beyond).
pub const MAX_ORIGINS: usize = 1024;
/// Most check marks kept per topic (see [`DeliveryConfig::lookback`]).
const MAX_MARKS: usize = 256;
/// How soon a failed history read is tried again.
const FETCH_RETRY: Duration = Duration::from_millis(500);
/// How many checks look for the predecessor of a publication from an origin never seen on
/// the topic before (it is usually older than the subscription).
const UNKNOWN_ORIGIN_ATTEMPTS: u32 = 2;

/// How [`Delivery`] is tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Repair from history; false: drop repeats only (no history reads at all).
    pub repair: bool,
    /// How often each topic's history is read for lost tails.
    pub check_interval: Duration,
    /// How far back (in time) a periodic or reconnect check reads: down to the newest
    /// item a check saw at least this long ago.
    pub lookback: Duration,
    /// Wait between a noticed gap and the history read (gaps noticed together merge).
    pub gap_delay: Duration,
    /// Wait after the SUB socket reconnected before reading history.
    pub reconnect_delay: Duration,
    /// First wait before a gap history did not show yet is looked for again (doubles).
    pub gap_retry: Duration,
    /// How many checks look for a gap before it is given up (counted `unresolved`).
    pub gap_attempts: u32,
    /// Items asked per history page.
    pub page_limit: u32,
    /// Most pages one check reads back (counted `truncated` when reached).
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
            lookback: DEFAULT_LOOKBACK,
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
    /// Drop repeats only: no history reads (a subscriber without a broker to ask).
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
    /// Of those, found in history (lost live, or not yet arrived when a check read them).
    pub repaired: u64,
    /// Publications dropped because the same event was already delivered.
    pub duplicates: u64,
    /// Publications dropped because another copy of the same request (another event id,
    /// same `rid`) was already delivered.
    pub losers: u64,
    /// Gaps noticed from `prev` (including a first publication of an origin whose
    /// predecessor was not known).
    pub gaps: u64,
    /// Gaps given up after [`DeliveryConfig::gap_attempts`] checks did not show them.
    pub unresolved: u64,
    /// History checks started (baselines included).
    pub checks: u64,
    /// Baselines read (one per subscription, once history answered).
    pub baselines: u64,
    /// History pages asked.
    pub pages: u64,
    /// History reads that failed or timed out (each is tried again).
    pub fetch_failures: u64,
    /// Checks that stopped at [`DeliveryConfig::max_pages`].
    pub truncated: u64,
    /// Reconnections of the SUB socket reported by the driver.
    pub reconnects: u64,
    /// The longest time from noticing a gap to delivering what filled it.
    pub slowest_gap_repair: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unknown,
    Channel,
    User,
}

/// The newest deliveries of a topic, by history position, with their request ids.
#[derive(Debug, Default)]
struct Window {
    by_stamp: BTreeMap<Stamp, Option<String>>,
    rids: HashMap<String, u32>,
}

impl Window {
    fn contains(&self, s: &Stamp) -> bool {
        self.by_stamp.contains_key(s)
    }

    fn has_rid(&self, rid: &str) -> bool {
        self.rids.contains_key(rid)
    }

    fn insert(&mut self, s: Stamp, rid: Option<&str>) {
        if self.by_stamp.contains_key(&s) {
            return;
        }
        if let Some(r) = rid {
            *self.rids.entry(r.to_string()).or_default() += 1;
        }
        self.by_stamp.insert(s, rid.map(str::to_string));
    }

    /// Forgets the oldest entry; returns its position.
    fn evict(&mut self) -> Option<Stamp> {
        let (s, rid) = self.by_stamp.pop_first()?;
        if let Some(r) = rid {
            if let Some(n) = self.rids.get_mut(&r) {
                *n -= 1;
                if *n == 0 {
                    self.rids.remove(&r);
                }
            }
        }
        Some(s)
    }

    fn len(&self) -> usize {
        self.by_stamp.len()
    }
}

/// An event that should exist on the topic (a publication named it as `prev`).
#[derive(Debug)]
struct Want {
    /// Its position is above this one (the origin's last seen); `None`: above the floor.
    bound: Option<Stamp>,
    /// Checks numbered above this one look for it.
    after: u64,
    attempts: u32,
    since: Instant,
}

#[derive(Debug)]
struct Topic {
    kind: Kind,
    /// The baseline was read (or there is no history to read).
    baselined: bool,
    /// Items at or below this position are settled: never delivered by a repair.
    floor: Option<Stamp>,
    window: Window,
    /// Per origin, the newest of its events seen on the topic.
    heads: HashMap<String, Stamp>,
    wanted: BTreeMap<EventId, Want>,
    /// When the next check is due, and how far down it reads (`None`: to the floor).
    due: Option<Instant>,
    due_bound: Option<Stamp>,
    next_check: Instant,
    /// (when a complete check started, the newest item it saw), oldest first.
    marks: VecDeque<(Instant, Stamp)>,
    /// Checks started on this topic.
    checks: u64,
}

impl Topic {
    fn new(now: Instant, cfg: &DeliveryConfig) -> Topic {
        Topic {
            kind: Kind::Unknown,
            baselined: !cfg.repair,
            floor: None,
            window: Window::default(),
            heads: HashMap::new(),
            wanted: BTreeMap::new(),
            due: cfg.repair.then_some(now),
            due_bound: None,
            next_check: now + cfg.check_interval,
            marks: VecDeque::new(),
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

    /// A check at `at` at the latest, reading down to `bound` at least.
    fn schedule(&mut self, at: Instant, bound: Option<Stamp>) {
        match self.due {
            None => {
                self.due = Some(at);
                self.due_bound = bound;
            }
            Some(d) => {
                self.due = Some(d.min(at));
                // `None` (to the floor) is the deepest.
                self.due_bound = self.due_bound.take().min(bound);
            }
        }
    }

    fn settled(&self, s: &Stamp) -> bool {
        self.floor.as_ref().is_some_and(|f| s <= f)
    }

    fn raise_floor(&mut self, s: Stamp) {
        if self.floor.as_ref().is_none_or(|f| &s > f) {
            self.floor = Some(s);
        }
    }

    fn note_head(&mut self, s: &Stamp) {
        match self.heads.get_mut(&s.origin) {
            Some(h) => {
                if s.seq > h.seq {
                    *h = s.clone();
                }
            }
            None => {
                if self.heads.len() >= MAX_ORIGINS {
                    let oldest = self.heads.values().min().cloned();
                    if let Some(o) = oldest {
                        self.heads.remove(&o.origin);
                    }
                }
                self.heads.insert(s.origin.clone(), s.clone());
            }
        }
    }

    fn remember(&mut self, s: Stamp, rid: Option<&str>, cap: usize) {
        self.window.insert(s, rid);
        while self.window.len() > cap.max(1) {
            if let Some(old) = self.window.evict() {
                self.raise_floor(old);
            }
        }
    }

    /// Where a periodic or reconnect check may stop: the newest item a complete check saw
    /// at least `lookback` ago (`None`: the floor).
    fn lookback_bound(&mut self, now: Instant, lookback: Duration) -> Option<Stamp> {
        let cutoff = now.checked_sub(lookback)?;
        let i = self.marks.iter().rposition(|(at, _)| *at <= cutoff)?;
        self.marks.drain(..i);
        self.marks.front().map(|(_, s)| s.clone())
    }
}

/// A history check in progress (one page asked at a time).
#[derive(Debug)]
struct Sweep {
    /// Id of the page asked (or about to be).
    id: u64,
    topic: String,
    /// The topic's check number.
    number: u64,
    baseline: bool,
    /// What is asked: a channel's history or a user's.
    probe: Kind,
    /// Read down to here (`None`: to the floor).
    bound: Option<Stamp>,
    pages: u32,
    started: Instant,
    /// The newest item of the first page.
    newest: Option<Stamp>,
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

    /// Request ids and event ids remembered for `topic` (bounded by the window).
    pub fn remembered(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |t| t.window.len())
    }

    /// Whether every subscribed topic has its baseline and no gap waits for a repair.
    pub fn is_settled(&self) -> bool {
        self.topics
            .values()
            .all(|t| t.baselined && t.wanted.is_empty())
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
        let Some(stamp) = p.stamp() else {
            // No event id (a seed server): nothing to compare; deliver as it comes.
            self.stats.delivered += 1;
            self.out.push_back(p);
            return;
        };
        if t.window.contains(&stamp) {
            self.stats.duplicates += 1;
            return;
        }
        if let Some(prev) = p.prev() {
            let gap = match t.heads.get(&stamp.origin) {
                Some(h) if prev > h.seq => Some(Some(h.clone())),
                Some(_) => None,
                // The origin was not seen on the topic yet: its predecessor may be older
                // than the subscription, or lost; a check down to the floor tells.
                None => (t.baselined && prev > 0).then_some(None),
            };
            if let Some(bound) = gap {
                self.stats.gaps += 1;
                if self.cfg.repair {
                    want(
                        t,
                        &mut self.stats,
                        EventId {
                            origin: stamp.origin.clone(),
                            seq: prev,
                        },
                        bound.clone(),
                        now,
                    );
                    t.schedule(now + self.cfg.gap_delay, bound);
                }
            }
        }
        let event = EventId {
            origin: stamp.origin.clone(),
            seq: stamp.seq,
        };
        found(t, &mut self.stats, &event, now);
        t.note_head(&stamp);
        let repeat = p.rid().is_some_and(|r| t.window.has_rid(r));
        t.remember(stamp, p.rid(), self.cfg.window);
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
        let (delay, lookback) = (self.cfg.reconnect_delay, self.cfg.lookback);
        for t in self.topics.values_mut().filter(|t| t.baselined) {
            let bound = t.lookback_bound(now, lookback);
            t.schedule(now + delay, bound);
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
            Ok(page) => page,
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
                // No such channel or user (yet): no history, nothing to repair.
                HistoryPage::default()
            }
            Err(_) => {
                self.stats.fetch_failures += 1;
                t.schedule(now + FETCH_RETRY, s.bound.clone());
                return;
            }
        };
        if t.kind == Kind::Unknown && !page.items.is_empty() {
            t.kind = s.probe;
        }
        s.pages += 1;
        let topic = s.topic.clone();
        let mut oldest: Option<Stamp> = None;
        let mut newest: Option<Stamp> = None;
        let mut items = Vec::with_capacity(page.items.len());
        for p in page.items {
            let Some(st) = p.stamp() else { continue };
            if oldest.as_ref().is_none_or(|o| &st < o) {
                oldest = Some(st.clone());
            }
            // A user's history also holds what the user sent: only what arrives on the
            // user's topic counts.
            if p.topic() == topic {
                if newest.as_ref().is_none_or(|n| &st > n) {
                    newest = Some(st.clone());
                }
                items.push((st, p));
            }
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        if s.pages == 1 {
            s.newest = newest.clone();
        }
        if s.baseline {
            for (st, _) in &items {
                t.note_head(st);
            }
            if let Some(n) = newest {
                t.raise_floor(n);
            }
            t.baselined = true;
            self.stats.baselines += 1;
            t.next_check = now + self.cfg.check_interval;
            self.finish(now, s, true);
            return;
        }
        for (st, p) in items {
            let event = EventId {
                origin: st.origin.clone(),
                seq: st.seq,
            };
            let settled = t.settled(&st);
            if settled || t.window.contains(&st) {
                t.wanted.remove(&event);
                continue;
            }
            found(t, &mut self.stats, &event, now);
            t.note_head(&st);
            let repeat = p.rid().is_some_and(|r| t.window.has_rid(r));
            t.remember(st, p.rid(), self.cfg.window);
            if !repeat {
                self.stats.delivered += 1;
                self.stats.repaired += 1;
                self.out.push_back(p);
            }
        }
        let reached = page.next.is_none()
            || oldest
                .as_ref()
                .is_none_or(|o| s.bound.as_ref().is_some_and(|b| o <= b) || t.settled(o));
        if reached {
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
        let (interval, lookback) = (self.cfg.check_interval, self.cfg.lookback);
        for t in self.topics.values_mut() {
            if t.baselined && t.next_check <= now {
                t.next_check = now + interval;
                let bound = t.lookback_bound(now, lookback);
                t.schedule(now, bound);
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
        let limit = if s.pages == 0 && !s.baseline {
            self.cfg.page_limit.min(FIRST_PAGE_LIMIT)
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
            bound: t.due_bound.take(),
            pages: 0,
            started: now,
            newest: None,
            before: None,
            sent: None,
        });
        Some(())
    }

    /// A check ended (`complete`: it read down to where it meant to).
    fn finish(&mut self, now: Instant, s: Sweep, complete: bool) {
        let Some(t) = self.topics.get_mut(&s.topic) else {
            return;
        };
        if complete {
            if let Some(n) = s.newest {
                t.marks.push_back((s.started, n));
                if t.marks.len() > MAX_MARKS {
                    t.marks.pop_front();
                }
            }
        }
        // Gaps this check should have found but history did not show (yet: the server
        // that answered may not hold them yet): look again later, a few times.
        let mut retry: Vec<(Duration, Option<Stamp>)> = Vec::new();
        let (base, attempts) = (self.cfg.gap_retry, self.cfg.gap_attempts);
        t.wanted.retain(|_, w| {
            if w.after >= s.number {
                return true;
            }
            w.attempts += 1;
            let max = if w.bound.is_none() {
                UNKNOWN_ORIGIN_ATTEMPTS
            } else {
                attempts
            };
            if w.attempts >= max {
                // An origin never seen before: its predecessor is older than the floor.
                if w.bound.is_some() {
                    self.stats.unresolved += 1;
                }
                return false;
            }
            w.after = s.number;
            retry.push((base * 2u32.saturating_pow(w.attempts - 1), w.bound.clone()));
            true
        });
        for (delay, bound) in retry {
            t.schedule(now + delay, bound);
        }
    }
}

/// Records that event `id` should exist on the topic.
fn want(t: &mut Topic, stats: &mut DeliveryStats, id: EventId, bound: Option<Stamp>, now: Instant) {
    if t.wanted.contains_key(&id) {
        return;
    }
    if t.wanted.len() >= MAX_WANTED && t.wanted.pop_first().is_some() {
        stats.unresolved += 1;
    }
    t.wanted.insert(
        id,
        Want {
            bound,
            after: t.checks,
            attempts: 0,
            since: now,
        },
    );
}

/// Event `id` arrived (live or from history): a gap it filled is repaired.
fn found(t: &mut Topic, stats: &mut DeliveryStats, id: &EventId, now: Instant) {
    if let Some(w) = t.wanted.remove(id) {
        let took = now.saturating_duration_since(w.since);
        stats.slowest_gap_repair = stats.slowest_gap_repair.max(took);
    }
}

#[cfg(test)]
mod tests;
