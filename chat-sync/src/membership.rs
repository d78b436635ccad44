//! Failure detection between servers: heartbeats, last-heard times and missed replies.
//!
//! The driver tells the detector whom to watch ([`FailureDetector::set_peers`]), reports
//! every message received from a peer ([`FailureDetector::heard`]) and every request a peer
//! did not answer in time ([`FailureDetector::missed_reply`]), pings the peers that
//! [`FailureDetector::due_heartbeats`] names, and calls [`FailureDetector::handle_timeout`]
//! at [`FailureDetector::poll_timeout`]. A peer is alive while it was heard within
//! `timeout` and has fewer than `max_missed_replies` unanswered requests in a row. Changes
//! of that verdict come out of [`FailureDetector::poll_verdict`] as [`Verdict::Down`] /
//! [`Verdict::Up`], ready to be given to [`crate::Bully::handle_peer_down`] /
//! [`crate::Bully::handle_peer_up`] (and to decide whom the Berkeley round measures).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Default silence after which a peer is suspected.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(1);

/// Default period between two heartbeats to the same peer.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);

/// Default number of unanswered requests in a row after which a peer is suspected.
pub const DEFAULT_MAX_MISSED_REPLIES: u32 = 3;

/// Settings of the failure detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Silence after which a peer is suspected (default 1 s).
    pub timeout: Duration,
    /// Period between two heartbeats to the same peer (default 250 ms).
    pub heartbeat_interval: Duration,
    /// Unanswered requests in a row after which a peer is suspected (default 3).
    pub max_missed_replies: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            timeout: DEFAULT_FAILURE_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_missed_replies: DEFAULT_MAX_MISSED_REPLIES,
        }
    }
}

/// A change of the detector's opinion about a peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The peer is now suspected.
    Down(String),
    /// The peer is heard from again.
    Up(String),
}

#[derive(Debug, Clone)]
struct PeerState {
    last_heard: Instant,
    missed: u32,
    next_ping: Instant,
    reported_alive: bool,
}

/// Per-peer liveness from heartbeats and missed replies.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    config: DetectorConfig,
    peers: BTreeMap<String, PeerState>,
    verdicts: VecDeque<Verdict>,
}

impl FailureDetector {
    /// A detector watching nobody yet.
    pub fn new(config: DetectorConfig) -> FailureDetector {
        FailureDetector {
            config,
            peers: BTreeMap::new(),
            verdicts: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Watches exactly these peers. New ones start alive with a full timeout of grace and
    /// a heartbeat due now; dropped ones are forgotten without a verdict.
    pub fn set_peers<'a>(&mut self, now: Instant, peers: impl IntoIterator<Item = &'a str>) {
        let mut next = BTreeMap::new();
        for name in peers {
            let state = self.peers.remove(name).unwrap_or_else(|| Self::fresh(now));
            next.insert(name.to_string(), state);
        }
        self.peers = next;
    }

    /// Watches one more peer (alive, heartbeat due now); returns whether it was new.
    pub fn add_peer(&mut self, now: Instant, peer: &str) -> bool {
        if self.peers.contains_key(peer) {
            return false;
        }
        self.peers.insert(peer.to_string(), Self::fresh(now));
        true
    }

    /// Stops watching a peer; returns whether it was watched.
    pub fn remove_peer(&mut self, peer: &str) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// The watched peers, by name.
    pub fn peers(&self) -> impl Iterator<Item = &str> + '_ {
        self.peers.keys().map(String::as_str)
    }

    /// Something arrived from `peer` (any message or reply): it is alive. An unknown peer
    /// starts being watched.
    pub fn heard(&mut self, now: Instant, peer: &str) {
        if !self.peers.contains_key(peer) {
            self.peers.insert(peer.to_string(), Self::fresh(now));
        }
        let state = self.peers.get_mut(peer).expect("present");
        state.last_heard = state.last_heard.max(now);
        state.missed = 0;
        if !state.reported_alive {
            state.reported_alive = true;
            self.verdicts.push_back(Verdict::Up(peer.to_string()));
        }
    }

    /// A request to `peer` got no reply in time; after `max_missed_replies` in a row the
    /// peer is suspected at once.
    pub fn missed_reply(&mut self, now: Instant, peer: &str) {
        let config = self.config;
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.missed = state.missed.saturating_add(1);
        if state.reported_alive && !alive(&config, now, state) {
            state.reported_alive = false;
            self.verdicts.push_back(Verdict::Down(peer.to_string()));
        }
    }

    /// Unanswered requests in a row to `peer` (0 for an unknown peer).
    pub fn missed_replies(&self, peer: &str) -> u32 {
        self.peers.get(peer).map_or(0, |s| s.missed)
    }

    /// Whether `peer` is watched and currently considered alive.
    pub fn is_alive(&self, now: Instant, peer: &str) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|s| self.state_alive(now, s))
    }

    /// The watched peers currently suspected, by name.
    pub fn suspects(&self, now: Instant) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, s)| !self.state_alive(now, s))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The watched peers currently considered alive, by name.
    pub fn alive(&self, now: Instant) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, s)| self.state_alive(now, s))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The peers to ping now (suspected ones too, so that they can come back); each is
    /// due again one `heartbeat_interval` later.
    pub fn due_heartbeats(&mut self, now: Instant) -> Vec<String> {
        let interval = self.config.heartbeat_interval;
        self.peers
            .iter_mut()
            .filter(|(_, s)| s.next_ping <= now)
            .map(|(n, s)| {
                s.next_ping = now + interval;
                n.clone()
            })
            .collect()
    }

    /// Turns the silences that lasted `timeout` into [`Verdict::Down`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let config = self.config;
        for (name, state) in self.peers.iter_mut() {
            if state.reported_alive && !alive(&config, now, state) {
                state.reported_alive = false;
                self.verdicts.push_back(Verdict::Down(name.clone()));
            }
        }
    }

    /// The next heartbeat due or the next possible suspicion, whichever comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for s in self.peers.values() {
            let mut at = s.next_ping;
            if s.reported_alive {
                at = at.min(s.last_heard + self.config.timeout);
            }
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// The next change of verdict, in order.
    pub fn poll_verdict(&mut self) -> Option<Verdict> {
        self.verdicts.pop_front()
    }

    fn fresh(now: Instant) -> PeerState {
        PeerState {
            last_heard: now,
            missed: 0,
            next_ping: now,
            reported_alive: true,
        }
    }

    fn state_alive(&self, now: Instant, s: &PeerState) -> bool {
        alive(&self.config, now, s)
    }
}

fn alive(config: &DetectorConfig, now: Instant, s: &PeerState) -> bool {
    s.missed < config.max_missed_replies
        && now.saturating_duration_since(s.last_heard) < config.timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn detector(t0: Instant) -> FailureDetector {
        let mut fd = FailureDetector::new(DetectorConfig::default());
        fd.set_peers(t0, ["a", "b"]);
        fd
    }

    fn verdicts(fd: &mut FailureDetector) -> Vec<Verdict> {
        std::iter::from_fn(|| fd.poll_verdict()).collect()
    }

    #[test]
    fn silence_longer_than_timeout_is_suspected() {
        let t0 = Instant::now();
        let mut fd = detector(t0);
        fd.heard(t0 + 500 * MS, "a");
        assert!(fd.is_alive(t0 + 999 * MS, "b"));
        fd.handle_timeout(t0 + 999 * MS);
        assert!(verdicts(&mut fd).is_empty());
        fd.handle_timeout(t0 + 1000 * MS);
        assert_eq!(verdicts(&mut fd), [Verdict::Down("b".into())]);
        assert_eq!(fd.suspects(t0 + 1000 * MS), ["b"]);
        assert_eq!(fd.alive(t0 + 1000 * MS), ["a"]);
        // Reported once.
        fd.handle_timeout(t0 + 2000 * MS);
        assert_eq!(verdicts(&mut fd), [Verdict::Down("a".into())]);
        fd.handle_timeout(t0 + 3000 * MS);
        assert!(verdicts(&mut fd).is_empty());
    }

    #[test]
    fn hearing_from_suspect_brings_it_back() {
        let t0 = Instant::now();
        let mut fd = detector(t0);
        fd.handle_timeout(t0 + 1500 * MS);
        verdicts(&mut fd);
        fd.heard(t0 + 1600 * MS, "a");
        assert_eq!(verdicts(&mut fd), [Verdict::Up("a".into())]);
        assert!(fd.is_alive(t0 + 1600 * MS, "a"));
        assert!(!fd.is_alive(t0 + 1600 * MS, "b"));
    }

    #[test]
    fn missed_replies_suspect_before_the_timeout() {
        let t0 = Instant::now();
        let mut fd = detector(t0);
        fd.missed_reply(t0 + MS, "a");
        fd.missed_reply(t0 + 2 * MS, "a");
        assert!(verdicts(&mut fd).is_empty());
        assert_eq!(fd.missed_replies("a"), 2);
        fd.missed_reply(t0 + 3 * MS, "a");
        assert_eq!(verdicts(&mut fd), [Verdict::Down("a".into())]);
        fd.heard(t0 + 4 * MS, "a");
        assert_eq!(fd.missed_replies("a"), 0);
        assert_eq!(verdicts(&mut fd), [Verdict::Up("a".into())]);
    }

    #[test]
    fn heartbeats_are_due_every_interval() {
        let t0 = Instant::now();
        let mut fd = detector(t0);
        assert_eq!(fd.due_heartbeats(t0), ["a", "b"]);
        assert!(fd.due_heartbeats(t0 + 249 * MS).is_empty());
        assert_eq!(fd.poll_timeout(), Some(t0 + 250 * MS));
        assert_eq!(fd.due_heartbeats(t0 + 250 * MS), ["a", "b"]);
    }

    #[test]
    fn poll_timeout_includes_next_suspicion() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(DetectorConfig {
            heartbeat_interval: Duration::from_secs(10),
            ..DetectorConfig::default()
        });
        fd.set_peers(t0, ["a"]);
        fd.due_heartbeats(t0);
        assert_eq!(fd.poll_timeout(), Some(t0 + DEFAULT_FAILURE_TIMEOUT));
        fd.handle_timeout(t0 + DEFAULT_FAILURE_TIMEOUT);
        assert_eq!(fd.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn membership_changes() {
        let t0 = Instant::now();
        let mut fd = detector(t0);
        fd.handle_timeout(t0 + 2000 * MS);
        verdicts(&mut fd);
        fd.set_peers(t0 + 2000 * MS, ["b", "c"]);
        assert_eq!(fd.peers().collect::<Vec<_>>(), ["b", "c"]);
        assert!(!fd.is_alive(t0 + 2000 * MS, "b"), "b keeps its state");
        assert!(fd.is_alive(t0 + 2000 * MS, "c"), "c gets a grace period");
        assert!(!fd.add_peer(t0, "c"));
        assert!(fd.add_peer(t0, "d"));
        assert!(fd.remove_peer("d"));
        assert!(!fd.is_alive(t0, "d"));
        fd.heard(t0 + 2100 * MS, "e");
        assert!(fd.is_alive(t0 + 2100 * MS, "e"));
    }
}
