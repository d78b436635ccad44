//! The flat, serde-derived shapes that go on the wire.
//!
//! One envelope `{"service", "data"}` and one flat `data` map with every field any service
//! uses, all optional. That makes decoding liberal in one pass (unknown fields ignored, a
//! missing field is a clear error later, when the service is known), and encoding produces
//! the seeds' key order: `status`/payload first, then `timestamp`, then `clock`.
//! The typed view lives in [`crate::protocol`].

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

use std::collections::BTreeMap;

use crate::domain::WireEvent;
use crate::time::Timestamp;

/// `{"service": ..., "data": {...}}`, with `timestamp`/`clock` also read at the top level (seed 003).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireEnvelope {
    /// Service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<WireData>,
    /// Top-level physical time (read only; we write it inside `data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Top-level Lamport clock (read only; we write it inside `data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<u64>,
}

/// Every `data` field of every service; absent fields are skipped when encoding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireData {
    /// Reply status: `sucesso`, `OK` or `erro`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Reply to an `election` request: `"OK"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election: Option<String>,
    /// User name (also the server name in reference and server-to-server requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Channel name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Sender of a private message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Recipient of a private message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Message body (`msg` accepted as an alias).
    #[serde(alias = "msg", skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `users` reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// `channels` reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// `history` reply items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<WirePublication>>,
    /// `history` reply: cursor of the next (older) page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// `history` request: only items before this cursor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// `history` request: page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Server rank (`rank` reply, `election` request, announcements).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u64>,
    /// A server's peer endpoint (`rank` request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `list` reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<Vec<ServerInfo>>,
    /// Coordinator name (announcements).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Election term.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// `status` reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerStatus>,
    /// `clock` reply: the server's physical time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// `adjust` request: correction to apply to the physical clock, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjust_ms: Option<i64>,
    /// `replicate` request / `sync` reply: events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<WireEvent>>,
    /// `sync` request / `replicate` reply: highest contiguous sequence per origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<BTreeMap<String, u64>>,
    /// `sync` reply: more events remain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more: Option<bool>,
    /// Error reply: a sentence for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Error reply: stable code for programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Client-chosen request id (strings; integers are accepted and kept as text).
    #[serde(
        deserialize_with = "opt_string_or_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Physical time of the sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Lamport clock of the sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<u64>,
}

/// A publication payload on a channel or user topic (also a `history` item).
///
/// Channel posts encode as `{"user", "message", "timestamp", "clock", "channel", "id"}`,
/// private messages as `{"src", "message", "timestamp", "clock", "dst", "id"}`: the seed
/// keys first, in the seed order, then ours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WirePublication {
    /// Author of a channel post.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Sender of a private message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Body (`msg` accepted as an alias).
    #[serde(alias = "msg", skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Physical time stamped by the server that accepted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Lamport stamp of the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<u64>,
    /// Channel of a channel post.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Recipient of a private message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Event id (`origin/seq`).
    #[serde(
        deserialize_with = "opt_string_or_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
}

/// One live server as the reference lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    /// Server name.
    pub name: String,
    /// Its rank (higher wins elections).
    pub rank: u64,
    /// Where its peer socket listens, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// What a server reports about itself through `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerStatus {
    /// Server name.
    pub name: String,
    /// Rank from the reference, once known.
    pub rank: Option<u64>,
    /// Current coordinator, if one is known.
    pub coordinator: Option<String>,
    /// Election term of that coordinator.
    pub term: u64,
    /// The server's Lamport clock.
    pub lamport: u64,
    /// Correction applied to the OS clock, in milliseconds (Berkeley).
    pub clock_offset_ms: i64,
    /// Peers the server knows.
    pub peers: Vec<ServerInfo>,
    /// Number of users.
    pub users: u64,
    /// Number of channels.
    pub channels: u64,
    /// Number of stored messages (channel posts and private messages).
    pub messages: u64,
    /// Number of events applied.
    pub events: u64,
    /// Digest of the replicated state (equal on servers with equal state).
    pub digest: String,
    /// Whether the server has fetched what it missed from its peers since it started.
    pub caught_up: bool,
    /// Writes acknowledged with no other live server holding them (see `--ack-replicas`).
    pub local_only_acks: u64,
    /// Batches of events committed to the store since the server started (with SQLite,
    /// one fsync each): `events` per commit is how well writes are grouped.
    pub commits: u64,
    /// Highest contiguous sequence number held, per origin.
    pub vector: BTreeMap<String, u64>,
}

fn opt_string_or_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}
