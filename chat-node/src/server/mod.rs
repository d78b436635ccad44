//! The server's protocol core, with no IO: [`ServerCore`].
//!
//! It owns every piece of protocol state of one chat server: the chat state and Lamport
//! clock ([`node::Node`]), the commit pipeline (batches and which of them are durable), the
//! replies waiting for a batch, the peers and their pending requests, the election
//! ([`Bully`]), clock sync ([`Berkeley`]), the failure detector, the replicator and its
//! outbox, catch-up, the reference client and the broker link (registration, heartbeats,
//! the lease). It never touches a socket, a thread, a clock or a disk:
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
//! - [`node`]: the chat state, Lamport clock, and the events waiting for their batch.
//! - [`peers`]: the other servers and the requests pending to each.
//! - [`registrar`]: the reference client (rank, heartbeats, the live list).

pub mod node;
pub mod peers;
pub mod registrar;

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
    Berkeley, BerkeleyConfig, BerkeleyOutput, Bully, BullyConfig, BullyMsg, BullyOutput,
    DetectorConfig, FailureDetector, Release, ReplicationConfig, Replicator, Verdict,
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

/// Reads of stored events the core needs (catch-up answers, pushes beyond its outbox).
pub trait EventReader {
    /// Events of `origin` with sequence numbers above `after_seq`, ascending, at most `limit`.
    fn events_after(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
}

/// What a server recovers from its store on start.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Every stored event.
    pub events: Vec<Event>,
    /// The rank the reference gave this server last time, if any.
    pub rank: Option<u64>,
    /// The greatest election term this server has seen (durable).
    pub term: u64,
}

impl Recovered {
    /// Reads what a server recovers from `store`.
    pub fn from_store(store: &dyn Store) -> Result<Recovered, StoreError> {
        Ok(Recovered {
            events: store.load_all()?,
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
    /// Per topic, the sequence number of the last own event published there (the `prev`
    /// of the next publication on it; see `docs/replication.md`, "Live delivery").
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
        node.recover(&recovered.events);
        info!(
            server = %cfg.name,
            events = recovered.events.len(),
            users = node.state().users().len(),
            channels = node.state().channels().len(),
            "state recovered"
        );
        let own = node.own_max_seq();
        let durable_vector = vector_of(&node);
        let published = last_published(&cfg.name, &node, &recovered.events);
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
            published,
            node,
            cfg,
        }
    }

    // ----- getters ------------------------------------------------------------------

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
            vector: vector_of(&self.node),
        }
    }

    // ----- outputs ------------------------------------------------------------------

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
            self.repl.poll_timeout(),
            self.peers.next_deadline(),
            self.registrar.as_ref().map(Registrar::next_deadline),
            self.broker.registered.then_some(self.broker.next_heartbeat),
            (!self.caught_up && !self.grace_over).then_some(self.started + ALONE_GRACE),
            (!self.peers.names().is_empty()).then_some(self.next_sync),
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

    // ----- inputs: broker -----------------------------------------------------------

    /// A message from the broker, as backend frames; false if it is not one (ignored).
    pub fn handle_broker(&mut self, t: Time, frames: &[Vec<u8>]) -> bool {
        match backend::parse_from_broker(frames) {
            Some(backend::FromBroker::Heartbeat { echo }) => {
                self.handle_broker_heartbeat(t, echo);
                true
            }
            Some(backend::FromBroker::Request {
                token,
                request,
                echo,
            }) => {
                self.handle_client_request(t, token, request, echo);
                true
            }
            None => false,
        }
    }

    /// The broker's heartbeat, with the newest stamp of ours it received.
    pub fn handle_broker_heartbeat(&mut self, t: Time, echo: Option<u64>) {
        self.heard_broker(t, echo);
    }

    /// A client request handed over by the broker as `token` (with the broker's echo of
    /// our newest stamp).
    pub fn handle_client_request(&mut self, t: Time, token: u64, body: &[u8], echo: Option<u64>) {
        self.heard_broker(t, echo);
        if !self.lease_holds(t.mono) {
            // The broker may already have given this request to another server: applying
            // it here too would accept the write twice. Drop it; the client's retry (same
            // request id) or the broker's re-dispatch answers it.
            self.broker.fenced += 1;
            if !self.broker.fence_logged {
                warn!(
                    server = %self.cfg.name,
                    "broker lease ran out (paused or cut off longer than the broker's liveness window); \
                     dropping requests the broker may have given to another server"
                );
                self.broker.fence_logged = true;
            }
            // Tell the broker we are back as soon as possible.
            self.broker.next_heartbeat = t.mono;
            return;
        }
        self.dirty = true;
        let now_ts = self.clock_now(t);
        let (env, encoding) = match decode_client_request(body) {
            Ok(ok) => ok,
            Err(f) => {
                if f.not_offered() {
                    // A well-formed request of another role counts as a request, as before.
                    self.berkeley.note_request(t.mono, now_ts.millis());
                }
                let reply = self.node.handle_failure(&f, now_ts);
                self.queue_reply(token, &reply, f.encoding);
                return;
            }
        };
        self.berkeley.note_request(t.mono, now_ts.millis());
        if env.request == ClientRequest::Status {
            self.node.observe(env.meta.clock);
            let reply = ReplyEnvelope {
                service: "status".into(),
                reply: Reply::Status(Box::new(self.status(t))),
                meta: self.meta(t, env.meta.id),
            };
            self.queue_reply(token, &reply, encoding);
            return;
        }
        let Handled { reply, hold_for } = self.node.handle_client_request(env, now_ts);
        match hold_for {
            Some(_) if self.defect == Defect::ReplyBeforeDurable => {
                match encode_reply(&reply, encoding) {
                    Ok(body) => self
                        .out
                        .push_back(Transmit::Broker(ToBroker::Reply { token, body })),
                    Err(e) => warn!(error = %e, "cannot encode a reply"),
                }
            }
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

    fn heard_broker(&mut self, t: Time, echo: Option<u64>) {
        self.broker.last_heard = t.mono;
        self.broker.silent_logged = false;
        if let Some(e) = echo {
            if self.broker.echoed.is_none_or(|old| e > old) {
                self.broker.echoed = Some(e);
            }
        }
        if self.lease_holds(t.mono) && self.broker.fence_logged {
            info!(server = %self.cfg.name, dropped = self.broker.fenced, "broker lease renewed; serving again");
            self.broker.fence_logged = false;
        }
    }

    /// Whether the broker cannot have given up on us yet. Before any echo (an older broker
    /// that does not echo), there is no lease to check.
    fn lease_holds(&self, now: Instant) -> bool {
        match self.broker.echoed {
            None => true,
            Some(e) => now < self.base + Duration::from_millis(e) + LEASE,
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    // ----- inputs: proxy ------------------------------------------------------------

    /// A message on a topic this server subscribes to (`servers`, and `replication` when it
    /// runs without a reference).
    pub fn handle_subscription(&mut self, t: Time, topic: &[u8], payload: &[u8]) {
        self.dirty = true;
        if topic == TOPIC_REPLICATION.as_bytes() {
            match Event::decode(payload) {
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
        } else if topic == TOPIC_SERVERS.as_bytes() {
            match decode_announcement(payload) {
                Ok((a, meta)) => {
                    self.node.observe(meta.clock);
                    if a.coordinator != self.cfg.name {
                        self.fd.heard(t.mono, &a.coordinator);
                    }
                    if let Some(b) = self.bully.as_mut() {
                        b.handle_announcement(t.mono, a);
                    }
                    self.drain_bully(t, None);
                }
                Err(e) => debug!(error = %e, "undecodable announcement"),
            }
        }
    }

    // ----- inputs: peers ------------------------------------------------------------

    /// A request on our peer socket, from the sender identified by `envelope`.
    pub fn handle_peer_request(&mut self, t: Time, envelope: Vec<Vec<u8>>, body: &[u8]) {
        self.dirty = true;
        let reply = match decode_peer_request(body) {
            Ok((env, _)) => self.peer_request(t, env),
            Err(f) => PeerReply::Ready(self.failure_reply(t, &f)),
        };
        let epoch = self.depends_on();
        self.peer_replies.push_back((epoch, envelope, reply));
    }

    fn failure_reply(&mut self, t: Time, f: &RequestFailure) -> ReplyEnvelope {
        let now_ts = self.clock_now(t);
        self.node.handle_failure(f, now_ts)
    }

    fn peer_request(&mut self, t: Time, env: RequestEnvelope<PeerRequest>) -> PeerReply {
        let now = t.mono;
        self.node.observe(env.meta.clock);
        let service = env.request.service();
        let id = env.meta.id.clone();
        let done = |core: &mut Self, reply: Reply| {
            PeerReply::Ready(ReplyEnvelope {
                service: service.as_str().to_string(),
                reply,
                meta: core.meta(t, id.clone()),
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
                        self.drain_bully(t, Some(&from))
                    }
                    None => false,
                };
                if ok {
                    // The `Ok` is an election message: it leaves once our term is durable.
                    let reply = ReplyEnvelope {
                        service: service.as_str().to_string(),
                        reply: Reply::Election,
                        meta: self.meta(t, id),
                    };
                    return PeerReply::Ready(reply);
                }
                done(self, Reply::Done)
            }
            PeerRequest::Coordinator(a) => {
                self.fd.heard(now, &a.coordinator);
                if let Some(b) = self.bully.as_mut() {
                    b.handle_announcement(now, a);
                }
                self.drain_bully(t, None);
                done(self, Reply::Done)
            }
            PeerRequest::Clock => {
                let c = self.clock_now(t);
                done(self, Reply::Clock(c))
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
                let s = self.status(t);
                done(self, Reply::Status(Box::new(s)))
            }
            PeerRequest::Read(read) => {
                let now_ts = self.clock_now(t);
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

    /// A reply from `peer` on our link to it.
    pub fn handle_peer_reply(&mut self, t: Time, peer: &str, body: &[u8]) {
        self.dirty = true;
        let now = t.mono;
        let Ok((reply, _)) = decode_reply(body) else {
            warn!(peer, "undecodable reply from a peer");
            return;
        };
        let Some(kind) = self.peers.answered(peer, reply.meta.id.as_deref()) else {
            return; // late reply to a request we gave up on
        };
        self.fd.heard(now, peer);
        self.heard.insert(peer.to_string());
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
                self.drain_bully(t, None);
            }
            (Pending::Clock { round }, Reply::Clock(c)) => {
                let local = self.clock_now(t).millis();
                self.berkeley
                    .handle_time(now, local, peer, round, c.millis());
                self.drain_berkeley(t);
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
                    if !self.send_sync(t, peer) {
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

    /// Request `id` to `peer` could not be sent (link still connecting, or its queue full).
    pub fn handle_peer_unsent(&mut self, t: Time, peer: &str, id: u64) {
        // Not a missed reply: silence beyond the detector's timeout is what marks a peer down.
        if self.peers.cancel(peer, id) == Some(Pending::Sync) {
            self.sync_inflight = None;
            self.next_sync = t.mono + SYNC_RETRY;
        }
    }

    // ----- inputs: reference --------------------------------------------------------

    /// The reference's reply to our last request.
    pub fn handle_reference_reply(&mut self, t: Time, body: &[u8]) {
        self.dirty = true;
        let Some(reg) = self.registrar.as_mut() else {
            return;
        };
        let Some((event, clock)) = reg.handle_reply(body) else {
            return;
        };
        self.node.observe(clock);
        match event {
            RefEvent::Rank(r) => {
                if self.rank != Some(r) {
                    info!(server = %self.cfg.name, rank = r, "rank assigned");
                    self.pending_meta.push((META_RANK.into(), r.to_string()));
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
                        self.term_written,
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
            RefEvent::List(list) => self.set_peers(t, &list),
        }
    }

    /// Our request to the reference could not be sent.
    pub fn handle_reference_unsent(&mut self, t: Time) {
        if let Some(reg) = self.registrar.as_mut() {
            reg.unsent(t.mono);
        }
    }

    fn set_peers(&mut self, t: Time, list: &[ServerInfo]) {
        let now = t.mono;
        let peers: Vec<(String, u64, String)> = list
            .iter()
            .filter(|s| s.name != self.cfg.name)
            .filter_map(|s| s.endpoint.clone().map(|e| (s.name.clone(), s.rank, e)))
            .collect();
        let still_alive = self.alive(now);
        let (changed, forgotten) = self.peers.update(&peers, &still_alive);
        for (peer, kind) in forgotten {
            // Its answer can no longer arrive: a catch-up in flight with it is over.
            if kind == Pending::Sync && self.sync_inflight.as_deref() == Some(peer.as_str()) {
                self.sync_inflight = None;
            }
        }
        if changed {
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
        self.drain_bully(t, None);
    }

    // ----- inputs: the disk ---------------------------------------------------------

    /// Batch `epoch` (from [`ServerCore::poll_batch`]) is durable.
    pub fn handle_persisted(&mut self, epoch: u64) {
        self.dirty = true;
        let Some(batch) = self.inflight.take_if(|b| b.epoch == epoch) else {
            warn!(server = %self.cfg.name, epoch, "a batch that was not in flight was reported durable");
            return;
        };
        self.epoch_durable = epoch;
        if let Some(term) = batch.term {
            self.term_durable = self.term_durable.max(term);
        }
        for e in &batch.local {
            self.outbox.insert(e.id.seq, e.clone());
        }
        self.repl.committed(batch.own_max);
        self.durable_vector = batch.vector;
        for event in &batch.local {
            if let Some(mut p) = event.publication() {
                // Never publish a copy that is known to lose to an earlier copy of the
                // same request (a retry accepted twice): subscribers get the winner from
                // the server that accepted it.
                if self.is_visible(event) {
                    // Chain the publications of this server on each topic, so that a
                    // subscriber that missed one knows it (`prev` beyond what it saw).
                    let last = self.published.entry(p.topic().to_string()).or_insert(0);
                    p.set_prev(Some(*last));
                    *last = (*last).max(event.id.seq);
                    match encode_publication(&p, self.cfg.encoding) {
                        Ok(payload) => self.out.push_back(Transmit::Publish {
                            topic: p.topic().to_string(),
                            payload,
                        }),
                        Err(e) => warn!(error = %e, "cannot encode a publication"),
                    }
                }
            }
            match event.encode(Encoding::MsgPack) {
                Ok(payload) => self.out.push_back(Transmit::Publish {
                    topic: TOPIC_REPLICATION.to_string(),
                    payload,
                }),
                Err(e) => warn!(error = %e, "cannot encode an event"),
            }
            debug!(server = %self.cfg.name, event = %event.id, op = event.kind.operation(), "write committed");
        }
    }

    fn is_visible(&self, event: &Event) -> bool {
        event
            .request_id
            .as_deref()
            .is_none_or(|rid| self.node.state().event_for_request(rid) == Some(&event.id))
    }

    // ----- timers -------------------------------------------------------------------

    /// Runs what is due at `t` (call at [`ServerCore::poll_timeout`], or more often).
    pub fn handle_timeout(&mut self, t: Time) {
        self.dirty = true;
        let now = t.mono;
        if let Some(reg) = self.registrar.as_mut() {
            let me = Identity {
                name: &self.cfg.name,
                rank: self.rank,
                registered: self.registered,
                endpoint: &self.peer_endpoint,
            };
            let clock = self.clock_offset_ms;
            let node = &mut self.node;
            let wall = t.wall_ms;
            if let Some(body) = reg.poll_send(now, &me, || {
                node.meta(Timestamp::from_millis(wall).offset(clock), None)
            }) {
                self.out.push_back(Transmit::Reference { body });
            }
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
            self.send_peer(t, &peer, req, Pending::Ping);
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
            if b.poll_timeout().is_some_and(|at| at <= now) {
                b.handle_timeout(now);
            }
        }
        self.drain_bully(t, None);
        let local = self.clock_now(t).millis();
        self.berkeley.handle_timeout(now, local);
        self.drain_berkeley(t);
        // Catch-up / anti-entropy.
        if now >= self.next_sync {
            if self.sync_inflight.is_none() && !alive.is_empty() {
                self.sync_turn = (self.sync_turn + 1) % alive.len();
                let peer = alive[self.sync_turn].clone();
                self.next_sync = now + self.cfg.sync_interval;
                self.send_sync(t, &peer);
            } else {
                // Due but not possible now (one in flight, nobody alive): look again soon.
                self.next_sync = now + SYNC_RECHECK;
            }
        }
        if !self.caught_up && now.saturating_duration_since(self.started) >= ALONE_GRACE {
            self.grace_over = true;
            if alive.is_empty() {
                self.caught_up = true;
                info!(server = %self.cfg.name, "no live peer to catch up from; serving what we have");
            }
        }
        // The broker link.
        if self.broker.registered && now >= self.broker.next_heartbeat {
            self.out.push_back(Transmit::Broker(ToBroker::Heartbeat {
                capacity: self.cfg.capacity,
                stamp: self.stamp(now),
            }));
            self.broker.next_heartbeat = now + backend::HEARTBEAT_INTERVAL;
        }
        if self.broker.registered
            && now.saturating_duration_since(self.broker.last_heard) > backend::LIVENESS * 3
            && !self.broker.silent_logged
        {
            warn!(server = %self.cfg.name, "no heartbeat from the broker; still trying");
            self.broker.silent_logged = true;
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

    /// Asks `peer` for what we miss; false if the request could not be queued.
    fn send_sync(&mut self, t: Time, peer: &str) -> bool {
        let req = Request::Sync {
            from: self.cfg.name.clone(),
            vector: vector_of(&self.node),
            limit: DEFAULT_SYNC_LIMIT,
        };
        let sent = self.send_peer(t, peer, req, Pending::Sync);
        if sent {
            self.sync_inflight = Some(peer.to_string());
        }
        sent
    }

    /// Queues `request` to `peer` now; false if the peer is unknown or saturated.
    fn send_peer(&mut self, t: Time, peer: &str, request: Request, kind: Pending) -> bool {
        match self.peer_transmit(t, peer, request, kind) {
            Some(tx) => {
                self.out.push_back(tx);
                true
            }
            None => false,
        }
    }

    /// A request to `peer`, registered as pending.
    fn peer_transmit(
        &mut self,
        t: Time,
        peer: &str,
        request: Request,
        kind: Pending,
    ) -> Option<Transmit> {
        let (id, endpoint) = self.peers.start(peer, kind, t.mono)?;
        let mut meta = self.meta(t, None);
        meta.id = Some(peers::wire_id(id));
        let env = RequestEnvelope { request, meta };
        match encode_request(&env, Encoding::MsgPack) {
            Ok(body) => Some(Transmit::Peer {
                to: peer.to_string(),
                endpoint,
                id,
                body,
            }),
            Err(e) => {
                warn!(error = %e, "cannot encode a peer request");
                self.peers.cancel(peer, id);
                None
            }
        }
    }

    /// Runs the election's outputs; returns whether an `Ok` is owed to `answering`.
    fn drain_bully(&mut self, t: Time, answering: Option<&str>) -> bool {
        let mut outputs = Vec::new();
        let mut term = 0;
        if let Some(b) = self.bully.as_mut() {
            while let Some(o) = b.poll_output() {
                outputs.push(o);
            }
            term = b.term();
        }
        if term > self.term_written {
            // Persist the greatest term seen before acting on it: election messages wait
            // for the batch that carries it.
            self.pending_meta.push((META_TERM.into(), term.to_string()));
            self.term_written = term;
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
                        if let Some(tx) = self.peer_transmit(t, &to, req, kind) {
                            self.emit_election(tx);
                        }
                    }
                }
                BullyOutput::Announce(a) => {
                    info!(server = %self.cfg.name, term = a.term, rank = a.rank, "elected coordinator");
                    let meta = self.meta(t, None);
                    match encode_announcement(&a, &meta, self.cfg.encoding) {
                        Ok(payload) => self.emit_election(Transmit::Publish {
                            topic: TOPIC_SERVERS.to_string(),
                            payload,
                        }),
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
                    self.berkeley.set_active(t.mono, active);
                    self.drain_berkeley(t);
                }
            }
        }
        ok
    }

    /// An election message leaves only once the greatest term written is durable.
    fn emit_election(&mut self, tx: Transmit) {
        if self.term_durable >= self.term_written && self.election_out.is_empty() {
            self.out.push_back(tx);
        } else {
            self.election_out.push_back((self.term_written, tx));
        }
    }

    fn drain_berkeley(&mut self, t: Time) {
        while let Some(o) = self.berkeley.poll_output() {
            match o {
                BerkeleyOutput::RequestTime { to, round } => {
                    self.send_peer(t, &to, Request::Clock, Pending::Clock { round });
                }
                BerkeleyOutput::Adjust { to, offset_ms } => {
                    if to == self.cfg.name {
                        self.adjust_clock(offset_ms);
                    } else {
                        self.send_peer(t, &to, Request::Adjust { offset_ms }, Pending::Adjust);
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
                        self.fd.missed_reply(t.mono, &m);
                    }
                }
            }
        }
    }

    fn adjust_clock(&mut self, offset_ms: i64) {
        // Bound one adjustment to a day: a bigger one is a bug or an attack, not drift.
        let offset_ms = offset_ms.clamp(-86_400_000, 86_400_000);
        self.clock_offset_ms = self.clock_offset_ms.saturating_add(offset_ms);
        debug!(server = %self.cfg.name, offset_ms, total = self.clock_offset_ms, "clock adjusted");
    }

    // ----- the pipeline: what became sendable ---------------------------------------

    /// Moves everything that became sendable since the last inputs to the output queue.
    fn advance(&mut self, t: Time) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let now = t.mono;
        // Who is alive does not change between the push and the release below.
        let alive = self.alive(now);
        self.push_to_peers(t, &alive);
        self.release_held(t, &alive);
        while self
            .deferred
            .front()
            .is_some_and(|(e, _)| *e <= self.epoch_durable)
        {
            if let Some((_, tx)) = self.deferred.pop_front() {
                self.out.push_back(tx);
            }
        }
        while self
            .election_out
            .front()
            .is_some_and(|(term, _)| *term <= self.term_durable)
        {
            if let Some((_, tx)) = self.election_out.pop_front() {
                self.out.push_back(tx);
            }
        }
        self.send_peer_replies(t);
        if self.caught_up && !self.broker.registered {
            // Serve clients only once we hold what our peers hold (no stale reads after a
            // restart, no writes acknowledged before we know our peers).
            self.out.push_back(Transmit::Broker(ToBroker::Ready {
                capacity: self.cfg.capacity,
                stamp: self.stamp(now),
            }));
            self.broker.registered = true;
            self.broker.next_heartbeat = now + backend::HEARTBEAT_INTERVAL;
            info!(server = %self.cfg.name, "ready: serving clients");
        }
    }

    fn push_to_peers(&mut self, t: Time, alive: &[String]) {
        for send in self.repl.poll_sends(t.mono, alive) {
            let mut events: Vec<Event> = self
                .outbox
                .range(send.from..=send.to)
                .map(|(_, e)| e.clone())
                .collect();
            if events.len() as u64 != send.to - send.from + 1 {
                let n = usize::try_from(send.to - send.from + 1).unwrap_or(usize::MAX);
                match self.reader.events_after(&self.cfg.name, send.from - 1, n) {
                    Ok(e) => events = e,
                    Err(e) => {
                        self.failure.get_or_insert(e);
                        return;
                    }
                }
            }
            let req = Request::Replicate {
                from: self.cfg.name.clone(),
                events,
            };
            self.send_peer(t, &send.peer, req, Pending::Replicate { msg: send.msg });
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
    }

    fn release_held(&mut self, t: Time, alive: &[String]) {
        let before = self.repl.local_only_acks();
        for r in self.repl.poll_released(alive) {
            match r {
                Release::Ack(h) => self.out.push_back(Transmit::Broker(ToBroker::Reply {
                    token: h.token,
                    body: h.bytes,
                })),
                Release::Refuse(h) => {
                    let e = ChatError::Unavailable(
                        "no other server is alive to hold a copy of this write; it is stored here and will be \
                         replicated; retry with the same request id"
                            .into(),
                    );
                    let meta = self.meta(t, h.id);
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

    fn send_peer_replies(&mut self, t: Time) {
        while self
            .peer_replies
            .front()
            .is_some_and(|(e, _, _)| *e <= self.epoch_durable)
        {
            let Some((_, envelope, reply)) = self.peer_replies.pop_front() else {
                break;
            };
            let reply = match reply {
                PeerReply::Ready(r) => r,
                PeerReply::Vector(service, id) => ReplyEnvelope {
                    service,
                    // What is durable here, which includes the events of the push.
                    reply: Reply::Vector(self.durable_vector.clone()),
                    meta: self.meta(t, id),
                },
                PeerReply::Sync { vector, limit, id } => {
                    let (events, more) = match self.events_beyond(&vector, limit as usize) {
                        Ok(r) => r,
                        Err(e) => {
                            self.failure.get_or_insert(e);
                            return;
                        }
                    };
                    ReplyEnvelope {
                        service: "sync".into(),
                        reply: Reply::Events { events, more },
                        meta: self.meta(t, id),
                    }
                }
            };
            let Ok(body) = encode_reply(&reply, Encoding::MsgPack) else {
                continue;
            };
            self.out.push_back(Transmit::PeerReply { envelope, body });
        }
    }

    /// Stored events beyond `vector`, at most `limit` of them and about
    /// [`SYNC_REPLY_BYTES`]; and whether more remain.
    fn events_beyond(
        &self,
        vector: &BTreeMap<String, u64>,
        limit: usize,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (origin, applied) in self.node.state().applied() {
            let have = vector.get(origin).copied().unwrap_or(0);
            if applied.max() <= have {
                continue;
            }
            let room = limit.saturating_sub(out.len());
            if room == 0 || bytes >= SYNC_REPLY_BYTES {
                return Ok((out, true));
            }
            for e in self.reader.events_after(origin, have, room)? {
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

    // ----- helpers ------------------------------------------------------------------

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

    /// Queues a client reply; it leaves once what it may reveal is durable.
    fn queue_reply(&mut self, token: u64, reply: &ReplyEnvelope, encoding: Encoding) {
        match encode_reply(reply, encoding) {
            Ok(body) => {
                let epoch = self.depends_on();
                self.emit_after(epoch, Transmit::Broker(ToBroker::Reply { token, body }));
            }
            Err(e) => warn!(error = %e, "cannot encode a reply"),
        }
    }

    /// Sends `tx` once batch `epoch` is durable (at once if it is).
    fn emit_after(&mut self, epoch: u64, tx: Transmit) {
        if epoch <= self.epoch_durable && self.deferred.is_empty() {
            self.out.push_back(tx);
        } else {
            self.deferred.push_back((epoch, tx));
        }
    }

    /// The batch holding the newest event (or metadata) applied so far: a reply built now
    /// may reveal it, so it waits until that batch is durable.
    fn depends_on(&self) -> u64 {
        if self.node.pending().is_empty() && self.pending_meta.is_empty() {
            self.epoch_open - 1
        } else {
            self.epoch_open
        }
    }
}

/// Per topic, the last own event that was (or should have been) published there, from the
/// recovered events: an event committed but not published before a crash is then the
/// `prev` of the next publication, and subscribers see the gap and repair it.
fn last_published(name: &str, node: &Node, events: &[Event]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.id.origin == name) {
        let visible = e
            .request_id
            .as_deref()
            .is_none_or(|rid| node.state().event_for_request(rid) == Some(&e.id));
        if let Some(p) = e.publication().filter(|_| visible) {
            let last = out.entry(p.topic().to_string()).or_insert(0);
            *last = (*last).max(e.id.seq);
        }
    }
    out
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
