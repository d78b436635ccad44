//! The client SDK: one method per service, typed results and errors, live subscriptions.
//!
//! Requests go to the broker over a REQ socket with the Lazy Pirate pattern: wait up to
//! `timeout` for the reply, and on silence close the socket, open a new one and send the
//! same bytes again (same request id, so a retried write is applied once), up to `retries`
//! times. A lost reply never blocks forever.
//!
//! Subscriptions run on a background thread that owns the SUB socket. ZeroMQ matches topics
//! by prefix (a subscription to `ana` also receives `anabela`); the thread checks the topic
//! frame exactly and delivers only what was asked for, as [`ClientEvent`]s over a
//! `crossbeam-channel`. Every reply and publication advances the client's Lamport clock.
//!
//! Live delivery is exactly once and gap-free on each subscribed channel or user topic,
//! from the moment its baseline history read answered ([`Client::wait_for_baseline`]): the
//! thread runs [`chat_node::delivery::Delivery`], which drops repeats (same event id, or
//! another copy of the same request) and repairs what pub/sub lost from `history` (holes
//! revealed by the publications' `prev`, lost tails revealed by the per-origin `heads` of
//! history replies, read after a reconnection of the SUB socket seen by a socket monitor
//! and by a periodic check). The history reads go through the broker
//! on the thread's own Lazy Pirate REQ socket, never the application's. See
//! `docs/replication.md`, "Live delivery"; [`Client::delivery_stats`] tells what it did.
//!
//! [`Subscriber`] is the same without the thread, for consumers that want to read events
//! on their own thread (one wake-up per event instead of two: no hand-over through a
//! channel). [`Subscriber::connect`] drops repeats only; [`Subscriber::connect_with_repair`]
//! also repairs, reading history through the broker.
//!
//! ```no_run
//! use chat_net::client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::default())?;
//! client.login("ana")?;
//! client.subscribe("geral")?;
//! client.publish("ana", "geral", "oi")?;
//! if let Ok(event) = client.events().recv() { println!("{event:?}"); }
//! # Ok::<(), chat_net::client::ClientError>(())
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_core::protocol::{
    decode_announcement, decode_publication, decode_reply, encode_request, HistoryPage,
};
use chat_core::{
    Announcement, ChannelPost, ChatError, DirectPost, Encoding, ErrorCode, HistoryTarget,
    LamportClock, Meta, Publication, Reply, ReplyEnvelope, Request, RequestEnvelope, ServerStatus,
    TOPIC_SERVERS,
};
use chat_node::delivery::{Delivery, Fetch};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

pub use chat_node::delivery::{DeliveryConfig, DeliveryStats};

use crate::sockets;

mod subscriber;
use subscriber::start_subscriber;
pub use subscriber::Subscriber;

/// Where and how a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker frontend (REQ connects here).
    pub broker: String,
    /// Proxy XPUB side (SUB connects here).
    pub sub: String,
    /// How long to wait for one reply before retrying.
    pub timeout: Duration,
    /// How many times to send a request in all (first try included).
    pub attempts: u32,
    /// Encoding of requests.
    pub encoding: Encoding,
    /// Live delivery: repeats dropped, gaps repaired from history (see
    /// [`chat_node::delivery`]); history reads use `broker`, `timeout` and `attempts`.
    pub delivery: DeliveryConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            broker: chat_core::DEFAULT_BROKER_FRONTEND.to_string(),
            sub: chat_core::DEFAULT_PROXY_XPUB.to_string(),
            timeout: Duration::from_secs(3),
            attempts: 3,
            encoding: Encoding::MsgPack,
            delivery: DeliveryConfig::default(),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request.
    #[error("{description} ({code})")]
    Server {
        /// Stable code.
        code: ErrorCode,
        /// The server's sentence.
        description: String,
    },
    /// No reply after every attempt.
    #[error("no reply from the broker after {attempts} attempts of {timeout:?}; is the cluster running?")]
    Timeout {
        /// Attempts made.
        attempts: u32,
        /// Wait per attempt.
        timeout: Duration,
    },
    /// ZeroMQ failed.
    #[error("transport error: {0}")]
    Transport(#[from] zmq::Error),
    /// The reply could not be understood.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A bad argument, caught before sending.
    #[error("{0}")]
    Invalid(#[from] ChatError),
}

impl ClientError {
    /// The stable code of this error (server codes pass through).
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Server { code, .. } => code.clone(),
            ClientError::Timeout { .. } => ErrorCode::Timeout,
            ClientError::Transport(_) => ErrorCode::Unavailable,
            ClientError::Protocol(_) => ErrorCode::BadRequest,
            ClientError::Invalid(e) => e.code(),
        }
    }
}

/// Something that arrived on a subscribed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A post on a subscribed channel.
    Post(ChannelPost),
    /// A private message on a subscribed user topic.
    Direct(DirectPost),
    /// A coordinator announcement on `servers`.
    Coordinator(Announcement),
    /// A frame on a subscribed topic that could not be understood (kept, not fatal).
    Malformed {
        /// The topic, lossily decoded.
        topic: String,
        /// What was wrong.
        error: String,
    },
}

struct ReqConn {
    socket: Option<zmq::Socket>,
}

struct SubHandle {
    control: Mutex<zmq::Socket>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<DeliveryStats>>,
    baselines: Arc<Baselines>,
}

/// When each subscribed topic's baseline read answered, shared by the subscriber thread
/// with the callers waiting for it.
#[derive(Default)]
struct Baselines {
    at: Mutex<HashMap<String, Instant>>,
    changed: Condvar,
}

/// A connection to a chat cluster. `Send + Sync`: share it with `Arc`.
pub struct Client {
    ctx: zmq::Context,
    cfg: ClientConfig,
    req: Mutex<ReqConn>,
    clock: Arc<Mutex<LamportClock>>,
    sub: SubHandle,
    events: Receiver<ClientEvent>,
}

/// Capacity of the event channel; events beyond it are dropped (and counted) rather than
/// letting an application that never reads grow memory without bound.
pub const EVENT_QUEUE: usize = 65_536;

/// A fresh request id: the wall-clock milliseconds (48 bits) then 80 random bits, in hex.
///
/// Ids that grow with time land at the end of a server's request-id index, so storing one
/// touches the page the previous one did instead of a random page of the whole index (a
/// random id costs one more page written per commit); the random part keeps them unique.
pub fn new_request_id() -> String {
    let ms = crate::wall_clock().millis().max(0) as u64 & 0xffff_ffff_ffff;
    let random = rand::random::<u128>() & ((1u128 << 80) - 1);
    format!("{ms:012x}{random:020x}")
}

impl Client {
    /// Connects to the broker and the proxy (ZeroMQ connects lazily; nothing blocks here).
    pub fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let ctx = zmq::Context::new();
        let clock = Arc::new(Mutex::new(LamportClock::new()));
        let (tx, rx) = crossbeam_channel::bounded(EVENT_QUEUE);
        let sub = start_subscriber(&ctx, &cfg, tx, clock.clone())?;
        Ok(Client {
            ctx,
            cfg,
            req: Mutex::new(ReqConn { socket: None }),
            clock,
            sub,
            events: rx,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The client's Lamport clock.
    pub fn clock(&self) -> u64 {
        self.clock.lock().value()
    }

    /// Events from subscribed topics.
    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }

    /// What live delivery did so far: deliveries, repeats dropped, gaps repaired.
    pub fn delivery_stats(&self) -> DeliveryStats {
        *self.sub.stats.lock()
    }

    /// Receives interest in `topic` (a channel, a user name, or `servers`), matched exactly.
    /// Returns once the SUB socket has the subscription; exactly-once, gap-free delivery
    /// starts when the topic's baseline read answers ([`Client::wait_for_baseline`]).
    pub fn subscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.control(b'+', topic)
    }

    /// Subscribes to a channel or user topic and waits (up to `timeout`) until its baseline
    /// read answered; returns when it did. Every write whose request is sent after that is
    /// delivered exactly once (see [`Client::wait_for_baseline`]).
    pub fn subscribe_with_baseline(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Instant, ClientError> {
        let deadline = Instant::now() + timeout;
        self.subscribe(topic)?;
        self.wait_for_baseline(topic, deadline.saturating_duration_since(Instant::now()))
    }

    /// When `topic`'s baseline read answered, if it did: from then on, every post or private
    /// message whose request is sent later is delivered exactly once (one sent before may or
    /// may not be, never twice). `None` before, for topics not subscribed, for `servers`,
    /// and without repair ([`DeliveryConfig::dedup_only`]).
    pub fn baselined_at(&self, topic: &str) -> Option<Instant> {
        self.sub.baselines.at.lock().get(topic).copied()
    }

    /// Waits up to `timeout` for `topic`'s baseline read to answer (see
    /// [`Client::baselined_at`]); [`ClientError::Timeout`] if it did not (history reads are
    /// retried meanwhile), [`ClientError::Protocol`] without repair.
    pub fn wait_for_baseline(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Instant, ClientError> {
        if !self.cfg.delivery.repair {
            return Err(ClientError::Protocol(
                "live delivery has no baseline without repair".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        let mut at = self.sub.baselines.at.lock();
        loop {
            if let Some(t) = at.get(topic) {
                return Ok(*t);
            }
            if self
                .sub
                .baselines
                .changed
                .wait_until(&mut at, deadline)
                .timed_out()
            {
                return at.get(topic).copied().ok_or(ClientError::Timeout {
                    attempts: 1,
                    timeout,
                });
            }
        }
    }

    /// Stops receiving `topic`.
    pub fn unsubscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.control(b'-', topic)
    }

    fn control(&self, op: u8, topic: &str) -> Result<(), ClientError> {
        let mut msg = Vec::with_capacity(topic.len() + 1);
        msg.push(op);
        msg.extend_from_slice(topic.as_bytes());
        let control = self.sub.control.lock();
        control.send(msg, 0)?;
        // Wait for the subscriber thread to confirm, so that the subscription is set on the
        // SUB socket when this returns (delivery still starts after the proxy hears of it).
        if control.poll(zmq::POLLIN, 5_000)? == 0 {
            return Err(ClientError::Protocol(
                "the subscriber thread does not answer".into(),
            ));
        }
        control.recv_bytes(0)?;
        Ok(())
    }

    /// Sends a request and waits for its reply, retrying on silence (Lazy Pirate).
    /// Writes get a request id (if they have none) so retries are applied once.
    pub fn request(&self, request: Request) -> Result<ReplyEnvelope, ClientError> {
        let id = request.service().is_write().then(new_request_id);
        self.request_with_id(request, id)
    }

    /// Like [`Client::request`] with a caller-chosen request id.
    pub fn request_with_id(
        &self,
        request: Request,
        id: Option<String>,
    ) -> Result<ReplyEnvelope, ClientError> {
        let clock = self.clock.lock().tick();
        let env = RequestEnvelope {
            request,
            meta: Meta {
                clock,
                timestamp: Some(crate::wall_clock()),
                id,
            },
        };
        let bytes =
            encode_request(&env, self.cfg.encoding).map_err(|e| ClientError::Protocol(e.0))?;
        let mut conn = self.req.lock();
        for _ in 0..self.cfg.attempts.max(1) {
            let socket = match conn.socket.take() {
                Some(s) => s,
                None => {
                    let s = sockets::socket(&self.ctx, zmq::REQ, sockets::REQUEST_HWM)?;
                    s.connect(&self.cfg.broker)?;
                    s
                }
            };
            socket.send(&bytes[..], 0)?;
            let ready = socket.poll(zmq::POLLIN, self.cfg.timeout.as_millis() as i64)?;
            if ready == 0 {
                // Lost request or reply: this REQ socket is stuck; drop it and retry.
                drop(socket);
                continue;
            }
            let reply = socket.recv_bytes(0)?;
            conn.socket = Some(socket);
            let (env, _) =
                decode_reply(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
            self.clock.lock().observe(env.meta.clock);
            return Ok(env);
        }
        Err(ClientError::Timeout {
            attempts: self.cfg.attempts.max(1),
            timeout: self.cfg.timeout,
        })
    }

    fn call(&self, request: Request) -> Result<Reply, ClientError> {
        match self.request(request)?.reply {
            Reply::Error(e) => Err(ClientError::Server {
                code: e.code,
                description: e.description,
            }),
            other => Ok(other),
        }
    }

    fn expect_done(&self, request: Request) -> Result<(), ClientError> {
        match self.call(request)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Logs `user` in (registers the name on first login).
    pub fn login(&self, user: &str) -> Result<(), ClientError> {
        self.expect_done(Request::Login { user: user.into() })
    }

    /// Lists users.
    pub fn users(&self) -> Result<Vec<String>, ClientError> {
        match self.call(Request::Users)? {
            Reply::Users(u) => Ok(u),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a channel.
    pub fn create_channel(&self, channel: &str) -> Result<(), ClientError> {
        self.expect_done(Request::Channel {
            channel: channel.into(),
        })
    }

    /// Lists channels.
    pub fn channels(&self) -> Result<Vec<String>, ClientError> {
        match self.call(Request::Channels)? {
            Reply::Channels(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    /// Posts `message` to `channel` as `user`.
    pub fn publish(&self, user: &str, channel: &str, message: &str) -> Result<(), ClientError> {
        self.expect_done(Request::Publish {
            user: user.into(),
            channel: channel.into(),
            message: message.into(),
        })
    }

    /// Sends a private message.
    pub fn send_message(&self, src: &str, dst: &str, message: &str) -> Result<(), ClientError> {
        self.expect_done(Request::Message {
            src: src.into(),
            dst: dst.into(),
            message: message.into(),
        })
    }

    /// A page of history (oldest first); pass the previous page's `next` as `before` to go back.
    pub fn history(
        &self,
        target: HistoryTarget,
        before: Option<String>,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        match self.call(Request::History {
            target,
            before,
            limit,
        })? {
            Reply::History(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// The status of whichever server answers.
    pub fn status(&self) -> Result<ServerStatus, ClientError> {
        match self.call(Request::Status)? {
            Reply::Status(s) => Ok(*s),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {reply:?}"))
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.sub.control.lock().send(&b"!"[..], zmq::DONTWAIT);
        if let Some(t) = self.sub.thread.take() {
            let _ = t.join();
        }
    }
}
