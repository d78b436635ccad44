//! The core of the chat service: protocol, codec, Lamport clock and the chat domain.
//!
//! Nothing here opens a socket, starts a thread or reads a clock: time comes in as an
//! argument, so every function is deterministic and cheap to test.
//!
//! # Layout
//! - [`protocol`]: typed requests, replies, publications and announcements, and their
//!   conversion to and from the seed-shaped wire maps (liberal in, exact out).
//! - [`wire`]: the flat serde structs that are actually encoded.
//! - [`codec`]: MessagePack and JSON, one function each way, chosen by the first byte.
//! - [`clock`]: the Lamport clock, [`LamportClock`].
//! - [`time`]: [`Timestamp`], ISO-8601 out, ISO-8601 or Unix numbers in.
//! - [`domain`]: [`ChatState`], the replicated state machine (validate, apply, query).
//! - [`validate`]: naming rules and size limits.
//! - [`ratelimit`]: per-user token buckets for writes (flood protection), bounded in size.
//! - [`error`]: [`ChatError`], one variant per refusal, each with a stable [`ErrorCode`].
//!
//! Default endpoints of every component are the `DEFAULT_*` constants below.

pub mod clock;
pub mod codec;
pub mod domain;
pub mod error;
pub mod protocol;
pub mod ratelimit;
pub mod time;
pub mod validate;
pub mod wire;

pub use clock::LamportClock;
pub use codec::{decode, encode, CodecError, Encoding};
pub use domain::{ApplyOutcome, ChatState, Event, EventId, EventKind, Stamp};
pub use error::{ChatError, ErrorCode, NameKind};
pub use protocol::{
    Announcement, ChannelPost, DirectPost, HistoryPage, HistoryTarget, Meta, Publication, Reply,
    ReplyEnvelope, Request, RequestEnvelope, Service,
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
