//! The server's outgoing sockets: one DEALER link per peer, and a REQ socket to the
//! reference. Mechanics only: which request goes where, what is pending and what an answer
//! means is the server core's.
//!
//! A DEALER sends `["", request]` like a REQ would, so the peer's ROUTER answers it the
//! same way it answers a plain REQ client; many requests can be in flight on one link.

use std::collections::BTreeMap;

use tracing::{debug, warn};

use crate::sockets;

/// The DEALER links to the peers, by name.
pub struct PeerLinks {
    ctx: zmq::Context,
    links: BTreeMap<String, (String, zmq::Socket)>,
    generation: u64,
}

impl PeerLinks {
    /// No links yet.
    pub fn new(ctx: &zmq::Context) -> Self {
        PeerLinks {
            ctx: ctx.clone(),
            links: BTreeMap::new(),
            generation: 0,
        }
    }

    /// The core's peer generation these links were last reconciled with.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Peer names with a link, in the order of [`PeerLinks::poll_items`].
    pub fn names(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Makes the links match `wanted` (name, endpoint): opens new ones, reopens those whose
    /// endpoint changed, closes the others.
    pub fn reconcile(&mut self, wanted: &[(String, String)], generation: u64) {
        self.links
            .retain(|name, (endpoint, _)| wanted.iter().any(|(n, e)| n == name && e == endpoint));
        for (name, endpoint) in wanted {
            if !self.links.contains_key(name) {
                self.open(name, endpoint);
            }
        }
        self.generation = generation;
    }

    fn open(&mut self, name: &str, endpoint: &str) -> bool {
        match open(&self.ctx, endpoint) {
            Ok(socket) => {
                debug!(peer = %name, %endpoint, "peer link opened");
                self.links
                    .insert(name.to_string(), (endpoint.to_string(), socket));
                true
            }
            Err(e) => {
                warn!(peer = %name, %endpoint, error = %e, "cannot connect to peer");
                false
            }
        }
    }

    /// Sends `body` to `peer` at `endpoint` (opening the link if needed); false if it could
    /// not be sent now (link still connecting, queue full).
    pub fn send(&mut self, peer: &str, endpoint: &str, body: &[u8]) -> bool {
        let fresh = self.links.get(peer).is_none_or(|(e, _)| e != endpoint);
        if fresh && !self.open(peer, endpoint) {
            return false;
        }
        let Some((_, socket)) = self.links.get(peer) else {
            return false;
        };
        socket
            .send_multipart([&b""[..], body], zmq::DONTWAIT)
            .is_ok()
    }

    /// Poll items for every link, in [`PeerLinks::names`] order.
    pub fn poll_items(&self) -> Vec<zmq::PollItem<'_>> {
        self.links
            .values()
            .map(|(_, s)| s.as_poll_item(zmq::POLLIN))
            .collect()
    }

    /// The reply bodies waiting on `peer`'s link (at most `max`).
    pub fn recv(&mut self, peer: &str, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let Some((_, socket)) = self.links.get(peer) else {
            return out;
        };
        for _ in 0..max {
            match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(mut parts) => {
                    if let Some(body) = parts.pop() {
                        out.push(body);
                    }
                }
                Err(_) => break,
            }
        }
        out
    }
}

fn open(ctx: &zmq::Context, endpoint: &str) -> zmq::Result<zmq::Socket> {
    let s = sockets::socket(ctx, zmq::DEALER, sockets::REQUEST_HWM)?;
    s.set_maxmsgsize(sockets::MAX_MSG_SIZE * 4)?;
    s.set_immediate(true)?;
    s.connect(endpoint)?;
    Ok(s)
}

/// A REQ socket to the reference, replaced whenever a new request must go out while the
/// previous one is still unanswered (Lazy Pirate).
pub struct ReferenceLink {
    ctx: zmq::Context,
    endpoint: String,
    socket: Option<zmq::Socket>,
    awaiting: bool,
}

impl ReferenceLink {
    /// A link to the reference at `endpoint` (connected on first use).
    pub fn new(ctx: &zmq::Context, endpoint: String) -> Self {
        ReferenceLink {
            ctx: ctx.clone(),
            endpoint,
            socket: None,
            awaiting: false,
        }
    }

    /// The socket to poll while an answer is awaited.
    pub fn socket(&self) -> Option<&zmq::Socket> {
        self.socket.as_ref().filter(|_| self.awaiting)
    }

    /// Sends one request; false if it could not be sent.
    pub fn send(&mut self, body: &[u8]) -> bool {
        if self.awaiting {
            // The previous request was given up: this REQ socket is stuck; drop it.
            self.socket = None;
            self.awaiting = false;
        }
        if self.socket.is_none() {
            match sockets::socket(&self.ctx, zmq::REQ, sockets::REQUEST_HWM).and_then(|s| {
                s.connect(&self.endpoint)?;
                Ok(s)
            }) {
                Ok(s) => self.socket = Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot open a socket to the reference");
                    return false;
                }
            }
        }
        let Some(socket) = &self.socket else {
            return false;
        };
        if socket.send(body, zmq::DONTWAIT).is_err() {
            self.socket = None;
            return false;
        }
        self.awaiting = true;
        true
    }

    /// The answer, if one is there.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let bytes = self.socket.as_ref()?.recv_bytes(zmq::DONTWAIT).ok()?;
        self.awaiting = false;
        Some(bytes)
    }
}
