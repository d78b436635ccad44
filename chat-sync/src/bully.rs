//! Bully election with ballot terms: the highest-ranked live server becomes coordinator.
//!
//! # Terms
//!
//! A term is `round << 16 | rank` ([`make_term`]): its low 16 bits name the only rank that
//! may announce it. A node announces only terms it owns, and each new term it takes is
//! greater than every term it has seen ([`next_term`]). So two different servers can never
//! announce the same term, whatever the network loses or reorders: "at most one coordinator
//! per term" holds by construction, not by the luck of Bully's message exchange. Ranks must
//! therefore be at most [`MAX_RANK`] (65535); [`Bully::new`] refuses larger ones, and peers
//! with larger ranks are ignored.
//!
//! A node remembers the greatest term it has seen ([`Bully::term`]: from announcements,
//! accepted or not, and from `Election` messages, which carry the sender's greatest term).
//! It accepts an announcement from a higher rank when the announced term is greater than
//! that, or equal to it and not already its coordinator's term (it saw the term in passing
//! but missed the announcement). An equal term from the same coordinator is a duplicate.
//!
//! # Transitions
//!
//! - [`Bully::start`], a suspected coordinator ([`Bully::handle_peer_down`]), a stale or
//!   lower-ranked announcement, or an `Election` from a lower rank start an election:
//!   `Election` goes to every live higher-ranked peer; with none, the node announces itself.
//! - An `Ok` moves the node to waiting for an announcement (`coordinator_timeout`); silence
//!   restarts the election. No `Ok` within `election_timeout`: the node announces itself.
//! - An `Election` from a lower rank is answered `Ok`; a coordinator re-announces to the
//!   sender (with a fresh term if the sender has seen a greater one); anyone else starts
//!   its own election.
//! - A coordinator that learns of a live higher-ranked peer starts an election, and steps
//!   aside when that peer announces. A node that hears a lower rank announce bullies it.
//! - A coordinator re-sends its announcement to every peer every `announce_interval`, so a
//!   node that lost the first one catches up.
//!
//! The driver persists [`Bully::term`] (before it sends what [`Bully::poll_output`] returns)
//! and gives it back to [`Bully::restore`] after a restart, so a node's terms only grow.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use chat_core::protocol::{Announcement, Request};

/// Bits of a term that hold the rank of its owner.
pub const RANK_BITS: u32 = 16;

/// Largest rank that can take part in elections (65535): ranks live in 16 bits of a term.
pub const MAX_RANK: u64 = (1 << RANK_BITS) - 1;

/// Largest round of a term (2^48 - 1); terms saturate there.
pub const MAX_ROUND: u64 = u64::MAX >> RANK_BITS;

/// Default time to wait for an `Ok` from a higher rank before announcing oneself.
pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(300);

/// Default time to wait for an announcement after an `Ok` before electing again.
pub const DEFAULT_COORDINATOR_TIMEOUT: Duration = Duration::from_millis(600);

/// Default period at which a coordinator re-sends its announcement to its peers.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the term of `round` owned by `rank` (`round << 16 | rank`).
pub fn make_term(round: u64, rank: u64) -> u64 {
    (round.min(MAX_ROUND) << RANK_BITS) | (rank & MAX_RANK)
}

/// The rank that owns `term` (its low 16 bits).
pub fn term_rank(term: u64) -> u64 {
    term & MAX_RANK
}

/// The round of `term` (its high 48 bits).
pub fn term_round(term: u64) -> u64 {
    term >> RANK_BITS
}

/// The smallest term owned by `rank` in a round after the round of `seen`: always greater
/// than `seen` (until rounds saturate at [`MAX_ROUND`]).
pub fn next_term(seen: u64, rank: u64) -> u64 {
    make_term(term_round(seen).saturating_add(1), rank)
}

/// Whether an announcement is well formed: a term of round at least 1 owned by its rank.
pub fn is_valid_announcement(a: &Announcement) -> bool {
    a.rank <= MAX_RANK && term_round(a.term) >= 1 && term_rank(a.term) == a.rank
}

/// A rank too large to be encoded in a term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankTooLarge {
    /// The refused rank.
    pub rank: u64,
}

impl fmt::Display for RankTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} is larger than {MAX_RANK}, the largest rank a term can encode",
            self.rank
        )
    }
}

impl std::error::Error for RankTooLarge {}

/// Timeouts of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BullyConfig {
    /// Wait for an `Ok` from a higher rank before announcing oneself (default 300 ms).
    pub election_timeout: Duration,
    /// Wait for an announcement after an `Ok` before electing again (default 600 ms).
    pub coordinator_timeout: Duration,
    /// Period at which a coordinator re-sends its announcement to its peers (default 1 s).
    pub announce_interval: Duration,
}

impl Default for BullyConfig {
    fn default() -> Self {
        BullyConfig {
            election_timeout: DEFAULT_ELECTION_TIMEOUT,
            coordinator_timeout: DEFAULT_COORDINATOR_TIMEOUT,
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
        }
    }
}

/// A message between servers for the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BullyMsg {
    /// `from` with `rank` runs an election; `term` is the greatest term it has seen.
    Election {
        /// Sender.
        from: String,
        /// Sender's rank.
        rank: u64,
        /// Greatest term the sender has seen.
        term: u64,
    },
    /// The answer to `Election` from a higher rank: "I am alive, I take over".
    Ok {
        /// Sender.
        from: String,
    },
    /// The winner's announcement, sent directly to a peer.
    Coordinator(Announcement),
}

impl BullyMsg {
    /// The request carrying this message on the wire; `None` for `Ok`, which travels as
    /// the reply `{"election": "OK"}` to the `election` request.
    pub fn to_request(&self) -> Option<Request> {
        match self {
            BullyMsg::Election { from, rank, term } => Some(Request::Election {
                from: from.clone(),
                rank: *rank,
                term: *term,
            }),
            BullyMsg::Ok { .. } => None,
            BullyMsg::Coordinator(a) => Some(Request::Coordinator(a.clone())),
        }
    }

    /// The message carried by a request, if it is an election request.
    pub fn from_request(request: &Request) -> Option<BullyMsg> {
        match request {
            Request::Election { from, rank, term } => Some(BullyMsg::Election {
                from: from.clone(),
                rank: *rank,
                term: *term,
            }),
            Request::Coordinator(a) => Some(BullyMsg::Coordinator(a.clone())),
            _ => None,
        }
    }
}

/// What the election wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BullyOutput {
    /// Send `msg` to peer `to` (an `Ok` is the reply to `to`'s `election` request).
    Send {
        /// Peer name.
        to: String,
        /// The message.
        msg: BullyMsg,
    },
    /// Publish this announcement (of this node, in a new term) on the `servers` topic.
    Announce(Announcement),
    /// The coordinator this node follows changed (`None`: suspected, election running).
    CoordinatorChanged(Option<Announcement>),
}

/// Where a node is in an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionPhase {
    /// No election running.
    Idle,
    /// `Election` sent to higher ranks; waiting for an `Ok`.
    Electing,
    /// An `Ok` arrived; waiting for the winner's announcement.
    AwaitingCoordinator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Electing { deadline: Instant },
    Waiting { deadline: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    rank: u64,
    alive: bool,
}

/// One server's Bully election state machine.
#[derive(Debug, Clone)]
pub struct Bully {
    name: String,
    rank: u64,
    config: BullyConfig,
    peers: BTreeMap<String, Peer>,
    term: u64,
    coordinator: Option<Announcement>,
    phase: Phase,
    refresh_at: Option<Instant>,
    outputs: VecDeque<BullyOutput>,
}

impl Bully {
    /// A fresh node `name` with `rank` (at most [`MAX_RANK`]) that has seen no term.
    pub fn new(
        name: impl Into<String>,
        rank: u64,
        config: BullyConfig,
    ) -> Result<Bully, RankTooLarge> {
        Bully::restore(name, rank, config, 0)
    }

    /// A node restarted with the greatest term it had seen (persisted by the driver).
    pub fn restore(
        name: impl Into<String>,
        rank: u64,
        config: BullyConfig,
        max_term_seen: u64,
    ) -> Result<Bully, RankTooLarge> {
        if rank > MAX_RANK {
            return Err(RankTooLarge { rank });
        }
        Ok(Bully {
            name: name.into(),
            rank,
            config,
            peers: BTreeMap::new(),
            term: max_term_seen,
            coordinator: None,
            phase: Phase::Idle,
            refresh_at: None,
            outputs: VecDeque::new(),
        })
    }

    /// This server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This server's rank.
    pub fn rank(&self) -> u64 {
        self.rank
    }

    /// The configuration.
    pub fn config(&self) -> &BullyConfig {
        &self.config
    }

    /// The greatest term seen so far (persist it; it only grows).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The coordinator this node follows (itself when it is coordinator).
    pub fn coordinator(&self) -> Option<&Announcement> {
        self.coordinator.as_ref()
    }

    /// Whether this node is the coordinator it follows.
    pub fn is_coordinator(&self) -> bool {
        self.coordinator
            .as_ref()
            .is_some_and(|a| a.coordinator == self.name)
    }

    /// Where this node is in an election.
    pub fn phase(&self) -> ElectionPhase {
        match self.phase {
            Phase::Idle => ElectionPhase::Idle,
            Phase::Electing { .. } => ElectionPhase::Electing,
            Phase::Waiting { .. } => ElectionPhase::AwaitingCoordinator,
        }
    }

    /// The known peers as `(name, rank, alive)`, by name.
    pub fn peers(&self) -> impl Iterator<Item = (&str, u64, bool)> + '_ {
        self.peers
            .iter()
            .map(|(n, p)| (n.as_str(), p.rank, p.alive))
    }

    /// Starts the first election (call after [`Bully::set_peers`]); does nothing while an
    /// election runs or when a coordinator is already known.
    pub fn start(&mut self, now: Instant) {
        if self.phase == Phase::Idle && self.coordinator.is_none() {
            self.start_election(now);
        }
    }

    /// Replaces the membership view (`(name, rank)` of servers, e.g. the reference's
    /// `list`; this node and ranks above [`MAX_RANK`] are skipped). Peers keep their
    /// liveness; new ones are alive. A followed coordinator that left the view counts as
    /// down; a coordinator that sees a new higher rank starts an election.
    pub fn set_peers(&mut self, now: Instant, peers: &[(String, u64)]) {
        let mut next = BTreeMap::new();
        let mut higher_appeared = false;
        for (name, rank) in peers {
            if *name == self.name || *rank > MAX_RANK || *rank == self.rank {
                continue;
            }
            let alive = match self.peers.get(name) {
                Some(p) => p.alive,
                None => {
                    higher_appeared |= *rank > self.rank;
                    true
                }
            };
            next.insert(name.clone(), Peer { rank: *rank, alive });
        }
        self.peers = next;
        let lost = self.coordinator.as_ref().is_some_and(|c| {
            c.coordinator != self.name && !self.peers.contains_key(&c.coordinator)
        });
        if lost {
            self.lose_coordinator(now);
        } else if higher_appeared && self.is_coordinator() && self.phase == Phase::Idle {
            self.start_election(now);
        }
    }

    /// Failure-detector verdict: `peer` is suspected. A followed coordinator is dropped and
    /// an election starts.
    pub fn handle_peer_down(&mut self, now: Instant, peer: &str) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.alive = false;
        if self
            .coordinator
            .as_ref()
            .is_some_and(|c| c.coordinator == peer)
        {
            self.lose_coordinator(now);
        }
    }

    /// Failure-detector verdict: `peer` answers again. A coordinator that sees a higher
    /// rank come back starts an election.
    pub fn handle_peer_up(&mut self, now: Instant, peer: &str) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.alive {
            return;
        }
        p.alive = true;
        if p.rank > self.rank && self.is_coordinator() && self.phase == Phase::Idle {
            self.start_election(now);
        }
    }

    /// A message from a peer (an `Ok` is the reply to this node's `election` request).
    pub fn handle_message(&mut self, now: Instant, msg: BullyMsg) {
        match msg {
            BullyMsg::Election { from, rank, term } => self.on_election(now, from, rank, term),
            BullyMsg::Ok { from } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.alive = true;
                }
                if let Phase::Electing { .. } = self.phase {
                    self.phase = Phase::Waiting {
                        deadline: now + self.config.coordinator_timeout,
                    };
                }
            }
            BullyMsg::Coordinator(a) => self.handle_announcement(now, a),
        }
    }

    /// An announcement, sent directly by a peer or received on the `servers` topic.
    pub fn handle_announcement(&mut self, now: Instant, a: Announcement) {
        if !is_valid_announcement(&a) || a.coordinator == self.name || a.rank == self.rank {
            return;
        }
        self.learn_peer(&a.coordinator, a.rank);
        if a.rank < self.rank {
            // A lower rank claims to coordinate while this node is alive: bully it.
            self.observe(a.term);
            match self.coordinator.clone() {
                Some(own) if own.coordinator == self.name && own.term > a.term => {
                    self.send(&a.coordinator, BullyMsg::Coordinator(own));
                }
                _ => {
                    if self.phase == Phase::Idle {
                        self.start_election(now);
                    }
                }
            }
            return;
        }
        if self.coordinator.as_ref() == Some(&a) {
            // Duplicate: the coordinator is alive and unchanged; an election ends here.
            self.phase = Phase::Idle;
            return;
        }
        let current_term = self.coordinator.as_ref().map(|c| c.term);
        if a.term > self.term || (a.term == self.term && current_term != Some(a.term)) {
            self.term = a.term;
            self.coordinator = Some(a.clone());
            self.phase = Phase::Idle;
            self.refresh_at = None;
            self.outputs
                .push_back(BullyOutput::CoordinatorChanged(Some(a)));
            return;
        }
        // Stale: a higher rank believes it coordinates in a term older than one seen here.
        // If it also outranks the coordinator followed here, an election tells it (via the
        // term in `Election`) to take a fresh term. If it does not, the followed coordinator
        // outranks it and settles it; an old term of the followed coordinator is noise.
        let outranks_followed = self.coordinator.as_ref().is_none_or(|c| a.rank > c.rank);
        if outranks_followed && self.phase == Phase::Idle {
            self.start_election(now);
        }
    }

    /// Fires the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Electing { deadline } if now >= deadline => {
                // No higher rank answered: this node wins.
                self.phase = Phase::Idle;
                self.announce_fresh(now);
            }
            Phase::Waiting { deadline } if now >= deadline => {
                // A higher rank answered but never announced: try again.
                self.phase = Phase::Idle;
                self.start_election(now);
            }
            _ => {}
        }
        if let Some(at) = self.refresh_at {
            if now >= at && self.is_coordinator() {
                let own = self.coordinator.clone().expect("coordinator is set");
                if own.term < self.term {
                    self.announce_fresh(now);
                } else {
                    let names: Vec<String> = self.peers.keys().cloned().collect();
                    for name in names {
                        self.send(&name, BullyMsg::Coordinator(own.clone()));
                    }
                    self.refresh_at = Some(now + self.config.announce_interval);
                }
            }
        }
    }

    /// When [`Bully::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Idle => None,
            Phase::Electing { deadline } | Phase::Waiting { deadline } => Some(deadline),
        };
        let refresh = self.refresh_at.filter(|_| self.is_coordinator());
        match (phase, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<BullyOutput> {
        self.outputs.pop_front()
    }

    fn on_election(&mut self, now: Instant, from: String, rank: u64, term: u64) {
        if from == self.name || rank > MAX_RANK {
            return;
        }
        self.learn_peer(&from, rank);
        self.observe(term);
        if rank >= self.rank {
            // Elections only go up; one from a higher (or the same) rank means nothing.
            return;
        }
        self.send(
            &from,
            BullyMsg::Ok {
                from: self.name.clone(),
            },
        );
        if self.is_coordinator() {
            let own = self.coordinator.clone().expect("coordinator is set");
            if own.term < self.term {
                // The sender has seen a greater term: it would ignore ours.
                self.announce_fresh(now);
            } else {
                self.send(&from, BullyMsg::Coordinator(own));
            }
        } else if self.phase == Phase::Idle {
            self.start_election(now);
        }
    }

    fn start_election(&mut self, now: Instant) {
        let higher: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.rank > self.rank && p.alive)
            .map(|(n, _)| n.clone())
            .collect();
        if higher.is_empty() {
            self.phase = Phase::Idle;
            self.announce_fresh(now);
            return;
        }
        for to in higher {
            let msg = BullyMsg::Election {
                from: self.name.clone(),
                rank: self.rank,
                term: self.term,
            };
            self.send(&to, msg);
        }
        self.phase = Phase::Electing {
            deadline: now + self.config.election_timeout,
        };
    }

    /// Takes a new term owned by this node, greater than any seen, and announces it.
    fn announce_fresh(&mut self, now: Instant) {
        self.term = next_term(self.term, self.rank);
        let a = Announcement {
            coordinator: self.name.clone(),
            term: self.term,
            rank: self.rank,
        };
        self.coordinator = Some(a.clone());
        self.refresh_at = Some(now + self.config.announce_interval);
        self.outputs.push_back(BullyOutput::Announce(a.clone()));
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            self.send(&name, BullyMsg::Coordinator(a.clone()));
        }
        self.outputs
            .push_back(BullyOutput::CoordinatorChanged(Some(a)));
    }

    fn lose_coordinator(&mut self, now: Instant) {
        self.coordinator = None;
        self.refresh_at = None;
        self.outputs
            .push_back(BullyOutput::CoordinatorChanged(None));
        self.phase = Phase::Idle;
        self.start_election(now);
    }

    fn observe(&mut self, term: u64) {
        self.term = self.term.max(term);
    }

    fn learn_peer(&mut self, name: &str, rank: u64) {
        if rank > MAX_RANK || rank == self.rank {
            return;
        }
        let p = self
            .peers
            .entry(name.to_string())
            .or_insert(Peer { rank, alive: true });
        p.rank = rank;
        p.alive = true;
    }

    fn send(&mut self, to: &str, msg: BullyMsg) {
        self.outputs.push_back(BullyOutput::Send {
            to: to.to_string(),
            msg,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn peers(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    fn node(name: &str, rank: u64, others: &[(&str, u64)], now: Instant) -> Bully {
        let mut b = Bully::new(name, rank, BullyConfig::default()).unwrap();
        b.set_peers(now, &peers(others));
        b
    }

    fn drain(b: &mut Bully) -> Vec<BullyOutput> {
        std::iter::from_fn(|| b.poll_output()).collect()
    }

    fn sends(out: &[BullyOutput]) -> Vec<(String, BullyMsg)> {
        out.iter()
            .filter_map(|o| match o {
                BullyOutput::Send { to, msg } => Some((to.clone(), msg.clone())),
                _ => None,
            })
            .collect()
    }

    fn announced(out: &[BullyOutput]) -> Option<Announcement> {
        out.iter().find_map(|o| match o {
            BullyOutput::Announce(a) => Some(a.clone()),
            _ => None,
        })
    }

    fn ann(name: &str, round: u64, rank: u64) -> Announcement {
        Announcement {
            coordinator: name.into(),
            term: make_term(round, rank),
            rank,
        }
    }

    #[test]
    fn terms_are_owned_by_one_rank_and_always_grow() {
        assert_eq!(make_term(3, 7), (3 << 16) | 7);
        assert_eq!(term_rank(make_term(3, 7)), 7);
        assert_eq!(term_round(make_term(3, 7)), 3);
        for seen in [
            0,
            1,
            make_term(5, 9),
            make_term(5, 65535),
            u64::from(u32::MAX),
        ] {
            for rank in [0, 1, 9, 65535] {
                let t = next_term(seen, rank);
                assert!(t > seen, "next_term({seen}, {rank}) = {t}");
                assert_eq!(term_rank(t), rank);
            }
        }
        assert_eq!(next_term(u64::MAX, 3), make_term(MAX_ROUND, 3));
    }

    #[test]
    fn rank_above_max_is_refused() {
        let err = Bully::new("s", MAX_RANK + 1, BullyConfig::default()).unwrap_err();
        assert_eq!(err.rank, MAX_RANK + 1);
        assert!(err.to_string().contains("65535"));
        assert!(Bully::new("s", MAX_RANK, BullyConfig::default()).is_ok());
    }

    #[test]
    fn alone_or_highest_announces_itself_on_start() {
        let t0 = Instant::now();
        let mut b = node("s3", 3, &[("s1", 1), ("s2", 2), ("s3", 3)], t0);
        b.start(t0);
        let out = drain(&mut b);
        let a = announced(&out).expect("announces");
        assert_eq!(a, ann("s3", 1, 3));
        assert!(b.is_coordinator());
        assert_eq!(b.term(), a.term);
        let to: Vec<String> = sends(&out).into_iter().map(|(to, _)| to).collect();
        assert_eq!(to, ["s1", "s2"]);
        assert!(out.contains(&BullyOutput::CoordinatorChanged(Some(a))));
        assert_eq!(b.poll_timeout(), Some(t0 + DEFAULT_ANNOUNCE_INTERVAL));
    }

    #[test]
    fn start_sends_election_to_live_higher_ranks_only() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2), ("s3", 3), ("s0", 0)], t0);
        b.handle_peer_down(t0, "s3");
        b.start(t0);
        let out = drain(&mut b);
        assert_eq!(
            sends(&out),
            [(
                "s2".to_string(),
                BullyMsg::Election {
                    from: "s1".into(),
                    rank: 1,
                    term: 0
                }
            )]
        );
        assert_eq!(b.phase(), ElectionPhase::Electing);
        assert_eq!(b.poll_timeout(), Some(t0 + DEFAULT_ELECTION_TIMEOUT));
    }

    #[test]
    fn no_ok_within_election_timeout_announces_self() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2)], t0);
        b.start(t0);
        drain(&mut b);
        b.handle_timeout(t0 + 299 * MS);
        assert!(drain(&mut b).is_empty());
        b.handle_timeout(t0 + 300 * MS);
        let a = announced(&drain(&mut b)).expect("announces");
        assert_eq!(a, ann("s1", 1, 1));
        assert!(b.is_coordinator());
        assert_eq!(b.phase(), ElectionPhase::Idle);
    }

    #[test]
    fn ok_then_silence_restarts_election() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2)], t0);
        b.start(t0);
        drain(&mut b);
        b.handle_message(t0 + 10 * MS, BullyMsg::Ok { from: "s2".into() });
        assert_eq!(b.phase(), ElectionPhase::AwaitingCoordinator);
        assert_eq!(
            b.poll_timeout(),
            Some(t0 + 10 * MS + DEFAULT_COORDINATOR_TIMEOUT)
        );
        // The election timeout no longer applies.
        b.handle_timeout(t0 + 400 * MS);
        assert!(drain(&mut b).is_empty());
        b.handle_timeout(t0 + 610 * MS);
        let out = drain(&mut b);
        assert!(announced(&out).is_none());
        assert_eq!(sends(&out).len(), 1, "election sent again: {out:?}");
        assert_eq!(b.phase(), ElectionPhase::Electing);
    }

    #[test]
    fn ok_then_announcement_ends_election() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2)], t0);
        b.start(t0);
        drain(&mut b);
        b.handle_message(t0, BullyMsg::Ok { from: "s2".into() });
        let a = ann("s2", 1, 2);
        b.handle_message(t0 + MS, BullyMsg::Coordinator(a.clone()));
        assert_eq!(
            drain(&mut b),
            [BullyOutput::CoordinatorChanged(Some(a.clone()))]
        );
        assert_eq!(b.coordinator(), Some(&a));
        assert_eq!(b.phase(), ElectionPhase::Idle);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn election_from_lower_rank_gets_ok_and_starts_own_election() {
        let t0 = Instant::now();
        let mut b = node("s2", 2, &[("s1", 1), ("s3", 3)], t0);
        b.handle_message(
            t0,
            BullyMsg::Election {
                from: "s1".into(),
                rank: 1,
                term: 0,
            },
        );
        let out = sends(&drain(&mut b));
        assert_eq!(out[0], ("s1".into(), BullyMsg::Ok { from: "s2".into() }));
        assert!(matches!(&out[1], (to, BullyMsg::Election { .. }) if to == "s3"));
        assert_eq!(b.phase(), ElectionPhase::Electing);
    }

    #[test]
    fn election_from_higher_rank_is_ignored_but_its_term_is_seen() {
        let t0 = Instant::now();
        let mut b = node("s2", 2, &[("s1", 1), ("s3", 3)], t0);
        b.handle_message(
            t0,
            BullyMsg::Election {
                from: "s3".into(),
                rank: 3,
                term: make_term(4, 1),
            },
        );
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.term(), make_term(4, 1));
    }

    #[test]
    fn coordinator_answers_election_with_ok_and_reannouncement() {
        let t0 = Instant::now();
        let mut b = node("s3", 3, &[("s1", 1), ("s2", 2)], t0);
        b.start(t0);
        let a = announced(&drain(&mut b)).unwrap();
        b.handle_message(
            t0 + MS,
            BullyMsg::Election {
                from: "s1".into(),
                rank: 1,
                term: a.term,
            },
        );
        let out = drain(&mut b);
        assert_eq!(
            sends(&out),
            [
                ("s1".into(), BullyMsg::Ok { from: "s3".into() }),
                ("s1".into(), BullyMsg::Coordinator(a.clone())),
            ]
        );
        assert_eq!(b.coordinator(), Some(&a), "same term, no new announcement");
    }

    #[test]
    fn coordinator_takes_fresh_term_when_elector_saw_a_greater_one() {
        let t0 = Instant::now();
        let mut b = node("s3", 3, &[("s1", 1), ("s2", 2)], t0);
        b.start(t0);
        let first = announced(&drain(&mut b)).unwrap();
        let seen = make_term(7, 2);
        b.handle_message(
            t0 + MS,
            BullyMsg::Election {
                from: "s1".into(),
                rank: 1,
                term: seen,
            },
        );
        let out = drain(&mut b);
        let fresh = announced(&out).expect("fresh announcement");
        assert!(fresh.term > seen && fresh.term > first.term);
        assert_eq!(term_rank(fresh.term), 3);
        assert_eq!(b.term(), fresh.term);
    }

    #[test]
    fn accepts_only_newer_terms_and_ignores_duplicates() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2), ("s3", 3)], t0);
        let a2 = ann("s2", 2, 2);
        b.handle_announcement(t0, a2.clone());
        assert_eq!(
            drain(&mut b),
            [BullyOutput::CoordinatorChanged(Some(a2.clone()))]
        );
        // Duplicate.
        b.handle_announcement(t0, a2.clone());
        assert!(drain(&mut b).is_empty());
        // Newer term from the same coordinator: accepted.
        let a2b = ann("s2", 3, 2);
        b.handle_announcement(t0, a2b.clone());
        assert_eq!(b.coordinator(), Some(&a2b));
        drain(&mut b);
        // Newer term, higher rank: accepted.
        let a3 = ann("s3", 4, 3);
        b.handle_announcement(t0, a3.clone());
        assert_eq!(b.coordinator(), Some(&a3));
        drain(&mut b);
        // Older term from the previous coordinator: ignored silently.
        b.handle_announcement(t0, a2.clone());
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.coordinator(), Some(&a3));
        assert_eq!(b.term(), a3.term);
    }

    #[test]
    fn stale_announcement_from_rank_above_followed_coordinator_starts_election() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2), ("s3", 3)], t0);
        b.handle_announcement(t0, ann("s2", 5, 2));
        drain(&mut b);
        // s3 is alive and outranks s2, but announces an old term: tell it to move on.
        b.handle_announcement(t0, ann("s3", 4, 3));
        let out = drain(&mut b);
        assert_eq!(b.coordinator(), Some(&ann("s2", 5, 2)));
        let sent = sends(&out);
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|(_, m)| matches!(
            m,
            BullyMsg::Election { term, .. } if *term == make_term(5, 2)
        )));
        // A stale announcement below the followed coordinator is left to it.
        let mut b = node("s1", 1, &[("s2", 2), ("s3", 3)], t0);
        b.handle_announcement(t0, ann("s3", 5, 3));
        drain(&mut b);
        b.handle_announcement(t0, ann("s2", 4, 2));
        assert!(drain(&mut b).is_empty());
    }

    #[test]
    fn equal_term_seen_in_passing_is_still_accepted_from_its_owner() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s0", 0), ("s3", 3)], t0);
        let a3 = ann("s3", 2, 3);
        b.handle_message(
            t0,
            BullyMsg::Election {
                from: "s0".into(),
                rank: 0,
                term: a3.term,
            },
        );
        drain(&mut b);
        assert_eq!(b.term(), a3.term);
        b.handle_announcement(t0, a3.clone());
        assert_eq!(b.coordinator(), Some(&a3));
    }

    #[test]
    fn invalid_announcements_are_ignored() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2)], t0);
        for bad in [
            Announcement {
                coordinator: "s2".into(),
                term: make_term(1, 3),
                rank: 2,
            },
            Announcement {
                coordinator: "s2".into(),
                term: 2,
                rank: 2,
            },
            Announcement {
                coordinator: "s1".into(),
                term: make_term(9, 1),
                rank: 1,
            },
        ] {
            b.handle_announcement(t0, bad);
        }
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.term(), 0);
        assert_eq!(b.coordinator(), None);
    }

    #[test]
    fn lower_rank_announcement_is_bullied() {
        let t0 = Instant::now();
        let mut b = node("s3", 3, &[("s1", 1), ("s2", 2)], t0);
        let a1 = ann("s1", 6, 1);
        b.handle_announcement(t0, a1.clone());
        let out = drain(&mut b);
        let mine = announced(&out).expect("bullies with its own announcement");
        assert!(mine.term > a1.term);
        assert!(b.is_coordinator());
        // Now as coordinator, an older lower-ranked announcement gets ours back.
        b.handle_announcement(t0, ann("s2", 2, 2));
        let out = drain(&mut b);
        assert_eq!(
            sends(&out),
            [("s2".into(), BullyMsg::Coordinator(mine.clone()))]
        );
    }

    #[test]
    fn suspected_coordinator_triggers_election() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2), ("s3", 3)], t0);
        b.handle_announcement(t0, ann("s3", 1, 3));
        drain(&mut b);
        b.handle_peer_down(t0 + MS, "s2");
        assert!(drain(&mut b).is_empty(), "a follower does not care");
        b.handle_peer_down(t0 + MS, "s3");
        let out = drain(&mut b);
        assert_eq!(out[0], BullyOutput::CoordinatorChanged(None));
        // No live higher rank: announces itself right away.
        let a = announced(&out).unwrap();
        assert!(a.term > make_term(1, 3));
        assert!(b.is_coordinator());
    }

    #[test]
    fn coordinator_leaving_the_view_counts_as_down() {
        let t0 = Instant::now();
        let mut b = node("s1", 1, &[("s2", 2), ("s3", 3)], t0);
        b.handle_announcement(t0, ann("s3", 1, 3));
        drain(&mut b);
        b.set_peers(t0 + MS, &peers(&[("s1", 1), ("s2", 2)]));
        let out = drain(&mut b);
        assert_eq!(out[0], BullyOutput::CoordinatorChanged(None));
        assert!(matches!(&sends(&out)[..], [(to, BullyMsg::Election { .. })] if to == "s2"));
    }

    #[test]
    fn coordinator_that_sees_higher_rank_appear_elects_and_steps_aside() {
        let t0 = Instant::now();
        let mut b = node("s2", 2, &[("s1", 1)], t0);
        b.start(t0);
        let mine = announced(&drain(&mut b)).unwrap();
        b.set_peers(t0 + MS, &peers(&[("s1", 1), ("s3", 3)]));
        let out = drain(&mut b);
        assert!(matches!(&sends(&out)[..], [(to, BullyMsg::Election { .. })] if to == "s3"));
        assert!(b.is_coordinator(), "still coordinator until s3 announces");
        b.handle_message(t0 + 2 * MS, BullyMsg::Ok { from: "s3".into() });
        let theirs = Announcement {
            coordinator: "s3".into(),
            term: next_term(mine.term, 3),
            rank: 3,
        };
        b.handle_message(t0 + 3 * MS, BullyMsg::Coordinator(theirs.clone()));
        assert_eq!(b.coordinator(), Some(&theirs));
        assert!(!b.is_coordinator());
        assert_eq!(
            b.poll_timeout(),
            None,
            "no refresh timer once stepped aside"
        );
    }

    #[test]
    fn higher_peer_coming_back_makes_coordinator_elect() {
        let t0 = Instant::now();
        let mut b = node("s2", 2, &[("s1", 1), ("s3", 3)], t0);
        b.handle_peer_down(t0, "s3");
        b.start(t0);
        drain(&mut b);
        assert!(b.is_coordinator());
        b.handle_peer_up(t0 + MS, "s3");
        let out = drain(&mut b);
        assert!(matches!(&sends(&out)[..], [(to, BullyMsg::Election { .. })] if to == "s3"));
        // Electing, and no answer: announces again with a fresh term.
        b.handle_timeout(t0 + MS + DEFAULT_ELECTION_TIMEOUT);
        let again = announced(&drain(&mut b)).unwrap();
        assert_eq!(again.term, make_term(2, 2));
    }

    #[test]
    fn coordinator_refreshes_its_announcement() {
        let t0 = Instant::now();
        let mut b = node("s2", 2, &[("s1", 1), ("s0", 0)], t0);
        b.start(t0);
        let a = announced(&drain(&mut b)).unwrap();
        b.handle_timeout(t0 + DEFAULT_ANNOUNCE_INTERVAL);
        let out = drain(&mut b);
        assert_eq!(
            sends(&out),
            [
                ("s0".into(), BullyMsg::Coordinator(a.clone())),
                ("s1".into(), BullyMsg::Coordinator(a.clone())),
            ]
        );
        assert!(announced(&out).is_none());
        assert_eq!(b.poll_timeout(), Some(t0 + 2 * DEFAULT_ANNOUNCE_INTERVAL));
    }

    #[test]
    fn restored_node_never_reuses_a_term() {
        let t0 = Instant::now();
        let persisted = make_term(41, 1);
        let mut b = Bully::restore("s1", 1, BullyConfig::default(), persisted).unwrap();
        b.start(t0);
        let a = announced(&drain(&mut b)).unwrap();
        assert_eq!(a.term, make_term(42, 1));
        // Announcements older than what it had seen are ignored.
        let mut b = Bully::restore("s1", 1, BullyConfig::default(), persisted).unwrap();
        b.handle_announcement(t0, ann("s2", 40, 2));
        assert_eq!(b.coordinator(), None);
    }

    #[test]
    fn messages_convert_to_and_from_requests() {
        let e = BullyMsg::Election {
            from: "s1".into(),
            rank: 1,
            term: 5,
        };
        assert_eq!(BullyMsg::from_request(&e.to_request().unwrap()), Some(e));
        let c = BullyMsg::Coordinator(ann("s2", 1, 2));
        assert_eq!(BullyMsg::from_request(&c.to_request().unwrap()), Some(c));
        assert_eq!(BullyMsg::Ok { from: "x".into() }.to_request(), None);
        assert_eq!(BullyMsg::from_request(&Request::Users), None);
    }
}
