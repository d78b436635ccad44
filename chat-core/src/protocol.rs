//! Typed requests, replies and publications, and their conversion to and from the wire.
//!
//! Decoding is liberal (PROTOCOL.md): `clock`/`timestamp` in `data` or at the top level,
//! timestamps as ISO-8601 or Unix numbers, `msg` for `message`, unknown fields ignored.
//! Encoding is exact: the seed shapes, with `timestamp` and `clock` inside `data`.

use std::collections::BTreeMap;

use crate::codec::{self, CodecError, Encoding};
use crate::error::{ChatError, ErrorCode};
use crate::model::{check_clock, Event, EventKind};
use crate::time::Timestamp;
use crate::wire::{ServerInfo, ServerStatus, WireData, WireEnvelope, WirePublication};

pub use crate::model::{
    Announcement, ChannelPost, DirectPost, HistoryPage, HistoryTarget, Meta, Publication,
    MAX_ACCEPTED_CLOCK,
};

/// Default number of events in a `sync` answer.
pub const DEFAULT_SYNC_LIMIT: u32 = 500;

/// Largest number of events in a `sync` answer.
pub const MAX_SYNC_LIMIT: u32 = 5000;

/// Default page size of `history`.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// Largest page size of `history`.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// Every service name this system speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Register a user (and record a login time).
    Login,
    /// List users.
    Users,
    /// Create a channel.
    Channel,
    /// List channels.
    Channels,
    /// Post to a channel.
    Publish,
    /// Send a private message.
    Message,
    /// Past posts of a channel or private messages of a user.
    History,
    /// Server status.
    Status,
    /// Client presence: interest in a channel (seed 003).
    Subscribe,
    /// Client presence: loss of interest in a channel (seed 003).
    Unsubscribe,
    /// Liveness: client presence at a server, server presence at the reference.
    Heartbeat,
    /// Reference: get a rank for a server name.
    Rank,
    /// Reference: list live servers.
    List,
    /// Server to server: Bully election message.
    Election,
    /// Server to server: the winner's announcement sent directly to peers.
    Coordinator,
    /// Server to server: read the physical clock (Berkeley).
    Clock,
    /// Server to server: apply a clock adjustment (Berkeley).
    Adjust,
    /// Server to server: events pushed by their origin; answered once they are durable.
    Replicate,
    /// Server to server: catch-up, "send me what I miss beyond this version vector".
    Sync,
}

impl Service {
    /// All services, in wire-name order of the table in PROTOCOL.md.
    pub const ALL: [Service; 19] = [
        Service::Login,
        Service::Users,
        Service::Channel,
        Service::Channels,
        Service::Publish,
        Service::Message,
        Service::History,
        Service::Status,
        Service::Subscribe,
        Service::Unsubscribe,
        Service::Heartbeat,
        Service::Rank,
        Service::List,
        Service::Election,
        Service::Coordinator,
        Service::Clock,
        Service::Adjust,
        Service::Replicate,
        Service::Sync,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::Login => "login",
            Service::Users => "users",
            Service::Channel => "channel",
            Service::Channels => "channels",
            Service::Publish => "publish",
            Service::Message => "message",
            Service::History => "history",
            Service::Status => "status",
            Service::Subscribe => "subscribe",
            Service::Unsubscribe => "unsubscribe",
            Service::Heartbeat => "heartbeat",
            Service::Rank => "rank",
            Service::List => "list",
            Service::Election => "election",
            Service::Coordinator => "coordinator",
            Service::Clock => "clock",
            Service::Adjust => "adjust",
            Service::Replicate => "replicate",
            Service::Sync => "sync",
        }
    }

    /// Reads a wire name.
    pub fn parse(s: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|svc| svc.as_str() == s)
    }

    /// The `status` a successful reply carries: `sucesso` for login/channel (seed 000),
    /// `OK` otherwise.
    pub const fn ok_status(self) -> &'static str {
        match self {
            Service::Login | Service::Channel => "sucesso",
            _ => "OK",
        }
    }

    /// Whether the service changes replicated state.
    pub const fn is_write(self) -> bool {
        matches!(
            self,
            Service::Login | Service::Channel | Service::Publish | Service::Message
        )
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to any component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `login`: register `user`.
    Login {
        /// User name.
        user: String,
    },
    /// `users`: list users.
    Users,
    /// `channel`: create `channel`.
    Channel {
        /// Channel name.
        channel: String,
    },
    /// `channels`: list channels.
    Channels,
    /// `publish`: post `message` to `channel` as `user`.
    Publish {
        /// Author.
        user: String,
        /// Channel.
        channel: String,
        /// Body.
        message: String,
    },
    /// `message`: private message from `src` to `dst`.
    Message {
        /// Sender.
        src: String,
        /// Recipient.
        dst: String,
        /// Body.
        message: String,
    },
    /// `history`: a page of past posts or private messages, oldest first.
    History {
        /// Channel or user.
        target: HistoryTarget,
        /// Only items older than this cursor (from a previous page's `next`).
        before: Option<String>,
        /// Page size (default 50, at most 1000).
        limit: u32,
    },
    /// `status`: what the server knows about itself and the cluster.
    Status,
    /// `subscribe`: presence hint (seed 003); the subscription itself is the client's SUB.
    Subscribe {
        /// Who.
        user: Option<String>,
        /// Which channel.
        channel: Option<String>,
    },
    /// `unsubscribe`: presence hint (seed 003).
    Unsubscribe {
        /// Who.
        user: Option<String>,
        /// Which channel.
        channel: Option<String>,
    },
    /// `heartbeat`: liveness of a client (at a server) or a server (at the reference).
    Heartbeat {
        /// Client or server name.
        user: Option<String>,
        /// The rank the server holds (to the reference, which re-registers a server it
        /// forgot); clients and peers leave it out.
        rank: Option<u64>,
        /// The server's peer endpoint (to the reference); clients and peers leave it out.
        endpoint: Option<String>,
    },
    /// `rank` (reference): a rank for server `name`, listening for peers on `endpoint`.
    Rank {
        /// Server name.
        name: String,
        /// Its peer endpoint.
        endpoint: Option<String>,
        /// The rank it held before, which it keeps when no other server took it.
        rank: Option<u64>,
    },
    /// `list` (reference): live servers.
    List,
    /// `election` (server to server): `from` with `rank` starts an election in `term`.
    Election {
        /// Sender.
        from: String,
        /// Sender's rank.
        rank: u64,
        /// Election term.
        term: u64,
    },
    /// `coordinator` (server to server): the winner tells a peer directly.
    Coordinator(Announcement),
    /// `clock` (server to server): read the physical clock.
    Clock,
    /// `adjust` (server to server): correct the physical clock by `offset_ms`.
    Adjust {
        /// Correction in milliseconds.
        offset_ms: i64,
    },
    /// `replicate` (server to server): events pushed by `from`; the answer (a version
    /// vector) is sent only once they are durable at the receiver.
    Replicate {
        /// Sender.
        from: String,
        /// The events, in sequence order per origin.
        events: Vec<Event>,
    },
    /// `sync` (server to server): `from` asks for events beyond its version `vector`.
    Sync {
        /// Sender.
        from: String,
        /// Highest contiguous sequence number the sender has, per origin.
        vector: BTreeMap<String, u64>,
        /// Most events in the answer.
        limit: u32,
    },
}

impl Request {
    /// The service of this request.
    pub fn service(&self) -> Service {
        match self {
            Request::Login { .. } => Service::Login,
            Request::Users => Service::Users,
            Request::Channel { .. } => Service::Channel,
            Request::Channels => Service::Channels,
            Request::Publish { .. } => Service::Publish,
            Request::Message { .. } => Service::Message,
            Request::History { .. } => Service::History,
            Request::Status => Service::Status,
            Request::Subscribe { .. } => Service::Subscribe,
            Request::Unsubscribe { .. } => Service::Unsubscribe,
            Request::Heartbeat { .. } => Service::Heartbeat,
            Request::Rank { .. } => Service::Rank,
            Request::List => Service::List,
            Request::Election { .. } => Service::Election,
            Request::Coordinator(_) => Service::Coordinator,
            Request::Clock => Service::Clock,
            Request::Adjust { .. } => Service::Adjust,
            Request::Replicate { .. } => Service::Replicate,
            Request::Sync { .. } => Service::Sync,
        }
    }
}

// ----- requests by role -------------------------------------------------------------------
//
// Each component takes the requests of one role, and decodes frames straight into that
// role's type (`decode_client_request`, `decode_peer_request`, `decode_reference_request`):
// a service the role does not offer is refused while decoding, with the error reply the
// component has always given, so a peer-only request cannot reach the client path.

/// Why a chat server refuses, from a client, a service that is not a client's (the
/// `reason` of its [`ChatError::NotOffered`]).
pub const NOT_A_CLIENT_SERVICE: &str = "chat servers answer chat services; ranks and lists are the reference's, the rest is server-to-server";

/// Why a chat server refuses, on its peer socket, a service that is not a peer's (the
/// `reason` of its [`ChatError::NotOffered`]).
pub const NOT_A_PEER_SERVICE: &str =
    "the peer socket takes server-to-server requests and reads; writes go through the broker";

/// A read of the replicated state, answered from a chat server's memory (clients through
/// the broker, peers on the peer socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// `users`: list users.
    Users,
    /// `channels`: list channels.
    Channels,
    /// `history`: a page of past posts or private messages, oldest first.
    History {
        /// Channel or user.
        target: HistoryTarget,
        /// Only items older than this cursor (from a previous page's `next`).
        before: Option<String>,
        /// Page size (default 50, at most 1000).
        limit: u32,
    },
}

impl Read {
    /// The service of this read.
    pub fn service(&self) -> Service {
        match self {
            Read::Users => Service::Users,
            Read::Channels => Service::Channels,
            Read::History { .. } => Service::History,
        }
    }
}

/// A write a client asks of a chat server, which validates it and turns it into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `login`: register `user`.
    Login {
        /// User name.
        user: String,
    },
    /// `channel`: create `channel`.
    Channel {
        /// Channel name.
        channel: String,
    },
    /// `publish`: post `message` to `channel` as `user`.
    Publish {
        /// Author.
        user: String,
        /// Channel.
        channel: String,
        /// Body.
        message: String,
    },
    /// `message`: private message from `src` to `dst`.
    Message {
        /// Sender.
        src: String,
        /// Recipient.
        dst: String,
        /// Body.
        message: String,
    },
}

impl Write {
    /// The service of this write.
    pub fn service(&self) -> Service {
        match self {
            Write::Login { .. } => Service::Login,
            Write::Channel { .. } => Service::Channel,
            Write::Publish { .. } => Service::Publish,
            Write::Message { .. } => Service::Message,
        }
    }
}

impl From<Write> for EventKind {
    fn from(w: Write) -> EventKind {
        match w {
            Write::Login { user } => EventKind::UserLoggedIn { user },
            Write::Channel { channel } => EventKind::ChannelCreated { channel },
            Write::Publish {
                user,
                channel,
                message,
            } => EventKind::ChannelMessage {
                channel,
                user,
                message,
            },
            Write::Message { src, dst, message } => EventKind::DirectMessage { src, dst, message },
        }
    }
}

/// A client's presence hint (seed 003), answered `OK` and otherwise ignored: the
/// subscription itself is the client's SUB socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// `subscribe`: interest in a channel.
    Subscribe {
        /// Who.
        user: Option<String>,
        /// Which channel.
        channel: Option<String>,
    },
    /// `unsubscribe`: loss of interest in a channel.
    Unsubscribe {
        /// Who.
        user: Option<String>,
        /// Which channel.
        channel: Option<String>,
    },
    /// `heartbeat`: the client is still there.
    Heartbeat {
        /// Client name.
        user: Option<String>,
    },
}

impl Presence {
    /// The service of this hint.
    pub fn service(&self) -> Service {
        match self {
            Presence::Subscribe { .. } => Service::Subscribe,
            Presence::Unsubscribe { .. } => Service::Unsubscribe,
            Presence::Heartbeat { .. } => Service::Heartbeat,
        }
    }
}

/// What a client may ask a chat server (through the broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// `login`, `channel`, `publish`, `message`.
    Write(Write),
    /// `users`, `channels`, `history`.
    Read(Read),
    /// `status`: what the server knows about itself and the cluster.
    Status,
    /// `subscribe`, `unsubscribe`, `heartbeat`.
    Presence(Presence),
}

impl ClientRequest {
    /// The service of this request.
    pub fn service(&self) -> Service {
        match self {
            ClientRequest::Write(w) => w.service(),
            ClientRequest::Read(r) => r.service(),
            ClientRequest::Status => Service::Status,
            ClientRequest::Presence(p) => p.service(),
        }
    }
}

/// What a chat server may ask another on its peer socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRequest {
    /// `users`, `channels`, `history`: one server's own view.
    Read(Read),
    /// `status`: what the server knows about itself and the cluster.
    Status,
    /// `heartbeat`: liveness of the sender.
    Heartbeat {
        /// The sending server.
        user: Option<String>,
    },
    /// `election`: `from` with `rank` starts an election in `term` (Bully).
    Election {
        /// Sender.
        from: String,
        /// Sender's rank.
        rank: u64,
        /// Election term.
        term: u64,
    },
    /// `coordinator`: the winner tells a peer directly.
    Coordinator(Announcement),
    /// `clock`: read the physical clock (Berkeley).
    Clock,
    /// `adjust`: correct the physical clock by `offset_ms` (Berkeley).
    Adjust {
        /// Correction in milliseconds.
        offset_ms: i64,
    },
    /// `replicate`: events pushed by `from`; answered once they are durable.
    Replicate {
        /// Sender.
        from: String,
        /// The events, in sequence order per origin.
        events: Vec<Event>,
    },
    /// `sync`: `from` asks for events beyond its version `vector`.
    Sync {
        /// Sender.
        from: String,
        /// Highest contiguous sequence number the sender has, per origin.
        vector: BTreeMap<String, u64>,
        /// Most events in the answer.
        limit: u32,
    },
}

impl PeerRequest {
    /// The service of this request.
    pub fn service(&self) -> Service {
        match self {
            PeerRequest::Read(r) => r.service(),
            PeerRequest::Status => Service::Status,
            PeerRequest::Heartbeat { .. } => Service::Heartbeat,
            PeerRequest::Election { .. } => Service::Election,
            PeerRequest::Coordinator(_) => Service::Coordinator,
            PeerRequest::Clock => Service::Clock,
            PeerRequest::Adjust { .. } => Service::Adjust,
            PeerRequest::Replicate { .. } => Service::Replicate,
            PeerRequest::Sync { .. } => Service::Sync,
        }
    }
}

/// What a server may ask the reference service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceRequest {
    /// `rank`: a rank for server `name`, listening for peers on `endpoint`.
    Rank {
        /// Server name.
        name: String,
        /// Its peer endpoint.
        endpoint: Option<String>,
        /// The rank it held before, which it keeps when no other server took it.
        rank: Option<u64>,
    },
    /// `list`: live servers.
    List,
    /// `heartbeat`: the server is alive.
    Heartbeat {
        /// Server name (required by the reference, which says so when it is missing).
        user: Option<String>,
        /// The rank it holds (re-registers it with a reference that forgot it).
        rank: Option<u64>,
        /// Its peer endpoint.
        endpoint: Option<String>,
    },
}

impl ReferenceRequest {
    /// The service of this request.
    pub fn service(&self) -> Service {
        match self {
            ReferenceRequest::Rank { .. } => Service::Rank,
            ReferenceRequest::List => Service::List,
            ReferenceRequest::Heartbeat { .. } => Service::Heartbeat,
        }
    }
}

impl TryFrom<Request> for ClientRequest {
    type Error = ChatError;

    /// The request as a client's; a service clients may not use is refused
    /// (`unknown_service`).
    fn try_from(r: Request) -> Result<ClientRequest, ChatError> {
        Ok(match r {
            Request::Login { user } => ClientRequest::Write(Write::Login { user }),
            Request::Channel { channel } => ClientRequest::Write(Write::Channel { channel }),
            Request::Publish {
                user,
                channel,
                message,
            } => ClientRequest::Write(Write::Publish {
                user,
                channel,
                message,
            }),
            Request::Message { src, dst, message } => {
                ClientRequest::Write(Write::Message { src, dst, message })
            }
            Request::Users => ClientRequest::Read(Read::Users),
            Request::Channels => ClientRequest::Read(Read::Channels),
            Request::History {
                target,
                before,
                limit,
            } => ClientRequest::Read(Read::History {
                target,
                before,
                limit,
            }),
            Request::Status => ClientRequest::Status,
            Request::Subscribe { user, channel } => {
                ClientRequest::Presence(Presence::Subscribe { user, channel })
            }
            Request::Unsubscribe { user, channel } => {
                ClientRequest::Presence(Presence::Unsubscribe { user, channel })
            }
            Request::Heartbeat { user, .. } => {
                ClientRequest::Presence(Presence::Heartbeat { user })
            }
            other @ (Request::Rank { .. }
            | Request::List
            | Request::Election { .. }
            | Request::Coordinator(_)
            | Request::Clock
            | Request::Adjust { .. }
            | Request::Replicate { .. }
            | Request::Sync { .. }) => {
                return Err(ChatError::NotOffered {
                    service: other.service().as_str().to_string(),
                    reason: NOT_A_CLIENT_SERVICE,
                })
            }
        })
    }
}

impl TryFrom<Request> for PeerRequest {
    type Error = ChatError;

    /// The request as a peer's; a service peers may not use is refused (`unknown_service`).
    fn try_from(r: Request) -> Result<PeerRequest, ChatError> {
        Ok(match r {
            Request::Users => PeerRequest::Read(Read::Users),
            Request::Channels => PeerRequest::Read(Read::Channels),
            Request::History {
                target,
                before,
                limit,
            } => PeerRequest::Read(Read::History {
                target,
                before,
                limit,
            }),
            Request::Status => PeerRequest::Status,
            Request::Heartbeat { user, .. } => PeerRequest::Heartbeat { user },
            Request::Election { from, rank, term } => PeerRequest::Election { from, rank, term },
            Request::Coordinator(a) => PeerRequest::Coordinator(a),
            Request::Clock => PeerRequest::Clock,
            Request::Adjust { offset_ms } => PeerRequest::Adjust { offset_ms },
            Request::Replicate { from, events } => PeerRequest::Replicate { from, events },
            Request::Sync {
                from,
                vector,
                limit,
            } => PeerRequest::Sync {
                from,
                vector,
                limit,
            },
            other @ (Request::Login { .. }
            | Request::Channel { .. }
            | Request::Publish { .. }
            | Request::Message { .. }
            | Request::Subscribe { .. }
            | Request::Unsubscribe { .. }
            | Request::Rank { .. }
            | Request::List) => {
                return Err(ChatError::NotOffered {
                    service: other.service().as_str().to_string(),
                    reason: NOT_A_PEER_SERVICE,
                })
            }
        })
    }
}

impl TryFrom<Request> for ReferenceRequest {
    type Error = ChatError;

    /// The request as one for the reference; any other service is refused
    /// (`unknown_service`).
    fn try_from(r: Request) -> Result<ReferenceRequest, ChatError> {
        Ok(match r {
            Request::Rank {
                name,
                endpoint,
                rank,
            } => ReferenceRequest::Rank {
                name,
                endpoint,
                rank,
            },
            Request::List => ReferenceRequest::List,
            Request::Heartbeat {
                user,
                rank,
                endpoint,
            } => ReferenceRequest::Heartbeat {
                user,
                rank,
                endpoint,
            },
            other => {
                return Err(ChatError::NotOfferedByReference(
                    other.service().to_string(),
                ))
            }
        })
    }
}

impl From<Write> for Request {
    fn from(w: Write) -> Request {
        match w {
            Write::Login { user } => Request::Login { user },
            Write::Channel { channel } => Request::Channel { channel },
            Write::Publish {
                user,
                channel,
                message,
            } => Request::Publish {
                user,
                channel,
                message,
            },
            Write::Message { src, dst, message } => Request::Message { src, dst, message },
        }
    }
}

impl From<Read> for Request {
    fn from(r: Read) -> Request {
        match r {
            Read::Users => Request::Users,
            Read::Channels => Request::Channels,
            Read::History {
                target,
                before,
                limit,
            } => Request::History {
                target,
                before,
                limit,
            },
        }
    }
}

impl From<ClientRequest> for Request {
    fn from(r: ClientRequest) -> Request {
        match r {
            ClientRequest::Write(w) => w.into(),
            ClientRequest::Read(r) => r.into(),
            ClientRequest::Status => Request::Status,
            ClientRequest::Presence(Presence::Subscribe { user, channel }) => {
                Request::Subscribe { user, channel }
            }
            ClientRequest::Presence(Presence::Unsubscribe { user, channel }) => {
                Request::Unsubscribe { user, channel }
            }
            ClientRequest::Presence(Presence::Heartbeat { user }) => Request::Heartbeat {
                user,
                rank: None,
                endpoint: None,
            },
        }
    }
}

impl From<PeerRequest> for Request {
    fn from(r: PeerRequest) -> Request {
        match r {
            PeerRequest::Read(r) => r.into(),
            PeerRequest::Status => Request::Status,
            PeerRequest::Heartbeat { user } => Request::Heartbeat {
                user,
                rank: None,
                endpoint: None,
            },
            PeerRequest::Election { from, rank, term } => Request::Election { from, rank, term },
            PeerRequest::Coordinator(a) => Request::Coordinator(a),
            PeerRequest::Clock => Request::Clock,
            PeerRequest::Adjust { offset_ms } => Request::Adjust { offset_ms },
            PeerRequest::Replicate { from, events } => Request::Replicate { from, events },
            PeerRequest::Sync {
                from,
                vector,
                limit,
            } => Request::Sync {
                from,
                vector,
                limit,
            },
        }
    }
}

impl From<ReferenceRequest> for Request {
    fn from(r: ReferenceRequest) -> Request {
        match r {
            ReferenceRequest::Rank {
                name,
                endpoint,
                rank,
            } => Request::Rank {
                name,
                endpoint,
                rank,
            },
            ReferenceRequest::List => Request::List,
            ReferenceRequest::Heartbeat {
                user,
                rank,
                endpoint,
            } => Request::Heartbeat {
                user,
                rank,
                endpoint,
            },
        }
    }
}

/// A request with its metadata: any request ([`Request`], the default), or the request of
/// one role ([`ClientRequest`], [`PeerRequest`], [`ReferenceRequest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEnvelope<R = Request> {
    /// What is asked.
    pub request: R,
    /// Clock, timestamp, request id.
    pub meta: Meta,
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Stable code.
    pub code: ErrorCode,
    /// A sentence for people.
    pub description: String,
}

impl From<&ChatError> for ErrorReply {
    fn from(e: &ChatError) -> Self {
        ErrorReply {
            code: e.code(),
            description: e.to_string(),
        }
    }
}

/// A reply from any component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Success without a payload (`status: "sucesso"` or `"OK"`).
    Done,
    /// `users` reply.
    Users(Vec<String>),
    /// `channels` reply.
    Channels(Vec<String>),
    /// `history` reply.
    History(HistoryPage),
    /// `status` reply.
    Status(Box<ServerStatus>),
    /// `rank` reply.
    Rank(u64),
    /// `list` reply.
    List(Vec<ServerInfo>),
    /// `election` reply: `{"election": "OK"}`.
    Election,
    /// `clock` reply: the server's physical time.
    Clock(Timestamp),
    /// `replicate` reply: what the receiver now holds durably (contiguous, per origin).
    Vector(BTreeMap<String, u64>),
    /// `sync` reply: missing events, and whether more remain.
    Events {
        /// The events.
        events: Vec<Event>,
        /// Whether the sender should ask again.
        more: bool,
    },
    /// Error reply: `status: "erro"` with `code` and `description`.
    Error(ErrorReply),
}

/// A reply with its service name and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyEnvelope {
    /// The service of the request (echoed verbatim, even when unknown).
    pub service: String,
    /// The answer.
    pub reply: Reply,
    /// Clock, timestamp, request id (echoed).
    pub meta: Meta,
}

fn required(v: Option<String>, service: Service, field: &'static str) -> Result<String, ChatError> {
    v.ok_or_else(|| ChatError::missing(service.as_str(), field))
}

impl RequestEnvelope {
    /// Converts to the wire shape.
    pub fn to_wire(&self) -> WireEnvelope {
        let mut d = WireData::default();
        match &self.request {
            Request::Login { user } => d.user = Some(user.clone()),
            Request::Users
            | Request::Channels
            | Request::Status
            | Request::List
            | Request::Clock => {}
            Request::Channel { channel } => d.channel = Some(channel.clone()),
            Request::Publish {
                user,
                channel,
                message,
            } => {
                d.user = Some(user.clone());
                d.channel = Some(channel.clone());
                d.message = Some(message.clone());
            }
            Request::Message { src, dst, message } => {
                d.src = Some(src.clone());
                d.dst = Some(dst.clone());
                d.message = Some(message.clone());
            }
            Request::History {
                target,
                before,
                limit,
            } => {
                match target {
                    HistoryTarget::Channel(c) => d.channel = Some(c.clone()),
                    HistoryTarget::User(u) => d.user = Some(u.clone()),
                }
                d.before = before.clone();
                d.limit = Some(u64::from(*limit));
            }
            Request::Subscribe { user, channel } | Request::Unsubscribe { user, channel } => {
                d.user = user.clone();
                d.channel = channel.clone();
            }
            Request::Heartbeat {
                user,
                rank,
                endpoint,
            } => {
                d.user = user.clone();
                d.rank = *rank;
                d.endpoint = endpoint.clone();
            }
            Request::Rank {
                name,
                endpoint,
                rank,
            } => {
                d.user = Some(name.clone());
                d.endpoint = endpoint.clone();
                d.rank = *rank;
            }
            Request::Election { from, rank, term } => {
                d.user = Some(from.clone());
                d.rank = Some(*rank);
                d.term = Some(*term);
            }
            Request::Coordinator(a) => {
                d.coordinator = Some(a.coordinator.clone());
                d.term = Some(a.term);
                d.rank = Some(a.rank);
            }
            Request::Adjust { offset_ms } => d.adjust_ms = Some(*offset_ms),
            Request::Replicate { from, events } => {
                d.user = Some(from.clone());
                d.events = Some(events.iter().map(Event::to_wire).collect());
            }
            Request::Sync {
                from,
                vector,
                limit,
            } => {
                d.user = Some(from.clone());
                d.vector = Some(vector.clone());
                d.limit = Some(u64::from(*limit));
            }
        }
        d.id = self.meta.id.clone();
        d.timestamp = self.meta.timestamp;
        d.clock = Some(self.meta.clock);
        WireEnvelope {
            service: Some(self.request.service().as_str().to_string()),
            data: Some(d),
            ..WireEnvelope::default()
        }
    }

    /// Reads the wire shape, checking that the service exists and has its fields.
    pub fn from_wire(w: WireEnvelope) -> Result<RequestEnvelope, ChatError> {
        let name = w.service.ok_or(ChatError::MissingService)?;
        let service = Service::parse(&name)
            .ok_or_else(|| ChatError::UnknownService(name.chars().take(64).collect()))?;
        let d = w.data.unwrap_or_default();
        let meta = Meta {
            clock: check_clock(d.clock.or(w.clock))?,
            timestamp: d.timestamp.or(w.timestamp),
            id: d.id,
        };
        let request = match service {
            Service::Login => Request::Login {
                user: required(d.user, service, "user")?,
            },
            Service::Users => Request::Users,
            Service::Channel => Request::Channel {
                channel: required(d.channel, service, "channel")?,
            },
            Service::Channels => Request::Channels,
            Service::Publish => Request::Publish {
                user: required(d.user, service, "user")?,
                channel: required(d.channel, service, "channel")?,
                message: required(d.message, service, "message")?,
            },
            Service::Message => Request::Message {
                src: required(d.src.or(d.user), service, "src")?,
                dst: required(d.dst, service, "dst")?,
                message: required(d.message, service, "message")?,
            },
            Service::History => {
                let target = match (d.channel, d.user) {
                    (Some(c), _) => HistoryTarget::Channel(c),
                    (None, Some(u)) => HistoryTarget::User(u),
                    (None, None) => {
                        return Err(ChatError::missing("history", "channel` or `data.user"))
                    }
                };
                let limit = match d.limit {
                    None => DEFAULT_HISTORY_LIMIT,
                    Some(0) => {
                        return Err(ChatError::InvalidField {
                            field: "limit",
                            reason: "must be at least 1".into(),
                        })
                    }
                    Some(n) => u32::try_from(n).unwrap_or(u32::MAX).min(MAX_HISTORY_LIMIT),
                };
                Request::History {
                    target,
                    before: d.before,
                    limit,
                }
            }
            Service::Status => Request::Status,
            Service::Subscribe => Request::Subscribe {
                user: d.user,
                channel: d.channel,
            },
            Service::Unsubscribe => Request::Unsubscribe {
                user: d.user,
                channel: d.channel,
            },
            Service::Heartbeat => Request::Heartbeat {
                user: d.user,
                rank: d.rank,
                endpoint: d.endpoint,
            },
            Service::Rank => Request::Rank {
                name: required(d.user, service, "user")?,
                endpoint: d.endpoint,
                rank: d.rank,
            },
            Service::List => Request::List,
            Service::Election => Request::Election {
                from: required(d.user, service, "user")?,
                rank: d
                    .rank
                    .ok_or_else(|| ChatError::missing("election", "rank"))?,
                term: d.term.unwrap_or(0),
            },
            Service::Coordinator => Request::Coordinator(Announcement {
                coordinator: required(d.coordinator, service, "coordinator")?,
                term: d
                    .term
                    .ok_or_else(|| ChatError::missing("coordinator", "term"))?,
                rank: d
                    .rank
                    .ok_or_else(|| ChatError::missing("coordinator", "rank"))?,
            }),
            Service::Clock => Request::Clock,
            Service::Adjust => Request::Adjust {
                offset_ms: d
                    .adjust_ms
                    .ok_or_else(|| ChatError::missing("adjust", "adjust_ms"))?,
            },
            Service::Replicate => Request::Replicate {
                from: required(d.user, service, "user")?,
                events: d
                    .events
                    .ok_or_else(|| ChatError::missing("replicate", "events"))?
                    .into_iter()
                    .map(Event::from_wire)
                    .collect::<Result<_, _>>()?,
            },
            Service::Sync => Request::Sync {
                from: required(d.user, service, "user")?,
                vector: d.vector.unwrap_or_default(),
                limit: d.limit.map_or(DEFAULT_SYNC_LIMIT, |l| {
                    u32::try_from(l)
                        .unwrap_or(u32::MAX)
                        .clamp(1, MAX_SYNC_LIMIT)
                }),
            },
        };
        Ok(RequestEnvelope { request, meta })
    }
}

impl ReplyEnvelope {
    /// An error reply to `service`.
    pub fn error(service: impl Into<String>, err: &ChatError, meta: Meta) -> ReplyEnvelope {
        ReplyEnvelope {
            service: service.into(),
            reply: Reply::Error(err.into()),
            meta,
        }
    }

    /// Converts to the wire shape.
    pub fn to_wire(&self) -> WireEnvelope {
        let mut d = WireData::default();
        let ok = Service::parse(&self.service).map_or("OK", Service::ok_status);
        match &self.reply {
            Reply::Done => d.status = Some(ok.to_string()),
            Reply::Users(u) => d.users = Some(u.clone()),
            Reply::Channels(c) => d.channels = Some(c.clone()),
            Reply::History(page) => {
                d.messages = Some(page.items.iter().map(Publication::to_wire).collect());
                d.next = page.next.clone();
                d.heads = page.heads.clone();
            }
            Reply::Status(s) => d.server = Some((**s).clone()),
            Reply::Rank(r) => d.rank = Some(*r),
            Reply::List(l) => d.list = Some(l.clone()),
            Reply::Election => d.election = Some("OK".to_string()),
            Reply::Clock(t) => d.time = Some(*t),
            Reply::Vector(v) => {
                d.status = Some("OK".to_string());
                d.vector = Some(v.clone());
            }
            Reply::Events { events, more } => {
                d.events = Some(events.iter().map(Event::to_wire).collect());
                d.more = Some(*more);
            }
            Reply::Error(e) => {
                d.status = Some("erro".to_string());
                d.description = Some(e.description.clone());
                d.code = Some(e.code.as_str().to_string());
            }
        }
        d.id = self.meta.id.clone();
        d.timestamp = self.meta.timestamp;
        d.clock = Some(self.meta.clock);
        WireEnvelope {
            service: Some(self.service.clone()),
            data: Some(d),
            ..WireEnvelope::default()
        }
    }

    /// Reads the wire shape of a reply (client side). `status: "erro"` is always an error.
    pub fn from_wire(w: WireEnvelope) -> Result<ReplyEnvelope, ChatError> {
        let name = w.service.unwrap_or_default();
        let d = w.data.unwrap_or_default();
        let meta = Meta {
            clock: check_clock(d.clock.or(w.clock))?,
            timestamp: d.timestamp.or(w.timestamp),
            id: d.id,
        };
        let reply = if d.status.as_deref() == Some("erro") {
            Reply::Error(ErrorReply {
                code: d
                    .code
                    .as_deref()
                    .map_or(ErrorCode::Other(String::new()), ErrorCode::parse),
                description: d.description.unwrap_or_default(),
            })
        } else {
            match Service::parse(&name) {
                Some(Service::Users) => Reply::Users(
                    d.users
                        .ok_or_else(|| ChatError::missing("users", "users"))?,
                ),
                Some(Service::Channels) => Reply::Channels(
                    d.channels
                        .ok_or_else(|| ChatError::missing("channels", "channels"))?,
                ),
                Some(Service::History) => Reply::History(HistoryPage {
                    items: d
                        .messages
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| Publication::from_wire(p, None))
                        .collect::<Result<_, _>>()?,
                    next: d.next,
                    heads: d.heads,
                }),
                Some(Service::Status) => Reply::Status(Box::new(
                    d.server
                        .ok_or_else(|| ChatError::missing("status", "server"))?,
                )),
                Some(Service::Rank) => {
                    Reply::Rank(d.rank.ok_or_else(|| ChatError::missing("rank", "rank"))?)
                }
                Some(Service::List) => {
                    Reply::List(d.list.ok_or_else(|| ChatError::missing("list", "list"))?)
                }
                Some(Service::Election) => Reply::Election,
                Some(Service::Replicate) => Reply::Vector(
                    d.vector
                        .ok_or_else(|| ChatError::missing("replicate", "vector"))?,
                ),
                Some(Service::Sync) => Reply::Events {
                    events: d
                        .events
                        .ok_or_else(|| ChatError::missing("sync", "events"))?
                        .into_iter()
                        .map(Event::from_wire)
                        .collect::<Result<_, _>>()?,
                    more: d.more.unwrap_or(false),
                },
                Some(Service::Clock) => Reply::Clock(
                    d.time
                        .or(d.timestamp)
                        .ok_or_else(|| ChatError::missing("clock", "time"))?,
                ),
                _ => Reply::Done,
            }
        };
        Ok(ReplyEnvelope {
            service: name,
            reply,
            meta,
        })
    }
}

/// An announcement on the `servers` topic: `{"service": "election", "data": {"coordinator", "term", "rank"}}`.
pub fn announcement_to_wire(a: &Announcement, meta: &Meta) -> WireEnvelope {
    WireEnvelope {
        service: Some(Service::Election.as_str().to_string()),
        data: Some(WireData {
            coordinator: Some(a.coordinator.clone()),
            term: Some(a.term),
            rank: Some(a.rank),
            timestamp: meta.timestamp,
            clock: Some(meta.clock),
            ..WireData::default()
        }),
        ..WireEnvelope::default()
    }
}

// What each frame must be, named in the error when its top level is not a map.
const REQUEST_SHAPE: &str = "a request: a map with `service` and `data`";
const REPLY_SHAPE: &str = "a reply: a map with `service` and `data`";
const ANNOUNCEMENT_SHAPE: &str = "an announcement: a map with `service` and `data`";
const PUBLICATION_SHAPE: &str =
    "a publication: a map with `message` and `user` (channel post) or `src` (private message)";

/// Why a request frame could not be turned into a request, with what is needed to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFailure {
    /// What went wrong.
    pub error: ChatError,
    /// The encoding to answer in.
    pub encoding: Encoding,
    /// The service named by the frame, if it could be read.
    pub service: Option<String>,
    /// The sender's clock, if it could be read (already range-checked).
    pub clock: u64,
    /// The request id, if it could be read.
    pub id: Option<String>,
}

impl RequestFailure {
    /// Whether the frame is a well-formed request whose service the decoding role does not
    /// offer (rather than a frame that is not a valid request at all).
    pub fn not_offered(&self) -> bool {
        matches!(
            self.error,
            ChatError::NotOffered { .. } | ChatError::NotOfferedByReference(_)
        )
    }
}

/// Decodes a request frame (MessagePack or JSON) into any request: what encoders, tests and
/// the broker (which only reads a request's service, clock and id) use. A component that
/// serves requests decodes them with its role's function instead: [`decode_client_request`],
/// [`decode_peer_request`] or [`decode_reference_request`].
pub fn decode_request(bytes: &[u8]) -> Result<(RequestEnvelope, Encoding), Box<RequestFailure>> {
    let decoded = codec::decode_map::<WireEnvelope>(bytes, REQUEST_SHAPE);
    let (wire, encoding) = decoded.map_err(|(e, encoding)| {
        Box::new(RequestFailure {
            error: ChatError::BadFrame(e.0),
            encoding,
            service: None,
            clock: 0,
            id: None,
        })
    })?;
    let service = wire.service.clone();
    let (clock, id) = match &wire.data {
        Some(d) => (d.clock.or(wire.clock), d.id.clone()),
        None => (wire.clock, None),
    };
    RequestEnvelope::from_wire(wire)
        .map(|r| (r, encoding))
        .map_err(|error| {
            Box::new(RequestFailure {
                error,
                encoding,
                service,
                clock: clock.filter(|c| *c <= MAX_ACCEPTED_CLOCK).unwrap_or(0),
                id,
            })
        })
}

/// Decodes a request frame into the request of one role, `R` ([`ClientRequest`],
/// [`PeerRequest`], [`ReferenceRequest`]). The frame is first read and checked as any
/// request (so a malformed request is `bad_request` whoever it was sent to); a service the
/// role does not offer then fails with the role's `unknown_service` error, and the failure
/// carries the service, clock and id read, like any other.
pub fn decode_request_as<R>(
    bytes: &[u8],
) -> Result<(RequestEnvelope<R>, Encoding), Box<RequestFailure>>
where
    R: TryFrom<Request, Error = ChatError>,
{
    let (RequestEnvelope { request, meta }, encoding) = decode_request(bytes)?;
    let service = request.service();
    match R::try_from(request) {
        Ok(request) => Ok((RequestEnvelope { request, meta }, encoding)),
        Err(error) => Err(Box::new(RequestFailure {
            error,
            encoding,
            service: Some(service.as_str().to_string()),
            clock: meta.clock,
            id: meta.id,
        })),
    }
}

/// Decodes a request sent by a client to a chat server (through the broker). A service
/// that is not a client's (`rank`, `election`, `adjust`, ...) fails with `unknown_service`:
/// "service `adjust` is not offered here: chat servers answer chat services; ...".
pub fn decode_client_request(
    bytes: &[u8],
) -> Result<(RequestEnvelope<ClientRequest>, Encoding), Box<RequestFailure>> {
    decode_request_as(bytes)
}

/// Decodes a request sent to a chat server's peer socket. A service that is not a peer's
/// (writes, presence hints, `rank`, `list`) fails with `unknown_service`: "service `login`
/// is not offered here: the peer socket takes server-to-server requests and reads; ...".
pub fn decode_peer_request(
    bytes: &[u8],
) -> Result<(RequestEnvelope<PeerRequest>, Encoding), Box<RequestFailure>> {
    decode_request_as(bytes)
}

/// Decodes a request sent to the reference service. Any service but `rank`, `list` and
/// `heartbeat` fails with `unknown_service`: "service `publish` is not offered by the
/// reference service (it offers rank, list, heartbeat)".
pub fn decode_reference_request(
    bytes: &[u8],
) -> Result<(RequestEnvelope<ReferenceRequest>, Encoding), Box<RequestFailure>> {
    decode_request_as(bytes)
}

/// Encodes a request.
pub fn encode_request(env: &RequestEnvelope, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    codec::encode(&env.to_wire(), encoding)
}

/// Decodes a reply frame (MessagePack or JSON).
pub fn decode_reply(bytes: &[u8]) -> Result<(ReplyEnvelope, Encoding), ChatError> {
    let (wire, encoding) = codec::decode_map::<WireEnvelope>(bytes, REPLY_SHAPE)
        .map_err(|(e, _)| ChatError::BadFrame(e.0))?;
    Ok((ReplyEnvelope::from_wire(wire)?, encoding))
}

/// Encodes a reply.
pub fn encode_reply(env: &ReplyEnvelope, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    codec::encode(&env.to_wire(), encoding)
}

/// Encodes a publication payload (the second frame after the topic).
pub fn encode_publication(p: &Publication, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    codec::encode(&p.to_wire(), encoding)
}

/// Decodes a publication received on `topic`.
pub fn decode_publication(topic: &str, bytes: &[u8]) -> Result<Publication, ChatError> {
    let (wire, _) = codec::decode_map::<WirePublication>(bytes, PUBLICATION_SHAPE)
        .map_err(|(e, _)| ChatError::BadFrame(e.0))?;
    let p = Publication::from_wire(wire, Some(topic))?;
    check_clock(Some(p.clock()))?;
    Ok(p)
}

/// Encodes an announcement for the `servers` topic.
pub fn encode_announcement(
    a: &Announcement,
    meta: &Meta,
    encoding: Encoding,
) -> Result<Vec<u8>, CodecError> {
    codec::encode(&announcement_to_wire(a, meta), encoding)
}

/// Decodes an announcement from the `servers` topic.
pub fn decode_announcement(bytes: &[u8]) -> Result<(Announcement, Meta), ChatError> {
    let (w, _) = codec::decode_map::<WireEnvelope>(bytes, ANNOUNCEMENT_SHAPE)
        .map_err(|(e, _)| ChatError::BadFrame(e.0))?;
    let d = w.data.unwrap_or_default();
    let a = Announcement {
        coordinator: d
            .coordinator
            .ok_or_else(|| ChatError::missing("election", "coordinator"))?,
        term: d.term.unwrap_or(0),
        rank: d.rank.unwrap_or(0),
    };
    let meta = Meta {
        clock: check_clock(d.clock.or(w.clock))?,
        timestamp: d.timestamp.or(w.timestamp),
        id: d.id,
    };
    Ok((a, meta))
}
