//! A deterministic whole-cluster simulator: the real protocol cores of `chat-node` (servers,
//! broker, reference) with simulated clients, network, disks and clocks, in one thread,
//! driven by one seeded random number generator.
//!
//! A run has a fault phase, during which the seed's mix of faults is injected (message
//! loss, duplication, reordering and delay; symmetric and one-way partitions; `kill -9`
//! and restart of servers, broker, proxy and reference; power loss of one or all servers,
//! which drops what their disks had not synced; pauses; clock skew and jumps; slow and
//! stalled disks), then a heal (everything restarted, resumed and reconnected) and a
//! settling phase, then the final checks. Rules checked as the run goes and at the end:
//!
//! - no client hears OK for a write that no disk holds (a reply never reveals a write that
//!   is not durable);
//! - at most one coordinator per term;
//! - the broker's invariants after every step;
//! - after the heal: every server runs, is caught up and serves; identical history (digest
//!   and version vector) everywhere; every acknowledged write present exactly once, in
//!   memory and in what an export would write; history and export agree; physical clocks
//!   within [`world::CLOCK_BOUND_MS`] of each other;
//! - requests sent well after the heal get answers;
//! - live delivery through the SDK's core (two subscribers by default): nothing delivered
//!   twice; every acknowledged post whose request was sent after a subscriber's baseline of
//!   its channel answered, and every one above what that baseline showed (its `heads`),
//!   delivered to it exactly once, however the proxy, servers and network fared.
//!
//! The same seed replays the same run, event for event: a failing seed is a reproducible
//! bug report (`chat-sim --seed S --trace`).
//!
//! # Layout
//! - [`world`]: virtual time, the event queue, the processes and how messages are routed.
//! - [`net`]: partitions and what happens to a message on the way.
//! - [`disk`]: a disk whose volatile cache a power loss drops.
//! - [`faults`]: the per-seed fault mix (swarm testing) and its schedule.
//! - [`client`]: SDK-like clients (request ids, Lazy Pirate retries).
//! - [`subscriber`]: SDK subscribers: the real live-delivery core, repairs through the broker.
//! - [`check`]: the final checkers.
//! - [`logs`]: the cores' log lines, captured into the trace with virtual times.

#![warn(missing_docs)]

pub mod check;
pub mod client;
pub mod disk;
pub mod faults;
pub mod logs;
pub mod net;
pub mod subscriber;
pub mod world;

use std::collections::BTreeMap;
use std::time::Duration;

/// What a run looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Chat servers.
    pub servers: usize,
    /// Simulated clients.
    pub clients: usize,
    /// Simulated SDK subscribers (each subscribes to every channel the clients use).
    pub subscribers: usize,
    /// Length of the fault phase (virtual time).
    pub fault_phase: Duration,
    /// Length of the settling phase after the heal (virtual time).
    pub settle: Duration,
    /// Inject faults (off: a healthy run).
    pub faults: bool,
    /// Keep a trace of what happened.
    pub trace: bool,
    /// Stop at the first violation.
    pub stop_at_first: bool,
    /// A known defect put back in every server (the simulator's self-test).
    pub defect: chat_node::server::Defect,
    /// The servers' clock synchronisation; `None`: each seed draws one (half of them
    /// Cristian), from its own stream so that the seed's other draws stay what they were.
    pub clock_sync: Option<chat_sync::ClockSync>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            servers: 3,
            clients: 3,
            subscribers: 2,
            fault_phase: Duration::from_secs(10),
            settle: Duration::from_secs(14),
            faults: true,
            trace: false,
            stop_at_first: true,
            defect: chat_node::server::Defect::None,
            clock_sync: None,
        }
    }
}

/// A rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// When (virtual time).
    pub at: Duration,
    /// Which rule.
    pub rule: &'static str,
    /// What was seen.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at {:.3} s: {}: {}",
            self.at.as_secs_f64(),
            self.rule,
            self.detail
        )
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost by the network.
    pub lost: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages cut off by partitions.
    pub blocked: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u32>,
    /// Writes acknowledged to clients.
    pub acked: u64,
    /// Requests that got no answer after every retry.
    pub gave_up: u64,
    /// Request ids accepted twice (stored as two events; one visible), on the worst server.
    pub twice_accepted: u64,
    /// Client requests dropped by servers whose broker lease ran out.
    pub fenced: u64,
    /// Requests the (last) broker re-dispatched.
    pub redispatched: u64,
    /// Election terms announced.
    pub terms: u64,
    /// Posts a raw (seed-style) subscriber would have seen twice, over all subscribers.
    pub raw_duplicates: u64,
    /// Acknowledged posts a raw subscriber would never have seen, over all subscribers.
    pub raw_missing: u64,
    /// Posts the SDK's delivery core repaired from history, over all subscribers.
    pub repaired: u64,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// The fault mix of the seed.
    pub swarm: String,
    /// The servers' clock synchronisation in this run (`berkeley` or `cristian`).
    pub clock_sync: &'static str,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Rules broken (empty: the run passed).
    pub violations: Vec<Violation>,
    /// What happened.
    pub stats: Stats,
    /// The trace, when asked for.
    pub trace: Vec<String>,
}

impl Outcome {
    /// Whether every rule held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs seed `seed`.
pub fn run(seed: u64, opts: &Options) -> Outcome {
    world::World::new(seed, opts).run(seed)
}

/// What many runs did together.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    /// Runs made.
    pub runs: u64,
    /// The runs that broke a rule.
    pub failures: Vec<Outcome>,
    /// Faults injected, by kind, over all runs.
    pub faults: BTreeMap<&'static str, u64>,
    /// Events processed over all runs.
    pub events: u64,
    /// Messages sent, lost and duplicated over all runs.
    pub messages: (u64, u64, u64),
    /// Writes acknowledged over all runs.
    pub acked: u64,
    /// Request ids accepted twice (one copy visible), over all runs.
    pub twice_accepted: u64,
    /// Requests dropped by fenced servers, over all runs.
    pub fenced: u64,
    /// Posts a raw (seed-style) subscriber would have seen twice, over all runs.
    pub raw_duplicates: u64,
    /// Acknowledged posts a raw subscriber would never have seen, over all runs.
    pub raw_missing: u64,
    /// Posts the SDK's delivery core repaired from history, over all runs.
    pub repaired: u64,
    /// Virtual time simulated over all runs.
    pub virtual_time: Duration,
    /// Runs by clock synchronisation.
    pub clock_sync: BTreeMap<&'static str, u64>,
}

impl Sweep {
    /// Adds the runs of `other` (failures kept sorted by seed).
    pub fn merge(&mut self, other: Sweep) {
        self.runs += other.runs;
        for (k, n) in other.faults {
            *self.faults.entry(k).or_default() += n;
        }
        self.events += other.events;
        self.messages.0 += other.messages.0;
        self.messages.1 += other.messages.1;
        self.messages.2 += other.messages.2;
        self.acked += other.acked;
        self.twice_accepted += other.twice_accepted;
        self.fenced += other.fenced;
        self.raw_duplicates += other.raw_duplicates;
        self.raw_missing += other.raw_missing;
        self.repaired += other.repaired;
        self.virtual_time += other.virtual_time;
        for (k, n) in other.clock_sync {
            *self.clock_sync.entry(k).or_default() += n;
        }
        self.failures.extend(other.failures);
        self.failures.sort_by_key(|o| o.seed);
    }

    /// Adds one run.
    pub fn add(&mut self, o: Outcome) {
        self.runs += 1;
        for (k, n) in &o.stats.faults {
            *self.faults.entry(k).or_default() += u64::from(*n);
        }
        self.events += o.stats.events;
        self.messages.0 += o.stats.messages;
        self.messages.1 += o.stats.lost;
        self.messages.2 += o.stats.duplicated;
        self.acked += o.stats.acked;
        self.twice_accepted += o.stats.twice_accepted;
        self.fenced += o.stats.fenced;
        self.raw_duplicates += o.stats.raw_duplicates;
        self.raw_missing += o.stats.raw_missing;
        self.repaired += o.stats.repaired;
        self.virtual_time += o.stats.virtual_time;
        *self.clock_sync.entry(o.stats.clock_sync).or_default() += 1;
        if !o.passed() {
            self.failures.push(o);
        }
    }
}

/// Runs every seed of `seeds`.
pub fn sweep(seeds: impl IntoIterator<Item = u64>, opts: &Options) -> Sweep {
    let mut s = Sweep::default();
    for seed in seeds {
        s.add(run(seed, opts));
    }
    s
}

/// Runs every seed of `seeds` on `threads` threads (each run is independent and
/// deterministic, so the result is the same as [`sweep`]'s, failures sorted by seed).
pub fn sweep_parallel(seeds: std::ops::Range<u64>, opts: &Options, threads: usize) -> Sweep {
    let threads = threads.max(1) as u64;
    let parts: Vec<Sweep> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let seeds = seeds.clone();
                scope.spawn(move || sweep(seeds.filter(|s| s % threads == k), opts))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut all = Sweep::default();
    for p in parts {
        all.merge(p);
    }
    all
}
