//! The reliable request broker's protocol core: Paranoid Pirate with credits (zguide
//! chapter 4), with no IO.
//!
//! Clients reach the broker on a frontend ROUTER; servers on a backend ROUTER speaking
//! [`crate::backend`]. [`BrokerCore`] keeps
//!
//! - the live servers, each with its capacity (credits), the tokens it holds in flight and
//!   the latest lease stamp it sent; servers with a free credit take requests in
//!   round-robin order;
//! - a bounded FIFO queue of requests waiting for a free server;
//! - every outstanding request with the client envelope to route its reply back.
//!
//! It has the shape of `quinn-proto`'s `Connection`: the driver feeds it what arrived
//! ([`BrokerCore::handle_client`], [`BrokerCore::handle_server`]), the passing of time
//! ([`BrokerCore::handle_timeout`] at [`BrokerCore::poll_timeout`]) and the sends it could
//! not do ([`BrokerCore::handle_send_failed`]), and sends what
//! [`BrokerCore::poll_transmit`] hands out, in that order, after every input. It never
//! reads a clock (`now` and the wall time for error replies come in as arguments), draws a
//! random number (the first token comes in through [`BrokerCore::new`]) or touches a
//! socket.
//!
//! Failure handling:
//!
//! - The broker sends `HB` to every server every [`HEARTBEAT_INTERVAL`]. A server silent for
//!   [`LIVENESS`], one that says `BYE`, or one a send fails to is dropped; its in-flight
//!   requests go back to the front of the queue for another server. Silence is judged only
//!   when the driver reports no unread backend input (that input may be the very
//!   heartbeats that prove a server alive).
//! - A `REP` with an unknown token, or from a server that no longer holds the token (a late
//!   answer after a re-dispatch), is dropped: every request is answered at most once.
//! - A request that waits for a free server longer than [`BrokerCoreConfig::queue_timeout`],
//!   or that is not answered within [`BrokerCoreConfig::request_timeout`], or that finds the
//!   queue full, gets an `unavailable` error reply from the broker itself.
//! - A request that is not exactly one non-empty frame gets `bad_request`, one larger than
//!   [`BrokerCoreConfig::max_frame`] gets `too_large`; both in the encoding of the request.
//! - Nothing a peer sends can stop the broker: malformed frames are counted and logged
//!   (warnings are rate-limited) and replies to vanished clients are counted and dropped.
//!
//! Client envelopes: a REQ client arrives as `[identity]["" ][body]`, a DEALER client as
//! `[identity][body]` or `[identity]["" ][body]`; requests relayed by further ROUTER/DEALER
//! hops carry several identity frames before the delimiter. Everything up to and including
//! the first empty frame (or just the identity when there is none) is the envelope, kept
//! verbatim and put back in front of the reply.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use chat_core::protocol::{decode_request, encode_reply, MAX_ACCEPTED_CLOCK};
use chat_core::{ChatError, Encoding, Meta, ReplyEnvelope, Timestamp};

use crate::backend::{self, HEARTBEAT_INTERVAL, LIVENESS};

/// Default longest wait for a server with a free credit.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default longest time a request may stay unanswered.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default most requests waiting in the queue.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// Default largest request or reply frame forwarded, in bytes (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Longest timeout honoured (larger ones are clamped, so deadlines cannot overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most clients remembered for session affinity (the map is reset when full).
const MAX_AFFINITY: usize = 65_536;
/// Rate-limited warnings: at most this many per second.
const WARNINGS_PER_SECOND: u32 = 20;
/// Answered tokens remembered to catch a second answer ([`BrokerCore::check_invariants`]).
const RECENT_ANSWERS: usize = 4096;

/// How long requests may wait and how large they may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerCoreConfig {
    /// Longest a request waits for a server with a free credit (default 2 s).
    pub queue_timeout: Duration,
    /// Longest a request may stay unanswered, queued or in flight (default 5 s).
    pub request_timeout: Duration,
    /// Most requests waiting in the queue (at least 1); more are refused at once
    /// (default 10 000).
    pub max_pending: usize,
    /// Largest request or reply frame forwarded, in bytes (default 1 MiB).
    pub max_frame: usize,
}

impl Default for BrokerCoreConfig {
    fn default() -> Self {
        BrokerCoreConfig {
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// Counters of what the broker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Messages received from clients.
    pub requests: u64,
    /// Server replies forwarded to clients.
    pub replies: u64,
    /// Requests answered `bad_request` or `too_large` by the broker.
    pub rejected: u64,
    /// Requests answered `unavailable` by the broker (queue full, timeouts, shutdown).
    pub unavailable: u64,
    /// Requests sent again after their server was lost.
    pub redispatched: u64,
    /// Replies dropped because their request was already answered or re-dispatched.
    pub late_replies: u64,
    /// Replies that could not be delivered to their client (gone, or not reading).
    pub undeliverable: u64,
    /// Servers registered.
    pub servers_joined: u64,
    /// Servers dropped (silent, `BYE`, or unreachable).
    pub servers_lost: u64,
    /// Malformed messages ignored.
    pub garbage: u64,
}

/// A message the core wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// To a client on the frontend ROUTER: the envelope frames, then the body frame.
    Client {
        /// Routing frames (identities and delimiter), as they arrived with the request.
        envelope: Vec<Vec<u8>>,
        /// The reply.
        body: Vec<u8>,
    },
    /// To a server on the backend ROUTER: its identity, then a [`crate::backend`] message.
    Server {
        /// The server's ROUTER identity.
        identity: Vec<u8>,
        /// The backend frames (`HB[, echo]` or `REQ, token, request[, echo]`).
        frames: Vec<Vec<u8>>,
    },
}

/// Why the driver could not hand a [`Transmit`] to its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The peer is not connected (`EHOSTUNREACH` under `ZMQ_ROUTER_MANDATORY`).
    PeerGone,
    /// Any other failure (a full pipe, ...), described.
    Other(String),
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendFailure::PeerGone => f.write_str("peer not connected"),
            SendFailure::Other(e) => f.write_str(e),
        }
    }
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the queue since its `epoch`-th queueing.
    Queued { epoch: u32 },
    /// Held by server `sid`.
    InFlight { sid: u64 },
}

/// An outstanding client request.
#[derive(Debug)]
struct Pending {
    /// Routing frames to put back in front of the reply.
    envelope: Vec<Vec<u8>>,
    /// The request frame (kept for re-dispatch and for error replies).
    body: Vec<u8>,
    place: Place,
    /// How many times it entered the queue (tells stale queue deadlines apart).
    epoch: u32,
}

/// What a deadline is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    /// `request_timeout` since arrival.
    Answer,
    /// `queue_timeout` since the request's `epoch`-th queueing.
    Queue(u32),
}

/// A registered server.
#[derive(Debug)]
struct Server {
    identity: Vec<u8>,
    capacity: u32,
    inflight: HashSet<u64>,
    last_seen: Instant,
    /// Whether its id is in the ready ring.
    in_ready: bool,
    /// The latest lease stamp it sent, echoed on every `HB` and `REQ` to it.
    stamp: Option<u64>,
}

impl Server {
    fn has_credit(&self) -> bool {
        self.inflight.len() < self.capacity as usize
    }
}

/// At most [`WARNINGS_PER_SECOND`] warnings about garbage per second.
#[derive(Debug)]
struct WarnLimiter {
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl WarnLimiter {
    fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "more malformed messages ignored"
                );
            }
            self.window = now;
            self.count = 0;
            self.suppressed = 0;
        }
        if self.count < WARNINGS_PER_SECOND {
            self.count += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The broker's protocol state; every method is O(1) or O(log n) per request, except
/// server loss (O(in-flight of that server plus unsent messages)) and heartbeats
/// (O(servers)).
#[derive(Debug)]
pub struct BrokerCore {
    cfg: BrokerCoreConfig,
    /// Live servers by id (ordered, so heartbeats and losses happen in a fixed order).
    servers: BTreeMap<u64, Server>,
    by_identity: HashMap<Vec<u8>, u64>,
    /// Servers with a free credit, in round-robin order (may hold stale ids; skipped).
    ready: VecDeque<u64>,
    next_sid: u64,
    requests: HashMap<u64, Pending>,
    /// Tokens waiting for a server, oldest first (may hold stale tokens; skipped).
    queue: VecDeque<u64>,
    /// Requests actually queued (the live entries of `queue`).
    queued: usize,
    deadlines: BinaryHeap<Reverse<(Instant, u64, Deadline)>>,
    next_token: u64,
    next_heartbeat: Instant,
    warn: WarnLimiter,
    stats: BrokerStats,
    /// Client identity → the server that served it last.
    affinity: HashMap<Vec<u8>, u64>,
    /// Messages to send, oldest first.
    outbox: VecDeque<Transmit>,
    /// Tokens handed out (requests accepted).
    issued: u64,
    /// Accepted requests answered (forwarded reply or the broker's own error).
    answered: u64,
    /// The latest answered tokens, oldest first, and the same as a set.
    recent_answers: VecDeque<u64>,
    recent_answer_set: HashSet<u64>,
    /// The first token seen answered twice, if any (a broken invariant).
    answered_twice: Option<u64>,
}

impl BrokerCore {
    /// A broker with no servers and no requests; `now` starts the heartbeat period and
    /// `first_token` is the token of the first request (the driver picks it at random, so
    /// a reply meant for a previous broker run is unlikely to match a token of this one).
    pub fn new(mut cfg: BrokerCoreConfig, now: Instant, first_token: u64) -> BrokerCore {
        cfg.queue_timeout = cfg.queue_timeout.min(MAX_TIMEOUT);
        cfg.request_timeout = cfg.request_timeout.min(MAX_TIMEOUT);
        BrokerCore {
            cfg,
            servers: BTreeMap::new(),
            by_identity: HashMap::new(),
            ready: VecDeque::new(),
            next_sid: 1,
            requests: HashMap::new(),
            queue: VecDeque::new(),
            queued: 0,
            deadlines: BinaryHeap::new(),
            next_token: first_token,
            next_heartbeat: now + HEARTBEAT_INTERVAL,
            warn: WarnLimiter {
                window: now,
                count: 0,
                suppressed: 0,
            },
            stats: BrokerStats::default(),
            affinity: HashMap::new(),
            outbox: VecDeque::new(),
            issued: 0,
            answered: 0,
            recent_answers: VecDeque::new(),
            recent_answer_set: HashSet::new(),
            answered_twice: None,
        }
    }

    // ----- getters -----

    /// The configuration in force (timeouts clamped to 30 days).
    pub fn config(&self) -> &BrokerCoreConfig {
        &self.cfg
    }

    /// Counters of what the broker did so far.
    pub fn stats(&self) -> BrokerStats {
        self.stats
    }

    /// How many servers are registered.
    pub fn live_servers(&self) -> usize {
        self.servers.len()
    }

    /// How many requests wait in the queue for a server.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// How many requests are outstanding (queued or in flight).
    pub fn outstanding(&self) -> usize {
        self.requests.len()
    }

    // ----- outputs -----

    /// The next message to send; call until `None` after every `handle_*` and `shutdown`.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// When [`BrokerCore::handle_timeout`] is due: the next heartbeat or the earliest
    /// deadline, whichever comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
        Some(deadline.map_or(self.next_heartbeat, |at| at.min(self.next_heartbeat)))
    }

    // ----- inputs -----

    /// A message from the frontend ROUTER: the client's identity frame(s), maybe a
    /// delimiter, and the request. `wall` stamps the broker's own error replies.
    pub fn handle_client(&mut self, now: Instant, wall: Timestamp, mut frames: Vec<Vec<u8>>) {
        self.stats.requests += 1;
        if frames.len() < 2 {
            // A ROUTER never delivers fewer than two frames; nothing to answer.
            self.garbage(now, "client message without a body");
            return;
        }
        let cut = match frames.iter().skip(1).position(Vec::is_empty) {
            Some(i) => i + 2,
            None => 1,
        };
        let mut body_frames = frames.split_off(cut);
        let envelope = frames;
        let body = match body_frames.len() {
            1 if !body_frames[0].is_empty() => body_frames.swap_remove(0),
            0 | 1 => {
                self.stats.rejected += 1;
                let err = ChatError::BadFrame("the request frame is empty".to_string());
                self.reply_error(envelope, &[], &err, wall);
                return;
            }
            n => {
                self.stats.rejected += 1;
                let err = ChatError::BadFrame(format!(
                    "a request is exactly one frame; this one has {n}"
                ));
                let first = body_frames.iter().find(|f| !f.is_empty());
                self.reply_error(envelope, first.map_or(&[][..], |f| &f[..]), &err, wall);
                return;
            }
        };
        if body.len() > self.cfg.max_frame {
            self.stats.rejected += 1;
            let err = ChatError::TooLarge {
                what: "request frame",
                size: body.len(),
                limit: self.cfg.max_frame,
            };
            self.reply_error(envelope, &body, &err, wall);
            return;
        }
        if self.queued >= self.cfg.max_pending.max(1) {
            self.stats.unavailable += 1;
            tracing::debug!(queued = self.queued, "queue full; request refused");
            let err = ChatError::Unavailable(format!(
                "{} requests are already waiting for a chat server; try again",
                self.queued
            ));
            self.reply_error(envelope, &body, &err, wall);
            return;
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        self.issued += 1;
        self.requests.insert(
            token,
            Pending {
                envelope,
                body,
                place: Place::Queued { epoch: 0 },
                epoch: 0,
            },
        );
        self.deadlines.push(Reverse((
            now + self.cfg.request_timeout,
            token,
            Deadline::Answer,
        )));
        self.enqueue(token, false, now);
        tracing::debug!(token, "request received");
        self.settle();
    }

    /// A message from the backend ROUTER: the server's identity frame, then a
    /// [`crate::backend`] message. `wall` stamps the error that replaces an oversized reply.
    pub fn handle_server(&mut self, now: Instant, wall: Timestamp, frames: Vec<Vec<u8>>) {
        let mut frames = frames.into_iter();
        let Some(identity) = frames.next() else {
            return;
        };
        let Some(command) = frames.next() else {
            self.garbage(now, "server message without a command");
            return;
        };
        let known = self.by_identity.get(&identity).copied();
        match command.as_slice() {
            backend::READY | backend::HEARTBEAT => {
                let capacity = frames.next().as_deref().and_then(backend::parse_capacity);
                let (stamp, bad_stamp) = match frames.next() {
                    None => (None, false),
                    Some(frame) => match backend::parse_stamp(&frame) {
                        Some(stamp) => (Some(stamp), false),
                        None => (None, true),
                    },
                };
                match (known, capacity) {
                    (Some(sid), capacity) => self.refresh(sid, capacity, stamp, now),
                    (None, Some(capacity)) => self.register(identity, capacity, stamp, now),
                    (None, None) => {
                        self.garbage(now, "READY/HB without a valid capacity");
                        return;
                    }
                }
                if bad_stamp {
                    self.garbage(now, "READY/HB with a stamp that is not 8 bytes");
                }
            }
            backend::REPLY => {
                let token = frames.next().as_deref().and_then(backend::parse_token);
                let reply = frames.next();
                match (known, token, reply) {
                    (Some(sid), Some(token), Some(reply)) => {
                        self.refresh(sid, None, None, now);
                        self.on_reply(sid, token, reply, wall);
                    }
                    (None, _, _) => self.garbage(now, "REP from an unregistered server"),
                    _ => self.garbage(now, "REP without a token and a reply"),
                }
            }
            backend::BYE => match known {
                Some(sid) => self.lose_server(sid, "said goodbye", now),
                None => tracing::debug!("BYE from an unregistered server"),
            },
            _ => self.garbage(now, "unknown command on the backend"),
        }
        self.settle();
    }

    /// Time passed: sends heartbeats when due (dropping the servers silent for over
    /// [`LIVENESS`], unless `backend_backlog` says unread server messages are waiting) and
    /// answers `unavailable` to the requests whose deadline passed, stamped with `wall`.
    pub fn handle_timeout(&mut self, now: Instant, wall: Timestamp, backend_backlog: bool) {
        if now >= self.next_heartbeat {
            self.heartbeat(now, backend_backlog);
        }
        self.expire(now, wall);
        self.settle();
    }

    /// The driver could not send `transmit`: a server it was meant for is dropped (its
    /// requests, this one included, go to another server); a reply to a client is counted
    /// as undeliverable.
    pub fn handle_send_failed(&mut self, now: Instant, transmit: Transmit, failure: SendFailure) {
        match transmit {
            Transmit::Client { .. } => {
                self.stats.undeliverable += 1;
                match failure {
                    SendFailure::PeerGone => tracing::debug!("client gone; reply dropped"),
                    SendFailure::Other(e) => {
                        tracing::warn!(error = %e, "reply to a client dropped")
                    }
                }
            }
            Transmit::Server { identity, .. } => match self.by_identity.get(&identity).copied() {
                Some(sid) => {
                    let reason = format!("unreachable ({failure})");
                    self.lose_server(sid, &reason, now);
                }
                None => tracing::debug!("send to an unregistered server failed"),
            },
        }
        self.settle();
    }

    /// The broker is stopping: every outstanding request is answered `unavailable`,
    /// stamped with `wall`.
    pub fn shutdown(&mut self, wall: Timestamp) {
        let mut pending: Vec<(u64, Pending)> = self.requests.drain().collect();
        pending.sort_unstable_by_key(|(token, _)| *token);
        if !pending.is_empty() {
            tracing::info!(
                pending = pending.len(),
                "answering pending requests before stopping"
            );
        }
        let err = ChatError::Unavailable("the broker is shutting down; try again".to_string());
        for (token, p) in pending {
            self.stats.unavailable += 1;
            self.note_answered(token);
            self.reply_error(p.envelope, &p.body, &err, wall);
        }
        self.queue.clear();
        self.queued = 0;
        self.deadlines.clear();
        let sids: Vec<u64> = self.servers.keys().copied().collect();
        for sid in sids {
            if let Some(server) = self.servers.get_mut(&sid) {
                server.inflight.clear();
            }
            self.mark_ready(sid);
        }
    }

    // ----- invariants -----

    /// Checks the core's safety properties; the first one broken is described in `Err`:
    ///
    /// - every outstanding request is either queued (exactly one live entry in the queue,
    ///   with its queue deadline armed) or in flight at exactly one live server, and has
    ///   its answer deadline armed;
    /// - a server's in-flight set only holds tokens whose request says it is in flight
    ///   there;
    /// - the queued counter equals the live queue entries;
    /// - no request is answered twice (and requests accepted = answered + outstanding);
    /// - credits: a server with a free credit is in the ready ring, and no request waits
    ///   in the queue while a server has a free credit.
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(token) = self.answered_twice {
            return Err(format!("request {token} was answered twice"));
        }
        let outstanding = self.requests.len() as u64;
        if self.issued != self.answered + outstanding {
            return Err(format!(
                "{} requests accepted but {} answered and {outstanding} outstanding",
                self.issued, self.answered
            ));
        }
        // Live queue entries, counted per token.
        let mut in_queue: HashMap<u64, usize> = HashMap::new();
        for token in &self.queue {
            if matches!(
                self.requests.get(token).map(|p| p.place),
                Some(Place::Queued { .. })
            ) {
                *in_queue.entry(*token).or_default() += 1;
            }
        }
        let live_entries: usize = in_queue.values().sum();
        if live_entries != self.queued {
            return Err(format!(
                "queued counter {} but {live_entries} live queue entries",
                self.queued
            ));
        }
        let mut holders: HashMap<u64, Vec<u64>> = HashMap::new();
        for (&sid, server) in &self.servers {
            if self.by_identity.get(&server.identity) != Some(&sid) {
                return Err(format!("server {sid} is not found by its identity"));
            }
            for &token in &server.inflight {
                match self.requests.get(&token).map(|p| p.place) {
                    Some(Place::InFlight { sid: at }) if at == sid => {}
                    other => {
                        return Err(format!(
                            "server {sid} holds request {token}, which is {other:?}"
                        ))
                    }
                }
                holders.entry(token).or_default().push(sid);
            }
            let in_ring = self.ready.iter().filter(|s| **s == sid).count();
            if in_ring != usize::from(server.in_ready) {
                return Err(format!(
                    "server {sid} is {in_ring} times in the ready ring, in_ready = {}",
                    server.in_ready
                ));
            }
            if server.has_credit() && !server.in_ready {
                return Err(format!("server {sid} has a free credit but is not ready"));
            }
            if server.has_credit() && self.queued > 0 {
                return Err(format!(
                    "server {sid} has a free credit while {} requests wait",
                    self.queued
                ));
            }
        }
        if self.by_identity.len() != self.servers.len() {
            return Err(format!(
                "{} identities for {} servers",
                self.by_identity.len(),
                self.servers.len()
            ));
        }
        let mut answer_deadlines: HashSet<u64> = HashSet::new();
        let mut queue_deadlines: HashSet<(u64, u32)> = HashSet::new();
        for Reverse((_, token, kind)) in &self.deadlines {
            match kind {
                Deadline::Answer => answer_deadlines.insert(*token),
                Deadline::Queue(epoch) => queue_deadlines.insert((*token, *epoch)),
            };
        }
        for (&token, p) in &self.requests {
            match p.place {
                Place::Queued { epoch } => {
                    if epoch != p.epoch {
                        return Err(format!(
                            "request {token} queued in epoch {epoch}, but its epoch is {}",
                            p.epoch
                        ));
                    }
                    let entries = in_queue.get(&token).copied().unwrap_or(0);
                    if entries != 1 {
                        return Err(format!(
                            "request {token} is queued with {entries} queue entries"
                        ));
                    }
                    if !queue_deadlines.contains(&(token, epoch)) {
                        return Err(format!("queued request {token} has no queue deadline"));
                    }
                }
                Place::InFlight { sid } => {
                    let held = holders.get(&token).map_or(&[][..], Vec::as_slice);
                    if held != [sid] {
                        return Err(format!(
                            "request {token} in flight at server {sid}, held by {held:?}"
                        ));
                    }
                }
            }
            if !answer_deadlines.contains(&token) {
                return Err(format!("request {token} has no answer deadline"));
            }
        }
        Ok(())
    }

    // ----- clients -----

    /// Answers a request with an error of the broker's own, in the request's encoding.
    fn reply_error(
        &mut self,
        envelope: Vec<Vec<u8>>,
        body: &[u8],
        err: &ChatError,
        wall: Timestamp,
    ) {
        let body = error_reply(body, err, wall);
        self.outbox.push_back(Transmit::Client { envelope, body });
    }

    /// Records that an accepted request got its one answer.
    fn note_answered(&mut self, token: u64) {
        self.answered += 1;
        if !self.recent_answer_set.insert(token) {
            self.answered_twice.get_or_insert(token);
            return;
        }
        self.recent_answers.push_back(token);
        if self.recent_answers.len() > RECENT_ANSWERS {
            if let Some(old) = self.recent_answers.pop_front() {
                self.recent_answer_set.remove(&old);
            }
        }
    }

    // ----- servers -----

    fn register(&mut self, identity: Vec<u8>, capacity: u32, stamp: Option<u64>, now: Instant) {
        let sid = self.next_sid;
        self.next_sid += 1;
        tracing::info!(
            server = sid,
            capacity,
            servers = self.servers.len() + 1,
            "server joined"
        );
        // A heartbeat at once, before any request: the server holds a lease (the echo of
        // its stamp) before its first request arrives.
        self.outbox.push_back(Transmit::Server {
            identity: identity.clone(),
            frames: backend::broker_heartbeat_frames(stamp),
        });
        self.by_identity.insert(identity.clone(), sid);
        self.servers.insert(
            sid,
            Server {
                identity,
                capacity,
                inflight: HashSet::new(),
                last_seen: now,
                in_ready: false,
                stamp,
            },
        );
        self.stats.servers_joined += 1;
        self.mark_ready(sid);
    }

    /// A known server spoke: it is alive, and maybe announces a new capacity or stamp.
    fn refresh(&mut self, sid: u64, capacity: Option<u32>, stamp: Option<u64>, now: Instant) {
        if let Some(server) = self.servers.get_mut(&sid) {
            server.last_seen = now;
            if let Some(capacity) = capacity {
                server.capacity = capacity;
            }
            if stamp.is_some() {
                server.stamp = stamp;
            }
        }
        self.mark_ready(sid);
    }

    /// Puts a server in the ready ring if it has a free credit and is not there yet.
    fn mark_ready(&mut self, sid: u64) {
        if let Some(server) = self.servers.get_mut(&sid) {
            if !server.in_ready && server.has_credit() {
                server.in_ready = true;
                self.ready.push_back(sid);
            }
        }
    }

    fn on_reply(&mut self, sid: u64, token: u64, reply: Vec<u8>, wall: Timestamp) {
        match self.requests.get(&token) {
            Some(p) if p.place == Place::InFlight { sid } => {}
            _ => {
                self.stats.late_replies += 1;
                tracing::debug!(token, server = sid, "late or unknown reply dropped");
                return;
            }
        }
        let Some(pending) = self.requests.remove(&token) else {
            return;
        };
        if let Some(server) = self.servers.get_mut(&sid) {
            server.inflight.remove(&token);
        }
        self.mark_ready(sid);
        self.note_answered(token);
        if reply.len() > self.cfg.max_frame {
            self.stats.rejected += 1;
            tracing::warn!(
                token,
                size = reply.len(),
                "server reply too large; replaced by an error"
            );
            let err = ChatError::TooLarge {
                what: "reply",
                size: reply.len(),
                limit: self.cfg.max_frame,
            };
            self.reply_error(pending.envelope, &pending.body, &err, wall);
            return;
        }
        self.stats.replies += 1;
        tracing::debug!(token, server = sid, "reply forwarded");
        self.outbox.push_back(Transmit::Client {
            envelope: pending.envelope,
            body: reply,
        });
    }

    /// Drops a server, with the messages to it not sent yet, and sends its in-flight
    /// requests again, ahead of the queue.
    fn lose_server(&mut self, sid: u64, reason: &str, now: Instant) {
        let Some(server) = self.servers.remove(&sid) else {
            return;
        };
        self.by_identity.remove(&server.identity);
        self.outbox.retain(
            |t| !matches!(t, Transmit::Server { identity, .. } if *identity == server.identity),
        );
        self.stats.servers_lost += 1;
        let mut tokens: Vec<u64> = server.inflight.into_iter().collect();
        tokens.sort_unstable();
        let mut redispatched = 0usize;
        // Oldest first at the front of the queue.
        for &token in tokens.iter().rev() {
            let held = self
                .requests
                .get(&token)
                .is_some_and(|p| p.place == Place::InFlight { sid });
            if held {
                self.enqueue(token, true, now);
                redispatched += 1;
            }
        }
        self.stats.redispatched += redispatched as u64;
        tracing::info!(
            server = sid,
            reason,
            redispatched,
            servers = self.servers.len(),
            "server left"
        );
    }

    /// Queues a request (at the front when it is re-dispatched) and arms its queue deadline.
    fn enqueue(&mut self, token: u64, front: bool, now: Instant) {
        let Some(p) = self.requests.get_mut(&token) else {
            return;
        };
        p.epoch = p.epoch.wrapping_add(1);
        p.place = Place::Queued { epoch: p.epoch };
        let deadline = (
            now + self.cfg.queue_timeout,
            token,
            Deadline::Queue(p.epoch),
        );
        if front {
            self.queue.push_front(token);
        } else {
            self.queue.push_back(token);
        }
        self.queued += 1;
        self.deadlines.push(Reverse(deadline));
    }

    /// What every input ends with: queued requests go to free credits, stale entries are
    /// dropped once they pile up.
    fn settle(&mut self) {
        self.dispatch();
        self.compact();
    }

    /// Hands queued requests to servers with free credits: a client goes back to the
    /// server that served it last while that server is alive and has a credit (session
    /// affinity: one publisher's posts leave through one server, in order); otherwise, and
    /// for new clients, round-robin.
    fn dispatch(&mut self) {
        while self.queued > 0 {
            let Some(token) = self.pop_queue() else {
                return;
            };
            let client = self
                .requests
                .get(&token)
                .and_then(|p| p.envelope.first().cloned())
                .unwrap_or_default();
            let preferred = self
                .affinity
                .get(&client)
                .copied()
                .filter(|sid| self.servers.get(sid).is_some_and(Server::has_credit));
            let chosen = preferred.or_else(|| self.pop_ready());
            let target = chosen.and_then(|sid| {
                let server = self.servers.get_mut(&sid)?;
                let p = self.requests.get_mut(&token)?;
                Some((sid, server, p))
            });
            let Some((sid, server, p)) = target else {
                // No credit anywhere: put the request back where it was.
                self.queue.push_front(token);
                self.queued += 1;
                return;
            };
            p.place = Place::InFlight { sid };
            server.inflight.insert(token);
            self.outbox.push_back(Transmit::Server {
                identity: server.identity.clone(),
                frames: backend::request_frames(token, p.body.clone(), server.stamp),
            });
            tracing::debug!(token, server = sid, "request dispatched");
            if self.affinity.len() >= MAX_AFFINITY && !self.affinity.contains_key(&client) {
                self.affinity.clear();
            }
            self.affinity.insert(client, sid);
            self.mark_ready(sid);
        }
    }

    /// The next server with a free credit, taken out of the ready ring.
    fn pop_ready(&mut self) -> Option<u64> {
        while let Some(sid) = self.ready.pop_front() {
            if let Some(server) = self.servers.get_mut(&sid) {
                if server.in_ready {
                    server.in_ready = false;
                    if server.has_credit() {
                        return Some(sid);
                    }
                }
            }
        }
        None
    }

    /// The oldest live queued request, taken out of the queue.
    fn pop_queue(&mut self) -> Option<u64> {
        while let Some(token) = self.queue.pop_front() {
            if matches!(
                self.requests.get(&token).map(|p| p.place),
                Some(Place::Queued { .. })
            ) {
                self.queued = self.queued.saturating_sub(1);
                return Some(token);
            }
        }
        None
    }

    // ----- timers -----

    /// Sends `HB` (with the echo of its stamp) to every server and drops the silent ones.
    fn heartbeat(&mut self, now: Instant, backlog: bool) {
        self.next_heartbeat = now + HEARTBEAT_INTERVAL;
        let mut lost: Vec<u64> = Vec::new();
        for (&sid, server) in &self.servers {
            // Messages still unread on the backend may be the very heartbeats that prove
            // a server alive: judge silence only when the broker itself has no backlog.
            if !backlog && now.saturating_duration_since(server.last_seen) > LIVENESS {
                lost.push(sid);
                continue;
            }
            self.outbox.push_back(Transmit::Server {
                identity: server.identity.clone(),
                frames: backend::broker_heartbeat_frames(server.stamp),
            });
        }
        let reason = format!("silent for over {}", human(LIVENESS));
        for sid in lost {
            self.lose_server(sid, &reason, now);
        }
    }

    /// Answers `unavailable` to every request whose deadline has passed.
    fn expire(&mut self, now: Instant, wall: Timestamp) {
        while let Some(&Reverse((at, token, kind))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(place) = self.requests.get(&token).map(|p| p.place) else {
                continue;
            };
            let why = match (kind, place) {
                (Deadline::Answer, _) => format!(
                    "no chat server answered within {}; try again",
                    human(self.cfg.request_timeout)
                ),
                (Deadline::Queue(e), Place::Queued { epoch }) if e == epoch => format!(
                    "no chat server was free to take the request within {}; try again",
                    human(self.cfg.queue_timeout)
                ),
                _ => continue,
            };
            let Some(pending) = self.requests.remove(&token) else {
                continue;
            };
            match place {
                Place::Queued { .. } => self.queued = self.queued.saturating_sub(1),
                Place::InFlight { sid } => {
                    if let Some(server) = self.servers.get_mut(&sid) {
                        server.inflight.remove(&token);
                    }
                    self.mark_ready(sid);
                }
            }
            self.stats.unavailable += 1;
            self.note_answered(token);
            tracing::debug!(token, ?place, "request timed out");
            let err = ChatError::Unavailable(why);
            self.reply_error(pending.envelope, &pending.body, &err, wall);
        }
    }

    /// Drops stale queue, ring and deadline entries once they outnumber the live ones.
    fn compact(&mut self) {
        if self.ready.len() > 2 * self.servers.len() + 64 {
            let servers = &self.servers;
            self.ready.retain(|sid| servers.contains_key(sid));
        }
        if self.queue.len() > 2 * self.queued + 64 {
            let requests = &self.requests;
            self.queue
                .retain(|t| matches!(requests.get(t).map(|p| p.place), Some(Place::Queued { .. })));
        }
        if self.deadlines.len() > 4 * self.requests.len() + 1024 {
            let requests = &self.requests;
            self.deadlines.retain(
                |Reverse((_, token, kind))| match (requests.get(token), kind) {
                    (Some(_), Deadline::Answer) => true,
                    (Some(p), Deadline::Queue(e)) => p.place == Place::Queued { epoch: *e },
                    (None, _) => false,
                },
            );
        }
    }

    fn garbage(&mut self, now: Instant, what: &str) {
        self.stats.garbage += 1;
        if self.warn.allow(now) {
            tracing::warn!(what, "malformed message ignored");
        }
    }
}

/// Encodes an error reply to `body` (the request, possibly unreadable): service, id and
/// clock are echoed when they can be read, the reply uses the request's encoding, and its
/// timestamp is `wall`.
fn error_reply(body: &[u8], err: &ChatError, wall: Timestamp) -> Vec<u8> {
    let timestamp = Some(wall);
    let next = |clock: u64| clock.saturating_add(1).min(MAX_ACCEPTED_CLOCK);
    let (service, meta, encoding) = match decode_request(body) {
        Ok((env, encoding)) => (
            env.request.service().as_str().to_string(),
            Meta {
                clock: next(env.meta.clock),
                timestamp,
                id: env.meta.id,
            },
            encoding,
        ),
        Err(failure) => (
            failure
                .service
                .map(|s| s.chars().take(64).collect())
                .unwrap_or_else(|| "error".to_string()),
            Meta {
                clock: next(failure.clock),
                timestamp,
                id: failure.id.map(|s| s.chars().take(128).collect()),
            },
            Encoding::detect(body),
        ),
    };
    let env = ReplyEnvelope::error(service, err, meta);
    encode_reply(&env, encoding).unwrap_or_else(|_| {
        // Unreachable in practice (plain strings and integers); answer anyway.
        format!(
            r#"{{"service":"error","data":{{"status":"erro","code":"{}"}}}}"#,
            err.code().as_str()
        )
        .into_bytes()
    })
}

/// `2 s`, `1.5 s`, `300 ms`.
fn human(d: Duration) -> String {
    if d.as_secs() > 0 && d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else if d.as_secs() > 0 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests;
