//! The server's protocol core, with no IO: [`ServerCore`].
//!
//! It owns every piece of protocol state of one chat server: the chat state and Lamport
//! clock ([`node::Node`]), the commit pipeline (batches and which of them are durable), the
//! replies waiting for a batch, the peers and their pending requests, the election
//! ([`Bully`]), clock sync ([`Berkeley`] or [`Cristian`], per [`ServerConfig::clock_sync`]),
//! the failure detector, the replicator and its outbox, catch-up, the reference client and
//! the broker link (registration, heartbeats, the lease). It never touches a socket, a
//! thread, a clock or a disk:
//!
//! - inputs are `handle_*` calls with the time passed in ([`Time`]: monotonic `Instant` and
//!   the OS wall clock in milliseconds): a client request with its broker token, a broker
//!   heartbeat, a peer request, a peer reply, a reference reply, a publication on the
//!   `servers`/`replication` topics, a batch made durable ([`ServerCore::handle_persisted`]),
//!   and [`ServerCore::handle_timeout`];
//! - outputs come out of `poll_*`: [`ServerCore::poll_batch`] (the next batch of events and
//!   metadata to commit, one in flight at a time), [`ServerCore::poll_transmit`] (a
//!   [`Transmit`] to the broker, the proxy, a peer, or the reference) and
//!   [`ServerCore::poll_timeout`];
//! - stored events it must read back (catch-up answers, pushes that fell out of memory) come
//!   through the [`EventReader`] it was built with.
//!
//! # Rules the core enforces itself
//!
//! - **Nothing reveals what is not durable.** Every transmit that may reveal an applied
//!   event (a client reply, a peer reply, a publication, a push) is tagged with the batch it
//!   depends on and leaves only once that batch was reported durable (`emit_after`); a
//!   client reply to a write also waits for `--ack-replicas` peers ([`Replicator`]).
//! - **The term is durable before any election message leaves.** A new term goes into the
//!   next batch as metadata; election messages and announcements wait for it.
//! - **A fenced server does not apply requests the broker may have re-dispatched.** The
//!   broker echoes the stamps of this server's heartbeats; a request read when the newest
//!   echo is older than [`LEASE`] is dropped unanswered (the broker drops a silent server
//!   after its liveness window and gives its requests to another server; see
//!   `docs/replication.md`).
//!
//! # Layout
//! - this file: the inputs and outputs, the state, the getters and the `poll_*` methods;
//!   the `handle_*` methods live by concern in `requests` (the broker and the topics),
//!   `peer` (the peer socket and the links), `coordination` (reference, timers, election,
//!   clock sync) and `pipeline` (batches made durable and what they release).
//! - [`node`]: the chat state, Lamport clock, and the events waiting for their batch.
//! - [`peers`]: the other servers and the requests pending to each.
//! - [`registrar`]: the reference client (rank, heartbeats, the live list).

pub mod node;
pub mod peers;
pub mod registrar;

mod coordination;
mod peer;
mod pipeline;
mod requests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use chat_core::protocol::{
    decode_announcement, decode_client_request, decode_peer_request, decode_reply,
    encode_announcement, encode_publication, encode_reply, encode_request, RequestFailure,
    DEFAULT_SYNC_LIMIT,
};
use chat_core::{
    ChatError, ClientRequest, Encoding, Event, Limits, Meta, PeerRequest, Reply, ReplyEnvelope,
    Request, RequestEnvelope, ServerInfo, ServerStatus, Timestamp, TOPIC_REPLICATION,
    TOPIC_SERVERS,
};
use chat_store::{Store, StoreError};
use chat_sync::{
    Berkeley, BerkeleyConfig, BerkeleyOutput, Bully, BullyConfig, BullyMsg, BullyOutput, ClockSync,
    Cristian, CristianConfig, CristianOutput, DetectorConfig, FailureDetector, Release,
    ReplicationConfig, Replicator, Verdict,
};
use tracing::{debug, info, warn};

use crate::backend;
pub use node::{Handled, Node};
use peers::{Peers, Pending};
use registrar::{Identity, RefEvent, Registrar};

/// Most bytes of events in one `sync` answer.
pub const SYNC_REPLY_BYTES: usize = 512 * 1024;
/// A server that knows no live peer this long after start counts as caught up (alone).
pub const ALONE_GRACE: Duration = Duration::from_secs(3);
/// Most own events kept in memory for pushing to peers (older ones are read from the store).
pub const OUTBOX_MAX: usize = 100_000;
/// Most peer-socket replies waiting for a commit; beyond it the driver leaves the peer
/// socket unread (its queue, then ZeroMQ's high-water mark, push back) until the disk
/// catches up ([`ServerCore::wants_peer_requests`]).
pub const MAX_WAITING_PEER_REPLIES: usize = 10_000;
/// How long after the broker last echoed one of our stamps we still take its requests:
/// four fifths of the broker's liveness window, measured from when we sent that stamp (the
/// broker received it later, so it cannot have dropped us before the window ran out).
pub const LEASE: Duration = Duration::from_millis(backend::LIVENESS.as_millis() as u64 * 4 / 5);
/// Retry delay of a `sync` request that could not be sent (peer link still connecting).
const SYNC_RETRY: Duration = Duration::from_millis(50);
/// When a `sync` is due but cannot go (one in flight, no live peer): when to look again.
const SYNC_RECHECK: Duration = Duration::from_millis(100);

/// The time of an input: monotonic, and the OS wall clock (the core adds its own offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// Monotonic time, for timers and timeouts.
    pub mono: Instant,
    /// The operating system's wall clock, in milliseconds since the Unix epoch.
    pub wall_ms: i64,
}

impl Time {
    /// A time from its two readings.
    pub fn new(mono: Instant, wall_ms: i64) -> Self {
        Time { mono, wall_ms }
    }
}

/// How a server is wired and tuned. The endpoints are the driver's business; the core reads
/// only whether a reference exists and the advertised peer endpoint.
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
    /// Which clock synchronisation runs: the coordinator's Berkeley rounds, or every
    /// follower's Cristian rounds with the coordinator.
    pub clock_sync: ClockSync,
    /// Berkeley's settings (used in [`ClockSync::Berkeley`]).
    pub berkeley: BerkeleyConfig,
    /// Cristian's settings (used in [`ClockSync::Cristian`]).
    pub cristian: CristianConfig,
    /// How often to talk to the reference.
    pub reference_interval: Duration,
    /// How often to ask a peer for missed events (anti-entropy).
    pub sync_interval: Duration,
    /// Commit on the loop thread even for a durable store (the loop then waits for every
    /// fsync; for comparison and for stores that are fast anyway).
    pub inline_commit: bool,
    /// How many recent request ids are kept in memory for deduplication; older ones are
    /// looked up in the store (see `docs/replication.md`, "Retries").
    pub request_window: chat_core::RequestWindow,
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
            clock_sync: ClockSync::default(),
            berkeley: BerkeleyConfig::default(),
            cristian: CristianConfig::default(),
            reference_interval: Duration::from_millis(500),
            sync_interval: Duration::from_secs(2),
            inline_commit: false,
            request_window: chat_core::RequestWindow::default(),
        }
    }
}

/// Reads of the store the core needs (catch-up answers, pushes beyond its outbox, history
/// pages, request ids older than its window, the last publication of a topic): the
/// store's own read interface.
pub use chat_store::StoreRead as EventReader;

/// What a server recovers from its store on start.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The small state (users, channels, what is held per origin, counters, digest).
    pub summary: chat_core::Summary,
    /// The rank the reference gave this server last time, if any.
    pub rank: Option<u64>,
    /// The greatest election term this server has seen (durable).
    pub term: u64,
}

impl Recovered {
    /// Reads what a server recovers from `store`.
    pub fn from_store(store: &dyn Store) -> Result<Recovered, StoreError> {
        Ok(Recovered {
            summary: store.summary()?,
            rank: store.get_meta(META_RANK)?.and_then(|r| r.parse().ok()),
            term: store
                .get_meta(META_TERM)?
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// Metadata key of the rank.
pub const META_RANK: &str = "rank";
/// Metadata key of the greatest term seen.
pub const META_TERM: &str = "term";

/// A batch to make durable: one transaction (events, then metadata), then
/// [`ServerCore::handle_persisted`] with its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Its number (batches are numbered from 1).
    pub epoch: u64,
    /// Events to append.
    pub events: Vec<Event>,
    /// Named values to set (`rank`, `term`).
    pub meta: Vec<(String, String)>,
}

/// A message for the broker, on the backend socket ([`backend`] frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBroker {
    /// "I serve, up to `capacity` requests at once"; `stamp` is echoed back.
    Ready {
        /// Credits.
        capacity: u32,
        /// Our monotonic milliseconds, echoed by the broker (the lease).
        stamp: u64,
    },
    /// Liveness, with a new stamp.
    Heartbeat {
        /// Credits.
        capacity: u32,
        /// Our monotonic milliseconds, echoed by the broker (the lease).
        stamp: u64,
    },
    /// The reply to request `token`.
    Reply {
        /// The broker's token.
        token: u64,
        /// The encoded reply.
        body: Vec<u8>,
    },
    /// Leaving.
    Bye,
}

impl ToBroker {
    /// The backend frames of this message (after the DEALER's nothing: no identity).
    pub fn frames(&self) -> Vec<Vec<u8>> {
        match self {
            ToBroker::Ready { capacity, stamp } => backend::ready_frames(*capacity, Some(*stamp)),
            ToBroker::Heartbeat { capacity, stamp } => {
                backend::server_heartbeat_frames(*capacity, Some(*stamp))
            }
            ToBroker::Reply { token, body } => vec![
                backend::REPLY.to_vec(),
                backend::token_bytes(*token).to_vec(),
                body.clone(),
            ],
            ToBroker::Bye => vec![backend::BYE.to_vec()],
        }
    }
}

/// Something the core wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// To the broker.
    Broker(ToBroker),
    /// To the proxy (PUB): a publication, an announcement or a replicated event.
    Publish {
        /// Topic frame.
        topic: String,
        /// Payload frame.
        payload: Vec<u8>,
    },
    /// A request to peer `to` at `endpoint` (its DEALER link); report a failed send with
    /// [`ServerCore::handle_peer_unsent`].
    Peer {
        /// Peer name.
        to: String,
        /// Its peer endpoint.
        endpoint: String,
        /// Request id (for [`ServerCore::handle_peer_unsent`]).
        id: u64,
        /// The encoded request.
        body: Vec<u8>,
    },
    /// A reply on the peer socket, to the request that came with `envelope`.
    PeerReply {
        /// Routing frames of the request (identity up to the delimiter).
        envelope: Vec<Vec<u8>>,
        /// The encoded reply.
        body: Vec<u8>,
    },
    /// A request to the reference service (one at a time; a REQ socket that still waits
    /// for the previous answer must be replaced first).
    Reference {
        /// The encoded request.
        body: Vec<u8>,
    },
}

/// A known defect put back on purpose, so that the simulator can show it catches it
/// ([`ServerCore::set_defect`]). Never set outside that self-test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Defect {
    /// None: the server as it is.
    #[default]
    None,
    /// The reply to a write leaves as soon as the write is applied in memory: before its
    /// batch is durable and before any peer holds it.
    ReplyBeforeDurable,
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

/// What becomes true once a batch is durable.
#[derive(Debug)]
struct BatchInfo {
    epoch: u64,
    /// This server's own events in the batch (to publish and push to peers).
    local: Vec<Event>,
    /// The state's request mark when the batch was taken: request ids before it may be
    /// forgotten once the batch is durable.
    request_mark: u64,
    /// Events the state made invisible while this batch's events were applied (the store
    /// must count as many when it commits them, else the window missed a copy).
    hides: u64,
    /// Own sequence numbers through this one are durable with the batch.
    own_max: u64,
    /// The version vector including the batch (what `replicate` acknowledgements report).
    vector: BTreeMap<String, u64>,
    /// The term the batch persists, if any.
    term: Option<u64>,
}

/// A reply on the peer socket, built once what it reveals is durable.
#[derive(Debug)]
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

/// The broker link: registration, heartbeats, the lease.
#[derive(Debug)]
struct BrokerLink {
    /// Whether we told the broker we serve (only once caught up).
    registered: bool,
    next_heartbeat: Instant,
    last_heard: Instant,
    silent_logged: bool,
    /// The broker echoed this stamp of ours (ms after `base`), newest first.
    echoed: Option<u64>,
    /// Requests dropped because the lease had run out.
    fenced: u64,
    /// Whether the current fenced episode was logged.
    fence_logged: bool,
}

/// The protocol core of one chat server. See the module documentation.
pub struct ServerCore {
    cfg: ServerConfig,
    /// The endpoint other servers reach our peer socket at.
    peer_endpoint: String,
    reader: Box<dyn EventReader>,
    node: Node,
    /// When the core started: the zero of our broker stamps.
    base: Instant,
    // ----- commit pipeline -----
    /// Number of the batch new events join (batches are numbered from 1).
    epoch_open: u64,
    /// Every batch up to this one is durable.
    epoch_durable: u64,
    /// The batch being committed.
    inflight: Option<BatchInfo>,
    /// Metadata for the next batch.
    pending_meta: Vec<(String, String)>,
    /// The version vector of what is durable here.
    durable_vector: BTreeMap<String, u64>,
    /// Transmits waiting for a batch: (epoch, transmit), released in order.
    deferred: VecDeque<(u64, Transmit)>,
    /// Peer replies waiting for a batch: (epoch, envelope, reply), epochs ascending.
    peer_replies: VecDeque<(u64, Vec<Vec<u8>>, PeerReply)>,
    /// Ready to send.
    out: VecDeque<Transmit>,
    /// Whether inputs arrived since the pipeline last advanced.
    dirty: bool,
    // ----- identity, election, clocks -----
    clock_offset_ms: i64,
    rank: Option<u64>,
    registered: bool,
    registrar: Option<Registrar>,
    peers: Peers,
    bully: Option<Bully>,
    bully_started: bool,
    /// When the election starts at the latest (set when the peers are first known).
    bully_start_by: Option<Instant>,
    /// Peers heard from since they were listed (the election starts early once all are).
    heard: BTreeSet<String>,
    /// Whether the reference's list arrived at least once.
    listed: bool,
    /// The greatest term handed to the store (durable once its batch is).
    term_written: u64,
    /// The greatest term known durable.
    term_durable: u64,
    /// Election messages waiting for their term to be durable.
    election_out: VecDeque<(u64, Transmit)>,
    fd: FailureDetector,
    berkeley: Berkeley,
    cristian: Cristian,
    // ----- replication -----
    repl: Replicator<HeldReply>,
    outbox: BTreeMap<u64, Event>,
    caught_up: bool,
    sync_inflight: Option<String>,
    next_sync: Instant,
    sync_turn: usize,
    started: Instant,
    /// [`ALONE_GRACE`] has run out (it no longer needs a timer).
    grace_over: bool,
    broker: BrokerLink,
    /// A store read failed: the driver stops the server.
    failure: Option<StoreError>,
    /// A defect put back for the simulator's self-test.
    defect: Defect,
    // ----- live publications -----
    /// [`Node::hides`] when the last batch was taken.
    hides_taken: u64,
    /// Per topic key ([`chat_store::topic_key`]), the sequence number of the last own
    /// event published there (the `prev` of the next publication on it; see
    /// `docs/replication.md`, "Live delivery"); filled from the store on first use.
    published: BTreeMap<String, u64>,
}

impl std::fmt::Debug for ServerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCore")
            .field("name", &self.cfg.name)
            .field("epoch_open", &self.epoch_open)
            .field("epoch_durable", &self.epoch_durable)
            .field("caught_up", &self.caught_up)
            .finish_non_exhaustive()
    }
}

impl ServerCore {
    /// A core for `cfg` with the state `recovered` from its store, reachable by its peers
    /// at `peer_endpoint`, reading stored events through `reader`.
    pub fn new(
        cfg: ServerConfig,
        now: Instant,
        recovered: Recovered,
        peer_endpoint: String,
        reader: Box<dyn EventReader>,
    ) -> ServerCore {
        let mut node = Node::new(cfg.name.clone(), cfg.limits, cfg.rate_limit);
        node.recover(recovered.summary);
        info!(
            server = %cfg.name,
            events = node.state().event_count(),
            users = node.state().user_count(),
            channels = node.state().channel_count(),
            "state recovered"
        );
        let own = node.own_max_seq();
        let durable_vector = vector_of(&node);
        let with_reference = cfg.reference.is_some();
        ServerCore {
            peer_endpoint,
            reader,
            base: now,
            epoch_open: 1,
            epoch_durable: 0,
            inflight: None,
            pending_meta: Vec::new(),
            durable_vector,
            deferred: VecDeque::new(),
            peer_replies: VecDeque::new(),
            out: VecDeque::new(),
            dirty: true,
            clock_offset_ms: cfg.clock_skew_ms,
            rank: recovered.rank,
            registered: false,
            registrar: with_reference.then(|| Registrar::new(cfg.reference_interval, now)),
            peers: Peers::default(),
            bully: None,
            bully_started: false,
            bully_start_by: None,
            heard: BTreeSet::new(),
            listed: false,
            term_written: recovered.term,
            term_durable: recovered.term,
            election_out: VecDeque::new(),
            fd: FailureDetector::new(cfg.detector),
            berkeley: Berkeley::new(cfg.name.clone(), cfg.berkeley),
            cristian: Cristian::new(cfg.name.clone(), cfg.cristian),
            repl: Replicator::new(cfg.replication, own),
            outbox: BTreeMap::new(),
            // Without a reference there are no peers to catch up from.
            caught_up: !with_reference,
            sync_inflight: None,
            next_sync: now,
            sync_turn: 0,
            started: now,
            grace_over: false,
            broker: BrokerLink {
                registered: false,
                next_heartbeat: now + backend::HEARTBEAT_INTERVAL,
                last_heard: now,
                silent_logged: false,
                echoed: None,
                fenced: 0,
                fence_logged: false,
            },
            failure: None,
            defect: Defect::None,
            published: BTreeMap::new(),
            hides_taken: 0,
            node,
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The chat state and Lamport clock.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The endpoint other servers reach us at.
    pub fn peer_endpoint(&self) -> &str {
        &self.peer_endpoint
    }

    /// Whether this server holds what its peers hold (it serves clients only then).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    /// Every batch up to this one is durable.
    pub fn durable_epoch(&self) -> u64 {
        self.epoch_durable
    }

    /// The peers to keep a link to: (name, endpoint). Changes when
    /// [`ServerCore::peers_generation`] does.
    pub fn peer_links(&self) -> Vec<(String, String)> {
        self.peers
            .links()
            .map(|l| (l.name.clone(), l.endpoint.clone()))
            .collect()
    }

    /// Bumped whenever [`ServerCore::peer_links`] changes.
    pub fn peers_generation(&self) -> u64 {
        self.peers.generation()
    }

    /// Whether the driver should read peer requests now (false while too many replies wait
    /// for the disk).
    pub fn wants_peer_requests(&self) -> bool {
        self.peer_replies.len() < MAX_WAITING_PEER_REPLIES
    }

    /// Whether a reference request waits for its answer (the driver polls its socket then).
    pub fn awaits_reference(&self) -> bool {
        self.registrar.as_ref().is_some_and(Registrar::awaiting)
    }

    /// Client requests dropped because the broker lease had run out.
    pub fn fenced_requests(&self) -> u64 {
        self.broker.fenced
    }

    /// Whether the broker was told we serve.
    pub fn is_serving(&self) -> bool {
        self.broker.registered
    }

    /// The coordinator this server follows, and its term.
    pub fn coordinator(&self) -> Option<(String, u64)> {
        self.bully
            .as_ref()
            .and_then(|b| b.coordinator().map(|a| (a.coordinator.clone(), a.term)))
    }

    /// The offset of our physical clock from the OS clock, in milliseconds.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms
    }

    /// Puts back a known defect (for the simulator's self-test: a checker must catch it).
    pub fn set_defect(&mut self, defect: Defect) {
        self.defect = defect;
    }

    /// A store read failed: the server must stop (taken once).
    pub fn take_failure(&mut self) -> Option<StoreError> {
        self.failure.take()
    }

    /// What `status` answers at `t`.
    pub fn status(&self, t: Time) -> ServerStatus {
        let state = self.node.state();
        let coordinator = self.bully.as_ref().and_then(|b| b.coordinator().cloned());
        let alive = self.alive(t.mono);
        ServerStatus {
            name: self.cfg.name.clone(),
            rank: self.rank,
            coordinator: coordinator.as_ref().map(|a| a.coordinator.clone()),
            term: coordinator
                .map(|a| a.term)
                .unwrap_or_else(|| self.bully.as_ref().map_or(0, Bully::term)),
            lamport: self.node.lamport(),
            clock_offset_ms: self.clock_offset_ms,
            clock_sync: Some(self.cfg.clock_sync.as_str().to_string()),
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
            users: state.user_count() as u64,
            channels: state.channel_count() as u64,
            messages: state.message_count(),
            events: state.event_count(),
            digest: state.digest(),
            caught_up: self.caught_up,
            local_only_acks: self.repl.local_only_acks(),
            // Batches are numbered from 1 and all those up to this one are durable.
            commits: self.epoch_durable,
            vector: vector_of(&self.node),
        }
    }

    /// The next batch to commit, if none is in flight and something waits. Commit it
    /// (events and metadata in one go), then call [`ServerCore::handle_persisted`].
    pub fn poll_batch(&mut self, t: Time) -> Option<Batch> {
        self.advance(t);
        if self.inflight.is_some()
            || (self.node.pending().is_empty() && self.pending_meta.is_empty())
        {
            return None;
        }
        let vector = vector_of(&self.node);
        let request_mark = self.node.state().request_mark();
        let hides = self.node.hides() - self.hides_taken;
        self.hides_taken = self.node.hides();
        let (events, local) = self.node.take_batch();
        let meta = std::mem::take(&mut self.pending_meta);
        let term = meta
            .iter()
            .filter(|(k, _)| k == META_TERM)
            .filter_map(|(_, v)| v.parse().ok())
            .max();
        let epoch = self.epoch_open;
        self.epoch_open += 1;
        self.inflight = Some(BatchInfo {
            epoch,
            local,
            request_mark,
            hides,
            own_max: self.node.own_max_seq(),
            vector,
            term,
        });
        Some(Batch {
            epoch,
            events,
            meta,
        })
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self, t: Time) -> Option<Transmit> {
        self.advance(t);
        self.out.pop_front()
    }

    /// When [`ServerCore::handle_timeout`] is due next, if anything is scheduled (the
    /// driver may call it more often).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.bully.as_ref().and_then(Bully::poll_timeout),
            self.fd.poll_timeout(),
            self.berkeley.poll_timeout(),
            self.cristian.poll_timeout(),
            self.repl.poll_timeout(),
            self.peers.next_deadline(),
            self.registrar.as_ref().map(Registrar::next_deadline),
            self.broker.registered.then_some(self.broker.next_heartbeat),
            (!self.caught_up && !self.grace_over).then_some(self.started + ALONE_GRACE),
            (!self.peers.is_empty()).then_some(self.next_sync),
            self.bully_start_by
                .filter(|_| !self.bully_started && self.bully.is_some()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Leaving: the message that tells the broker to re-dispatch our requests now.
    pub fn shutdown(&mut self) -> Transmit {
        if self.inflight.is_some() || !self.node.pending().is_empty() {
            // Nothing of it was acknowledged; the writer finishes the batch it is on.
            debug!(server = %self.cfg.name, "stopping with writes not yet committed");
        }
        Transmit::Broker(ToBroker::Bye)
    }

    /// Our physical clock at `t`: the OS clock plus our offset.
    fn clock_now(&self, t: Time) -> Timestamp {
        Timestamp::from_millis(t.wall_ms).offset(self.clock_offset_ms)
    }

    fn meta(&mut self, t: Time, id: Option<String>) -> Meta {
        let now = self.clock_now(t);
        self.node.meta(now, id)
    }

    fn alive(&self, now: Instant) -> Vec<String> {
        self.fd
            .alive(now)
            .into_iter()
            .filter(|p| self.peers.contains(p))
            .collect()
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
