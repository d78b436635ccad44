//! The server's side of the reference service: a REQ socket driven without blocking
//! (Lazy Pirate: a request not answered in time drops the socket; the next one opens a
//! fresh socket), asking for a rank, then sending heartbeats and reading the live list.

use std::time::{Duration, Instant};

use chat_core::protocol::decode_reply;
use chat_core::wire::WireData;
use chat_core::{codec, Encoding, ErrorCode, Meta, Reply, Request, RequestEnvelope, ServerInfo};
use tracing::{info, warn};

use crate::sockets;

/// How long to wait for the reference to answer one request.
pub const REFERENCE_TIMEOUT: Duration = Duration::from_millis(800);

/// What the reference told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefEvent {
    /// Our rank.
    Rank(u64),
    /// The live servers (us included).
    List(Vec<ServerInfo>),
    /// The reference forgot us (it restarted): ask for a rank again.
    Forgotten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Rank,
    Heartbeat,
    List,
}

/// Who we are, as the reference should know us.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// Server name.
    pub name: &'a str,
    /// The rank we hold, if any (kept across reference restarts).
    pub rank: Option<u64>,
    /// Whether the reference confirmed our rank in this run.
    pub registered: bool,
    /// Our peer endpoint.
    pub endpoint: &'a str,
}

/// A non-blocking client of the reference service.
pub struct RefClient {
    endpoint: String,
    socket: Option<zmq::Socket>,
    inflight: Option<(Asked, Instant)>,
    next_at: Instant,
    interval: Duration,
    heartbeat_next: bool,
    unreachable_logged: bool,
}

impl RefClient {
    /// A client of the reference at `endpoint`, talking every `interval`.
    pub fn new(endpoint: String, interval: Duration, now: Instant) -> Self {
        RefClient {
            endpoint,
            socket: None,
            inflight: None,
            next_at: now,
            interval,
            heartbeat_next: true,
            unreachable_logged: false,
        }
    }

    /// The socket to poll, while a request is in flight.
    pub fn socket(&self) -> Option<&zmq::Socket> {
        self.inflight.and(self.socket.as_ref())
    }

    /// When something is due (a request to send or a reply deadline).
    pub fn next_deadline(&self) -> Instant {
        match self.inflight {
            Some((_, deadline)) => deadline,
            None => self.next_at,
        }
    }

    /// Sends the next request if one is due: `rank` until registered (with the rank we hold,
    /// if any, so we keep it), then heartbeats and `list` alternately.
    pub fn poll_send(
        &mut self,
        ctx: &zmq::Context,
        now: Instant,
        me: &Identity<'_>,
        meta: impl FnOnce() -> Meta,
    ) {
        let Identity {
            name,
            rank,
            registered,
            endpoint,
        } = *me;
        if let Some((_, deadline)) = self.inflight {
            if now < deadline {
                return;
            }
            // Lazy Pirate: no answer; drop the stuck REQ socket.
            self.socket = None;
            self.inflight = None;
            if !self.unreachable_logged {
                warn!(reference = %self.endpoint, "the reference does not answer; keeping the last known peers");
                self.unreachable_logged = true;
            }
            self.next_at = now + self.interval;
            return;
        }
        if now < self.next_at {
            return;
        }
        let (asked, request) = match rank.filter(|_| registered) {
            None => (
                Asked::Rank,
                Request::Rank {
                    name: name.to_string(),
                    endpoint: Some(endpoint.to_string()),
                    rank: None,
                },
            ),
            Some(_) if self.heartbeat_next => (
                Asked::Heartbeat,
                Request::Heartbeat {
                    user: Some(name.to_string()),
                    rank: None,
                    endpoint: None,
                },
            ),
            Some(_) => (Asked::List, Request::List),
        };
        let env = RequestEnvelope {
            request,
            meta: meta(),
        };
        let mut wire = env.to_wire();
        if let Some(d) = wire.data.as_mut() {
            // Our extensions: the rank we hold (kept across reference restarts) and where
            // our peer socket listens.
            extend(d, rank, endpoint);
        }
        let Ok(bytes) = codec::encode(&wire, Encoding::MsgPack) else {
            return;
        };
        if self.socket.is_none() {
            match sockets::socket(ctx, zmq::REQ, sockets::REQUEST_HWM).and_then(|s| {
                s.connect(&self.endpoint)?;
                Ok(s)
            }) {
                Ok(s) => self.socket = Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot open a socket to the reference");
                    self.next_at = now + self.interval;
                    return;
                }
            }
        }
        let Some(socket) = &self.socket else { return };
        if socket.send(bytes, zmq::DONTWAIT).is_err() {
            self.socket = None;
            self.next_at = now + self.interval;
            return;
        }
        self.inflight = Some((asked, now + REFERENCE_TIMEOUT));
        if asked == Asked::Heartbeat || asked == Asked::List {
            self.heartbeat_next = !self.heartbeat_next;
        }
        self.next_at = now + self.interval / 2;
    }

    /// Reads the reply (call when the socket is readable); returns what it says and the
    /// reply's Lamport clock.
    pub fn recv(&mut self) -> Option<(RefEvent, u64)> {
        let socket = self.socket.as_ref()?;
        let bytes = socket.recv_bytes(zmq::DONTWAIT).ok()?;
        let (asked, _) = self.inflight.take()?;
        if self.unreachable_logged {
            info!(reference = %self.endpoint, "the reference answers again");
            self.unreachable_logged = false;
        }
        let (env, _) = match decode_reply(&bytes) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "undecodable reply from the reference");
                return None;
            }
        };
        let event = match (asked, env.reply) {
            (Asked::Rank, Reply::Rank(r)) => RefEvent::Rank(r),
            (Asked::List, Reply::List(l)) => RefEvent::List(l),
            (Asked::Heartbeat, Reply::Error(e)) if e.code == ErrorCode::UnknownUser => {
                RefEvent::Forgotten
            }
            (_, Reply::Error(e)) => {
                warn!(code = %e.code, description = %e.description, "the reference refused a request");
                return None;
            }
            _ => return None,
        };
        Some((event, env.meta.clock))
    }
}

fn extend(d: &mut WireData, rank: Option<u64>, endpoint: &str) {
    d.rank = rank;
    d.endpoint = Some(endpoint.to_string());
}
