//! The flat, serde-derived shapes that go on the wire.
//!
//! One envelope `{"service", "data"}` and one flat `data` map with every field any service
//! uses, all optional. That makes decoding liberal in one pass (unknown fields ignored, a
//! missing field is a clear error later, when the service is known), and encoding produces
//! the seeds' key order: `status`/payload first, then `timestamp`, then `clock`.
//! Also here: the conversions between these shapes and the plain data of [`crate::model`]
//! (events, publications), and the encoding of replicated events. The typed requests and
//! replies, and their conversion, live in [`crate::protocol`], which builds on this module.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

use std::collections::BTreeMap;

use crate::codec::{self, CodecError, Encoding};
use crate::error::ChatError;
use crate::model::{
    ChannelPost, DirectPost, Event, EventId, EventKind, Publication, MAX_ACCEPTED_CLOCK,
};
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
    /// `history` reply: per origin, the highest sequence number of a visible post on the
    /// topic that the server holds without a gap from that origin (see `docs/protocol.md`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<BTreeMap<String, u64>>,
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
/// Channel posts encode as `{"user", "message", "timestamp", "clock", "channel", "id",
/// "rid", "prev"}`, private messages as `{"src", "message", "timestamp", "clock", "dst",
/// "id", "rid", "prev"}`: the seed keys first, in the seed order, then ours (`rid` and
/// `prev` only when known; decoders accept publications without any of ours).
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
    /// Request id of the write (the client's `data.id`), when it had one.
    #[serde(
        deserialize_with = "opt_string_or_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub rid: Option<String>,
    /// Live publications: the previous sequence number of the same origin on this topic
    /// (0 when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev: Option<u64>,
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
    /// Correction applied to the OS clock, in milliseconds (by clock sync).
    pub clock_offset_ms: i64,
    /// The clock synchronisation the server runs: `berkeley` or `cristian` (absent from
    /// servers that predate the choice, which run Berkeley).
    pub clock_sync: Option<String>,
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

/// Wire shape of a replicated event (seed 000): `{"operation", "data", "server", "clock", "seq"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    /// `login`, `channel`, `publication` or `message`.
    pub operation: String,
    /// The write's fields.
    pub data: WireEventData,
    /// Origin server.
    pub server: String,
    /// Lamport stamp.
    pub clock: u64,
    /// Origin's sequence number.
    #[serde(default)]
    pub seq: u64,
}

/// Fields of a replicated event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireEventData {
    /// User (login, publication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Channel (channel, publication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Sender (message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Recipient (message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Body.
    #[serde(alias = "msg", skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Physical time of acceptance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Client request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What a replicated event frame must be, named in the error when its top level is not a map.
const EVENT_SHAPE: &str =
    "a replicated event: a map with `operation`, `data`, `server`, `clock` and `seq`";

impl Event {
    /// Converts to the `replication` wire shape.
    pub fn to_wire(&self) -> WireEvent {
        let mut data = WireEventData {
            timestamp: Some(self.timestamp),
            id: self.request_id.clone(),
            ..WireEventData::default()
        };
        match &self.kind {
            EventKind::UserLoggedIn { user } => data.user = Some(user.clone()),
            EventKind::ChannelCreated { channel } => data.channel = Some(channel.clone()),
            EventKind::ChannelMessage {
                channel,
                user,
                message,
            } => {
                data.user = Some(user.clone());
                data.channel = Some(channel.clone());
                data.message = Some(message.clone());
            }
            EventKind::DirectMessage { src, dst, message } => {
                data.src = Some(src.clone());
                data.dst = Some(dst.clone());
                data.message = Some(message.clone());
            }
        }
        WireEvent {
            operation: self.kind.operation().to_string(),
            data,
            server: self.id.origin.clone(),
            clock: self.clock,
            seq: self.id.seq,
        }
    }

    /// Reads the `replication` wire shape.
    pub fn from_wire(w: WireEvent) -> Result<Event, ChatError> {
        let need = |v: Option<String>, field: &'static str| {
            v.ok_or_else(|| ChatError::MissingField {
                service: format!("replication/{}", w.operation),
                field,
            })
        };
        let d = w.data.clone();
        let kind = match w.operation.as_str() {
            "login" => EventKind::UserLoggedIn {
                user: need(d.user, "user")?,
            },
            "channel" => EventKind::ChannelCreated {
                channel: need(d.channel, "channel")?,
            },
            "publication" | "publish" => EventKind::ChannelMessage {
                channel: need(d.channel, "channel")?,
                user: need(d.user, "user")?,
                message: need(d.message, "message")?,
            },
            "message" => EventKind::DirectMessage {
                src: need(d.src, "src")?,
                dst: need(d.dst, "dst")?,
                message: need(d.message, "message")?,
            },
            other => return Err(ChatError::UnknownService(format!("replication/{other}"))),
        };
        if w.seq == 0 {
            return Err(ChatError::InvalidField {
                field: "seq",
                reason: "sequence numbers start at 1".into(),
            });
        }
        if w.clock > MAX_ACCEPTED_CLOCK {
            return Err(ChatError::InvalidField {
                field: "clock",
                reason: "out of range".into(),
            });
        }
        Ok(Event {
            id: EventId {
                origin: w.server,
                seq: w.seq,
            },
            clock: w.clock,
            timestamp: d.timestamp.unwrap_or_default(),
            request_id: d.id,
            kind,
        })
    }

    /// Encodes for the `replication` topic or storage.
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
        codec::encode(&self.to_wire(), encoding)
    }

    /// Decodes from the `replication` topic or storage.
    pub fn decode(bytes: &[u8]) -> Result<Event, ChatError> {
        let (w, _) = codec::decode_map::<WireEvent>(bytes, EVENT_SHAPE)
            .map_err(|(e, _)| ChatError::BadFrame(e.0))?;
        Event::from_wire(w)
    }
}

impl Publication {
    /// Converts to the wire shape.
    pub fn to_wire(&self) -> WirePublication {
        match self {
            Publication::Channel(p) => WirePublication {
                user: Some(p.user.clone()),
                message: Some(p.message.clone()),
                timestamp: Some(p.timestamp),
                clock: Some(p.clock),
                channel: Some(p.channel.clone()),
                id: p.id.clone(),
                rid: p.rid.clone(),
                prev: p.prev,
                ..WirePublication::default()
            },
            Publication::Direct(p) => WirePublication {
                src: Some(p.src.clone()),
                message: Some(p.message.clone()),
                timestamp: Some(p.timestamp),
                clock: Some(p.clock),
                dst: Some(p.dst.clone()),
                id: p.id.clone(),
                rid: p.rid.clone(),
                prev: p.prev,
                ..WirePublication::default()
            },
        }
    }

    /// Reads the wire shape; `topic` fills in the channel or recipient when the payload
    /// omits it (seed servers do).
    pub fn from_wire(w: WirePublication, topic: Option<&str>) -> Result<Publication, ChatError> {
        let message = w
            .message
            .ok_or_else(|| ChatError::missing("publication", "message"))?;
        let timestamp = w.timestamp.unwrap_or_default();
        let clock = w.clock.unwrap_or(0);
        if let Some(src) = w.src {
            let dst = w
                .dst
                .or_else(|| topic.map(str::to_string))
                .ok_or_else(|| ChatError::missing("publication", "dst"))?;
            return Ok(Publication::Direct(DirectPost {
                src,
                dst,
                message,
                timestamp,
                clock,
                id: w.id,
                rid: w.rid,
                prev: w.prev,
            }));
        }
        let user = w
            .user
            .ok_or_else(|| ChatError::missing("publication", "user"))?;
        let channel = w
            .channel
            .or_else(|| topic.map(str::to_string))
            .ok_or_else(|| ChatError::missing("publication", "channel"))?;
        Ok(Publication::Channel(ChannelPost {
            channel,
            user,
            message,
            timestamp,
            clock,
            id: w.id,
            rid: w.rid,
            prev: w.prev,
        }))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    #[test]
    fn event_wire_round_trip() {
        let e = Event {
            id: EventId {
                origin: "server-1".into(),
                seq: 7,
            },
            clock: 42,
            timestamp: Timestamp(42_000),
            request_id: Some("r1".into()),
            kind: EventKind::ChannelMessage {
                channel: "geral".into(),
                user: "ana".into(),
                message: "olá".into(),
            },
        };
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let bytes = e.encode(enc).unwrap();
            assert_eq!(Event::decode(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn publications_carry_the_request_id_and_the_chain_only_when_known() {
        let e = Event {
            id: EventId {
                origin: "server-1".into(),
                seq: 7,
            },
            clock: 42,
            timestamp: Timestamp(42_000),
            request_id: Some("r1".into()),
            kind: EventKind::DirectMessage {
                src: "ana".into(),
                dst: "bia".into(),
                message: "oi".into(),
            },
        };
        let mut p = e.publication().unwrap();
        assert_eq!(p.rid(), Some("r1"));
        assert_eq!(p.prev(), None);
        assert_eq!(p.event_id(), Some(e.id.clone()));
        assert_eq!(p.stamp(), Some(e.stamp()));
        let w = p.to_wire();
        assert_eq!((w.rid.as_deref(), w.prev), (Some("r1"), None));
        p.set_prev(Some(3));
        let back = Publication::from_wire(p.to_wire(), None).unwrap();
        assert_eq!(back, p);
        // An older server's publication: neither field.
        let old = WirePublication {
            rid: None,
            prev: None,
            ..p.to_wire()
        };
        let back = Publication::from_wire(old, None).unwrap();
        assert_eq!((back.rid(), back.prev()), (None, None));
    }

    #[test]
    fn event_ids_parse_from_their_text_form() {
        let id = EventId::parse("server/a/12").unwrap();
        assert_eq!((id.origin.as_str(), id.seq), ("server/a", 12));
        assert_eq!(id.to_string(), "server/a/12");
        for bad in [
            "",
            "server-1",
            "server-1/",
            "/3",
            "server-1/0",
            "server-1/x",
            "7",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }
}
