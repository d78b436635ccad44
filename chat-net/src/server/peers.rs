//! Links to the other servers: one DEALER per peer for our requests (election, clock,
//! replicate, sync, ping), each with its pending requests and their deadlines.
//!
//! A DEALER sends `["", request]` like a REQ would, so the peer's ROUTER answers it the
//! same way it answers a plain REQ client; many requests can be in flight, matched to
//! their replies by the request `id` (`meta.id`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chat_core::protocol::{decode_reply, encode_request};
use chat_core::{Encoding, Meta, ReplyEnvelope, Request, RequestEnvelope};
use tracing::{debug, warn};

use crate::sockets;

/// How long a peer has to answer one request.
pub const PEER_REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// Most requests in flight to one peer; beyond that new ones are dropped (and count as missed).
pub const MAX_PENDING_PER_PEER: usize = 4096;

/// What a pending request to a peer was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A liveness probe (`heartbeat`).
    Ping,
    /// A Bully `election` message.
    Election,
    /// A Bully `coordinator` message.
    Coordinator,
    /// A Berkeley time reading of `round`.
    Clock {
        /// Round id.
        round: u64,
    },
    /// A Berkeley adjustment.
    Adjust,
    /// A `replicate` message (replicator message id).
    Replicate {
        /// Replicator message id.
        msg: u64,
    },
    /// A catch-up `sync` request.
    Sync,
}

/// One peer.
pub struct PeerLink {
    /// Peer name.
    pub name: String,
    /// Its rank.
    pub rank: u64,
    /// Its peer endpoint.
    pub endpoint: String,
    socket: zmq::Socket,
    pending: HashMap<String, (Pending, Instant)>,
}

/// All peers.
#[derive(Default)]
pub struct Peers {
    links: BTreeMap<String, PeerLink>,
    next_id: u64,
}

impl Peers {
    /// Known peers.
    pub fn links(&self) -> impl Iterator<Item = &PeerLink> {
        self.links.values()
    }

    /// Known peer names.
    pub fn names(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Whether `name` is a known peer.
    pub fn contains(&self, name: &str) -> bool {
        self.links.contains_key(name)
    }

    /// Sets the peers from the reference's list (without ourselves). Links whose endpoint
    /// changed are reopened; peers no longer listed are closed unless named in `keep` (peers
    /// still answering us: a reference that just restarted lists servers as they come back).
    pub fn update(
        &mut self,
        ctx: &zmq::Context,
        peers: &[(String, u64, String)],
        keep: &[String],
    ) -> bool {
        let mut changed = false;
        for (name, rank, endpoint) in peers {
            let reuse = self
                .links
                .get(name)
                .is_some_and(|l| &l.endpoint == endpoint);
            if reuse {
                if let Some(l) = self.links.get_mut(name) {
                    changed |= l.rank != *rank;
                    l.rank = *rank;
                }
                continue;
            }
            match open(ctx, endpoint) {
                Ok(socket) => {
                    debug!(peer = %name, %endpoint, "peer link opened");
                    self.links.insert(
                        name.clone(),
                        PeerLink {
                            name: name.clone(),
                            rank: *rank,
                            endpoint: endpoint.clone(),
                            socket,
                            pending: HashMap::new(),
                        },
                    );
                    changed = true;
                }
                Err(e) => warn!(peer = %name, %endpoint, error = %e, "cannot connect to peer"),
            }
        }
        let before = self.links.len();
        self.links
            .retain(|n, _| peers.iter().any(|(p, _, _)| p == n) || keep.contains(n));
        changed |= before != self.links.len();
        changed
    }

    /// Sends `request` to `peer`; returns false if it could not be sent.
    pub fn send(
        &mut self,
        peer: &str,
        request: Request,
        meta: Meta,
        kind: Pending,
        now: Instant,
    ) -> bool {
        let Some(link) = self.links.get_mut(peer) else {
            return false;
        };
        if link.pending.len() >= MAX_PENDING_PER_PEER {
            return false;
        }
        self.next_id += 1;
        let id = format!("p{}", self.next_id);
        let env = RequestEnvelope {
            request,
            meta: Meta {
                id: Some(id.clone()),
                ..meta
            },
        };
        let Ok(bytes) = encode_request(&env, Encoding::MsgPack) else {
            return false;
        };
        match link
            .socket
            .send_multipart([&b""[..], &bytes[..]], zmq::DONTWAIT)
        {
            Ok(()) => {
                link.pending.insert(id, (kind, now + PEER_REQUEST_TIMEOUT));
                true
            }
            Err(_) => false,
        }
    }

    /// Poll items for every link, in `names()` order.
    pub fn poll_items(&self) -> Vec<zmq::PollItem<'_>> {
        self.links
            .values()
            .map(|l| l.socket.as_poll_item(zmq::POLLIN))
            .collect()
    }

    /// Drains the replies waiting on `peer`'s link, each with what it answers.
    pub fn recv(&mut self, peer: &str, max: usize) -> Vec<(Pending, ReplyEnvelope)> {
        let mut out = Vec::new();
        let Some(link) = self.links.get_mut(peer) else {
            return out;
        };
        for _ in 0..max {
            let parts = match link.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(_) => break,
            };
            let Some(body) = parts.last() else { continue };
            let Ok((reply, _)) = decode_reply(body) else {
                warn!(peer, "undecodable reply from a peer");
                continue;
            };
            let Some(kind) = reply
                .meta
                .id
                .as_ref()
                .and_then(|id| link.pending.remove(id))
            else {
                continue; // late reply to a request we gave up on
            };
            out.push((kind.0, reply));
        }
        out
    }

    /// Pending requests past their deadline, removed, per peer.
    pub fn expired(&mut self, now: Instant) -> Vec<(String, Pending)> {
        let mut out = Vec::new();
        for link in self.links.values_mut() {
            let late: Vec<String> = link
                .pending
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in late {
                if let Some((kind, _)) = link.pending.remove(&id) {
                    out.push((link.name.clone(), kind));
                }
            }
        }
        out
    }

    /// Earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.links
            .values()
            .flat_map(|l| l.pending.values().map(|(_, d)| *d))
            .min()
    }
}

fn open(ctx: &zmq::Context, endpoint: &str) -> zmq::Result<zmq::Socket> {
    let s = sockets::socket(ctx, zmq::DEALER, sockets::REQUEST_HWM)?;
    s.set_maxmsgsize(sockets::MAX_MSG_SIZE * 4)?;
    s.set_immediate(true)?;
    s.connect(endpoint)?;
    Ok(s)
}
