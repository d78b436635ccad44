//! The other servers as this one knows them: name, rank, peer endpoint, and the requests
//! sent to each that still wait for an answer (with their deadlines).
//!
//! No sockets here: a request leaves as a [`super::Transmit::Peer`] carrying the peer's
//! endpoint and a numeric id; the driver keeps one DEALER link per peer, and hands every
//! reply back with [`super::ServerCore::handle_peer_reply`]. Replies are matched to their
//! requests by the request id (`meta.id`, `p<n>` on the wire).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a peer has to answer one request.
pub const PEER_REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// Most requests in flight to one peer; beyond that new ones are not sent (and count as
/// missed).
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
    /// A Cristian time sample (a `clock` request to the coordinator).
    TimeSample {
        /// Sample id.
        sample: u64,
    },
    /// A `replicate` message (replicator message id).
    Replicate {
        /// Replicator message id.
        msg: u64,
    },
    /// A catch-up `sync` request.
    Sync,
}

/// One peer.
#[derive(Debug, Clone)]
pub struct PeerLink {
    /// Peer name.
    pub name: String,
    /// Its rank.
    pub rank: u64,
    /// Its peer endpoint.
    pub endpoint: String,
    pending: BTreeMap<u64, (Pending, Instant)>,
}

/// All peers, by name.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    links: BTreeMap<String, PeerLink>,
    next_id: u64,
    /// Bumped whenever a link is added, removed or gets a new endpoint.
    generation: u64,
}

impl Peers {
    /// Known peers, by name.
    pub fn links(&self) -> impl Iterator<Item = &PeerLink> {
        self.links.values()
    }

    /// Known peer names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Whether `name` is a known peer.
    pub fn contains(&self, name: &str) -> bool {
        self.links.contains_key(name)
    }

    /// Changes whenever the set of links or an endpoint changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sets the peers from the reference's list (without ourselves). A link whose endpoint
    /// changed starts afresh; peers no longer listed are dropped unless named in `keep`
    /// (peers still answering us: a reference that just restarted lists servers as they
    /// come back). Returns whether anything changed, and the pending requests forgotten on
    /// the way (their answers can no longer arrive).
    pub fn update(
        &mut self,
        peers: &[(String, u64, String)],
        keep: &[String],
    ) -> (bool, Vec<(String, Pending)>) {
        let mut changed = false;
        let mut forgotten = Vec::new();
        for (name, rank, endpoint) in peers {
            match self.links.get_mut(name) {
                Some(l) if &l.endpoint == endpoint => {
                    changed |= l.rank != *rank;
                    l.rank = *rank;
                }
                _ => {
                    tracing::debug!(peer = %name, %endpoint, "peer link opened");
                    let old = self.links.insert(
                        name.clone(),
                        PeerLink {
                            name: name.clone(),
                            rank: *rank,
                            endpoint: endpoint.clone(),
                            pending: BTreeMap::new(),
                        },
                    );
                    if let Some(old) = old {
                        forgotten.extend(old.pending.into_values().map(|(k, _)| (name.clone(), k)));
                    }
                    self.generation += 1;
                    changed = true;
                }
            }
        }
        let gone: Vec<String> = self
            .links
            .keys()
            .filter(|n| !peers.iter().any(|(p, _, _)| p == *n) && !keep.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.links.remove(&name) {
                forgotten.extend(old.pending.into_values().map(|(k, _)| (name.clone(), k)));
                self.generation += 1;
                changed = true;
            }
        }
        (changed, forgotten)
    }

    /// Registers a request of `kind` to `peer`, due by `now` + [`PEER_REQUEST_TIMEOUT`];
    /// returns its id and the peer's endpoint, or `None` when the peer is unknown or has
    /// too many requests pending.
    pub fn start(&mut self, peer: &str, kind: Pending, now: Instant) -> Option<(u64, String)> {
        let link = self.links.get_mut(peer)?;
        if link.pending.len() >= MAX_PENDING_PER_PEER {
            return None;
        }
        self.next_id += 1;
        link.pending
            .insert(self.next_id, (kind, now + PEER_REQUEST_TIMEOUT));
        Some((self.next_id, link.endpoint.clone()))
    }

    /// Forgets request `id` to `peer` (it could not be sent); returns what it was for.
    pub fn cancel(&mut self, peer: &str, id: u64) -> Option<Pending> {
        self.links
            .get_mut(peer)?
            .pending
            .remove(&id)
            .map(|(kind, _)| kind)
    }

    /// Takes the pending request a reply from `peer` answers (by its wire id `p<n>`);
    /// `None` for a late reply to a request given up on, or an unknown id.
    pub fn answered(&mut self, peer: &str, wire_id: Option<&str>) -> Option<Pending> {
        let id = wire_id.and_then(parse_id)?;
        self.cancel(peer, id)
    }

    /// Pending requests past their deadline, removed, per peer (in name, then id order).
    pub fn expired(&mut self, now: Instant) -> Vec<(String, Pending)> {
        let mut out = Vec::new();
        for link in self.links.values_mut() {
            let late: Vec<u64> = link
                .pending
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(id, _)| *id)
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

/// The wire form of request id `id`.
pub fn wire_id(id: u64) -> String {
    format!("p{id}")
}

/// Reads a wire request id `p<n>`.
fn parse_id(s: &str) -> Option<u64> {
    s.strip_prefix('p')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Peers {
        let mut p = Peers::default();
        p.update(
            &[
                ("b".into(), 2, "tcp://b".into()),
                ("c".into(), 3, "tcp://c".into()),
            ],
            &[],
        );
        p
    }

    #[test]
    fn replies_match_their_requests_once() {
        let t0 = Instant::now();
        let mut p = table();
        let (id, endpoint) = p.start("b", Pending::Sync, t0).unwrap();
        assert_eq!(endpoint, "tcp://b");
        assert_eq!(p.answered("c", Some(&wire_id(id))), None, "wrong peer");
        assert_eq!(p.answered("b", Some(&wire_id(id))), Some(Pending::Sync));
        assert_eq!(p.answered("b", Some(&wire_id(id))), None, "answered once");
        assert_eq!(p.answered("b", Some("x1")), None);
        assert!(p.start("z", Pending::Ping, t0).is_none(), "unknown peer");
    }

    #[test]
    fn requests_expire_after_the_timeout() {
        let t0 = Instant::now();
        let mut p = table();
        p.start("b", Pending::Ping, t0).unwrap();
        p.start("c", Pending::Election, t0 + Duration::from_millis(10))
            .unwrap();
        assert_eq!(p.next_deadline(), Some(t0 + PEER_REQUEST_TIMEOUT));
        assert!(p.expired(t0 + PEER_REQUEST_TIMEOUT / 2).is_empty());
        assert_eq!(
            p.expired(t0 + PEER_REQUEST_TIMEOUT),
            vec![("b".to_string(), Pending::Ping)]
        );
        assert_eq!(p.expired(t0 + PEER_REQUEST_TIMEOUT * 2).len(), 1);
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn a_new_endpoint_starts_a_new_link_and_unlisted_peers_go_unless_kept() {
        let t0 = Instant::now();
        let mut p = table();
        let g = p.generation();
        p.start("b", Pending::Sync, t0).unwrap();
        p.start("c", Pending::Ping, t0).unwrap();
        let same = [
            ("b".into(), 2, "tcp://b".into()),
            ("c".into(), 3, "tcp://c".into()),
        ];
        assert_eq!(p.update(&same, &[]), (false, vec![]));
        assert_eq!(p.generation(), g);
        // b moves: its pending sync is forgotten (and reported); c is kept while unlisted.
        let (changed, forgotten) = p.update(&[("b".into(), 2, "tcp://b2".into())], &["c".into()]);
        assert!(changed);
        assert_eq!(forgotten, vec![("b".to_string(), Pending::Sync)]);
        assert!(p.generation() > g);
        assert_eq!(p.names(), vec!["b".to_string(), "c".to_string()]);
        // c goes: its pending ping is reported too.
        let (changed, forgotten) = p.update(&[("b".into(), 2, "tcp://b2".into())], &[]);
        assert!(changed);
        assert_eq!(forgotten, vec![("c".to_string(), Pending::Ping)]);
        assert_eq!(p.names(), vec!["b".to_string()]);
        assert!(p.expired(t0 + PEER_REQUEST_TIMEOUT).is_empty());
    }
}
