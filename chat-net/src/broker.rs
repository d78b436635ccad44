//! The reliable request broker: Paranoid Pirate with credits (zguide chapter 4).
//!
//! Clients connect REQ (or DEALER) sockets to the frontend ROUTER; servers connect DEALER
//! sockets to the backend ROUTER and speak [`crate::backend`]. The broker keeps
//!
//! - the live servers, each with its capacity (credits) and the tokens it holds in flight;
//!   servers with a free credit take requests in round-robin order;
//! - a bounded FIFO queue of requests waiting for a free server;
//! - every outstanding request with the client envelope to route its reply back.
//!
//! Failure handling:
//!
//! - The broker sends `HB` to every server every [`HEARTBEAT_INTERVAL`]. A server silent for
//!   [`LIVENESS`], one that says `BYE`, or one a send fails to (`ZMQ_ROUTER_MANDATORY`) is
//!   dropped; its in-flight requests go back to the front of the queue for another server.
//! - A `REP` with an unknown token, or from a server that no longer holds the token (a late
//!   answer after a re-dispatch), is dropped: every request is answered at most once.
//! - A request that waits for a free server longer than [`BrokerConfig::queue_timeout`], or
//!   that is not answered within [`BrokerConfig::request_timeout`], or that finds the queue
//!   full, gets an `unavailable` error reply from the broker itself.
//! - A request that is not exactly one non-empty frame gets `bad_request`, one larger than
//!   [`BrokerConfig::max_frame`] gets `too_large`; both in the encoding of the request.
//!   The frontend socket's `MAXMSGSIZE` is [`FRONTEND_FRAME_FACTOR`] times the frame limit
//!   (4 MiB by default), so a frame up to that size still reaches the broker and is answered
//!   `too_large`; only a frame beyond it is refused by libzmq itself, which closes that
//!   client's connection without a reply (the bound on what one frame can make the broker
//!   allocate).
//! - Nothing a peer sends can stop the loop: malformed frames are counted and logged
//!   (warnings are rate-limited) and sends to vanished clients are dropped.
//!
//! Client envelopes: a REQ client arrives as `[identity]["" ][body]`, a DEALER client as
//! `[identity][body]` or `[identity]["" ][body]`; requests relayed by further ROUTER/DEALER
//! hops carry several identity frames before the delimiter. Everything up to and including
//! the first empty frame (or just the identity when there is none) is the envelope, kept
//! verbatim and put back in front of the reply.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_core::codec::Encoding;
use chat_core::error::ChatError;
use chat_core::protocol::{decode_request, encode_reply, Meta, ReplyEnvelope, MAX_ACCEPTED_CLOCK};
use chat_core::time::Timestamp;

use crate::backend::{self, HEARTBEAT_INTERVAL, LIVENESS};
use crate::{sockets, Shutdown};

/// Longest the loop sleeps before checking the shutdown flag.
const MAX_POLL: Duration = Duration::from_millis(100);
/// Most messages read from one socket before looking at the other one again.
const BATCH: usize = 1024;
/// The backend accepts frames this many times larger than the frame limit, so an oversized
/// reply reaches the broker (which answers `too_large`) instead of killing the server's
/// connection.
const BACKEND_FRAME_FACTOR: i64 = 4;
/// The frontend accepts frames this many times larger than the frame limit, so an oversized
/// request reaches the broker and gets a `too_large` reply instead of a silently closed
/// connection; libzmq drops only frames beyond this.
pub const FRONTEND_FRAME_FACTOR: i64 = 4;
/// Longest timeout honoured (larger ones are clamped, so deadlines cannot overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most clients remembered for session affinity (the map is reset when full).
const MAX_AFFINITY: usize = 65_536;
/// Rate-limited warnings: at most this many per second.
const WARNINGS_PER_SECOND: u32 = 20;

/// Where the broker listens and how long requests may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Endpoint clients connect to (ROUTER), e.g. `tcp://*:5555`.
    pub frontend: String,
    /// Endpoint servers connect to (ROUTER speaking [`crate::backend`]), e.g. `tcp://*:5556`.
    pub backend: String,
    /// Longest a request waits for a server with a free credit (default 2 s).
    pub queue_timeout: Duration,
    /// Longest a request may stay unanswered, queued or in flight (default 5 s).
    pub request_timeout: Duration,
    /// Most requests waiting in the queue (at least 1); more are refused at once
    /// (default 10 000).
    pub max_pending: usize,
    /// Largest request or reply frame forwarded, in bytes (default [`sockets::MAX_MSG_SIZE`]).
    pub max_frame: usize,
}

impl Default for BrokerConfig {
    /// The default ports of PROTOCOL.md on every interface, and the default limits.
    fn default() -> Self {
        BrokerConfig {
            frontend: "tcp://*:5555".to_string(),
            backend: "tcp://*:5556".to_string(),
            queue_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_pending: 10_000,
            max_frame: usize::try_from(sockets::MAX_MSG_SIZE).unwrap_or(1 << 20),
        }
    }
}

/// Counters of what the broker did, returned when it stops.
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

/// A bound broker, ready to run (bind first, so bind errors and real ports are known).
pub struct Broker {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    frontend_endpoint: String,
    backend_endpoint: String,
    cfg: BrokerConfig,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("frontend", &self.frontend_endpoint)
            .field("backend", &self.backend_endpoint)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Broker {
    /// Creates and binds both ROUTER sockets.
    pub fn bind(ctx: &crate::Context, cfg: &BrokerConfig) -> zmq::Result<Broker> {
        let ctx = ctx.zmq();
        let frame_limit = i64::try_from(cfg.max_frame)
            .unwrap_or(i64::MAX)
            .max(sockets::MAX_MSG_SIZE);
        let frontend = sockets::socket(ctx, zmq::ROUTER, sockets::REQUEST_HWM)?;
        frontend.set_router_mandatory(true)?;
        frontend.set_maxmsgsize(frame_limit.saturating_mul(FRONTEND_FRAME_FACTOR))?;
        let backend = sockets::socket(ctx, zmq::ROUTER, sockets::REQUEST_HWM)?;
        backend.set_router_mandatory(true)?;
        backend.set_maxmsgsize(frame_limit.saturating_mul(BACKEND_FRAME_FACTOR))?;
        let frontend_endpoint = sockets::bind(&frontend, &cfg.frontend)?;
        let backend_endpoint = sockets::bind(&backend, &cfg.backend)?;
        Ok(Broker {
            frontend,
            backend,
            frontend_endpoint,
            backend_endpoint,
            cfg: cfg.clone(),
        })
    }

    /// The endpoint clients connect to, with the real port.
    pub fn frontend_endpoint(&self) -> &str {
        &self.frontend_endpoint
    }

    /// The endpoint servers connect to, with the real port.
    pub fn backend_endpoint(&self) -> &str {
        &self.backend_endpoint
    }

    /// Serves until `shutdown` is raised; pending requests then get `unavailable`.
    pub fn run(self, shutdown: &Shutdown) -> zmq::Result<BrokerStats> {
        tracing::info!(
            frontend = %self.frontend_endpoint,
            backend = %self.backend_endpoint,
            queue_timeout_ms = self.cfg.queue_timeout.as_millis() as u64,
            request_timeout_ms = self.cfg.request_timeout.as_millis() as u64,
            max_pending = self.cfg.max_pending,
            "broker running"
        );
        let io = Io {
            frontend: self.frontend,
            backend: self.backend,
        };
        let mut core = Core::new(self.cfg, Instant::now());
        let result = core.run(&io, shutdown);
        core.shutdown(&io);
        let stats = core.stats;
        tracing::info!(?stats, "broker stopped");
        result.map(|()| stats)
    }
}

/// Binds the broker, reports the real `(frontend, backend)` endpoints on `bound` (if given),
/// and serves until `shutdown` is raised.
pub fn run_broker(
    ctx: &crate::Context,
    cfg: &BrokerConfig,
    shutdown: &Shutdown,
    bound: Option<crossbeam_channel::Sender<(String, String)>>,
) -> zmq::Result<()> {
    let broker = Broker::bind(ctx, cfg)?;
    if let Some(tx) = bound {
        // The receiver may have gone away; the broker runs anyway.
        let _ = tx.send((
            broker.frontend_endpoint.clone(),
            broker.backend_endpoint.clone(),
        ));
    }
    broker.run(shutdown).map(|_| ())
}

/// The two sockets.
struct Io {
    frontend: zmq::Socket,
    backend: zmq::Socket,
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
struct Server {
    identity: Vec<u8>,
    capacity: u32,
    inflight: HashSet<u64>,
    last_seen: Instant,
    /// Whether its id is in the ready ring.
    in_ready: bool,
}

impl Server {
    fn has_credit(&self) -> bool {
        self.inflight.len() < self.capacity as usize
    }
}

/// At most [`WARNINGS_PER_SECOND`] warnings about garbage per second.
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

/// The broker's state; all methods are O(1) or O(log n) per request, except server
/// loss (O(in-flight of that server)) and heartbeats (O(servers)).
struct Core {
    cfg: BrokerConfig,
    servers: HashMap<u64, Server>,
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
}

impl Core {
    fn new(mut cfg: BrokerConfig, now: Instant) -> Core {
        cfg.queue_timeout = cfg.queue_timeout.min(MAX_TIMEOUT);
        cfg.request_timeout = cfg.request_timeout.min(MAX_TIMEOUT);
        Core {
            cfg,
            servers: HashMap::new(),
            by_identity: HashMap::new(),
            ready: VecDeque::new(),
            next_sid: 1,
            requests: HashMap::new(),
            queue: VecDeque::new(),
            queued: 0,
            deadlines: BinaryHeap::new(),
            // A random start, so a reply meant for a previous broker run is unlikely to
            // match a token of this one.
            next_token: rand::random::<u64>() >> 1,
            next_heartbeat: now + HEARTBEAT_INTERVAL,
            warn: WarnLimiter {
                window: now,
                count: 0,
                suppressed: 0,
            },
            stats: BrokerStats::default(),
            affinity: HashMap::new(),
        }
    }

    fn run(&mut self, io: &Io, shutdown: &Shutdown) -> zmq::Result<()> {
        while !shutdown.is_triggered() {
            let timeout = self.poll_timeout(Instant::now());
            let (from_servers, from_clients) = {
                let mut items = [
                    io.backend.as_poll_item(zmq::POLLIN),
                    io.frontend.as_poll_item(zmq::POLLIN),
                ];
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                (items[0].is_readable(), items[1].is_readable())
            };
            // Servers first: replies free credits for the requests that follow.
            if from_servers {
                for _ in 0..BATCH {
                    match io.backend.recv_multipart(zmq::DONTWAIT) {
                        Ok(frames) => self.on_server(io, frames, Instant::now()),
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e),
                    }
                }
                // Credits freed by replies go to waiting requests before new ones arrive,
                // so a non-empty queue always means "no server is free".
                self.dispatch(io);
            }
            if from_clients {
                for _ in 0..BATCH {
                    match io.frontend.recv_multipart(zmq::DONTWAIT) {
                        Ok(frames) => self.on_client(io, frames, Instant::now()),
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            let now = Instant::now();
            if now >= self.next_heartbeat {
                self.heartbeat(io, now);
            }
            self.expire(io, now);
            self.dispatch(io);
        }
        Ok(())
    }

    /// Milliseconds until the next heartbeat or deadline, at most [`MAX_POLL`].
    fn poll_timeout(&self, now: Instant) -> i64 {
        let mut wait = MAX_POLL.min(self.next_heartbeat.saturating_duration_since(now));
        if let Some(Reverse((at, _, _))) = self.deadlines.peek() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        // Round up so the loop does not spin during the last sub-millisecond.
        wait.as_micros().div_ceil(1000) as i64
    }

    // ----- clients -----

    fn on_client(&mut self, io: &Io, mut frames: Vec<Vec<u8>>, now: Instant) {
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
                self.reply_error(io, &envelope, &[], &err);
                return;
            }
            n => {
                self.stats.rejected += 1;
                let err = ChatError::BadFrame(format!(
                    "a request is exactly one frame; this one has {n}"
                ));
                let first = body_frames.iter().find(|f| !f.is_empty());
                self.reply_error(io, &envelope, first.map_or(&[][..], |f| &f[..]), &err);
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
            self.reply_error(io, &envelope, &body, &err);
            return;
        }
        if self.queued >= self.cfg.max_pending.max(1) {
            self.stats.unavailable += 1;
            tracing::debug!(queued = self.queued, "queue full; request refused");
            let err = ChatError::Unavailable(format!(
                "{} requests are already waiting for a chat server; try again",
                self.queued
            ));
            self.reply_error(io, &envelope, &body, &err);
            return;
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
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
        self.dispatch(io);
    }

    /// Sends `[envelope][reply]` to a client; a client that is gone is dropped silently.
    fn send_client(&mut self, io: &Io, envelope: &[Vec<u8>], reply: &[u8]) {
        let frames: Vec<&[u8]> = envelope.iter().map(Vec::as_slice).chain([reply]).collect();
        match send_now(&io.frontend, &frames) {
            Ok(()) => {}
            Err(zmq::Error::EHOSTUNREACH) => {
                self.stats.undeliverable += 1;
                tracing::debug!("client gone; reply dropped");
            }
            Err(e) => {
                self.stats.undeliverable += 1;
                tracing::warn!(error = %e, "reply to a client dropped");
            }
        }
    }

    /// Answers a request with an error of the broker's own, in the request's encoding.
    fn reply_error(&mut self, io: &Io, envelope: &[Vec<u8>], body: &[u8], err: &ChatError) {
        let reply = error_reply(body, err);
        self.send_client(io, envelope, &reply);
    }

    // ----- servers -----

    fn on_server(&mut self, io: &Io, frames: Vec<Vec<u8>>, now: Instant) {
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
                match (known, capacity) {
                    (Some(sid), capacity) => self.refresh(sid, capacity, now),
                    (None, Some(capacity)) => self.register(identity, capacity, now),
                    (None, None) => self.garbage(now, "READY/HB without a valid capacity"),
                }
            }
            backend::REPLY => {
                let token = frames.next().as_deref().and_then(backend::parse_token);
                let reply = frames.next();
                match (known, token, reply) {
                    (Some(sid), Some(token), Some(reply)) => {
                        self.refresh(sid, None, now);
                        self.on_reply(io, sid, token, reply);
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
    }

    fn register(&mut self, identity: Vec<u8>, capacity: u32, now: Instant) {
        let sid = self.next_sid;
        self.next_sid += 1;
        tracing::info!(
            server = sid,
            capacity,
            servers = self.servers.len() + 1,
            "server joined"
        );
        self.by_identity.insert(identity.clone(), sid);
        self.servers.insert(
            sid,
            Server {
                identity,
                capacity,
                inflight: HashSet::new(),
                last_seen: now,
                in_ready: false,
            },
        );
        self.stats.servers_joined += 1;
        self.mark_ready(sid);
    }

    /// A known server spoke: it is alive, and maybe announces a new capacity.
    fn refresh(&mut self, sid: u64, capacity: Option<u32>, now: Instant) {
        if let Some(server) = self.servers.get_mut(&sid) {
            server.last_seen = now;
            if let Some(capacity) = capacity {
                server.capacity = capacity;
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

    fn on_reply(&mut self, io: &Io, sid: u64, token: u64, reply: Vec<u8>) {
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
            self.reply_error(io, &pending.envelope, &pending.body, &err);
            return;
        }
        self.stats.replies += 1;
        tracing::debug!(token, server = sid, "reply forwarded");
        self.send_client(io, &pending.envelope, &reply);
    }

    /// Drops a server and sends its in-flight requests again, ahead of the queue.
    fn lose_server(&mut self, sid: u64, reason: &str, now: Instant) {
        let Some(server) = self.servers.remove(&sid) else {
            return;
        };
        self.by_identity.remove(&server.identity);
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

    /// Hands queued requests to servers with free credits: a client goes back to the
    /// server that served it last while that server is alive and has a credit (session
    /// affinity: one publisher's posts leave through one server, in order); otherwise, and
    /// for new clients, round-robin.
    fn dispatch(&mut self, io: &Io) {
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
            let sid = match preferred.or_else(|| self.pop_ready()) {
                Some(sid) => sid,
                None => {
                    // No credit anywhere: put the request back where it was.
                    self.queue.push_front(token);
                    self.queued += 1;
                    return;
                }
            };
            let (Some(server), Some(p)) =
                (self.servers.get_mut(&sid), self.requests.get_mut(&token))
            else {
                continue;
            };
            let tok = backend::token_bytes(token);
            let frames: [&[u8]; 4] = [&server.identity, backend::REQUEST, &tok, &p.body];
            match send_now(&io.backend, &frames) {
                Ok(()) => {
                    p.place = Place::InFlight { sid };
                    server.inflight.insert(token);
                    tracing::debug!(token, server = sid, "request dispatched");
                    if self.affinity.len() >= MAX_AFFINITY && !self.affinity.contains_key(&client) {
                        self.affinity.clear();
                    }
                    self.affinity.insert(client, sid);
                    self.mark_ready(sid);
                }
                Err(e) => {
                    let now = Instant::now();
                    self.enqueue(token, true, now);
                    let reason = format!("unreachable ({e})");
                    self.lose_server(sid, &reason, now);
                }
            }
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

    /// Sends `HB` to every server and drops the silent or unreachable ones.
    fn heartbeat(&mut self, io: &Io, now: Instant) {
        self.next_heartbeat = now + HEARTBEAT_INTERVAL;
        // Messages still unread on the backend may be the very heartbeats that prove a
        // server alive: judge silence only when the broker itself has no backlog.
        let backlog = io.backend.poll(zmq::POLLIN, 0).map_or(true, |n| n > 0);
        let mut lost: Vec<(u64, String)> = Vec::new();
        for (&sid, server) in &self.servers {
            if !backlog && now.saturating_duration_since(server.last_seen) > LIVENESS {
                lost.push((sid, format!("silent for over {}", human(LIVENESS))));
                continue;
            }
            let frames: [&[u8]; 2] = [&server.identity, backend::HEARTBEAT];
            if let Err(e) = send_now(&io.backend, &frames) {
                lost.push((sid, format!("unreachable ({e})")));
            }
        }
        for (sid, reason) in lost {
            self.lose_server(sid, &reason, now);
        }
    }

    /// Answers `unavailable` to every request whose deadline has passed.
    fn expire(&mut self, io: &Io, now: Instant) {
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
            tracing::debug!(token, ?place, "request timed out");
            let err = ChatError::Unavailable(why);
            self.reply_error(io, &pending.envelope, &pending.body, &err);
        }
        self.compact();
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

    /// Answers every outstanding request `unavailable` (the broker is stopping).
    fn shutdown(&mut self, io: &Io) {
        let pending: Vec<Pending> = self.requests.drain().map(|(_, p)| p).collect();
        if !pending.is_empty() {
            tracing::info!(
                pending = pending.len(),
                "answering pending requests before stopping"
            );
        }
        let err = ChatError::Unavailable("the broker is shutting down; try again".to_string());
        for p in pending {
            self.stats.unavailable += 1;
            self.reply_error(io, &p.envelope, &p.body, &err);
        }
        self.queue.clear();
        self.queued = 0;
        self.deadlines.clear();
    }

    fn garbage(&mut self, now: Instant, what: &str) {
        self.stats.garbage += 1;
        if self.warn.allow(now) {
            tracing::warn!(what, "malformed message ignored");
        }
    }
}

/// Sends a multipart message without blocking, retrying a frame a signal interrupted.
///
/// On a ROUTER the first frame is the peer identity: with `ZMQ_ROUTER_MANDATORY` an
/// unknown peer (`EHOSTUNREACH`) or a full pipe (`EAGAIN`) fails on that frame, before
/// anything is queued, so a failed send never leaves half a message behind. A frame that
/// fails is not consumed, so retrying just that frame after `EINTR` is safe.
fn send_now(socket: &zmq::Socket, frames: &[&[u8]]) -> zmq::Result<()> {
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.iter().enumerate() {
        let flags = zmq::DONTWAIT | if i < last { zmq::SNDMORE } else { 0 };
        let mut attempts = 0;
        loop {
            match socket.send(*frame, flags) {
                Ok(()) => break,
                Err(zmq::Error::EINTR) if attempts < 3 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Encodes an error reply to `body` (the request, possibly unreadable): service, id and
/// clock are echoed when they can be read, and the reply uses the request's encoding.
fn error_reply(body: &[u8], err: &ChatError) -> Vec<u8> {
    let timestamp = Some(now_timestamp());
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

/// The wall clock as a wire timestamp.
fn now_timestamp() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms)
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
mod tests {
    use super::*;
    use chat_core::protocol::{decode_reply, Reply};
    use chat_core::ErrorCode;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(2)), "2 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_millis(300)), "300 ms");
    }

    #[test]
    fn error_replies_echo_what_can_be_read() {
        let json = br#"{"service":"users","data":{"clock":7,"id":"r1"}}"#;
        let bytes = error_reply(json, &ChatError::Unavailable("x".into()));
        assert_eq!(Encoding::detect(&bytes), Encoding::Json);
        let (env, _) = decode_reply(&bytes).unwrap();
        assert_eq!(env.service, "users");
        assert_eq!(env.meta.id.as_deref(), Some("r1"));
        assert_eq!(env.meta.clock, 8);
        match env.reply {
            Reply::Error(e) => assert_eq!(e.code, ErrorCode::Unavailable),
            other => panic!("not an error: {other:?}"),
        }

        let bytes = error_reply(&[0xc1, 0xff], &ChatError::BadFrame("y".into()));
        let (env, enc) = decode_reply(&bytes).unwrap();
        assert_eq!(enc, Encoding::MsgPack);
        assert_eq!(env.service, "error");
        match env.reply {
            Reply::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
            other => panic!("not an error: {other:?}"),
        }
    }
}
