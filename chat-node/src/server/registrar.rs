//! The server's side of the reference service, with no socket: what to ask and when (a
//! rank until registered, then heartbeats and `list` alternately), and what the answers
//! mean.
//!
//! One request at a time (the driver uses a REQ socket). A request not answered within
//! [`REFERENCE_TIMEOUT`] is given up (Lazy Pirate: the driver drops its stuck REQ socket
//! when it is asked to send the next one on it).

use std::time::{Duration, Instant};

use chat_core::protocol::decode_reply;
use chat_core::wire::WireData;
use chat_core::{codec, Encoding, ErrorCode, Meta, Reply, Request, RequestEnvelope, ServerInfo};
use tracing::{info, warn};

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

/// The reference client's state.
#[derive(Debug, Clone)]
pub struct Registrar {
    inflight: Option<(Asked, Instant)>,
    next_at: Instant,
    interval: Duration,
    heartbeat_next: bool,
    unreachable_logged: bool,
}

impl Registrar {
    /// A client talking to the reference every `interval`, starting at `now`.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Registrar {
            inflight: None,
            next_at: now,
            interval,
            heartbeat_next: true,
            unreachable_logged: false,
        }
    }

    /// When something is due (a request to send or a reply deadline).
    pub fn next_deadline(&self) -> Instant {
        match self.inflight {
            Some((_, deadline)) => deadline,
            None => self.next_at,
        }
    }

    /// Whether a request is waiting for its answer.
    pub fn awaiting(&self) -> bool {
        self.inflight.is_some()
    }

    /// The next request to send if one is due: `rank` until registered (with the rank we
    /// hold, if any, so we keep it), then heartbeats and `list` alternately. Gives up on a
    /// request not answered in time.
    pub fn poll_send(
        &mut self,
        now: Instant,
        me: &Identity<'_>,
        meta: impl FnOnce() -> Meta,
    ) -> Option<Vec<u8>> {
        let Identity {
            name,
            rank,
            registered,
            endpoint,
        } = *me;
        if let Some((_, deadline)) = self.inflight {
            if now < deadline {
                return None;
            }
            // Lazy Pirate: no answer; the driver drops the stuck REQ socket.
            self.inflight = None;
            if !self.unreachable_logged {
                warn!("the reference does not answer; keeping the last known peers");
                self.unreachable_logged = true;
            }
            self.next_at = now + self.interval;
            return None;
        }
        if now < self.next_at {
            return None;
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
        let bytes = codec::encode(&wire, Encoding::MsgPack).ok()?;
        self.inflight = Some((asked, now + REFERENCE_TIMEOUT));
        if asked == Asked::Heartbeat || asked == Asked::List {
            self.heartbeat_next = !self.heartbeat_next;
        }
        self.next_at = now + self.interval / 2;
        Some(bytes)
    }

    /// The request could not be sent: try again after the interval.
    pub fn unsent(&mut self, now: Instant) {
        self.inflight = None;
        self.next_at = now + self.interval;
    }

    /// Reads a reply; returns what it says and the reply's Lamport clock. A reply when
    /// nothing is awaited (a late one) is ignored.
    pub fn handle_reply(&mut self, body: &[u8]) -> Option<(RefEvent, u64)> {
        let (asked, _) = self.inflight.take()?;
        if self.unreachable_logged {
            info!("the reference answers again");
            self.unreachable_logged = false;
        }
        let (env, _) = match decode_reply(body) {
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
