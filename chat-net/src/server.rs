//! The server runtime: one `zmq::poll` loop that owns its sockets and drives the chat
//! state machine and the store.
//!
//! One iteration (raft-rs style: persist, then send):
//! 1. wait until a socket is readable or a timer is due;
//! 2. drain every readable socket (bounded): client requests from the broker become
//!    replies (reads) or events (writes, validated and applied to the in-memory state);
//!    events from other servers on `replication` are applied when new;
//! 3. commit all new events of the iteration in one store transaction (one fsync);
//! 4. only then send the replies, the publications and the replication frames.
//!
//! So a client hears "OK" only for a write that is on disk, and no reply ever reveals
//! state that is not on disk yet.
//!
//! [`Node`] is the socket-free part (request handling, Lamport clock, batching); the loop in
//! [`run_server`] is the driver.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_core::protocol::{decode_request, encode_publication, encode_reply, RequestFailure};
use chat_core::{
    ChatError, ChatState, Encoding, Event, EventId, EventKind, HistoryTarget, LamportClock, Limits,
    Meta, Reply, ReplyEnvelope, Request, RequestEnvelope, ServerStatus, Timestamp,
    TOPIC_REPLICATION,
};
use chat_store::{Store, StoreError};
use tracing::{debug, info, warn};

use crate::backend;
use crate::sockets;
use crate::Shutdown;

/// How a server is wired and tuned.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Unique server name (also the origin of its events).
    pub name: String,
    /// Broker backend endpoint.
    pub broker: String,
    /// Proxy XSUB endpoint (we publish there).
    pub publish: String,
    /// Proxy XPUB endpoint (we subscribe to `replication` there).
    pub subscribe: String,
    /// Skew added to the OS clock, in milliseconds (to demonstrate clock sync).
    pub clock_skew_ms: i64,
    /// Requests the broker may hand us at once.
    pub capacity: u32,
    /// Size limits.
    pub limits: Limits,
    /// Encoding of publications.
    pub encoding: Encoding,
    /// Most messages drained from one socket per loop iteration.
    pub max_batch: usize,
}

impl ServerConfig {
    /// A configuration with default endpoints and tuning for server `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ServerConfig {
            name: name.into(),
            broker: chat_core::DEFAULT_BROKER_BACKEND.into(),
            publish: chat_core::DEFAULT_PROXY_XSUB.into(),
            subscribe: chat_core::DEFAULT_PROXY_XPUB.into(),
            clock_skew_ms: 0,
            capacity: backend::DEFAULT_CAPACITY,
            limits: Limits::default(),
            encoding: Encoding::MsgPack,
            max_batch: 512,
        }
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store failed; the server stops rather than acknowledge what it cannot keep.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ZeroMQ failed.
    #[error("transport error: {0}")]
    Zmq(#[from] zmq::Error),
}

/// The physical clock a server stamps `timestamp` with: the OS clock plus an offset.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhysicalClock {
    /// Total correction in milliseconds (configured skew plus sync adjustments).
    pub offset_ms: i64,
}

impl PhysicalClock {
    /// The current time on this clock.
    pub fn now(&self) -> Timestamp {
        let os = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Timestamp::from_millis(os).offset(self.offset_ms)
    }
}

/// The socket-free heart of a server: state, Lamport clock, and the batch of events waiting
/// for their commit.
#[derive(Debug)]
pub struct Node {
    name: String,
    state: ChatState,
    clock: LamportClock,
    next_seq: u64,
    limits: Limits,
    pending: Vec<Event>,
    local: Vec<Event>,
    offset_ms: i64,
}

impl Node {
    /// A node with empty state.
    pub fn new(name: impl Into<String>, limits: Limits) -> Node {
        Node {
            name: name.into(),
            state: ChatState::new(),
            clock: LamportClock::new(),
            next_seq: 1,
            limits,
            pending: Vec::new(),
            local: Vec::new(),
            offset_ms: 0,
        }
    }

    /// Rebuilds state from stored events (on start).
    pub fn recover(&mut self, events: &[Event]) {
        for e in events {
            self.state.apply(e);
        }
        self.clock.witness(self.state.max_clock());
        self.next_seq = self.state.applied().get(&self.name).map_or(0, |a| a.max()) + 1;
    }

    /// Server name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The replicated state.
    pub fn state(&self) -> &ChatState {
        &self.state
    }

    /// Current Lamport clock.
    pub fn lamport(&self) -> u64 {
        self.clock.value()
    }

    /// Records the physical clock offset reported by `status`.
    pub fn set_offset_ms(&mut self, offset_ms: i64) {
        self.offset_ms = offset_ms;
    }

    fn reply_meta(&mut self, now: Timestamp, id: Option<String>) -> Meta {
        Meta {
            clock: self.clock.tick(),
            timestamp: Some(now),
            id,
        }
    }

    /// Handles a decoded client request at physical time `now`.
    pub fn handle_request(&mut self, env: RequestEnvelope, now: Timestamp) -> ReplyEnvelope {
        self.clock.observe(env.meta.clock);
        let service = env.request.service();
        let id = env.meta.id.clone();
        let reply = match self.answer(env, now) {
            Ok(r) => r,
            Err(e) => {
                debug!(server = %self.name, %service, error = %e, "request refused");
                Reply::Error((&e).into())
            }
        };
        ReplyEnvelope {
            service: service.as_str().to_string(),
            reply,
            meta: self.reply_meta(now, id),
        }
    }

    /// Answers a frame that could not be decoded.
    pub fn handle_failure(&mut self, f: &RequestFailure, now: Timestamp) -> ReplyEnvelope {
        self.clock.observe(f.clock);
        warn!(server = %self.name, error = %f.error, "bad request");
        let meta = self.reply_meta(now, f.id.clone());
        ReplyEnvelope::error(
            f.service.clone().unwrap_or_else(|| "error".into()),
            &f.error,
            meta,
        )
    }

    fn answer(&mut self, env: RequestEnvelope, now: Timestamp) -> Result<Reply, ChatError> {
        let RequestEnvelope { request, meta } = env;
        if let Some(kind) = EventKind::from_request(&request) {
            if let Some(rid) = &meta.id {
                if self.state.event_for_request(rid).is_some() {
                    return Ok(Reply::Done); // a retry of a write we already have
                }
            }
            self.state.validate(&kind, &self.limits)?;
            let event = Event {
                id: EventId {
                    origin: self.name.clone(),
                    seq: self.next_seq,
                },
                clock: self.clock.tick(),
                timestamp: now,
                request_id: meta.id,
                kind,
            };
            self.next_seq += 1;
            self.state.apply(&event);
            self.pending.push(event.clone());
            self.local.push(event);
            return Ok(Reply::Done);
        }
        match request {
            Request::Users => Ok(Reply::Users(self.state.users())),
            Request::Channels => Ok(Reply::Channels(self.state.channels())),
            Request::History {
                target,
                before,
                limit,
            } => {
                let (HistoryTarget::Channel(name) | HistoryTarget::User(name)) = &target;
                if name.is_empty() {
                    return Err(ChatError::MissingField {
                        service: "history".into(),
                        field: "channel` or `data.user",
                    });
                }
                Ok(Reply::History(self.state.history(
                    &target,
                    before.as_deref(),
                    limit as usize,
                )?))
            }
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::Subscribe { .. } | Request::Unsubscribe { .. } | Request::Heartbeat { .. } => {
                Ok(Reply::Done)
            }
            other => Err(ChatError::UnknownService(format!(
                "{} (not offered by chat servers through the broker)",
                other.service().as_str()
            ))),
        }
    }

    /// Applies an event replicated from another server; returns whether it was new.
    pub fn handle_replicated(&mut self, event: Event) -> bool {
        self.clock.observe(event.clock);
        if event.id.origin == self.name || self.state.contains(&event.id) {
            return false;
        }
        self.state.apply(&event);
        self.pending.push(event);
        true
    }

    /// Events waiting to be committed to the store.
    pub fn pending(&self) -> &[Event] {
        &self.pending
    }

    /// Marks the pending events committed; returns the local ones, to publish.
    pub fn committed(&mut self) -> Vec<Event> {
        self.pending.clear();
        std::mem::take(&mut self.local)
    }

    /// What `status` reports.
    pub fn status(&self) -> ServerStatus {
        ServerStatus {
            name: self.name.clone(),
            rank: None,
            coordinator: None,
            term: 0,
            lamport: self.clock.value(),
            clock_offset_ms: self.offset_ms,
            peers: Vec::new(),
            users: self.state.users().len() as u64,
            channels: self.state.channels().len() as u64,
            messages: self.state.message_count(),
            events: self.state.event_count(),
            digest: self.state.digest(),
        }
    }
}

/// Runs a server until `shutdown` is raised. Rebuilds state from `store` first.
pub fn run_server(
    ctx: &zmq::Context,
    cfg: &ServerConfig,
    mut store: Box<dyn Store>,
    shutdown: &Shutdown,
) -> Result<(), ServerError> {
    let mut node = Node::new(cfg.name.clone(), cfg.limits);
    let stored = store.load_all()?;
    node.recover(&stored);
    let clock = PhysicalClock {
        offset_ms: cfg.clock_skew_ms,
    };
    node.set_offset_ms(clock.offset_ms);
    info!(
        server = %cfg.name,
        events = stored.len(),
        users = node.state().users().len(),
        channels = node.state().channels().len(),
        "state recovered"
    );
    drop(stored);

    let backend_sock = sockets::socket(ctx, zmq::DEALER, sockets::REQUEST_HWM)?;
    backend_sock.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
    backend_sock.connect(&cfg.broker)?;
    let publisher = sockets::socket(ctx, zmq::PUB, sockets::PUB_HWM)?;
    publisher.connect(&cfg.publish)?;
    let subscriber = sockets::socket(ctx, zmq::SUB, sockets::PUB_HWM)?;
    subscriber.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
    subscriber.connect(&cfg.subscribe)?;
    subscriber.set_subscribe(TOPIC_REPLICATION.as_bytes())?;

    let capacity = backend::capacity_bytes(cfg.capacity);
    backend_sock.send_multipart([backend::READY, &capacity[..]], 0)?;
    let mut next_heartbeat = Instant::now() + backend::HEARTBEAT_INTERVAL;
    let mut broker_seen = Instant::now();
    let mut broker_silent_logged = false;
    let mut replies: Vec<(u64, Vec<u8>)> = Vec::new();

    while !shutdown.is_triggered() {
        let wait = next_heartbeat
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let mut items = [
            backend_sock.as_poll_item(zmq::POLLIN),
            subscriber.as_poll_item(zmq::POLLIN),
        ];
        match zmq::poll(&mut items, wait.as_millis() as i64) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let (backend_ready, sub_ready) = (items[0].is_readable(), items[1].is_readable());

        if backend_ready {
            for _ in 0..cfg.max_batch {
                let parts = match backend_sock.recv_multipart(zmq::DONTWAIT) {
                    Ok(p) => p,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                };
                broker_seen = Instant::now();
                broker_silent_logged = false;
                match parts.first().map(Vec::as_slice) {
                    Some(backend::REQUEST) if parts.len() == 3 => {
                        let Some(token) = backend::parse_token(&parts[1]) else {
                            continue;
                        };
                        let now = clock.now();
                        let (reply, encoding) = match decode_request(&parts[2]) {
                            Ok((env, enc)) => (node.handle_request(env, now), enc),
                            Err(f) => (node.handle_failure(&f, now), f.encoding),
                        };
                        match encode_reply(&reply, encoding) {
                            Ok(bytes) => replies.push((token, bytes)),
                            Err(e) => warn!(error = %e, "cannot encode a reply"),
                        }
                    }
                    Some(backend::HEARTBEAT) => {}
                    _ => {
                        warn!(server = %cfg.name, frames = parts.len(), "unexpected frame from the broker")
                    }
                }
            }
        }

        if sub_ready {
            for _ in 0..cfg.max_batch {
                let parts = match subscriber.recv_multipart(zmq::DONTWAIT) {
                    Ok(p) => p,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                };
                if parts.len() != 2 || parts[0] != TOPIC_REPLICATION.as_bytes() {
                    continue; // prefix matches such as a channel named `replication2`
                }
                match Event::decode(&parts[1]) {
                    Ok(event) => {
                        let id = event.id.clone();
                        if node.handle_replicated(event) {
                            debug!(server = %cfg.name, event = %id, "replicated event applied");
                        }
                    }
                    Err(e) => {
                        warn!(server = %cfg.name, error = %e, "undecodable replication frame")
                    }
                }
            }
        }

        // Persist, then send.
        if !node.pending().is_empty() {
            store.append(node.pending())?;
        }
        let local = node.committed();
        for (token, bytes) in replies.drain(..) {
            let token = backend::token_bytes(token);
            send_to_broker(&backend_sock, [backend::REPLY, &token[..], &bytes[..]])?;
        }
        for event in &local {
            if let Some(p) = event.publication() {
                match encode_publication(&p, cfg.encoding) {
                    Ok(bytes) => publisher
                        .send_multipart([p.topic().as_bytes(), &bytes[..]], zmq::DONTWAIT)?,
                    Err(e) => warn!(error = %e, "cannot encode a publication"),
                }
            }
            match event.encode(Encoding::MsgPack) {
                Ok(bytes) => publisher
                    .send_multipart([TOPIC_REPLICATION.as_bytes(), &bytes[..]], zmq::DONTWAIT)?,
                Err(e) => warn!(error = %e, "cannot encode an event"),
            }
            debug!(server = %cfg.name, event = %event.id, op = event.kind.operation(), "write committed");
        }

        let now = Instant::now();
        if now >= next_heartbeat {
            send_to_broker(&backend_sock, [backend::HEARTBEAT, &capacity[..]])?;
            next_heartbeat = now + backend::HEARTBEAT_INTERVAL;
        }
        if now.duration_since(broker_seen) > backend::LIVENESS * 3 && !broker_silent_logged {
            warn!(server = %cfg.name, "no heartbeat from the broker; still trying");
            broker_silent_logged = true;
        }
    }
    let _ = backend_sock.send(backend::BYE, zmq::DONTWAIT);
    info!(server = %cfg.name, "stopped");
    Ok(())
}

/// Sends to the broker without ever blocking the loop: when the broker is not reading
/// (down, or its queue to us is full) the message is dropped and the client's retry or
/// the broker's re-dispatch covers it.
fn send_to_broker<const N: usize>(
    socket: &zmq::Socket,
    frames: [&[u8]; N],
) -> Result<(), ServerError> {
    match socket.send_multipart(frames, zmq::DONTWAIT) {
        Ok(()) => Ok(()),
        Err(zmq::Error::EAGAIN) => {
            debug!("broker not reading; message dropped");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
