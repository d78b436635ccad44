//! Deterministic simulation of the Bully election and the failure detector.
//!
//! Each schedule is a seed: 3 to 5 servers with distinct ranks boot at random times on a
//! network that delays (jitter, so also reorders), loses and duplicates messages, while
//! servers crash and restart (keeping only the persisted greatest term). Then the network
//! becomes reliable and nothing crashes any more. The safety invariants are checked after
//! every step; at the end, the highest live rank must be coordinator and every live server
//! must follow it in the same term.
//!
//! A failure prints its seed. Replay one schedule with its trace:
//! `SIM_SEED=0x... SIM_TRACE=1 cargo test -p chat-sync --test simulation -- --nocapture`.
//! `SIM_SCHEDULES=n` changes how many schedules run (default 2000).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use chat_core::protocol::Announcement;
use chat_sync::bully::{term_rank, Bully, BullyConfig, BullyMsg, BullyOutput, ElectionPhase};
use chat_sync::membership::{DetectorConfig, FailureDetector, Verdict};

const DEFAULT_SCHEDULES: u64 = 2000;
const BASE_SEED: u64 = 0x5eed_0000_0000;

// ---------------------------------------------------------------------------------------
// Deterministic randomness (SplitMix64).

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

// ---------------------------------------------------------------------------------------
// The simulated cluster.

#[derive(Debug, Clone)]
enum Payload {
    /// Server-to-server election message.
    Bully(BullyMsg),
    /// An announcement received on the `servers` topic.
    Published(Announcement),
    /// Heartbeat request and reply.
    Ping,
    Pong,
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        payload: Payload,
    },
    Crash(usize),
    /// Crash whichever node believes it is coordinator (the highest-ranked such) and
    /// restart it after the given downtime (if any).
    CrashCoordinator(Option<Duration>),
    /// Boot or restart.
    Start(usize),
    /// Split the network: messages between nodes whose bits differ are dropped.
    Partition(u64),
    /// Heal the partition.
    Heal,
    /// Every live node gets the reference's `list`: the servers heard from within 3 s
    /// (up, or crashed less than 3 s ago); repeats every second.
    View,
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: `BinaryHeap` pops the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Clone, Copy)]
struct Network {
    loss_percent: u64,
    dup_percent: u64,
    min_delay_ms: u64,
    max_delay_ms: u64,
}

const RELIABLE: Network = Network {
    loss_percent: 0,
    dup_percent: 0,
    min_delay_ms: 1,
    max_delay_ms: 20,
};

struct Node {
    name: String,
    rank: u64,
    up: bool,
    bully: Bully,
    fd: FailureDetector,
    /// What the driver stored on disk: the greatest term seen.
    persisted_term: u64,
    /// For the monotonicity invariants (across restarts).
    last_term: u64,
    last_followed_term: u64,
    /// The followed term last checked against the announcements.
    verified: Option<u64>,
    /// When this node's machines next want `handle_timeout` (refreshed after each step).
    timer: Option<Duration>,
    /// When it last crashed.
    down_since: Duration,
}

struct Sim {
    /// Node names by index (fixed).
    names: Vec<String>,
    rng: Rng,
    t0: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    net: Network,
    /// Every term ever announced, with its announcer (index).
    announced: Vec<(u64, usize)>,
    last_fresh_term_at: Duration,
    steps: u64,
    failure: Option<String>,
    trace: bool,
    /// Whether membership views come from a simulated reference (else: everyone, always).
    reference_views: bool,
    crashes: u64,
    messages: u64,
    /// Side of each node (bit i) while the network is split.
    partition: Option<u64>,
}

const STEP_LIMIT: u64 = 500_000;

impl Sim {
    fn new(seed: u64, ranks: &[u64], trace: bool) -> Sim {
        let t0 = Instant::now();
        let nodes = ranks
            .iter()
            .enumerate()
            .map(|(i, &rank)| {
                let name = format!("s{i}");
                Node {
                    bully: Bully::new(name.clone(), rank, BullyConfig::default()).unwrap(),
                    fd: FailureDetector::new(DetectorConfig::default()),
                    name,
                    rank,
                    up: false,
                    persisted_term: 0,
                    last_term: 0,
                    last_followed_term: 0,
                    verified: None,
                    timer: None,
                    down_since: Duration::ZERO,
                }
            })
            .collect();
        let names = (0..ranks.len()).map(|i| format!("s{i}")).collect();
        Sim {
            names,
            rng: Rng::new(seed),
            t0,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            net: RELIABLE,
            announced: Vec::new(),
            last_fresh_term_at: Duration::ZERO,
            steps: 0,
            failure: None,
            trace,
            reference_views: false,
            crashes: 0,
            messages: 0,
            partition: None,
        }
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("unknown node {name}"))
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        self.messages += 1;
        if self.split(from, to) {
            return;
        }
        if self.rng.percent(self.net.loss_percent) {
            return;
        }
        let copies = if self.rng.percent(self.net.dup_percent) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.range(self.net.min_delay_ms, self.net.max_delay_ms);
            let at = self.now + Duration::from_millis(delay);
            self.schedule(
                at,
                Event::Deliver {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn split(&self, a: usize, b: usize) -> bool {
        self.partition
            .is_some_and(|mask| (mask >> a) & 1 != (mask >> b) & 1)
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("at {:?}: {reason}", self.now));
        }
    }

    /// Records an announcement made by node `i` and checks that nobody else made it.
    fn record_announcement(&mut self, i: usize, a: &Announcement) {
        let node = &self.nodes[i];
        if a.coordinator != node.name || a.rank != node.rank || term_rank(a.term) != node.rank {
            let name = node.name.clone();
            self.fail(format!("{name} announced for someone else: {a:?}"));
            return;
        }
        match self.announced.iter().find(|(t, _)| *t == a.term) {
            Some(&(_, owner)) if owner != i => {
                let (x, y) = (self.nodes[owner].name.clone(), node.name.clone());
                self.fail(format!("two coordinators in term {}: {x} and {y}", a.term));
            }
            Some(_) => {}
            None => {
                self.announced.push((a.term, i));
                self.last_fresh_term_at = self.now;
            }
        }
    }

    /// Drains node `i`'s outputs: persist first, then send.
    fn flush(&mut self, i: usize) {
        let term = self.nodes[i].bully.term();
        self.nodes[i].persisted_term = term;
        while let Some(out) = self.nodes[i].bully.poll_output() {
            if self.trace {
                println!("{:>8?} {} -> {out:?}", self.now, self.nodes[i].name);
            }
            match out {
                BullyOutput::Send { to, msg } => {
                    if let BullyMsg::Coordinator(a) = &msg {
                        self.record_announcement(i, a);
                    }
                    let to = self.index(&to);
                    self.send(i, to, Payload::Bully(msg));
                }
                BullyOutput::Announce(a) => {
                    self.record_announcement(i, &a);
                    for to in 0..self.nodes.len() {
                        if to != i {
                            self.send(i, to, Payload::Published(a.clone()));
                        }
                    }
                }
                BullyOutput::CoordinatorChanged(_) => {}
            }
        }
    }

    fn feed_verdicts(&mut self, i: usize) {
        let now = self.instant();
        let node = &mut self.nodes[i];
        while let Some(v) = node.fd.poll_verdict() {
            if self.trace {
                println!("{:>8?} {} verdict {v:?}", self.now, node.name);
            }
            match v {
                Verdict::Down(p) => node.bully.handle_peer_down(now, &p),
                Verdict::Up(p) => node.bully.handle_peer_up(now, &p),
            }
        }
    }

    fn tick(&mut self, i: usize) {
        let now = self.instant();
        self.nodes[i].fd.handle_timeout(now);
        self.feed_verdicts(i);
        self.nodes[i].bully.handle_timeout(now);
        let due = self.nodes[i].fd.due_heartbeats(now);
        for peer in due {
            let to = self.index(&peer);
            self.send(i, to, Payload::Ping);
        }
        self.flush(i);
    }

    fn deliver(&mut self, from: usize, to: usize, payload: Payload) {
        if !self.nodes[to].up || self.split(from, to) {
            return;
        }
        let now = self.instant();
        if self.trace && !matches!(payload, Payload::Ping | Payload::Pong) {
            println!(
                "{:>8?} {} <- {}: {payload:?}",
                self.now, self.nodes[to].name, self.nodes[from].name
            );
        }
        self.nodes[to].fd.heard(now, &self.names[from]);
        self.feed_verdicts(to);
        match payload {
            Payload::Ping => self.send(to, from, Payload::Pong),
            Payload::Pong => {}
            Payload::Bully(msg) => self.nodes[to].bully.handle_message(now, msg),
            Payload::Published(a) => self.nodes[to].bully.handle_announcement(now, a),
        }
        self.flush(to);
    }

    fn crash(&mut self, i: usize) {
        let up = self.nodes.iter().filter(|n| n.up).count();
        if !self.nodes[i].up || up <= 1 {
            return;
        }
        if self.trace {
            println!("{:>8?} {} CRASH", self.now, self.nodes[i].name);
        }
        self.nodes[i].up = false;
        self.nodes[i].down_since = self.now;
        self.crashes += 1;
    }

    /// The reference's view: servers up, or down for less than its 3 s timeout.
    fn reference_list(&self) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .filter(|n| n.up || self.now < n.down_since + Duration::from_secs(3))
            .map(|n| (n.name.clone(), n.rank))
            .collect()
    }

    fn view(&mut self) {
        let now = self.instant();
        let view = self.reference_list();
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if !node.up {
                continue;
            }
            node.bully.set_peers(now, &view);
            node.fd.set_peers(
                now,
                view.iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| *n != node.name),
            );
            self.feed_verdicts(i);
            self.flush(i);
            self.refresh_timer(i);
        }
        self.schedule(self.now + Duration::from_secs(1), Event::View);
    }

    fn start(&mut self, i: usize) {
        if self.nodes[i].up {
            return;
        }
        let now = self.instant();
        let view = if self.reference_views {
            self.reference_list()
        } else {
            self.nodes
                .iter()
                .map(|n| (n.name.clone(), n.rank))
                .collect()
        };
        let node = &mut self.nodes[i];
        if self.trace {
            println!(
                "{:>8?} {} START (persisted term {})",
                self.now, node.name, node.persisted_term
            );
        }
        node.up = true;
        node.bully = Bully::restore(
            node.name.clone(),
            node.rank,
            BullyConfig::default(),
            node.persisted_term,
        )
        .unwrap();
        node.fd = FailureDetector::new(DetectorConfig::default());
        node.fd.set_peers(
            now,
            view.iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| *n != node.name),
        );
        node.bully.set_peers(now, &view);
        node.bully.start(now);
        self.flush(i);
    }

    /// Reads node `i`'s timers again (after it handled something).
    fn refresh_timer(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.timer = if n.up {
            let t = match (n.bully.poll_timeout(), n.fd.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            t.map(|t| t.saturating_duration_since(self.t0))
        } else {
            None
        };
    }

    fn next_timer(&self) -> Option<(Duration, usize)> {
        let mut next: Option<(Duration, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(t) = n.timer {
                if next.is_none_or(|(best, _)| t < best) {
                    next = Some((t, i));
                }
            }
        }
        next
    }

    /// Runs every event and timer up to `end`, checking the safety invariants after each.
    fn run_until(&mut self, end: Duration) -> Result<(), String> {
        loop {
            let event_at = self.queue.peek().map(|s| s.at);
            let timer = self.next_timer();
            let take_timer = match (event_at, timer) {
                (None, None) => break,
                (Some(e), Some((t, _))) => t < e,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            let at = if take_timer {
                timer.expect("timer").0
            } else {
                event_at.expect("event")
            };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            let touched = if take_timer {
                let i = timer.expect("timer").1;
                self.tick(i);
                i
            } else {
                match self.queue.pop().expect("event").event {
                    Event::Deliver { from, to, payload } => {
                        self.deliver(from, to, payload);
                        to
                    }
                    Event::Crash(i) => {
                        self.crash(i);
                        i
                    }
                    Event::Start(i) => {
                        self.start(i);
                        i
                    }
                    Event::CrashCoordinator(downtime) => {
                        let leader = (0..self.nodes.len())
                            .filter(|&i| self.nodes[i].up && self.nodes[i].bully.is_coordinator())
                            .max_by_key(|&i| self.nodes[i].rank);
                        match leader {
                            Some(i) => {
                                self.crash(i);
                                if let Some(d) = downtime {
                                    self.schedule(self.now + d, Event::Start(i));
                                }
                                i
                            }
                            None => 0,
                        }
                    }
                    Event::Partition(mask) => {
                        if self.trace {
                            println!("{:>8?} PARTITION {mask:#b}", self.now);
                        }
                        self.partition = Some(mask);
                        0
                    }
                    Event::Heal => {
                        if self.trace {
                            println!("{:>8?} HEAL", self.now);
                        }
                        self.partition = None;
                        0
                    }
                    Event::View => {
                        self.view();
                        0
                    }
                }
            };
            self.refresh_timer(touched);
            self.steps += 1;
            if self.steps > STEP_LIMIT {
                self.fail("step limit reached (a timer that does not advance?)".into());
            }
            self.check_safety();
            if let Some(f) = &self.failure {
                return Err(f.clone());
            }
        }
        self.now = self.now.max(end);
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Invariants.

    /// Checked after every step.
    fn check_safety(&mut self) {
        if let Err(e) = self.terms_only_grow() {
            self.fail(e);
        }
        if let Err(e) = self.at_most_one_coordinator_per_term() {
            self.fail(e);
        }
    }

    /// Every node's greatest term and followed term never decrease, even across restarts.
    fn terms_only_grow(&mut self) -> Result<(), String> {
        for n in self.nodes.iter_mut().filter(|n| n.up) {
            let term = n.bully.term();
            if term < n.last_term {
                return Err(format!(
                    "{}'s term went from {} to {term}",
                    n.name, n.last_term
                ));
            }
            n.last_term = term;
            if let Some(c) = n.bully.coordinator() {
                if c.term < n.last_followed_term {
                    return Err(format!(
                        "{} followed term {} after term {}",
                        n.name, c.term, n.last_followed_term
                    ));
                }
                n.last_followed_term = c.term;
            }
        }
        Ok(())
    }

    /// No two nodes ever announced the same term (checked as announcements are made), and
    /// every followed (term, coordinator) is one that was announced by that coordinator.
    fn at_most_one_coordinator_per_term(&mut self) -> Result<(), String> {
        for n in self.nodes.iter_mut().filter(|n| n.up) {
            let Some(c) = n.bully.coordinator() else {
                continue;
            };
            if n.verified == Some(c.term) {
                continue;
            }
            n.verified = Some(c.term);
            match self.announced.iter().find(|(t, _)| *t == c.term) {
                Some(&(_, owner)) if self.names[owner] == c.coordinator => {}
                Some(&(_, owner)) => {
                    return Err(format!(
                        "{} follows {} in term {}, announced by {}",
                        n.name, c.coordinator, c.term, self.names[owner]
                    ))
                }
                None => {
                    return Err(format!(
                        "{} follows {} in term {}, never announced",
                        n.name, c.coordinator, c.term
                    ))
                }
            }
        }
        Ok(())
    }

    /// Once stable: the highest live rank is coordinator, every live node follows it in the
    /// same term, and no election is running.
    fn converged(&self) -> Result<Announcement, String> {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.up).collect();
        let highest = live.iter().max_by_key(|n| n.rank).expect("a live node");
        if !highest.bully.is_coordinator() {
            return Err(format!(
                "highest live {} (rank {}) is not coordinator: {}",
                highest.name,
                highest.rank,
                self.describe()
            ));
        }
        let a = highest.bully.coordinator().expect("coordinator").clone();
        for n in &live {
            if n.bully.coordinator() != Some(&a) || n.bully.phase() != ElectionPhase::Idle {
                return Err(format!(
                    "{} disagrees with {a:?}: {}",
                    n.name,
                    self.describe()
                ));
            }
        }
        Ok(a)
    }

    fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                if n.up {
                    format!(
                        "{}(rank {}, term {}, {:?}, follows {:?})",
                        n.name,
                        n.rank,
                        n.bully.term(),
                        n.bully.phase(),
                        n.bully.coordinator().map(|c| (&c.coordinator, c.term))
                    )
                } else {
                    format!("{}(rank {}, down)", n.name, n.rank)
                }
            })
            .collect();
        nodes.join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// Random schedules.

const STABLE_PHASE: Duration = Duration::from_secs(6);
const QUIET_AT_END: Duration = Duration::from_secs(2);

struct Outcome {
    /// Time from the end of the chaos to the first agreement.
    settled: Duration,
    steps: u64,
    crashes: u64,
    terms: u64,
    messages: u64,
}

fn run_schedule(seed: u64, trace: bool) -> Result<Outcome, String> {
    let mut rng = Rng::new(seed);
    let n = rng.range(3, 5) as usize;
    let mut ranks: Vec<u64> = Vec::new();
    while ranks.len() < n {
        let r = rng.range(1, 30);
        if !ranks.contains(&r) {
            ranks.push(r);
        }
    }
    let mut sim = Sim::new(rng.next(), &ranks, trace);
    for i in 0..n {
        let at = Duration::from_millis(rng.range(0, 300));
        sim.schedule(at, Event::Start(i));
    }
    let chaos = Network {
        loss_percent: rng.range(0, 30),
        dup_percent: rng.range(0, 20),
        min_delay_ms: 1,
        max_delay_ms: rng.range(5, 150),
    };
    let chaos_ms = rng.range(2000, 5000);
    if rng.percent(30) {
        let mask = rng.range(1, (1 << n) - 2);
        let at = rng.range(0, chaos_ms);
        let until = rng.range(at, chaos_ms);
        sim.schedule(Duration::from_millis(at), Event::Partition(mask));
        sim.schedule(Duration::from_millis(until), Event::Heal);
    }
    if rng.percent(50) {
        sim.reference_views = true;
        sim.schedule(Duration::from_millis(rng.range(0, 1000)), Event::View);
    }
    for _ in 0..rng.range(0, 4) {
        let at = rng.range(300, chaos_ms);
        let back = (at + rng.range(100, 3000)).min(chaos_ms);
        let restarts = rng.percent(80);
        if rng.percent(50) {
            let downtime = restarts.then(|| Duration::from_millis(back - at));
            sim.schedule(Duration::from_millis(at), Event::CrashCoordinator(downtime));
        } else {
            let i = rng.range(0, n as u64 - 1) as usize;
            sim.schedule(Duration::from_millis(at), Event::Crash(i));
            if restarts {
                sim.schedule(Duration::from_millis(back), Event::Start(i));
            }
        }
    }
    if trace {
        println!(
            "seed {seed:#x}: ranks {ranks:?}, network {chaos:?}, chaos {chaos_ms} ms, \
             reference views {}",
            sim.reference_views
        );
    }
    sim.net = chaos;
    let chaos_end = Duration::from_millis(chaos_ms);
    sim.run_until(chaos_end)?;
    if trace {
        println!("{:>8?} --- network reliable, no more crashes ---", sim.now);
    }
    sim.net = RELIABLE;
    let end = chaos_end + STABLE_PHASE;
    // Run in 50 ms slices (same schedule) to see when agreement is first reached.
    let mut settled = None;
    let mut t = chaos_end;
    while t < end {
        t = (t + Duration::from_millis(50)).min(end);
        sim.run_until(t)?;
        if settled.is_none() && sim.converged().is_ok() {
            settled = Some(t - chaos_end);
        }
    }
    let a = sim.converged()?;
    if sim.last_fresh_term_at + QUIET_AT_END > end {
        return Err(format!(
            "a new term was still announced at {:?} (converged on {a:?})",
            sim.last_fresh_term_at
        ));
    }
    Ok(Outcome {
        settled: settled.expect("converged at the end"),
        steps: sim.steps,
        crashes: sim.crashes,
        terms: sim.announced.len() as u64,
        messages: sim.messages,
    })
}

fn parse_seed(s: &str) -> u64 {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("SIM_SEED in hex"),
        None => s.parse().expect("SIM_SEED as a number"),
    }
}

#[test]
fn random_schedules_keep_one_coordinator_per_term_and_converge() {
    let trace = std::env::var("SIM_TRACE").is_ok_and(|v| v != "0");
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed = parse_seed(&seed);
        match run_schedule(seed, trace) {
            Ok(o) => println!(
                "seed {seed:#x}: ok in {} steps, agreement {:?} after the chaos",
                o.steps, o.settled
            ),
            Err(e) => panic!("seed {seed:#x} failed: {e}"),
        }
        return;
    }
    let count = std::env::var("SIM_SCHEDULES")
        .map(|s| s.parse().expect("SIM_SCHEDULES as a number"))
        .unwrap_or(DEFAULT_SCHEDULES);
    let started = std::time::Instant::now();
    let (mut steps, mut crashes, mut terms, mut messages) = (0, 0, 0, 0);
    let mut slowest = (Duration::ZERO, 0);
    for k in 0..count {
        let seed = BASE_SEED + k;
        match run_schedule(seed, false) {
            Ok(o) => {
                steps += o.steps;
                crashes += o.crashes;
                terms += o.terms;
                messages += o.messages;
                slowest = slowest.max((o.settled, seed));
            }
            Err(e) => panic!(
                "schedule {k} failed: {e}\n\
                 replay: SIM_SEED={seed:#x} SIM_TRACE=1 cargo test -p chat-sync \
                 --test simulation random_schedules -- --nocapture"
            ),
        }
    }
    println!(
        "{count} schedules, {steps} steps (invariants checked after each), {messages} \
         messages, {crashes} crashes, {terms} terms announced, in {:?}; slowest agreement \
         after the chaos: {:?} (seed {:#x})",
        started.elapsed(),
        slowest.0,
        slowest.1
    );
    // The schedules really exercise failures and elections.
    assert!(crashes >= count / 2, "only {crashes} crashes");
    assert!(terms >= count * 2, "only {terms} terms");
    assert!(messages >= count * 100, "only {messages} messages");
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// Time from `from` until the cluster agrees on the highest live rank (polled every 10 ms).
fn time_to_converge(sim: &mut Sim, from: Duration, limit: Duration) -> Duration {
    let mut t = from;
    while t < from + limit {
        t += Duration::from_millis(10);
        sim.run_until(t).unwrap();
        if sim.converged().is_ok() {
            return t - from;
        }
    }
    panic!("no agreement within {limit:?}: {}", sim.describe());
}

fn started_cluster(ranks: &[u64]) -> Sim {
    let mut sim = Sim::new(7, ranks, false);
    for i in 0..ranks.len() {
        sim.schedule(Duration::from_millis(10 * i as u64), Event::Start(i));
    }
    sim
}

#[test]
fn cluster_start_elects_highest_rank() {
    let mut sim = started_cluster(&[1, 3, 2]);
    let took = time_to_converge(&mut sim, Duration::ZERO, Duration::from_secs(2));
    let a = sim.converged().unwrap();
    assert_eq!((a.coordinator.as_str(), a.rank), ("s1", 3));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn coordinator_killed_survivors_elect_highest_rank_well_under_two_seconds() {
    let mut sim = started_cluster(&[1, 3, 2]);
    sim.run_until(Duration::from_secs(2)).unwrap();
    let before = sim.converged().unwrap();
    let kill_at = Duration::from_secs(2) + Duration::from_millis(1);
    sim.schedule(kill_at, Event::Crash(1));
    let took = time_to_converge(&mut sim, kill_at, Duration::from_secs(5));
    let after = sim.converged().unwrap();
    assert_eq!((after.coordinator.as_str(), after.rank), ("s2", 2));
    assert!(after.term > before.term);
    // Failure detector timeout (1 s) plus an election, well under 2 s.
    println!("re-election took {took:?}");
    assert!(took < Duration::from_millis(1600), "took {took:?}");
}

#[test]
fn higher_rank_joining_takes_over() {
    let mut sim = Sim::new(9, &[1, 2, 5], false);
    sim.schedule(Duration::ZERO, Event::Start(0));
    sim.schedule(Duration::ZERO, Event::Start(1));
    sim.run_until(Duration::from_secs(2)).unwrap();
    assert_eq!(sim.converged().unwrap().coordinator, "s1");
    sim.schedule(Duration::from_secs(2), Event::Start(2));
    time_to_converge(&mut sim, Duration::from_secs(2), Duration::from_secs(2));
    assert_eq!(sim.converged().unwrap().coordinator, "s2");
}

#[test]
fn restarted_coordinator_takes_back_over_with_a_greater_term() {
    let mut sim = started_cluster(&[4, 2, 3]);
    sim.run_until(Duration::from_secs(2)).unwrap();
    let first = sim.converged().unwrap();
    assert_eq!(first.coordinator, "s0");
    sim.schedule(Duration::from_secs(2), Event::Crash(0));
    sim.run_until(Duration::from_secs(4)).unwrap();
    let interim = sim.converged().unwrap();
    assert_eq!(interim.coordinator, "s2");
    sim.schedule(Duration::from_secs(4), Event::Start(0));
    time_to_converge(&mut sim, Duration::from_secs(4), Duration::from_secs(2));
    let back = sim.converged().unwrap();
    assert_eq!(back.coordinator, "s0");
    assert!(back.term > interim.term && interim.term > first.term);
}

#[test]
fn partition_elects_one_coordinator_per_side_in_distinct_terms_then_heals() {
    let mut sim = started_cluster(&[1, 2, 3, 4, 5]);
    sim.run_until(Duration::from_secs(2)).unwrap();
    assert_eq!(sim.converged().unwrap().coordinator, "s4");
    // {s0, s1, s2} | {s3, s4}
    sim.schedule(Duration::from_secs(2), Event::Partition(0b11000));
    sim.run_until(Duration::from_secs(5)).unwrap();
    let minority = sim.nodes[4].bully.coordinator().unwrap().clone();
    let majority = sim.nodes[2].bully.coordinator().unwrap().clone();
    assert_eq!(minority.coordinator, "s4");
    assert_eq!(majority.coordinator, "s2");
    assert_ne!(
        minority.term, majority.term,
        "two coordinators, never in one term"
    );
    for i in 0..3 {
        assert_eq!(sim.nodes[i].bully.coordinator(), Some(&majority));
    }
    assert_eq!(sim.nodes[3].bully.coordinator(), Some(&minority));
    sim.schedule(Duration::from_secs(5), Event::Heal);
    time_to_converge(&mut sim, Duration::from_secs(5), Duration::from_secs(3));
    let healed = sim.converged().unwrap();
    assert_eq!(healed.coordinator, "s4");
    assert!(healed.term > majority.term && healed.term > minority.term);
}
