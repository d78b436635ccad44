//! The server runtime: a driver that owns the sockets and the writer thread of one chat
//! server and runs its protocol core, [`chat_node::server::ServerCore`], which holds every
//! piece of protocol state.
//!
//! One iteration of the loop:
//! 1. wait until a socket is readable or the core's next timeout is due;
//! 2. drain every readable socket (bounded) into the core's `handle_*` inputs: client
//!    requests from the broker, publications on `servers` (and `replication` without a
//!    reference), requests on the peer socket, replies on the links to the peers, the
//!    reference's reply, and the writer's report that a batch is durable;
//! 3. `handle_timeout`;
//! 4. hand the core's next batch (events and metadata, one in flight) to the `commit`
//!    writer, and send everything `poll_transmit` gives: replies, publications, requests to
//!    peers and the reference.
//!
//! What may leave when (no reply before the batch it reveals is durable, no election message
//! before the term is, no write applied after the broker lease ran out) is the core's
//! business, checked there.
//!
//! # Layout
//! - `commit`: group commit on a writer thread, one batch in flight.
//! - `links`: the DEALER links to the other servers and the REQ socket to the reference.

pub(crate) mod commit;
pub(crate) mod links;

use std::time::{Duration, Instant};

use chat_core::{TOPIC_REPLICATION, TOPIC_SERVERS};
use chat_node::server::{EventReader, Recovered, ServerCore, Time, Transmit};
use chat_store::{ReadsThrough, Store, StoreError};
use commit::{Committer, SharedStore};
use tracing::{debug, info};

use crate::sockets;
use crate::Shutdown;

pub use chat_node::server::{
    Node, ServerConfig, ALONE_GRACE, MAX_WAITING_PEER_REPLIES, OUTBOX_MAX, SYNC_REPLY_BYTES,
};
use links::{PeerLinks, ReferenceLink};

/// Longest the loop sleeps before looking at the shutdown flag again.
const MAX_WAIT: Duration = Duration::from_millis(100);

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

/// The endpoint the peer socket is reachable at, once bound.
pub type PeerEndpoint = String;

/// Runs a server until `shutdown` is raised. Rebuilds state from `store` first.
pub fn run_server(
    ctx: &crate::Context,
    cfg: &ServerConfig,
    store: Box<dyn Store>,
    shutdown: &Shutdown,
) -> Result<(), ServerError> {
    run_server_reporting(ctx, cfg, store, shutdown, None)
}

/// [`run_server`], reporting the bound peer endpoint on `bound`.
pub fn run_server_reporting(
    ctx: &crate::Context,
    cfg: &ServerConfig,
    store: Box<dyn Store>,
    shutdown: &Shutdown,
    bound: Option<crossbeam_channel::Sender<PeerEndpoint>>,
) -> Result<(), ServerError> {
    let ctx = ctx.zmq();
    let mut rt = Runtime::start(ctx, cfg, store)?;
    if let Some(tx) = bound {
        let _ = tx.send(rt.core.peer_endpoint().to_string());
    }
    while !shutdown.is_triggered() {
        rt.step()?;
    }
    let bye = rt.core.shutdown();
    rt.send(bye)?;
    info!(server = %cfg.name, "stopped");
    Ok(())
}

fn now() -> Time {
    Time::new(Instant::now(), crate::wall_clock().millis())
}

/// Reads of the shared store for the core, for stores without a reader of their own
/// (they wait for a commit in progress).
struct SharedReader(SharedStore);

impl ReadsThrough for SharedReader {
    fn read_through<R>(&self, f: impl FnOnce(&dyn chat_store::StoreRead) -> R) -> R {
        f(&**self.0.lock())
    }
}

struct Runtime {
    core: ServerCore,
    committer: Committer,
    max_batch: usize,
    backend: zmq::Socket,
    publisher: zmq::Socket,
    subscriber: zmq::Socket,
    peer_router: zmq::Socket,
    links: PeerLinks,
    reference: Option<ReferenceLink>,
}

impl Runtime {
    fn start(
        ctx: &zmq::Context,
        cfg: &ServerConfig,
        store: Box<dyn Store>,
    ) -> Result<Self, ServerError> {
        let recovered = Recovered::from_store(&*store)?;

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

        // Reads on a connection of their own where the store has one (SQLite: WAL lets it
        // read while the writer thread commits), else through the writer's lock.
        let own_reader = store.reader()?;
        let store: SharedStore = std::sync::Arc::new(parking_lot::Mutex::new(store));
        let committer = Committer::start(ctx, &cfg.name, store.clone(), cfg.inline_commit)?;
        let reader: Box<dyn EventReader> = match own_reader {
            Some(r) => r,
            None => Box::new(SharedReader(store)),
        };
        let core = ServerCore::new(
            cfg.clone(),
            Instant::now(),
            recovered,
            peer_endpoint,
            reader,
        );
        Ok(Runtime {
            core,
            committer,
            max_batch: cfg.max_batch,
            backend,
            publisher,
            subscriber,
            peer_router,
            links: PeerLinks::new(ctx),
            reference: cfg
                .reference
                .clone()
                .map(|endpoint| ReferenceLink::new(ctx, endpoint)),
        })
    }

    fn step(&mut self) -> Result<(), ServerError> {
        let start = Instant::now();
        let wait = self
            .core
            .poll_timeout()
            .map_or(MAX_WAIT, |at| at.saturating_duration_since(start))
            .min(MAX_WAIT);
        let peer_names = self.links.names();
        // Peer requests beyond the cap wait in the socket until commits catch up.
        let peer_events = if self.core.wants_peer_requests() {
            zmq::POLLIN
        } else {
            zmq::PollEvents::empty()
        };
        let awaits_reference = self.core.awaits_reference();
        let readable: Vec<bool> = {
            let mut items = vec![
                self.backend.as_poll_item(zmq::POLLIN),
                self.subscriber.as_poll_item(zmq::POLLIN),
                self.peer_router.as_poll_item(peer_events),
            ];
            let ref_socket = self
                .reference
                .as_ref()
                .and_then(ReferenceLink::socket)
                .filter(|_| awaits_reference);
            if let Some(s) = ref_socket {
                items.push(s.as_poll_item(zmq::POLLIN));
            }
            items.extend(self.links.poll_items());
            // The writer's completions (its socket is read below).
            if let Some(s) = self.committer.socket() {
                items.push(s.as_poll_item(zmq::POLLIN));
            }
            // Round up so the loop does not spin during the last sub-millisecond.
            let ms = i64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i64::MAX);
            match zmq::poll(&mut items, ms) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let mut r: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            if ref_socket.is_none() {
                r.insert(3, false);
            }
            r
        };
        let t = now();
        if readable[0] {
            self.drain_backend(t)?;
        }
        if readable[1] {
            self.drain_subscriber(t)?;
        }
        if readable[2] {
            self.drain_peer_router(t)?;
        }
        if readable[3] {
            if let Some(body) = self.reference.as_mut().and_then(ReferenceLink::recv) {
                self.core.handle_reference_reply(t, &body);
            }
        }
        for (i, name) in peer_names.iter().enumerate() {
            if readable.get(4 + i).copied().unwrap_or(false) {
                for body in self.links.recv(name, self.max_batch) {
                    self.core.handle_peer_reply(t, name, &body);
                }
            }
        }
        self.core.handle_timeout(t);
        self.commit_and_send(t)
    }

    /// Commits what the core hands over and sends what it wants sent.
    fn commit_and_send(&mut self, t: Time) -> Result<(), ServerError> {
        loop {
            if let Some(done) = self.committer.poll_completed() {
                // A store that fails stops the server rather than acknowledge what it lost.
                let hidden = done.result?;
                self.core.handle_persisted(done.epoch, hidden);
            }
            if self.committer.busy() {
                break;
            }
            match self.core.poll_batch(t) {
                Some(batch) => self.committer.submit(batch),
                None => break,
            }
        }
        while let Some(tx) = self.core.poll_transmit(t) {
            self.send(tx)?;
        }
        if let Some(e) = self.core.take_failure() {
            return Err(e.into());
        }
        if self.links.generation() != self.core.peers_generation() {
            self.links
                .reconcile(&self.core.peer_links(), self.core.peers_generation());
        }
        Ok(())
    }

    fn send(&mut self, tx: Transmit) -> Result<(), ServerError> {
        match tx {
            Transmit::Broker(msg) => {
                let frames = msg.frames();
                let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                send_to_broker(&self.backend, &frames)
            }
            Transmit::Publish { topic, payload } => {
                // PUB never blocks: past its high-water mark it drops (lossy by design).
                let _ = self
                    .publisher
                    .send_multipart([topic.as_bytes(), &payload[..]], zmq::DONTWAIT);
                Ok(())
            }
            Transmit::Peer {
                to,
                endpoint,
                id,
                body,
            } => {
                if !self.links.send(&to, &endpoint, &body) {
                    self.core.handle_peer_unsent(now(), &to, id);
                }
                Ok(())
            }
            Transmit::PeerReply { envelope, body } => {
                let mut frames = envelope;
                frames.push(body);
                match self.peer_router.send_multipart(frames, zmq::DONTWAIT) {
                    Ok(()) | Err(zmq::Error::EHOSTUNREACH) | Err(zmq::Error::EAGAIN) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Transmit::Reference { body } => {
                let sent = self.reference.as_mut().is_some_and(|r| r.send(&body));
                if !sent {
                    self.core.handle_reference_unsent(now());
                }
                Ok(())
            }
        }
    }

    // ----- inputs -------------------------------------------------------------------

    fn drain_backend(&mut self, t: Time) -> Result<(), ServerError> {
        for _ in 0..self.max_batch {
            let parts = match self.backend.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if !self.core.handle_broker(t, &parts) {
                tracing::warn!(server = %self.core.config().name, frames = parts.len(), "unexpected frame from the broker");
            }
        }
        Ok(())
    }

    fn drain_subscriber(&mut self, t: Time) -> Result<(), ServerError> {
        for _ in 0..self.max_batch {
            let parts = match self.subscriber.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if let [topic, payload] = &parts[..] {
                self.core.handle_subscription(t, topic, payload);
            }
        }
        Ok(())
    }

    fn drain_peer_router(&mut self, t: Time) -> Result<(), ServerError> {
        for _ in 0..self.max_batch {
            if !self.core.wants_peer_requests() {
                break;
            }
            let mut parts = match self.peer_router.recv_multipart(zmq::DONTWAIT) {
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
            let body = parts.pop().unwrap_or_default();
            self.core.handle_peer_request(t, parts, &body);
        }
        Ok(())
    }
}

/// Sends to the broker without ever blocking the loop: when the broker is not reading
/// (down, or its queue to us is full) the message is dropped and the client's retry or
/// the broker's re-dispatch covers it.
fn send_to_broker(socket: &zmq::Socket, frames: &[&[u8]]) -> Result<(), ServerError> {
    match socket.send_multipart(frames, zmq::DONTWAIT) {
        Ok(()) => Ok(()),
        Err(zmq::Error::EAGAIN) => {
            debug!("broker not reading; message dropped");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
