//! Replication bookkeeping at an event's origin: push new events to every live peer, hold
//! client replies until enough peers have the events durably, resend what was not
//! acknowledged.
//!
//! The origin numbers its own events 1, 2, 3, ... Each `replicate` message carries one
//! contiguous range of them; the receiver answers only once the range is durable on its
//! disk, so an answer to message `m` means "every event of `m` is safe here". A client
//! reply for event `s` is released when `required` peers have acknowledged `s`, where
//! `required = min(ack_replicas, live peers)`; with no live peer at all the configured
//! [`AckPolicy`] decides. A range not acknowledged within `ack_timeout` is sent again.
//!
//! Catch-up of a peer that was down is not this machine's job: every server pulls what it
//! misses with `sync` (see `docs/replication.md`); this machine only pushes new events to
//! peers that are up, so its queues stay bounded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use chat_core::domain::AppliedSeqs;

/// Default number of other servers that must hold a write before the client hears OK.
pub const DEFAULT_ACK_REPLICAS: usize = 1;
/// Default wait for a peer's acknowledgement before sending the range again.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_millis(1000);
/// Most events in one `replicate` message.
pub const MAX_RANGE: u64 = 256;
/// Default number of `replicate` messages in flight to one peer.
pub const DEFAULT_WINDOW: usize = 8;

/// What to do with a write when no other server is alive to hold a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckPolicy {
    /// Acknowledge once durable locally (counted in `local_only_acks` and logged).
    #[default]
    AcceptLocal,
    /// Answer `unavailable` (the write stays and replicates later; a retry with the same
    /// request id gets OK once a peer holds it).
    Refuse,
}

/// Settings of the replicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Other servers that must hold a write before the client hears OK (default 1).
    pub ack_replicas: usize,
    /// Wait before resending an unacknowledged range (default 1 s).
    pub ack_timeout: Duration,
    /// What to do with no live peer (default: accept locally).
    pub policy: AckPolicy,
    /// Most `replicate` messages in flight to one peer (at least 1; default 8). Events
    /// committed while the window is full wait and leave together, in one message, when
    /// an acknowledgement frees a slot. (A window of 1 makes every push wait for the
    /// previous one's round trip, peer fsync included: with a slow disk that costs more
    /// latency than the fewer messages save; the peer batches its commits anyway.)
    pub window: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            ack_replicas: DEFAULT_ACK_REPLICAS,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            policy: AckPolicy::AcceptLocal,
            window: DEFAULT_WINDOW,
        }
    }
}

/// A range of the origin's own events to send to a peer in one `replicate` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRange {
    /// Peer name.
    pub peer: String,
    /// Message id, to give back to [`Replicator::handle_ack`].
    pub msg: u64,
    /// First sequence number (inclusive).
    pub from: u64,
    /// Last sequence number (inclusive).
    pub to: u64,
}

/// A held reply, now decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release<T> {
    /// Enough copies exist (or the policy accepts a local-only write): send the reply.
    Ack(T),
    /// No live peer and the policy refuses: answer `unavailable` instead.
    Refuse(T),
}

#[derive(Debug, Clone, Default)]
struct Peer {
    acked: AppliedSeqs,
    queue: VecDeque<(u64, u64)>,
    inflight: BTreeMap<u64, (u64, u64, Instant)>,
    /// Messages already sent again: a late answer still counts (bounded).
    expired: BTreeMap<u64, (u64, u64)>,
}

/// Most expired messages remembered per peer for late acknowledgements.
const MAX_EXPIRED: usize = 1024;

/// The origin's replication state.
#[derive(Debug, Clone)]
pub struct Replicator<T> {
    config: ReplicationConfig,
    committed: u64,
    peers: BTreeMap<String, Peer>,
    held: Vec<(u64, T)>,
    next_msg: u64,
    local_only_acks: u64,
}

impl<T> Replicator<T> {
    /// A replicator whose own events up to `committed` are already durable (on restart).
    pub fn new(config: ReplicationConfig, committed: u64) -> Self {
        Replicator {
            config,
            committed,
            peers: BTreeMap::new(),
            held: Vec::new(),
            next_msg: 1,
            local_only_acks: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// Writes acknowledged while no other server was alive.
    pub fn local_only_acks(&self) -> u64 {
        self.local_only_acks
    }

    /// Replies waiting for acknowledgements.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Highest own sequence number `peer` has acknowledged without gaps.
    pub fn acked_through(&self, peer: &str) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.acked.contiguous())
    }

    /// The known peers (names); peers not listed are forgotten.
    pub fn set_peers<'a>(&mut self, peers: impl IntoIterator<Item = &'a str>) {
        let names: BTreeSet<&str> = peers.into_iter().collect();
        self.peers.retain(|name, _| names.contains(name.as_str()));
        for n in names {
            self.peers.entry(n.to_string()).or_default();
        }
    }

    /// Own events up to `seq` are durable locally: queue them for every peer.
    pub fn committed(&mut self, seq: u64) {
        if seq <= self.committed {
            return;
        }
        let from = self.committed + 1;
        self.committed = seq;
        for p in self.peers.values_mut() {
            p.queue.push_back((from, seq));
        }
    }

    /// Holds `item` (a client reply) until own event `seq` is acknowledged.
    pub fn hold(&mut self, seq: u64, item: T) {
        self.held.push((seq, item));
    }

    /// A peer acknowledged message `msg`: its range is durable there.
    pub fn handle_ack(&mut self, peer: &str, msg: u64) {
        if let Some(p) = self.peers.get_mut(peer) {
            let range = match p.inflight.remove(&msg) {
                Some((from, to, _)) => Some((from, to)),
                None => p.expired.remove(&msg),
            };
            if let Some((from, to)) = range {
                for s in from..=to {
                    p.acked.insert(s);
                }
            }
        }
    }

    /// A peer is down: what it had in flight will be sent again when it is back up, and it
    /// gets nothing new meanwhile (it catches up with `sync`).
    pub fn handle_peer_down(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            let mut ranges: Vec<(u64, u64)> =
                p.inflight.values().map(|(f, t, _)| (*f, *t)).collect();
            p.inflight.clear();
            ranges.extend(p.queue.drain(..));
            ranges.sort_unstable();
            p.queue.extend(ranges);
        }
    }

    /// Ranges to send now to the `alive` peers (each at most [`MAX_RANGE`] events);
    /// unacknowledged ranges older than the ack timeout are sent again.
    pub fn poll_sends(&mut self, now: Instant, alive: &[String]) -> Vec<SendRange> {
        let mut out = Vec::new();
        for name in alive {
            let Some(p) = self.peers.get_mut(name) else {
                continue;
            };
            let expired: Vec<u64> = p
                .inflight
                .iter()
                .filter(|(_, (_, _, at))| {
                    now.saturating_duration_since(*at) >= self.config.ack_timeout
                })
                .map(|(m, _)| *m)
                .collect();
            for m in expired {
                if let Some((f, t, _)) = p.inflight.remove(&m) {
                    p.queue.push_front((f, t));
                    p.expired.insert(m, (f, t));
                }
            }
            while p.expired.len() > MAX_EXPIRED {
                p.expired.pop_first();
            }
            let window = self.config.window.max(1);
            while p.inflight.len() < window {
                let Some((from, end)) = next_range(p) else {
                    break;
                };
                let msg = self.next_msg;
                self.next_msg += 1;
                p.inflight.insert(msg, (from, end, now));
                out.push(SendRange {
                    peer: name.clone(),
                    msg,
                    from,
                    to: end,
                });
            }
        }
        out
    }

    /// Replies that can now be sent (or must be refused), given which peers are `alive`.
    /// A reply never leaves before its event is durable here ([`Replicator::committed`]).
    pub fn poll_released(&mut self, alive: &[String]) -> Vec<Release<T>> {
        let live = alive.iter().filter(|a| self.peers.contains_key(*a)).count();
        let required = self.config.ack_replicas.min(live);
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(self.held.len());
        for (seq, item) in self.held.drain(..) {
            if seq > self.committed {
                kept.push((seq, item));
                continue;
            }
            if required == 0 {
                if self.config.ack_replicas == 0 || self.config.policy == AckPolicy::AcceptLocal {
                    if self.config.ack_replicas > 0 {
                        self.local_only_acks += 1;
                    }
                    out.push(Release::Ack(item));
                } else {
                    out.push(Release::Refuse(item));
                }
                continue;
            }
            let copies = self
                .peers
                .values()
                .filter(|p| p.acked.contains(seq))
                .count();
            if copies >= required {
                out.push(Release::Ack(item));
            } else {
                kept.push((seq, item));
            }
        }
        self.held = kept;
        out
    }

    /// When the oldest unacknowledged range should be sent again, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                p.inflight
                    .values()
                    .map(|(_, _, at)| *at + self.config.ack_timeout)
            })
            .min()
    }
}

/// Takes from the front of `p`'s queue the next range to send: the queued ranges that
/// follow one another, without what `p` already acknowledged, at most [`MAX_RANGE`] events.
fn next_range(p: &mut Peer) -> Option<(u64, u64)> {
    let (from, end) = loop {
        let (mut from, to) = p.queue.pop_front()?;
        while from <= to && p.acked.contains(from) {
            from += 1;
        }
        if from <= to {
            break (from, to);
        }
    };
    let limit = from + MAX_RANGE - 1;
    let mut end = end;
    // Merge the ranges queued right after this one (commits of later iterations).
    while let Some(&(f, t)) = p.queue.front() {
        if f != end + 1 || end >= limit {
            break;
        }
        p.queue.pop_front();
        end = t;
    }
    if end > limit {
        p.queue.push_front((limit + 1, end));
        end = limit;
    }
    Some((from, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A replicator with one peer, `b`, and `window` messages in flight to it.
    fn one_peer(window: usize) -> Replicator<()> {
        let cfg = ReplicationConfig {
            window,
            ..ReplicationConfig::default()
        };
        let mut r = Replicator::new(cfg, 0);
        r.set_peers(["b"]);
        r
    }

    #[test]
    fn reply_waits_for_one_peer_then_goes() {
        let t0 = Instant::now();
        let mut r: Replicator<&str> = Replicator::new(ReplicationConfig::default(), 0);
        r.set_peers(["b", "c"]);
        r.committed(1);
        r.hold(1, "reply-1");
        let alive = names(&["b", "c"]);
        let sends = r.poll_sends(t0, &alive);
        assert_eq!(sends.len(), 2);
        assert!(r.poll_released(&alive).is_empty(), "no ack yet");
        r.handle_ack("c", sends[1].msg);
        assert_eq!(r.poll_released(&alive), vec![Release::Ack("reply-1")]);
        assert_eq!(r.local_only_acks(), 0);
    }

    #[test]
    fn a_reply_never_leaves_before_its_event_is_durable_here() {
        let mut r: Replicator<u8> = Replicator::new(ReplicationConfig::default(), 0);
        r.hold(1, 1);
        // No peer at all and the policy accepts local writes: still not before the commit.
        assert!(r.poll_released(&[]).is_empty());
        r.committed(1);
        assert_eq!(r.poll_released(&[]), vec![Release::Ack(1)]);
    }

    #[test]
    fn no_live_peer_follows_the_policy() {
        let mut r: Replicator<u8> = Replicator::new(ReplicationConfig::default(), 0);
        r.set_peers(["b"]);
        r.committed(1);
        r.hold(1, 7);
        assert_eq!(r.poll_released(&[]), vec![Release::Ack(7)]);
        assert_eq!(r.local_only_acks(), 1);

        let cfg = ReplicationConfig {
            policy: AckPolicy::Refuse,
            ..ReplicationConfig::default()
        };
        let mut r: Replicator<u8> = Replicator::new(cfg, 0);
        r.committed(1);
        r.hold(1, 7);
        assert_eq!(r.poll_released(&[]), vec![Release::Refuse(7)]);
    }

    #[test]
    fn unacknowledged_range_is_resent_after_the_timeout() {
        let t0 = Instant::now();
        let mut r = one_peer(DEFAULT_WINDOW);
        r.committed(3);
        let alive = names(&["b"]);
        let first = r.poll_sends(t0, &alive);
        assert_eq!((first[0].from, first[0].to), (1, 3));
        assert!(r
            .poll_sends(t0 + Duration::from_millis(10), &alive)
            .is_empty());
        let again = r.poll_sends(t0 + DEFAULT_ACK_TIMEOUT, &alive);
        assert_eq!((again[0].from, again[0].to), (1, 3));
        assert_ne!(again[0].msg, first[0].msg);
        // A late ack of the first message still counts.
        r.handle_ack("b", first[0].msg);
        assert_eq!(r.acked_through("b"), 3);
    }

    #[test]
    fn large_ranges_are_split_and_acked_parts_skipped() {
        let t0 = Instant::now();
        let mut r = one_peer(8);
        r.committed(600);
        let sends = r.poll_sends(t0, &names(&["b"]));
        let ranges: Vec<_> = sends.iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(ranges, vec![(1, 256), (257, 512), (513, 600)]);
    }

    #[test]
    fn commits_wait_for_a_free_slot_then_leave_together() {
        let t0 = Instant::now();
        let mut r = one_peer(1);
        let alive = names(&["b"]);
        r.committed(1);
        let first = r.poll_sends(t0, &alive);
        assert_eq!((first[0].from, first[0].to), (1, 1));
        // Three more commits while the window (1) is full: nothing leaves.
        for seq in 2..=4 {
            r.committed(seq);
            assert!(r.poll_sends(t0, &alive).is_empty());
        }
        r.handle_ack("b", first[0].msg);
        let next = r.poll_sends(t0, &alive);
        let ranges: Vec<_> = next.iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(
            ranges,
            vec![(2, 4)],
            "the waiting commits go as one message"
        );
    }

    #[test]
    fn merged_ranges_skip_acknowledged_events_and_respect_the_limit() {
        let t0 = Instant::now();
        let mut r = one_peer(1);
        let alive = names(&["b"]);
        for seq in (100..=700).step_by(100) {
            r.committed(seq);
        }
        let mut got = Vec::new();
        for _ in 0..10 {
            let s = r.poll_sends(t0, &alive);
            let Some(s) = s.first() else { break };
            got.push((s.from, s.to));
            r.handle_ack("b", s.msg);
        }
        assert_eq!(got, vec![(1, 256), (257, 512), (513, 700)]);
        assert_eq!(r.acked_through("b"), 700);
    }

    #[test]
    fn down_peer_gets_its_inflight_back_when_up() {
        let t0 = Instant::now();
        let mut r = one_peer(DEFAULT_WINDOW);
        r.committed(2);
        let s = r.poll_sends(t0, &names(&["b"]));
        assert_eq!(s.len(), 1);
        r.handle_peer_down("b");
        assert!(r.poll_sends(t0, &[]).is_empty());
        let again = r.poll_sends(t0, &names(&["b"]));
        assert_eq!((again[0].from, again[0].to), (1, 2));
    }

    #[test]
    fn two_replicas_need_two_acks_when_two_peers_live() {
        let t0 = Instant::now();
        let cfg = ReplicationConfig {
            ack_replicas: 2,
            ..ReplicationConfig::default()
        };
        let mut r: Replicator<u8> = Replicator::new(cfg, 0);
        r.set_peers(["b", "c"]);
        r.committed(1);
        r.hold(1, 1);
        let alive = names(&["b", "c"]);
        let s = r.poll_sends(t0, &alive);
        r.handle_ack("b", s[0].msg);
        assert!(r.poll_released(&alive).is_empty());
        // With only b alive, one copy is enough.
        assert_eq!(r.poll_released(&names(&["b"])), vec![Release::Ack(1)]);
    }
}
