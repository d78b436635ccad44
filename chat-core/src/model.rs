//! The plain data of the chat: events and their ids, history positions, posts and
//! publications, pages of history, announcements and message metadata.
//!
//! Nothing here knows how it travels: the wire shapes and the conversions to and from them
//! are in [`crate::wire`], requests and replies in [`crate::protocol`], and the state
//! machine that applies events in [`crate::domain`]. Every other module of the crate may
//! use this one; it uses only the leaves (clock bound, timestamps, errors).

use std::collections::BTreeMap;
use std::fmt;

use crate::clock::LamportClock;
use crate::error::ChatError;
use crate::time::Timestamp;

/// Largest Lamport clock accepted from outside (2^53 - 1, the largest integer every JSON
/// and JavaScript client represents exactly). Larger values would let one client push every
/// clock in the cluster to saturation.
pub const MAX_ACCEPTED_CLOCK: u64 = LamportClock::MAX;

/// Checks a received Lamport clock against [`MAX_ACCEPTED_CLOCK`]; an absent clock is 0.
pub(crate) fn check_clock(clock: Option<u64>) -> Result<u64, ChatError> {
    match clock {
        Some(c) if c > MAX_ACCEPTED_CLOCK => Err(ChatError::InvalidField {
            field: "clock",
            reason: format!("{c} is larger than the largest accepted clock {MAX_ACCEPTED_CLOCK}"),
        }),
        Some(c) => Ok(c),
        None => Ok(0),
    }
}

/// Unique id of an event: the server that accepted the write and its sequence number there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Name of the server that accepted the write.
    pub origin: String,
    /// That server's sequence number, starting at 1, without gaps.
    pub seq: u64,
}

impl EventId {
    /// Reads the `origin/seq` form of an event id (the last `/` separates them); `None`
    /// when it is not one (e.g. a seed server's own ids).
    pub fn parse(s: &str) -> Option<EventId> {
        let (origin, seq) = s.rsplit_once('/')?;
        let seq = seq.parse().ok().filter(|&n| n > 0)?;
        (!origin.is_empty()).then(|| EventId {
            origin: origin.to_string(),
            seq,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.origin, self.seq)
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A user logged in (first login registers the user).
    UserLoggedIn {
        /// User name.
        user: String,
    },
    /// A channel was created.
    ChannelCreated {
        /// Channel name.
        channel: String,
    },
    /// A post on a channel.
    ChannelMessage {
        /// Channel.
        channel: String,
        /// Author.
        user: String,
        /// Body.
        message: String,
    },
    /// A private message.
    DirectMessage {
        /// Sender.
        src: String,
        /// Recipient.
        dst: String,
        /// Body.
        message: String,
    },
}

impl EventKind {
    /// The seed name of the operation on the `replication` topic.
    pub fn operation(&self) -> &'static str {
        match self {
            EventKind::UserLoggedIn { .. } => "login",
            EventKind::ChannelCreated { .. } => "channel",
            EventKind::ChannelMessage { .. } => "publication",
            EventKind::DirectMessage { .. } => "message",
        }
    }
}

/// One accepted write, as stored and replicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// Unique id.
    pub id: EventId,
    /// Lamport stamp given by the origin when it accepted the write.
    pub clock: u64,
    /// Physical time given by the origin when it accepted the write.
    pub timestamp: Timestamp,
    /// The client's request id, when it sent one.
    pub request_id: Option<String>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// Position of this event in history.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            clock: self.clock,
            origin: self.id.origin.clone(),
            seq: self.id.seq,
        }
    }

    /// The publication this event causes, for channel posts and private messages.
    pub fn publication(&self) -> Option<Publication> {
        match &self.kind {
            EventKind::ChannelMessage {
                channel,
                user,
                message,
            } => Some(Publication::Channel(ChannelPost {
                channel: channel.clone(),
                user: user.clone(),
                message: message.clone(),
                timestamp: self.timestamp,
                clock: self.clock,
                id: Some(self.id.to_string()),
                rid: self.request_id.clone(),
                prev: None,
            })),
            EventKind::DirectMessage { src, dst, message } => {
                Some(Publication::Direct(DirectPost {
                    src: src.clone(),
                    dst: dst.clone(),
                    message: message.clone(),
                    timestamp: self.timestamp,
                    clock: self.clock,
                    id: Some(self.id.to_string()),
                    rid: self.request_id.clone(),
                    prev: None,
                }))
            }
            _ => None,
        }
    }
}

/// Position in history: Lamport clock, then origin, then sequence number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Lamport clock.
    pub clock: u64,
    /// Origin server.
    pub origin: String,
    /// Origin's sequence number.
    pub seq: u64,
}

impl Stamp {
    /// The opaque history cursor for this position: `clock.seq.origin`.
    pub fn cursor(&self) -> String {
        format!("{}.{}.{}", self.clock, self.seq, self.origin)
    }

    /// Reads a history cursor.
    pub fn parse_cursor(s: &str) -> Result<Stamp, ChatError> {
        let bad = || ChatError::InvalidField {
            field: "before",
            reason: format!(
                "{:?} is not a history cursor",
                s.chars().take(80).collect::<String>()
            ),
        };
        let mut parts = s.splitn(3, '.');
        let clock = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let seq = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let origin = parts.next().ok_or_else(bad)?.to_string();
        Ok(Stamp { clock, origin, seq })
    }
}

/// Metadata every message carries: Lamport clock, physical time, optional request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Lamport clock of the sender (0 when a request carried none).
    pub clock: u64,
    /// Physical time of the sender, when given.
    pub timestamp: Option<Timestamp>,
    /// Client-chosen request id: a write retried with the same id is applied once.
    pub id: Option<String>,
}

impl Meta {
    /// Metadata with a clock and a timestamp and no id.
    pub fn new(clock: u64, timestamp: Timestamp) -> Self {
        Meta {
            clock,
            timestamp: Some(timestamp),
            id: None,
        }
    }
}

/// Whose history a `history` request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HistoryTarget {
    /// Posts of a channel.
    Channel(String),
    /// Private messages sent or received by a user.
    User(String),
}

/// A server's announcement that it is coordinator for a term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Announcement {
    /// Name of the coordinator.
    pub coordinator: String,
    /// Term of its election (terms only grow).
    pub term: u64,
    /// Its rank.
    pub rank: u64,
}

/// One page of `history`, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// The items, oldest first.
    pub items: Vec<Publication>,
    /// Cursor for the next (older) page, when there is one.
    pub next: Option<String>,
    /// Per origin, the highest sequence number of a visible post on the topic (a channel's,
    /// or, for a user's history, the posts sent to that user) among the events the server
    /// holds without a gap from that origin ([`crate::ChatState::heads`]); `None` from
    /// servers that do not send it.
    pub heads: Option<BTreeMap<String, u64>>,
}

/// A private message as published on the recipient's topic and kept in history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectPost {
    /// Sender.
    pub src: String,
    /// Recipient.
    pub dst: String,
    /// Body.
    pub message: String,
    /// Physical time stamped by the accepting server.
    pub timestamp: Timestamp,
    /// Lamport stamp of the event.
    pub clock: u64,
    /// Event id (`origin/seq`).
    pub id: Option<String>,
    /// The request id of the write (`data.id` of the client's request), when it had one.
    pub rid: Option<String>,
    /// On a live publication: the sequence number of the previous event of the same origin
    /// published on the same topic (0 when none), so a subscriber can tell it missed one.
    /// `None` in history items and in publications of servers that do not send it.
    pub prev: Option<u64>,
}

/// A channel post as published on the channel's topic and kept in history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPost {
    /// Channel.
    pub channel: String,
    /// Author.
    pub user: String,
    /// Body.
    pub message: String,
    /// Physical time stamped by the accepting server.
    pub timestamp: Timestamp,
    /// Lamport stamp of the event.
    pub clock: u64,
    /// Event id (`origin/seq`).
    pub id: Option<String>,
    /// The request id of the write (`data.id` of the client's request), when it had one.
    pub rid: Option<String>,
    /// On a live publication: the sequence number of the previous event of the same origin
    /// published on the same topic (0 when none), so a subscriber can tell it missed one.
    /// `None` in history items and in publications of servers that do not send it.
    pub prev: Option<u64>,
}

/// What arrives on a channel or user topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// A post on a channel topic.
    Channel(ChannelPost),
    /// A private message on a user topic.
    Direct(DirectPost),
}

impl Publication {
    /// The topic this publication goes out on: the channel, or the recipient.
    pub fn topic(&self) -> &str {
        match self {
            Publication::Channel(p) => &p.channel,
            Publication::Direct(p) => &p.dst,
        }
    }

    /// The message body.
    pub fn message(&self) -> &str {
        match self {
            Publication::Channel(p) => &p.message,
            Publication::Direct(p) => &p.message,
        }
    }

    /// Lamport stamp.
    pub fn clock(&self) -> u64 {
        match self {
            Publication::Channel(p) => p.clock,
            Publication::Direct(p) => p.clock,
        }
    }

    /// The event id as sent (`origin/seq`), if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Publication::Channel(p) => p.id.as_deref(),
            Publication::Direct(p) => p.id.as_deref(),
        }
    }

    /// The event id, when the publication carries one in the `origin/seq` form.
    pub fn event_id(&self) -> Option<EventId> {
        self.id().and_then(EventId::parse)
    }

    /// The position of this publication in history, when it carries an event id.
    pub fn stamp(&self) -> Option<Stamp> {
        self.event_id().map(|id| Stamp {
            clock: self.clock(),
            origin: id.origin,
            seq: id.seq,
        })
    }

    /// The request id of the write, if known.
    pub fn rid(&self) -> Option<&str> {
        match self {
            Publication::Channel(p) => p.rid.as_deref(),
            Publication::Direct(p) => p.rid.as_deref(),
        }
    }

    /// The previous sequence number of the same origin on the same topic (live only).
    pub fn prev(&self) -> Option<u64> {
        match self {
            Publication::Channel(p) => p.prev,
            Publication::Direct(p) => p.prev,
        }
    }

    /// Sets [`Publication::prev`].
    pub fn set_prev(&mut self, prev: Option<u64>) {
        match self {
            Publication::Channel(p) => p.prev = prev,
            Publication::Direct(p) => p.prev = prev,
        }
    }
}
