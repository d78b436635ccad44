//! The core of the chat service: protocol, codec, Lamport clock and the chat domain.
//!
//! Nothing here opens a socket, starts a thread or reads a clock: time comes in as an
//! argument, so every function is deterministic and cheap to test.
//!
//! # Layout
//!
//! Modules import one another without cycles (leaves first; `tests/module_graph.rs` checks it):
//! - [`error`]: [`ChatError`], one variant per refusal, each with a stable [`ErrorCode`].
//! - [`time`]: [`Timestamp`], ISO-8601 out, ISO-8601 or Unix numbers in.
//! - [`clock`]: the Lamport clock, [`LamportClock`].
//! - [`codec`]: MessagePack and JSON, one function each way, chosen by the first byte.
//! - [`validate`]: naming rules and size limits (uses `error`).
//! - [`model`]: the plain data: [`Event`] and its id and kind, history [`Stamp`]s, posts,
//!   [`Publication`]s, [`HistoryPage`]s, [`Announcement`]s, [`Meta`], the clock bound
//!   (uses `clock`, `error`, `time`).
//! - [`wire`]: the flat serde structs that are actually encoded, and the conversions between
//!   them and `model` (uses `model`, `codec`, `error`, `time`).
//! - [`protocol`]: typed requests and replies, the requests each role takes
//!   ([`ClientRequest`], [`PeerRequest`], [`ReferenceRequest`], built of [`Read`], [`Write`]
//!   and [`Presence`]), and the decode and encode functions of every frame (uses `model`,
//!   `wire`, `codec`, `error`, `time`).
//! - [`domain`]: [`ChatState`], the replicated state machine (validate, apply, query; uses
//!   `model`, `validate`, `error`, `time`; knows nothing of the wire).
//! - [`ratelimit`]: per-user token buckets for writes (flood protection), bounded in size
//!   (uses `model`, `error`).
//!
//! Default endpoints of every component are the `DEFAULT_*` constants below.

pub mod clock;
pub mod codec;
pub mod domain;
pub mod error;
pub mod model;
pub mod protocol;
pub mod ratelimit;
pub mod time;
pub mod validate;
pub mod wire;

pub use clock::LamportClock;
pub use codec::{decode, encode, CodecError, Encoding};
pub use domain::{history_page, AppliedSeqs, ApplyOutcome, ChatState, RequestWindow, Summary};
pub use error::{ChatError, ErrorCode, NameKind};
pub use model::{
    Announcement, ChannelPost, DirectPost, Event, EventId, EventKind, HistoryPage, HistoryTarget,
    Meta, Publication, Stamp,
};
pub use protocol::{
    ClientRequest, PeerRequest, Presence, Read, ReferenceRequest, Reply, ReplyEnvelope, Request,
    RequestEnvelope, Service, Write,
};
pub use time::Timestamp;
pub use validate::Limits;
pub use wire::{ServerInfo, ServerStatus};

/// Broker endpoint that clients connect to.
pub const DEFAULT_BROKER_FRONTEND: &str = "tcp://127.0.0.1:5555";
/// Broker endpoint that servers connect to.
pub const DEFAULT_BROKER_BACKEND: &str = "tcp://127.0.0.1:5556";
/// Proxy endpoint that publishers (servers) connect to.
pub const DEFAULT_PROXY_XSUB: &str = "tcp://127.0.0.1:5557";
/// Proxy endpoint that subscribers (clients, servers) connect to.
pub const DEFAULT_PROXY_XPUB: &str = "tcp://127.0.0.1:5558";
/// Reference service endpoint.
pub const DEFAULT_REFERENCE: &str = "tcp://127.0.0.1:5559";
/// First peer port of servers started by `chat up` (server N listens on base + N).
pub const DEFAULT_PEER_BASE_PORT: u16 = 5600;

/// Topic of coordinator announcements.
pub const TOPIC_SERVERS: &str = "servers";
/// Topic of server-to-server write events.
pub const TOPIC_REPLICATION: &str = "replication";
