//! The server runtime: one `zmq::poll` loop that owns its sockets and drives the chat
//! state machine, the store, and the coordination and replication machines.
//!
//! One iteration (raft-rs style: persist, then send):
//! 1. wait until a socket is readable or a timer is due;
//! 2. drain every readable socket (bounded): client requests from the broker become
//!    replies (reads) or events (writes, validated and applied to the in-memory state);
//!    events from other servers (`replicate` pushes, `sync` answers, the `replication`
//!    topic) are applied when new; election, clock and liveness messages feed the
//!    `chat-sync` machines;
//! 3. when no batch is being committed, hand every new event since the last batch to the
//!    [`commit`] writer thread as the next batch (one transaction, one fsync) and go on
//!    serving while it is written: writes arriving meanwhile form the next batch;
//! 4. once the writer reports a batch durable, send what depended on it: publications,
//!    `replication` frames, `replicate` pushes to peers, replies to reads, and the replies
//!    to writes whose events enough peers hold (`--ack-replicas`, see
//!    [`chat_sync::replication`]).
//!
//! So a client hears "OK" only for a write that is on disk here and on another live server,
//! and no reply ever reveals state that is not on disk here: every reply waits for the
//! batch holding the newest event applied before it was built.
//!
//! # Layout
//! - [`node`]: the socket-free part (request handling, Lamport clock, batching).
//! - [`commit`]: group commit on a writer thread, one batch in flight.
//! - [`peers`]: DEALER links to the other servers, with pending requests and deadlines.
//! - [`reference_client`]: rank, heartbeats and the live list from the reference.

pub mod commit;
pub mod node;
pub mod peers;
pub mod reference_client;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_core::protocol::{
    decode_announcement, decode_client_request, decode_peer_request, encode_announcement,
    encode_publication, encode_reply, RequestFailure, DEFAULT_SYNC_LIMIT,
};
use chat_core::{
    ChatError, ClientRequest, Encoding, Event, Limits, Meta, PeerRequest, Reply, ReplyEnvelope,
    Request, RequestEnvelope, ServerInfo, ServerStatus, Timestamp, TOPIC_REPLICATION,
    TOPIC_SERVERS,
};
use chat_store::{Store, StoreError};
use chat_sync::{
    Berkeley, BerkeleyConfig, BerkeleyOutput, Bully, BullyConfig, BullyMsg, BullyOutput,
    DetectorConfig, FailureDetector, Release, ReplicationConfig, Replicator, Verdict,
};
use commit::{Committer, SharedStore};
use tracing::{debug, info, warn};

use crate::backend;
use crate::sockets;
use crate::Shutdown;

pub use node::{Handled, Node};
use peers::{Peers, Pending};
use reference_client::{Identity, RefClient, RefEvent};

/// Most bytes of events in one `sync` answer.
pub const SYNC_REPLY_BYTES: usize = 512 * 1024;
/// A server that knows no live peer this long after start counts as caught up (alone).
pub const ALONE_GRACE: Duration = Duration::from_secs(3);
/// Most own events kept in memory for pushing to peers (older ones are read from the store).
pub const OUTBOX_MAX: usize = 100_000;
/// Most peer-socket replies waiting for a commit; beyond it the peer socket is left unread
/// (its queue, then ZeroMQ's high-water mark, push back) until the disk catches up.
pub const MAX_WAITING_PEER_REPLIES: usize = 10_000;

/// How a server is wired and tuned.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Unique server name (also the origin of its events).
    pub name: String,
    /// Broker backend endpoint.
    pub broker: String,
    /// Proxy XSUB endpoint (we publish there).
    pub publish: String,
    /// Proxy XPUB endpoint (we subscribe to `replication` and `servers` there).
    pub subscribe: String,
    /// Reference service endpoint; `None` runs without ranks, election or peers.
    pub reference: Option<String>,
    /// Endpoint the peer socket binds (`tcp://127.0.0.1:*` for an OS-chosen port).
    pub peer: String,
    /// Endpoint announced to the other servers; default: the bound peer endpoint.
    pub advertise: Option<String>,
    /// Skew added to the OS clock, in milliseconds (to demonstrate clock sync).
    pub clock_skew_ms: i64,
    /// Requests the broker may hand us at once.
    pub capacity: u32,
    /// Size limits.
    pub limits: Limits,
    /// Per-user rate limit of client writes (see [`chat_core::ratelimit`]; rate 0 disables).
    pub rate_limit: chat_core::ratelimit::RateLimit,
    /// Encoding of publications.
    pub encoding: Encoding,
    /// Most messages drained from one socket per loop iteration.
    pub max_batch: usize,
    /// Acknowledgement rules for writes.
    pub replication: ReplicationConfig,
    /// Election timeouts.
    pub bully: BullyConfig,
    /// Failure detection between servers.
    pub detector: DetectorConfig,
    /// Clock synchronisation.
    pub berkeley: BerkeleyConfig,
    /// How often to talk to the reference.
    pub reference_interval: Duration,
    /// How often to ask a peer for missed events (anti-entropy).
    pub sync_interval: Duration,
    /// Commit on the loop thread even for a durable store (the loop then waits for every
    /// fsync; for comparison and for stores that are fast anyway).
    pub inline_commit: bool,
}

impl ServerConfig {
    /// A configuration with default endpoints and tuning for server `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ServerConfig {
            name: name.into(),
            broker: chat_core::DEFAULT_BROKER_BACKEND.into(),
            publish: chat_core::DEFAULT_PROXY_XSUB.into(),
            subscribe: chat_core::DEFAULT_PROXY_XPUB.into(),
            reference: None,
            peer: "tcp://127.0.0.1:*".into(),
            advertise: None,
            clock_skew_ms: 0,
            capacity: backend::DEFAULT_CAPACITY,
            limits: Limits::default(),
            rate_limit: chat_core::ratelimit::RateLimit::default(),
            encoding: Encoding::MsgPack,
            max_batch: 512,
            replication: ReplicationConfig::default(),
            bully: BullyConfig::default(),
            detector: DetectorConfig::default(),
            berkeley: BerkeleyConfig::default(),
            reference_interval: Duration::from_millis(500),
            sync_interval: Duration::from_secs(2),
            inline_commit: false,
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
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
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

/// A client reply waiting for its write to be replicated.
#[derive(Debug)]
struct HeldReply {
    token: u64,
    bytes: Vec<u8>,
    encoding: Encoding,
    service: String,
    id: Option<String>,
}

/// A batch being committed, and what to do once it is durable.
#[derive(Debug)]
struct Batch {
    epoch: u64,
    /// This server's own events in the batch (to publish and push to peers).
    local: Vec<Event>,
    /// Own sequence numbers through this one are durable with the batch.
    own_max: u64,
    /// The version vector including the batch (what `replicate` acknowledgements report).
    vector: BTreeMap<String, u64>,
}

/// The routing frames of a request on the peer socket (identity up to the delimiter).
type Envelope = Vec<Vec<u8>>;

/// A reply on the peer socket, built once what it reveals is durable.
enum PeerReply {
    Ready(ReplyEnvelope),
    /// `replicate`: our version vector, once the events are durable.
    Vector(String, Option<String>),
    /// `sync`: events beyond the asker's vector.
    Sync {
        vector: BTreeMap<String, u64>,
        limit: u32,
        id: Option<String>,
    },
}

/// The endpoint the peer socket is reachable at, once bound.
pub type PeerEndpoint = String;

/// Runs a server until `shutdown` is raised. Rebuilds state from `store` first.
pub fn run_server(
    ctx: &zmq::Context,
    cfg: &ServerConfig,
    store: Box<dyn Store>,
    shutdown: &Shutdown,
) -> Result<(), ServerError> {
    run_server_reporting(ctx, cfg, store, shutdown, None)
}

/// [`run_server`], reporting the bound peer endpoint on `bound`.
pub fn run_server_reporting(
    ctx: &zmq::Context,
    cfg: &ServerConfig,
    store: Box<dyn Store>,
    shutdown: &Shutdown,
    bound: Option<crossbeam_channel::Sender<PeerEndpoint>>,
) -> Result<(), ServerError> {
    let mut rt = Runtime::start(ctx, cfg, store)?;
    if let Some(tx) = bound {
        let _ = tx.send(rt.peer_endpoint.clone());
    }
    while !shutdown.is_triggered() {
        rt.step()?;
    }
    let _ = rt.backend.send(backend::BYE, zmq::DONTWAIT);
    if rt.committer.busy() || !rt.node.pending().is_empty() {
        // Nothing of it was acknowledged; the writer finishes the batch it is on.
        debug!(server = %cfg.name, "stopping with writes not yet committed");
    }
    info!(server = %cfg.name, "stopped");
    Ok(())
}

struct Runtime<'a> {
    cfg: &'a ServerConfig,
    ctx: zmq::Context,
    node: Node,
    committer: Committer,
    /// Number of the batch new events join (batches are numbered from 1).
    epoch_open: u64,
    /// Every batch up to this one is durable.
    epoch_durable: u64,
    /// The batch being committed.
    inflight: Option<Batch>,
    /// The version vector of what is durable here.
    durable_vector: BTreeMap<String, u64>,
    clock: PhysicalClock,
    backend: zmq::Socket,
    publisher: zmq::Socket,
    subscriber: zmq::Socket,
    peer_router: zmq::Socket,
    peer_endpoint: String,
    capacity: Vec<u8>,
    refc: Option<RefClient>,
    registered: bool,
    rank: Option<u64>,
    peers: Peers,
    bully: Option<Bully>,
    bully_started: bool,
    /// When the election starts at the latest (set when the peers are first known).
    bully_start_by: Option<Instant>,
    /// Peers heard from since they were listed (the election starts early once all are).
    heard: std::collections::BTreeSet<String>,
    /// Whether the reference's list arrived at least once.
    listed: bool,
    /// Whether the broker was told we are ready (only once caught up).
    registered_with_broker: bool,
    term_persisted: u64,
    fd: FailureDetector,
    berkeley: Berkeley,
    repl: Replicator<HeldReply>,
    outbox: BTreeMap<u64, Event>,
    /// Client replies ready to send (token, bytes).
    replies: Vec<(u64, Vec<u8>)>,
    /// Client replies waiting for a batch: (epoch, token, bytes), epochs ascending.
    deferred: VecDeque<(u64, (u64, Vec<u8>))>,
    /// Peer replies: (epoch they wait for, envelope, reply), epochs ascending.
    peer_replies: VecDeque<(u64, (Envelope, PeerReply))>,
    caught_up: bool,
    sync_inflight: Option<String>,
    next_sync: Instant,
    sync_turn: usize,
    started: Instant,
    next_heartbeat: Instant,
    broker_seen: Instant,
    broker_silent_logged: bool,
}

impl<'a> Runtime<'a> {
    fn start(
        ctx: &zmq::Context,
        cfg: &'a ServerConfig,
        store: Box<dyn Store>,
    ) -> Result<Self, ServerError> {
        let mut node = Node::new(cfg.name.clone(), cfg.limits, cfg.rate_limit);
        let stored = store.load_all()?;
        node.recover(&stored);
        info!(
            server = %cfg.name,
            events = stored.len(),
            users = node.state().users().len(),
            channels = node.state().channels().len(),
            "state recovered"
        );
        drop(stored);
        let rank = store.get_meta("rank")?.and_then(|r| r.parse().ok());
        let term_persisted = store
            .get_meta("term")?
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);

        let backend = sockets::socket(ctx, zmq::DEALER, sockets::REQUEST_HWM)?;
        backend.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
        backend.connect(&cfg.broker)?;
        let publisher = sockets::socket(ctx, zmq::PUB, sockets::PUB_HWM)?;
        publisher.connect(&cfg.publish)?;
        let subscriber = sockets::socket(ctx, zmq::SUB, sockets::PUB_HWM)?;
        subscriber.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
        subscriber.connect(&cfg.subscribe)?;
        if cfg.reference.is_none() {
            // No reference, no peers: replicate seed-style, best effort, over the topic.
            // With peers, `replicate` pushes and `sync` pulls carry every event (lossless),
            // and decoding every event a second time from the topic would only cost CPU.
            subscriber.set_subscribe(TOPIC_REPLICATION.as_bytes())?;
        }
        subscriber.set_subscribe(TOPIC_SERVERS.as_bytes())?;
        let peer_router = sockets::socket(ctx, zmq::ROUTER, sockets::REQUEST_HWM)?;
        peer_router.set_maxmsgsize(sockets::MAX_MSG_SIZE * 4)?;
        peer_router.set_router_mandatory(true)?;
        let bound = sockets::bind(&peer_router, &cfg.peer)?;
        let peer_endpoint = cfg.advertise.clone().unwrap_or(bound);
        info!(server = %cfg.name, peer = %peer_endpoint, "peer socket bound");

        let capacity = backend::capacity_bytes(cfg.capacity);
        let now = Instant::now();
        let own = node.own_max_seq();
        let store: SharedStore = std::sync::Arc::new(parking_lot::Mutex::new(store));
        let committer = Committer::start(ctx, &cfg.name, store, cfg.inline_commit)?;
        let durable_vector = vector_of(&node);
        Ok(Runtime {
            cfg,
            ctx: ctx.clone(),
            node,
            committer,
            epoch_open: 1,
            epoch_durable: 0,
            inflight: None,
            durable_vector,
            clock: PhysicalClock {
                offset_ms: cfg.clock_skew_ms,
            },
            backend,
            publisher,
            subscriber,
            peer_router,
            peer_endpoint,
            capacity,
            refc: cfg
                .reference
                .clone()
                .map(|r| RefClient::new(r, cfg.reference_interval, now)),
            registered: false,
            rank,
            peers: Peers::default(),
            bully: None,
            bully_started: false,
            bully_start_by: None,
            heard: std::collections::BTreeSet::new(),
            listed: false,
            registered_with_broker: false,
            term_persisted,
            fd: FailureDetector::new(cfg.detector),
            berkeley: Berkeley::new(cfg.name.clone(), cfg.berkeley),
            repl: Replicator::new(cfg.replication, own),
            outbox: BTreeMap::new(),
            replies: Vec::new(),
            deferred: VecDeque::new(),
            peer_replies: VecDeque::new(),
            // Without a reference there are no peers to catch up from.
            caught_up: cfg.reference.is_none(),
            sync_inflight: None,
            next_sync: now,
            sync_turn: 0,
            started: now,
            next_heartbeat: now + backend::HEARTBEAT_INTERVAL,
            broker_seen: now,
            broker_silent_logged: false,
        })
    }

    fn local_ms(&self) -> i64 {
        self.clock.now().millis()
    }

    fn meta(&mut self, id: Option<String>) -> Meta {
        let now = self.clock.now();
        self.node.meta(now, id)
    }

    fn alive(&self, now: Instant) -> Vec<String> {
        self.fd
            .alive(now)
            .into_iter()
            .filter(|p| self.peers.contains(p))
            .collect()
    }

    fn next_wakeup(&self, now: Instant) -> Duration {
        let mut at = now + Duration::from_millis(100);
        if self.registered_with_broker {
            at = at.min(self.next_heartbeat);
        }
        let timers = [
            self.bully.as_ref().and_then(Bully::poll_timeout),
            self.fd.poll_timeout(),
            self.berkeley.poll_timeout(),
            self.repl.poll_timeout(),
            self.peers.next_deadline(),
            self.refc.as_ref().map(RefClient::next_deadline),
        ];
        for t in timers.into_iter().flatten() {
            at = at.min(t);
        }
        at.saturating_duration_since(now)
    }

    fn step(&mut self) -> Result<(), ServerError> {
        let wait = self.next_wakeup(Instant::now());
        let peer_names = self.peers.names();
        // Peer requests beyond the cap wait in the socket until commits catch up.
        let peer_events = if self.peer_replies.len() < MAX_WAITING_PEER_REPLIES {
            zmq::POLLIN
        } else {
            zmq::PollEvents::empty()
        };
        let readable: Vec<bool> = {
            let mut items = vec![
                self.backend.as_poll_item(zmq::POLLIN),
                self.subscriber.as_poll_item(zmq::POLLIN),
                self.peer_router.as_poll_item(peer_events),
            ];
            let ref_socket = self.refc.as_ref().and_then(RefClient::socket);
            if let Some(s) = ref_socket {
                items.push(s.as_poll_item(zmq::POLLIN));
            }
            items.extend(self.peers.poll_items());
            // The writer's completions (its socket is read in `commit_and_send`).
            if let Some(s) = self.committer.socket() {
                items.push(s.as_poll_item(zmq::POLLIN));
            }
            match zmq::poll(&mut items, wait.as_millis() as i64) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let mut r: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            if ref_socket.is_none() {
                r.insert(3, false);
            }
            r
        };
        let now = Instant::now();
        if readable[0] {
            self.drain_backend()?;
        }
        if readable[1] {
            self.drain_subscriber(now)?;
        }
        if readable[2] {
            self.drain_peer_router(now)?;
        }
        if readable[3] {
            self.read_reference(now);
        }
        for (i, name) in peer_names.iter().enumerate() {
            if readable.get(4 + i).copied().unwrap_or(false) {
                self.read_peer(now, name);
            }
        }
        self.timers(now);
        self.commit_and_send(now)?;
        Ok(())
    }

    // ----- inputs -------------------------------------------------------------------

    fn drain_backend(&mut self) -> Result<(), ServerError> {
        for _ in 0..self.cfg.max_batch {
            let parts = match self.backend.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            self.broker_seen = Instant::now();
            self.broker_silent_logged = false;
            match parts.first().map(Vec::as_slice) {
                Some(backend::REQUEST) if parts.len() == 3 => {
                    let Some(token) = backend::parse_token(&parts[1]) else {
                        continue;
                    };
                    self.client_request(token, &parts[2]);
                }
                Some(backend::HEARTBEAT) => {}
                _ => {
                    warn!(server = %self.cfg.name, frames = parts.len(), "unexpected frame from the broker")
                }
            }
        }
        Ok(())
    }

    fn client_request(&mut self, token: u64, body: &[u8]) {
        let now_ts = self.clock.now();
        let (env, encoding) = match decode_client_request(body) {
            Ok(ok) => ok,
            Err(f) => {
                if f.not_offered() {
                    // A well-formed request of another role counts as a request, as before.
                    self.berkeley.note_request(Instant::now(), now_ts.millis());
                }
                let reply = self.node.handle_failure(&f, now_ts);
                self.queue_reply(token, &reply, f.encoding);
                return;
            }
        };
        self.berkeley.note_request(Instant::now(), now_ts.millis());
        if env.request == ClientRequest::Status {
            self.node.observe(env.meta.clock);
            let reply = ReplyEnvelope {
                service: "status".into(),
                reply: Reply::Status(Box::new(self.status())),
                meta: self.meta(env.meta.id),
            };
            self.queue_reply(token, &reply, encoding);
            return;
        }
        let Handled { reply, hold_for } = self.node.handle_client_request(env, now_ts);
        match hold_for {
            Some(seq) => match encode_reply(&reply, encoding) {
                Ok(bytes) => self.repl.hold(
                    seq,
                    HeldReply {
                        token,
                        bytes,
                        encoding,
                        service: reply.service.clone(),
                        id: reply.meta.id.clone(),
                    },
                ),
                Err(e) => warn!(error = %e, "cannot encode a reply"),
            },
            None => self.queue_reply(token, &reply, encoding),
        }
    }

    fn queue_reply(&mut self, token: u64, reply: &ReplyEnvelope, encoding: Encoding) {
        match encode_reply(reply, encoding) {
            Ok(bytes) => {
                let epoch = self.depends_on();
                if epoch <= self.epoch_durable {
                    self.replies.push((token, bytes));
                } else {
                    self.deferred.push_back((epoch, (token, bytes)));
                }
            }
            Err(e) => warn!(error = %e, "cannot encode a reply"),
        }
    }

    /// The batch holding the newest event applied so far: a reply built now may reveal it,
    /// so it waits until that batch is durable.
    fn depends_on(&self) -> u64 {
        if self.node.pending().is_empty() {
            self.epoch_open - 1
        } else {
            self.epoch_open
        }
    }

    fn drain_subscriber(&mut self, now: Instant) -> Result<(), ServerError> {
        for _ in 0..self.cfg.max_batch {
            let parts = match self.subscriber.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if parts.len() != 2 {
                continue;
            }
            if parts[0] == TOPIC_REPLICATION.as_bytes() {
                match Event::decode(&parts[1]) {
                    Ok(event) => {
                        let id = event.id.clone();
                        if self.node.handle_replicated(event) {
                            debug!(server = %self.cfg.name, event = %id, "replicated event applied (topic)");
                        }
                    }
                    Err(e) => {
                        warn!(server = %self.cfg.name, error = %e, "undecodable replication frame")
                    }
                }
            } else if parts[0] == TOPIC_SERVERS.as_bytes() {
                match decode_announcement(&parts[1]) {
                    Ok((a, meta)) => {
                        self.node.observe(meta.clock);
                        if a.coordinator != self.cfg.name {
                            self.fd.heard(now, &a.coordinator);
                        }
                        if let Some(b) = self.bully.as_mut() {
                            b.handle_announcement(now, a);
                        }
                    }
                    Err(e) => debug!(error = %e, "undecodable announcement"),
                }
            }
        }
        Ok(())
    }

    fn drain_peer_router(&mut self, now: Instant) -> Result<(), ServerError> {
        for _ in 0..self.cfg.max_batch {
            if self.peer_replies.len() >= MAX_WAITING_PEER_REPLIES {
                break;
            }
            let parts = match self.peer_router.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            // Envelope: identity, then everything up to the empty delimiter.
            let split = parts.iter().position(Vec::is_empty).map_or(1, |i| i + 1);
            if parts.len() != split + 1 {
                continue; // not one body frame: nothing sensible to answer
            }
            let (envelope, body) = parts.split_at(split);
            let envelope = envelope.to_vec();
            let reply = match decode_peer_request(&body[0]) {
                Ok((env, _)) => self.peer_request(now, env),
                Err(f) => PeerReply::Ready(self.failure_reply(&f)),
            };
            let epoch = self.depends_on();
            self.peer_replies.push_back((epoch, (envelope, reply)));
        }
        Ok(())
    }

    fn failure_reply(&mut self, f: &RequestFailure) -> ReplyEnvelope {
        let now_ts = self.clock.now();
        self.node.handle_failure(f, now_ts)
    }

    fn peer_request(&mut self, now: Instant, env: RequestEnvelope<PeerRequest>) -> PeerReply {
        self.node.observe(env.meta.clock);
        let service = env.request.service();
        let id = env.meta.id.clone();
        let done = |rt: &mut Self, reply: Reply| {
            PeerReply::Ready(ReplyEnvelope {
                service: service.as_str().to_string(),
                reply,
                meta: rt.meta(id.clone()),
            })
        };
        match env.request {
            PeerRequest::Heartbeat { user } => {
                if let Some(u) = user {
                    if self.peers.contains(&u) {
                        self.fd.heard(now, &u);
                    }
                }
                done(self, Reply::Done)
            }
            PeerRequest::Election { from, rank, term } => {
                self.fd.heard(now, &from);
                let ok = match self.bully.as_mut() {
                    Some(b) => {
                        b.handle_message(
                            now,
                            BullyMsg::Election {
                                from: from.clone(),
                                rank,
                                term,
                            },
                        );
                        self.drain_bully(now, Some(&from))
                    }
                    None => false,
                };
                done(self, if ok { Reply::Election } else { Reply::Done })
            }
            PeerRequest::Coordinator(a) => {
                self.fd.heard(now, &a.coordinator);
                if let Some(b) = self.bully.as_mut() {
                    b.handle_announcement(now, a);
                }
                done(self, Reply::Done)
            }
            PeerRequest::Clock => {
                let t = self.clock.now();
                done(self, Reply::Clock(t))
            }
            PeerRequest::Adjust { offset_ms } => {
                self.adjust_clock(offset_ms);
                done(self, Reply::Done)
            }
            PeerRequest::Replicate { from, events } => {
                if !self.peers.contains(&from) {
                    // Only servers the reference lists may write into our state (the sender
                    // retries after its ack timeout, by when our list knows a new peer).
                    let e = ChatError::NotOffered {
                        service: service.as_str().to_string(),
                        reason: "the sender is not a server this one knows from the reference",
                    };
                    return done(self, Reply::Error((&e).into()));
                }
                self.fd.heard(now, &from);
                for e in events {
                    self.node.handle_replicated(e);
                }
                PeerReply::Vector(service.as_str().to_string(), id)
            }
            PeerRequest::Sync {
                from,
                vector,
                limit,
            } => {
                if self.peers.contains(&from) {
                    self.fd.heard(now, &from);
                }
                PeerReply::Sync { vector, limit, id }
            }
            PeerRequest::Status => {
                let s = self.status();
                done(self, Reply::Status(Box::new(s)))
            }
            PeerRequest::Read(read) => {
                let now_ts = self.clock.now();
                let handled = self.node.handle_client_request(
                    RequestEnvelope {
                        request: ClientRequest::Read(read),
                        meta: env.meta,
                    },
                    now_ts,
                );
                PeerReply::Ready(handled.reply)
            }
        }
    }

    fn adjust_clock(&mut self, offset_ms: i64) {
        // Bound one adjustment to a day: a bigger one is a bug or an attack, not drift.
        let offset_ms = offset_ms.clamp(-86_400_000, 86_400_000);
        self.clock.offset_ms = self.clock.offset_ms.saturating_add(offset_ms);
        debug!(server = %self.cfg.name, offset_ms, total = self.clock.offset_ms, "clock adjusted");
    }

    fn read_reference(&mut self, now: Instant) {
        let Some(refc) = self.refc.as_mut() else {
            return;
        };
        let Some((event, clock)) = refc.recv() else {
            return;
        };
        self.node.observe(clock);
        match event {
            RefEvent::Rank(r) => {
                if self.rank != Some(r) {
                    info!(server = %self.cfg.name, rank = r, "rank assigned");
                    let stored = self
                        .committer
                        .store()
                        .lock()
                        .set_meta("rank", &r.to_string());
                    if let Err(e) = stored {
                        warn!(error = %e, "cannot store the rank");
                    }
                    self.bully = None;
                    self.bully_started = false;
                    self.bully_start_by = None;
                }
                self.rank = Some(r);
                self.registered = true;
                if self.bully.is_none() {
                    match Bully::restore(
                        self.cfg.name.clone(),
                        r,
                        self.cfg.bully,
                        self.term_persisted,
                    ) {
                        Ok(b) => self.bully = Some(b),
                        Err(e) => warn!(error = %e, "this server cannot take part in elections"),
                    }
                }
            }
            RefEvent::Forgotten => {
                info!(server = %self.cfg.name, "the reference forgot us (restarted?); registering again");
                self.registered = false;
            }
            RefEvent::List(list) => self.set_peers(now, &list),
        }
    }

    fn set_peers(&mut self, now: Instant, list: &[ServerInfo]) {
        let peers: Vec<(String, u64, String)> = list
            .iter()
            .filter(|s| s.name != self.cfg.name)
            .filter_map(|s| s.endpoint.clone().map(|e| (s.name.clone(), s.rank, e)))
            .collect();
        let still_alive = self.alive(now);
        if self.peers.update(&self.ctx, &peers, &still_alive) {
            let names = self.peers.names();
            info!(server = %self.cfg.name, peers = ?names, "peers");
            self.fd.set_peers(now, names.iter().map(String::as_str));
            self.repl.set_peers(names.iter().map(String::as_str));
            self.berkeley.set_peers(names.iter().map(String::as_str));
        }
        if !self.listed {
            self.listed = true;
            if peers.is_empty() && !self.caught_up {
                self.caught_up = true;
                info!(server = %self.cfg.name, "first server of the cluster: nothing to catch up");
            }
        }
        let ranked: Vec<(String, u64)> = self
            .peers
            .links()
            .map(|l| (l.name.clone(), l.rank))
            .collect();
        if let Some(b) = self.bully.as_mut() {
            b.set_peers(now, &ranked);
            if !self.bully_started && self.bully_start_by.is_none() {
                // Give the new links a moment to connect and answer, so the election
                // hears the peers that are alive instead of bullying them.
                self.bully_start_by = Some(now + self.cfg.detector.timeout);
            }
        }
    }

    fn maybe_start_bully(&mut self, now: Instant) {
        if self.bully_started {
            return;
        }
        let Some(by) = self.bully_start_by else {
            return;
        };
        let all_heard = self.peers.names().iter().all(|p| self.heard.contains(p));
        if all_heard || now >= by {
            if let Some(b) = self.bully.as_mut() {
                b.start(now);
                self.bully_started = true;
            }
        }
    }

    fn read_peer(&mut self, now: Instant, peer: &str) {
        let replies = self.peers.recv(peer, self.cfg.max_batch);
        if !replies.is_empty() {
            self.fd.heard(now, peer);
            self.heard.insert(peer.to_string());
        }
        for (kind, reply) in replies {
            self.node.observe(reply.meta.clock);
            match (kind, reply.reply) {
                (Pending::Election, Reply::Election) => {
                    if let Some(b) = self.bully.as_mut() {
                        b.handle_message(
                            now,
                            BullyMsg::Ok {
                                from: peer.to_string(),
                            },
                        );
                    }
                }
                (Pending::Clock { round }, Reply::Clock(t)) => {
                    let local = self.local_ms();
                    self.berkeley
                        .handle_time(now, local, peer, round, t.millis());
                }
                (Pending::Replicate { msg }, Reply::Vector(_)) => self.repl.handle_ack(peer, msg),
                (Pending::Sync, Reply::Events { events, more }) => {
                    let n = events.len();
                    let mut new = 0;
                    for e in events {
                        new += usize::from(self.node.handle_replicated(e));
                    }
                    if new > 0 {
                        info!(server = %self.cfg.name, from = peer, received = n, new, "caught up events");
                    }
                    self.sync_inflight = None;
                    if more {
                        if !self.send_sync(now, peer) {
                            self.next_sync = now;
                        }
                    } else if !self.caught_up {
                        self.caught_up = true;
                        info!(server = %self.cfg.name, with = peer, events = self.node.state().event_count(), "caught up");
                    }
                }
                (Pending::Sync, Reply::Error(e)) => {
                    self.sync_inflight = None;
                    warn!(peer, error = %e.description, "sync refused");
                }
                (_, Reply::Error(e)) => {
                    debug!(peer, code = %e.code, error = %e.description, "peer refused")
                }
                _ => {}
            }
        }
    }

    // ----- timers and machine outputs ---------------------------------------------

    fn timers(&mut self, now: Instant) {
        let local = self.local_ms();
        if let Some(refc) = self.refc.as_mut() {
            let me = Identity {
                name: &self.cfg.name,
                rank: self.rank,
                registered: self.registered,
                endpoint: &self.peer_endpoint,
            };
            let clock = &self.clock;
            let node = &mut self.node;
            refc.poll_send(&self.ctx, now, &me, || node.meta(clock.now(), None));
        }
        for (peer, kind) in self.peers.expired(now) {
            match kind {
                Pending::Replicate { .. } => {}
                Pending::Sync => {
                    self.sync_inflight = None;
                    self.fd.missed_reply(now, &peer);
                }
                _ => self.fd.missed_reply(now, &peer),
            }
        }
        self.fd.handle_timeout(now);
        for peer in self.fd.due_heartbeats(now) {
            let req = Request::Heartbeat {
                user: Some(self.cfg.name.clone()),
                rank: None,
                endpoint: None,
            };
            let meta = self.meta(None);
            // A send that fails (link still connecting, or peer gone) is not a missed
            // reply; silence beyond the detector's timeout is what marks a peer down.
            self.peers.send(&peer, req, meta, Pending::Ping, now);
        }
        while let Some(v) = self.fd.poll_verdict() {
            match v {
                Verdict::Down(p) => {
                    warn!(server = %self.cfg.name, peer = %p, "peer down");
                    self.repl.handle_peer_down(&p);
                    if let Some(b) = self.bully.as_mut() {
                        b.handle_peer_down(now, &p);
                    }
                }
                Verdict::Up(p) => {
                    info!(server = %self.cfg.name, peer = %p, "peer up");
                    if let Some(b) = self.bully.as_mut() {
                        b.handle_peer_up(now, &p);
                    }
                }
            }
        }
        let alive = self.alive(now);
        self.berkeley.set_peers(alive.iter().map(String::as_str));
        self.maybe_start_bully(now);
        if let Some(b) = self.bully.as_mut() {
            if b.poll_timeout().is_some_and(|t| t <= now) {
                b.handle_timeout(now);
            }
        }
        self.drain_bully(now, None);
        self.berkeley.handle_timeout(now, local);
        self.drain_berkeley(now);
        // Catch-up / anti-entropy.
        if self.sync_inflight.is_none() && now >= self.next_sync && !alive.is_empty() {
            self.sync_turn = (self.sync_turn + 1) % alive.len();
            let peer = alive[self.sync_turn].clone();
            self.next_sync = if self.send_sync(now, &peer) {
                now + self.cfg.sync_interval
            } else {
                now + Duration::from_millis(50) // link still connecting: try again soon
            };
        }
        if !self.caught_up && alive.is_empty() && now.duration_since(self.started) >= ALONE_GRACE {
            self.caught_up = true;
            info!(server = %self.cfg.name, "no live peer to catch up from; serving what we have");
        }
    }

    fn send_sync(&mut self, now: Instant, peer: &str) -> bool {
        let vector: BTreeMap<String, u64> = self
            .node
            .state()
            .applied()
            .iter()
            .map(|(o, a)| (o.clone(), a.contiguous()))
            .collect();
        let req = Request::Sync {
            from: self.cfg.name.clone(),
            vector,
            limit: DEFAULT_SYNC_LIMIT,
        };
        let meta = self.meta(None);
        let sent = self.peers.send(peer, req, meta, Pending::Sync, now);
        if sent {
            self.sync_inflight = Some(peer.to_string());
        }
        sent
    }

    /// Runs the election's outputs; returns whether an `Ok` is owed to `answering`.
    fn drain_bully(&mut self, now: Instant, answering: Option<&str>) -> bool {
        let mut outputs = Vec::new();
        let mut term = 0;
        if let Some(b) = self.bully.as_mut() {
            while let Some(o) = b.poll_output() {
                outputs.push(o);
            }
            term = b.term();
        }
        if term > self.term_persisted {
            // Persist the greatest term seen before acting on it.
            let stored = self
                .committer
                .store()
                .lock()
                .set_meta("term", &term.to_string());
            if let Err(e) = stored {
                warn!(error = %e, "cannot store the term");
            }
            self.term_persisted = term;
        }
        let mut ok = false;
        for o in outputs {
            match o {
                BullyOutput::Send {
                    to,
                    msg: BullyMsg::Ok { .. },
                } => {
                    if answering == Some(to.as_str()) {
                        ok = true;
                    }
                }
                BullyOutput::Send { to, msg } => {
                    let kind = match msg {
                        BullyMsg::Election { .. } => Pending::Election,
                        _ => Pending::Coordinator,
                    };
                    if let Some(req) = msg.to_request() {
                        let meta = self.meta(None);
                        self.peers.send(&to, req, meta, kind, now);
                    }
                }
                BullyOutput::Announce(a) => {
                    info!(server = %self.cfg.name, term = a.term, rank = a.rank, "elected coordinator");
                    let meta = self.meta(None);
                    match encode_announcement(&a, &meta, self.cfg.encoding) {
                        Ok(bytes) => {
                            let _ = self.publisher.send_multipart(
                                [TOPIC_SERVERS.as_bytes(), &bytes[..]],
                                zmq::DONTWAIT,
                            );
                        }
                        Err(e) => warn!(error = %e, "cannot encode an announcement"),
                    }
                }
                BullyOutput::CoordinatorChanged(c) => {
                    match &c {
                        Some(a) => {
                            info!(server = %self.cfg.name, coordinator = %a.coordinator, term = a.term, "coordinator")
                        }
                        None => info!(server = %self.cfg.name, "coordinator suspected; electing"),
                    }
                    let active = self.bully.as_ref().is_some_and(Bully::is_coordinator);
                    self.berkeley.set_active(now, active);
                }
            }
        }
        ok
    }

    fn drain_berkeley(&mut self, now: Instant) {
        while let Some(o) = self.berkeley.poll_output() {
            match o {
                BerkeleyOutput::RequestTime { to, round } => {
                    let meta = self.meta(None);
                    self.peers
                        .send(&to, Request::Clock, meta, Pending::Clock { round }, now);
                }
                BerkeleyOutput::Adjust { to, offset_ms } => {
                    if to == self.cfg.name {
                        self.adjust_clock(offset_ms);
                    } else {
                        let meta = self.meta(None);
                        self.peers.send(
                            &to,
                            Request::Adjust { offset_ms },
                            meta,
                            Pending::Adjust,
                            now,
                        );
                    }
                }
                BerkeleyOutput::RoundFinished {
                    round,
                    average_offset_ms,
                    discarded,
                    missing,
                } => {
                    debug!(server = %self.cfg.name, round, average_offset_ms, ?discarded, ?missing, "clock sync round");
                    for m in missing {
                        self.fd.missed_reply(now, &m);
                    }
                }
            }
        }
    }

    // ----- commit, then send --------------------------------------------------------

    fn commit_and_send(&mut self, now: Instant) -> Result<(), ServerError> {
        // Commit first, push after. (Pushing before our own fsync would overlap the two
        // disks, but a crash in between could leave a peer holding an event this server then
        // forgets, and reuses its sequence number for another write if it restarts with no
        // peer reachable: replicas would diverge. Correct first.)
        loop {
            if let Some(done) = self.committer.poll_completed() {
                // A store that fails stops the server rather than acknowledge what it lost.
                done.result?;
                self.epoch_durable = done.epoch;
                if let Some(batch) = self.inflight.take() {
                    self.batch_durable(batch);
                }
            }
            if self.committer.busy() || self.node.pending().is_empty() {
                break;
            }
            let (events, local) = self.node.take_batch();
            let batch = Batch {
                epoch: self.epoch_open,
                local,
                own_max: self.node.own_max_seq(),
                vector: self.vector(),
            };
            self.epoch_open += 1;
            self.committer.submit(batch.epoch, events);
            self.inflight = Some(batch);
        }
        // Who is alive does not change between the push and the release below.
        let alive = self.alive(now);
        self.push_to_peers(now, &alive)?;
        self.release_held(&alive);
        while let Some(reply) = pop_durable(&mut self.deferred, self.epoch_durable) {
            self.replies.push(reply);
        }
        for (token, bytes) in std::mem::take(&mut self.replies) {
            let token = backend::token_bytes(token);
            send_to_broker(&self.backend, [backend::REPLY, &token[..], &bytes[..]])?;
        }
        self.send_peer_replies()?;
        if self.caught_up && !self.registered_with_broker {
            // Serve clients only once we hold what our peers hold (no stale reads after a
            // restart, no writes acknowledged before we know our peers).
            send_to_broker(&self.backend, [backend::READY, &self.capacity[..]])?;
            self.registered_with_broker = true;
            self.next_heartbeat = now + backend::HEARTBEAT_INTERVAL;
            info!(server = %self.cfg.name, "ready: serving clients");
        }
        if self.registered_with_broker && now >= self.next_heartbeat {
            send_to_broker(&self.backend, [backend::HEARTBEAT, &self.capacity[..]])?;
            self.next_heartbeat = now + backend::HEARTBEAT_INTERVAL;
        }
        if self.registered_with_broker
            && now.duration_since(self.broker_seen) > backend::LIVENESS * 3
            && !self.broker_silent_logged
        {
            warn!(server = %self.cfg.name, "no heartbeat from the broker; still trying");
            self.broker_silent_logged = true;
        }
        Ok(())
    }

    /// A batch is durable: its own events can be published and pushed to peers.
    fn batch_durable(&mut self, batch: Batch) {
        for e in &batch.local {
            self.outbox.insert(e.id.seq, e.clone());
        }
        self.repl.committed(batch.own_max);
        self.durable_vector = batch.vector;
        for event in &batch.local {
            if let Some(p) = event.publication() {
                match encode_publication(&p, self.cfg.encoding) {
                    Ok(bytes) => {
                        let _ = self
                            .publisher
                            .send_multipart([p.topic().as_bytes(), &bytes[..]], zmq::DONTWAIT);
                    }
                    Err(e) => warn!(error = %e, "cannot encode a publication"),
                }
            }
            match event.encode(Encoding::MsgPack) {
                Ok(bytes) => {
                    let _ = self
                        .publisher
                        .send_multipart([TOPIC_REPLICATION.as_bytes(), &bytes[..]], zmq::DONTWAIT);
                }
                Err(e) => warn!(error = %e, "cannot encode an event"),
            }
            debug!(server = %self.cfg.name, event = %event.id, op = event.kind.operation(), "write committed");
        }
    }

    fn push_to_peers(&mut self, now: Instant, alive: &[String]) -> Result<(), ServerError> {
        for send in self.repl.poll_sends(now, alive) {
            let mut events: Vec<Event> = self
                .outbox
                .range(send.from..=send.to)
                .map(|(_, e)| e.clone())
                .collect();
            if events.len() as u64 != send.to - send.from + 1 {
                let n = usize::try_from(send.to - send.from + 1).unwrap_or(usize::MAX);
                events =
                    self.committer
                        .store()
                        .lock()
                        .events_after(&self.cfg.name, send.from - 1, n)?;
            }
            let req = Request::Replicate {
                from: self.cfg.name.clone(),
                events,
            };
            let meta = self.meta(None);
            self.peers.send(
                &send.peer,
                req,
                meta,
                Pending::Replicate { msg: send.msg },
                now,
            );
        }
        // Keep in memory only what some known peer still lacks.
        let floor = self
            .peers
            .names()
            .iter()
            .map(|p| self.repl.acked_through(p))
            .min()
            .unwrap_or(u64::MAX);
        while self
            .outbox
            .first_key_value()
            .is_some_and(|(s, _)| *s <= floor)
            || self.outbox.len() > OUTBOX_MAX
        {
            self.outbox.pop_first();
        }
        Ok(())
    }

    fn release_held(&mut self, alive: &[String]) {
        let before = self.repl.local_only_acks();
        for r in self.repl.poll_released(alive) {
            match r {
                Release::Ack(h) => self.replies.push((h.token, h.bytes)),
                Release::Refuse(h) => {
                    let e = ChatError::Unavailable(
                        "no other server is alive to hold a copy of this write; it is stored here and will be \
                         replicated; retry with the same request id"
                            .into(),
                    );
                    let meta = self.meta(h.id);
                    let reply = ReplyEnvelope::error(h.service, &e, meta);
                    self.queue_reply(h.token, &reply, h.encoding);
                }
            }
        }
        let local_only = self.repl.local_only_acks() - before;
        if local_only > 0 {
            warn!(
                server = %self.cfg.name,
                writes = local_only,
                "acknowledged with no other live server holding a copy (policy: accept locally)"
            );
        }
    }

    fn send_peer_replies(&mut self) -> Result<(), ServerError> {
        while let Some((envelope, reply)) = pop_durable(&mut self.peer_replies, self.epoch_durable)
        {
            let reply = match reply {
                PeerReply::Ready(r) => r,
                PeerReply::Vector(service, id) => ReplyEnvelope {
                    service,
                    // What is durable here, which includes the events of the push.
                    reply: Reply::Vector(self.durable_vector.clone()),
                    meta: self.meta(id),
                },
                PeerReply::Sync { vector, limit, id } => {
                    let (events, more) = self.events_beyond(&vector, limit as usize)?;
                    ReplyEnvelope {
                        service: "sync".into(),
                        reply: Reply::Events { events, more },
                        meta: self.meta(id),
                    }
                }
            };
            let Ok(bytes) = encode_reply(&reply, Encoding::MsgPack) else {
                continue;
            };
            let mut frames = envelope;
            frames.push(bytes);
            match self.peer_router.send_multipart(frames, zmq::DONTWAIT) {
                Ok(()) | Err(zmq::Error::EHOSTUNREACH) | Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn vector(&self) -> BTreeMap<String, u64> {
        vector_of(&self.node)
    }

    /// Stored events beyond `vector`, at most `limit` of them and about
    /// [`SYNC_REPLY_BYTES`]; and whether more remain.
    fn events_beyond(
        &self,
        vector: &BTreeMap<String, u64>,
        limit: usize,
    ) -> Result<(Vec<Event>, bool), ServerError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let store = self.committer.store().lock();
        for (origin, applied) in self.node.state().applied() {
            let have = vector.get(origin).copied().unwrap_or(0);
            if applied.max() <= have {
                continue;
            }
            let room = limit.saturating_sub(out.len());
            if room == 0 || bytes >= SYNC_REPLY_BYTES {
                return Ok((out, true));
            }
            let batch = store.events_after(origin, have, room)?;
            for e in batch {
                bytes += event_size(&e);
                out.push(e);
                if bytes >= SYNC_REPLY_BYTES {
                    return Ok((out, true));
                }
            }
            if out.len() >= limit {
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    fn status(&self) -> ServerStatus {
        let now = Instant::now();
        let state = self.node.state();
        let coordinator = self.bully.as_ref().and_then(|b| b.coordinator().cloned());
        let alive = self.alive(now);
        ServerStatus {
            name: self.cfg.name.clone(),
            rank: self.rank,
            coordinator: coordinator.as_ref().map(|a| a.coordinator.clone()),
            term: coordinator
                .map(|a| a.term)
                .unwrap_or_else(|| self.bully.as_ref().map_or(0, Bully::term)),
            lamport: self.node.lamport(),
            clock_offset_ms: self.clock.offset_ms,
            peers: self
                .peers
                .links()
                .filter(|l| alive.contains(&l.name))
                .map(|l| ServerInfo {
                    name: l.name.clone(),
                    rank: l.rank,
                    endpoint: Some(l.endpoint.clone()),
                })
                .collect(),
            users: state.users().len() as u64,
            channels: state.channels().len() as u64,
            messages: state.message_count(),
            events: state.event_count(),
            digest: state.digest(),
            caught_up: self.caught_up,
            local_only_acks: self.repl.local_only_acks(),
            // Batches are numbered from 1 and all those up to this one are durable.
            commits: self.epoch_durable,
            vector: self.vector(),
        }
    }
}

/// The front of `queue` (entries tagged with the batch they wait for, in order) if that
/// batch is durable.
fn pop_durable<T>(queue: &mut VecDeque<(u64, T)>, durable: u64) -> Option<T> {
    if queue.front().is_some_and(|(epoch, _)| *epoch <= durable) {
        queue.pop_front().map(|(_, item)| item)
    } else {
        None
    }
}

/// Per origin, the sequence number through which `node` holds every event.
fn vector_of(node: &Node) -> BTreeMap<String, u64> {
    node.state()
        .applied()
        .iter()
        .map(|(o, a)| (o.clone(), a.contiguous()))
        .collect()
}

fn event_size(e: &Event) -> usize {
    let body = match &e.kind {
        chat_core::EventKind::ChannelMessage { message, .. }
        | chat_core::EventKind::DirectMessage { message, .. } => message.len(),
        _ => 0,
    };
    body + 128
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
