//! The simulated world: virtual time, an event queue, the network, the processes (broker,
//! reference, proxy, servers, clients) and the faults, all driven by one seeded RNG.
//!
//! Each server is driven exactly as `chat-net`'s runtime drives it: every input is followed
//! by `handle_timeout`, the next batch goes to the disk (one in flight), and every transmit
//! is routed; the next wake-up is the core's `poll_timeout`, at most 100 ms away.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_core::protocol::{decode_announcement, decode_publication};
use chat_core::{Timestamp, TOPIC_SERVERS};
use chat_node::broker::{BrokerCore, BrokerCoreConfig, SendFailure, Transmit as BrokerTransmit};
use chat_node::reference::ReferenceCore;
use chat_node::server::{ServerConfig, ServerCore, Time, Transmit};
use chat_sync::ClockSync;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check;
use crate::client::{Acked, Done, SimClient};
use crate::disk::{DiskReader, SharedDisk};
use crate::faults::{Fault, Swarm};
use crate::net::{Addr, Fate, LinkFaults, Network};
use crate::subscriber::SimSubscriber;
use crate::{Options, Outcome, Stats, Violation};

/// The wall clock at virtual time zero: 2026-01-01T00:00:00Z.
const WALL_ZERO_MS: i64 = 1_767_225_600_000;
/// Longest a server sleeps between two loop iterations (as the real driver).
const MAX_WAIT: Duration = Duration::from_millis(100);
/// Time given to the cluster after the heal before ops that time out count as unavailability.
const RECOVERY: Duration = Duration::from_secs(6);
/// The wake-up the world gives a core whose timeout has already passed.
const IMMEDIATE: Duration = Duration::from_micros(1);
/// Immediate wake-ups in a row that count as a busy loop.
const SPIN_LIMIT: u32 = 1_000;
/// Broker steps between two full checks of its invariants.
const INVARIANT_EVERY: u64 = 32;
/// Largest spread of the servers' physical clocks accepted once they have synced.
pub const CLOCK_BOUND_MS: i64 = 50;

/// A message in flight.
#[derive(Debug, Clone)]
enum Msg {
    /// A client request to the broker frontend, from socket `gen`.
    Request {
        client: usize,
        gen: u32,
        body: Vec<u8>,
    },
    /// A reply to a client's (or a subscriber's) socket `gen`.
    Reply { gen: u32, body: Vec<u8> },
    /// A subscriber's history read to the broker frontend, from socket `gen`.
    SubRequest { sub: usize, gen: u32, body: Vec<u8> },
    /// Backend frames from server incarnation `inc` to the broker.
    ToBroker {
        server: usize,
        inc: u32,
        frames: Vec<Vec<u8>>,
    },
    /// Backend frames from the broker to a server.
    FromBroker { frames: Vec<Vec<u8>> },
    /// A publication to the proxy.
    Publish { topic: String, payload: Vec<u8> },
    /// A publication from the proxy to a subscriber.
    Publication { topic: String, payload: Vec<u8> },
    /// A request on a server's peer socket from server `from` (incarnation `inc`).
    PeerRequest {
        from: usize,
        inc: u32,
        body: Vec<u8>,
    },
    /// A reply on the link to peer `peer`.
    PeerReply { peer: usize, body: Vec<u8> },
    /// A request to the reference, from a server's REQ socket `gen`.
    RefRequest {
        server: usize,
        inc: u32,
        gen: u64,
        body: Vec<u8>,
    },
    /// The reference's reply to REQ socket `gen`.
    RefReply { gen: u64, body: Vec<u8> },
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver { to: Addr, inc: u32, msg: Msg },
    Timer { who: Addr, inc: u32 },
    DiskDone { server: usize, inc: u32 },
    Fault(Fault),
    Up(Addr),
    Resume(usize),
    Mend(Addr, Addr),
    Heal,
}

struct Srv {
    name: String,
    core: Option<ServerCore>,
    disk: SharedDisk,
    inc: u32,
    paused: bool,
    inbox: Vec<Msg>,
    disk_done_while_paused: bool,
    skew_ms: i64,
    ref_gen: u64,
    ref_awaiting: bool,
    timer_at: Option<Duration>,
    /// Immediate wake-ups in a row.
    spins: u32,
}

/// The world of one run.
pub struct World {
    opts: Options,
    rng: StdRng,
    swarm: Swarm,
    now: Duration,
    base: Instant,
    queue: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
    net: Network,
    servers: Vec<Srv>,
    broker: Option<BrokerCore>,
    broker_inc: u32,
    broker_timer_at: Option<Duration>,
    broker_steps: u64,
    reference: Option<ReferenceCore>,
    reference_inc: u32,
    /// The reference's saved rank assignments (its data directory).
    reference_saved: Vec<(String, u64)>,
    proxy_up: bool,
    proxy_inc: u32,
    clients: Vec<SimClient>,
    subs: Vec<SimSubscriber>,
    sub_timer_at: Vec<Option<Duration>>,
    heal_at: Duration,
    healed: bool,
    acked: BTreeMap<String, Acked>,
    terms: BTreeMap<u64, String>,
    violations: Vec<Violation>,
    stats: Stats,
    trace: Option<Vec<String>>,
    /// The servers' clock synchronisation.
    clock_sync: ClockSync,
}

/// The clock synchronisation seed `seed` draws when [`Options::clock_sync`] leaves it open:
/// half of the seeds run Cristian. It comes from its own stream (SplitMix64 of the seed), so
/// every other draw of the seed is the same as before the choice existed.
pub fn seeded_clock_sync(seed: u64) -> ClockSync {
    let mut z = (seed ^ 0xc105_c5c4).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z % 2 == 1 {
        ClockSync::Cristian
    } else {
        ClockSync::Berkeley
    }
}

impl World {
    /// A world for `seed`.
    pub fn new(seed: u64, opts: &Options) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let swarm = if opts.faults {
            Swarm::draw(&mut rng)
        } else {
            Swarm {
                net: LinkFaults::healthy(),
                rate: 0.0,
                weights: [0; 8],
                disk: (Duration::from_micros(100), Duration::from_micros(500)),
                disk_stall: 0.0,
                skew_ms: 0,
                request_window: chat_core::RequestWindow::default(),
            }
        };
        let heal_at = opts.fault_phase;
        let stop_at = heal_at + opts.settle / 2;
        let servers = (0..opts.servers)
            .map(|i| Srv {
                name: format!("server-{}", i + 1),
                core: None,
                disk: SharedDisk::default(),
                inc: 0,
                paused: false,
                inbox: Vec::new(),
                disk_done_while_paused: false,
                skew_ms: if swarm.skew_ms > 0 {
                    rng.gen_range(-swarm.skew_ms..=swarm.skew_ms)
                } else {
                    0
                },
                ref_gen: 0,
                ref_awaiting: false,
                timer_at: None,
                spins: 0,
            })
            .collect();
        let clients = (0..opts.clients)
            .map(|i| {
                let start = Duration::from_millis(rng.gen_range(300..1_500));
                SimClient::new(i, start, stop_at)
            })
            .collect();
        let mut w = World {
            opts: opts.clone(),
            net: Network::new(swarm.net),
            swarm,
            rng,
            now: Duration::ZERO,
            base: Instant::now(),
            queue: BTreeMap::new(),
            seq: 0,
            servers,
            broker: None,
            broker_inc: 0,
            broker_timer_at: None,
            broker_steps: 0,
            reference: None,
            reference_inc: 0,
            reference_saved: Vec::new(),
            proxy_up: true,
            proxy_inc: 0,
            clients,
            subs: (0..opts.subscribers)
                .map(|_| SimSubscriber::new(&crate::client::CHANNELS))
                .collect(),
            sub_timer_at: vec![None; opts.subscribers],
            heal_at,
            healed: false,
            acked: BTreeMap::new(),
            terms: BTreeMap::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            trace: opts.trace.then(Vec::new),
            clock_sync: opts.clock_sync.unwrap_or_else(|| seeded_clock_sync(seed)),
        };
        w.stats.swarm = format!("{:?}", w.swarm);
        w.stats.clock_sync = w.clock_sync.as_str();
        w
    }

    /// Runs to the end and checks.
    pub fn run(mut self, seed: u64) -> Outcome {
        self.start_broker();
        self.start_reference();
        for i in 0..self.servers.len() {
            self.start_server(i);
        }
        for i in 0..self.clients.len() {
            self.schedule_client(i);
        }
        for k in 0..self.subs.len() {
            let now = self.instant();
            self.subs[k].subscribe(now);
            self.drive_subscriber(k);
        }
        let faults = self
            .swarm
            .schedule(&mut self.rng, self.opts.fault_phase, self.servers.len());
        for (at, f) in faults {
            self.at(at, Ev::Fault(f));
        }
        self.at(self.heal_at, Ev::Heal);
        let end = self.heal_at + self.opts.settle;
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            if at > end {
                break;
            }
            self.now = at;
            self.stats.events += 1;
            self.handle(ev);
            if self.trace.is_some() {
                for line in crate::logs::take() {
                    self.log(|| line);
                }
            }
            if self.opts.stop_at_first && !self.violations.is_empty() {
                break;
            }
        }
        self.now = self.now.max(end);
        if self.violations.is_empty() || !self.opts.stop_at_first {
            self.finish();
        }
        self.stats.virtual_time = self.now;
        Outcome {
            seed,
            violations: self.violations,
            stats: self.stats,
            trace: self.trace.unwrap_or_default(),
        }
    }

    // ----- plumbing -------------------------------------------------------------------

    fn at(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// Wakes `who` (incarnation `inc`) at `at`, unless an earlier wake-up is already set
    /// (a later one it replaces is then ignored when it fires).
    fn arm_timer(&mut self, who: Addr, inc: u32, at: Duration) {
        let now = self.now;
        let slot = match who {
            Addr::Broker => &mut self.broker_timer_at,
            Addr::Server(i) => &mut self.servers[i].timer_at,
            Addr::Subscriber(k) => &mut self.sub_timer_at[k],
            _ => return,
        };
        if slot.is_none_or(|t| at < t || t <= now) {
            *slot = Some(at);
            self.at(at, Ev::Timer { who, inc });
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn wall(&self) -> Timestamp {
        Timestamp::from_millis(WALL_ZERO_MS + self.now.as_millis() as i64)
    }

    fn server_time(&self, i: usize) -> Time {
        Time::new(
            self.instant(),
            WALL_ZERO_MS + self.now.as_millis() as i64 + self.servers[i].skew_ms,
        )
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let line = line();
            t.push(format!("{:>10.3} {line}", self.now.as_secs_f64()));
        }
    }

    fn violation(&mut self, rule: &'static str, detail: String) {
        self.log(|| format!("VIOLATION {rule}: {detail}"));
        self.violations.push(Violation {
            at: self.now,
            rule,
            detail,
        });
    }

    fn inc_of(&self, to: Addr) -> u32 {
        match to {
            Addr::Broker => self.broker_inc,
            Addr::Reference => self.reference_inc,
            Addr::Proxy => self.proxy_inc,
            Addr::Server(i) => self.servers[i].inc,
            Addr::Client(_) | Addr::Subscriber(_) => 0,
        }
    }

    /// Puts a message on the network.
    fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        let inc = self.inc_of(to);
        self.send_to(from, to, inc, msg);
    }

    fn send_to(&mut self, from: Addr, to: Addr, inc: u32, msg: Msg) {
        self.stats.messages += 1;
        match self.net.fate(&mut self.rng, from, to) {
            Fate::Deliver(delays) => {
                if delays.len() > 1 {
                    self.stats.duplicated += 1;
                }
                for d in delays {
                    self.at(
                        self.now + d,
                        Ev::Deliver {
                            to,
                            inc,
                            msg: msg.clone(),
                        },
                    );
                }
            }
            Fate::Lost => self.stats.lost += 1,
            Fate::Blocked => self.stats.blocked += 1,
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, inc, msg } => {
                if inc != self.inc_of(to) {
                    return; // the connection died with the process it led to
                }
                match to {
                    Addr::Broker => self.at_broker(msg),
                    Addr::Reference => self.at_reference(msg),
                    Addr::Proxy => self.at_proxy(msg),
                    Addr::Server(i) => self.at_server(i, msg),
                    Addr::Client(i) => self.at_client(i, msg),
                    Addr::Subscriber(k) => self.at_subscriber(k, msg),
                }
            }
            Ev::Timer { who, inc } => match who {
                Addr::Server(i) => {
                    let s = &self.servers[i];
                    if s.inc == inc && s.timer_at == Some(self.now) && !s.paused {
                        self.servers[i].timer_at = None;
                        self.drive_server(i);
                        // A core that keeps asking to be woken at once spins its driver.
                        let srv = &mut self.servers[i];
                        if srv.timer_at == Some(self.now + IMMEDIATE) {
                            srv.spins += 1;
                            if srv.spins == SPIN_LIMIT {
                                let name = srv.name.clone();
                                self.violation(
                                    "no busy loop",
                                    format!("{name} asked to be woken at once {SPIN_LIMIT} times in a row"),
                                );
                            }
                        } else {
                            srv.spins = 0;
                        }
                    }
                }
                Addr::Broker
                    if inc == self.broker_inc && self.broker_timer_at == Some(self.now) =>
                {
                    self.broker_timer_at = None;
                    self.drive_broker();
                }
                Addr::Client(i) => self.client_timer(i),
                Addr::Subscriber(k) if self.sub_timer_at[k] == Some(self.now) => {
                    self.sub_timer_at[k] = None;
                    self.drive_subscriber(k);
                }
                _ => {}
            },
            Ev::DiskDone { server, inc } => {
                if self.servers[server].inc != inc {
                    return;
                }
                if self.servers[server].paused {
                    self.servers[server].disk_done_while_paused = true;
                } else {
                    self.disk_done(server);
                    self.drive_server(server);
                }
            }
            Ev::Fault(f) => self.fault(f),
            Ev::Up(who) => self.up(who),
            Ev::Resume(i) => self.resume(i),
            Ev::Mend(a, b) => {
                self.log(|| format!("mend {a} <-> {b}"));
                self.net.mend(a, b);
            }
            Ev::Heal => self.heal(),
        }
    }

    // ----- the broker -------------------------------------------------------------------

    fn start_broker(&mut self) {
        self.broker_inc += 1;
        let first_token = self.rng.gen::<u64>() >> 1;
        self.broker = Some(BrokerCore::new(
            BrokerCoreConfig::default(),
            self.instant(),
            first_token,
        ));
        self.log(|| "broker up".into());
        self.drive_broker();
    }

    fn at_broker(&mut self, msg: Msg) {
        let now = self.instant();
        let wall = self.wall();
        let Some(b) = self.broker.as_mut() else {
            return;
        };
        match msg {
            Msg::Request { client, gen, body } => {
                b.handle_client(now, wall, vec![client_identity(client, gen), vec![], body])
            }
            Msg::SubRequest { sub, gen, body } => b.handle_client(
                now,
                wall,
                vec![format!("k{sub}.{gen}").into_bytes(), vec![], body],
            ),
            Msg::ToBroker {
                server,
                inc,
                frames,
            } => {
                let mut all = vec![server_identity(server, inc)];
                all.extend(frames);
                b.handle_server(now, wall, all);
            }
            _ => return,
        }
        self.drive_broker();
    }

    fn drive_broker(&mut self) {
        let now = self.instant();
        let wall = self.wall();
        let Some(b) = self.broker.as_mut() else {
            return;
        };
        if b.poll_timeout().is_some_and(|at| at <= now) {
            b.handle_timeout(now, wall, false);
        }
        while let Some(tx) = self.broker.as_mut().and_then(BrokerCore::poll_transmit) {
            match &tx {
                BrokerTransmit::Client { envelope, body } => {
                    let id = envelope.first();
                    let client = id.and_then(|id| parse_identity(id, 'c'));
                    let subscriber = id.and_then(|id| parse_identity(id, 'k'));
                    match (client, subscriber) {
                        (Some((c, gen)), _)
                            if c < self.clients.len() && self.clients[c].gen() == gen =>
                        {
                            let body = body.clone();
                            self.send(Addr::Broker, Addr::Client(c), Msg::Reply { gen, body });
                        }
                        (_, Some((k, gen))) if k < self.subs.len() && self.subs[k].gen() == gen => {
                            let body = body.clone();
                            self.send(Addr::Broker, Addr::Subscriber(k), Msg::Reply { gen, body });
                        }
                        _ => {
                            if let Some(b) = self.broker.as_mut() {
                                b.handle_send_failed(now, tx, SendFailure::PeerGone);
                            }
                        }
                    }
                }
                BrokerTransmit::Server { identity, frames } => {
                    let target = parse_identity(identity, 's');
                    match target {
                        Some((s, inc))
                            if s < self.servers.len()
                                && self.servers[s].inc == inc
                                && self.servers[s].core.is_some() =>
                        {
                            let frames = frames.clone();
                            self.send_to(
                                Addr::Broker,
                                Addr::Server(s),
                                inc,
                                Msg::FromBroker { frames },
                            );
                        }
                        _ => {
                            if let Some(b) = self.broker.as_mut() {
                                b.handle_send_failed(now, tx, SendFailure::PeerGone);
                            }
                        }
                    }
                }
            }
        }
        // The full check walks every request: every few steps (and at the end) is enough to
        // catch a broken invariant soon after it breaks.
        self.broker_steps += 1;
        if self.broker_steps.is_multiple_of(INVARIANT_EVERY) {
            self.check_broker();
        }
        if let Some(b) = self.broker.as_ref() {
            let at = b
                .poll_timeout()
                .map_or(self.now + MAX_WAIT, |at| {
                    self.now + at.saturating_duration_since(now)
                })
                .min(self.now + MAX_WAIT);
            self.arm_timer(Addr::Broker, self.broker_inc, at);
        }
    }

    fn check_broker(&mut self) {
        if let Some(Err(e)) = self.broker.as_ref().map(BrokerCore::check_invariants) {
            self.violation("broker invariants", e);
        }
    }

    // ----- the reference and the proxy ---------------------------------------------------

    fn start_reference(&mut self) {
        self.reference_inc += 1;
        // As `chat up` runs it: with a data directory, ranks survive restarts.
        self.reference = Some(ReferenceCore::restore(
            chat_node::reference::DEFAULT_TIMEOUT,
            chat_node::reference::DEFAULT_MAX_SERVERS,
            self.reference_saved.clone(),
        ));
        self.log(|| "reference up".into());
    }

    fn at_reference(&mut self, msg: Msg) {
        let now = self.instant();
        let wall = self.wall();
        let Some(r) = self.reference.as_mut() else {
            return;
        };
        if let Msg::RefRequest {
            server,
            inc,
            gen,
            body,
        } = msg
        {
            let reply = r.handle_request(&body, now, wall);
            // Saved before the reply that reveals a new rank leaves.
            if let Some(saved) = r.take_unsaved() {
                self.reference_saved = saved;
            }
            self.send_to(
                Addr::Reference,
                Addr::Server(server),
                inc,
                Msg::RefReply { gen, body: reply },
            );
        }
    }

    fn at_proxy(&mut self, msg: Msg) {
        if !self.proxy_up {
            return;
        }
        if let Msg::Publish { topic, payload } = msg {
            for k in 0..self.subs.len() {
                if self.subs[k].topics().contains(&topic) {
                    let m = Msg::Publication {
                        topic: topic.clone(),
                        payload: payload.clone(),
                    };
                    self.send(Addr::Proxy, Addr::Subscriber(k), m);
                }
            }
            if topic == TOPIC_SERVERS {
                for j in 0..self.servers.len() {
                    if self.servers[j].core.is_some() {
                        let m = Msg::Publication {
                            topic: topic.clone(),
                            payload: payload.clone(),
                        };
                        self.send(Addr::Proxy, Addr::Server(j), m);
                    }
                }
            }
        }
    }

    // ----- servers ----------------------------------------------------------------------

    fn start_server(&mut self, i: usize) {
        let recovered = self.servers[i].disk.borrow().recover();
        let recovered = match recovered {
            Ok(r) => r,
            Err(e) => {
                self.violation("store", format!("server-{} cannot recover: {e}", i + 1));
                return;
            }
        };
        let srv = &mut self.servers[i];
        srv.inc += 1;
        srv.paused = false;
        srv.inbox.clear();
        srv.disk_done_while_paused = false;
        srv.ref_awaiting = false;
        srv.timer_at = None;
        let mut cfg = ServerConfig::new(srv.name.clone());
        cfg.reference = Some("sim://reference".into());
        cfg.request_window = self.swarm.request_window;
        cfg.clock_sync = self.clock_sync;
        let reader = Box::new(DiskReader(srv.disk.clone()));
        let mut core = ServerCore::new(
            cfg,
            self.base + self.now,
            recovered,
            peer_endpoint(i),
            reader,
        );
        core.set_defect(self.opts.defect);
        self.servers[i].core = Some(core);
        let events = self.servers[i].disk.borrow().events();
        self.log(|| format!("server-{} up ({events} events on disk)", i + 1));
        self.drive_server(i);
    }

    fn at_server(&mut self, i: usize, msg: Msg) {
        if self.servers[i].core.is_none() {
            return;
        }
        if self.servers[i].paused {
            self.servers[i].inbox.push(msg);
            return;
        }
        self.feed_server(i, msg);
        self.drive_server(i);
    }

    fn feed_server(&mut self, i: usize, msg: Msg) {
        let t = self.server_time(i);
        let names: Vec<String> = self.servers.iter().map(|s| s.name.clone()).collect();
        let srv = &mut self.servers[i];
        let Some(core) = srv.core.as_mut() else {
            return;
        };
        match msg {
            Msg::FromBroker { frames } => {
                core.handle_broker(t, &frames);
            }
            Msg::Publication { topic, payload } => {
                core.handle_subscription(t, topic.as_bytes(), &payload);
            }
            Msg::PeerRequest { from, inc, body } => {
                let envelope = vec![format!("p{from}.{inc}").into_bytes(), vec![]];
                core.handle_peer_request(t, envelope, &body);
            }
            Msg::PeerReply { peer, body } => {
                core.handle_peer_reply(t, &names[peer], &body);
            }
            Msg::RefReply { gen, body } if srv.ref_awaiting && srv.ref_gen == gen => {
                srv.ref_awaiting = false;
                core.handle_reference_reply(t, &body);
            }
            _ => {}
        }
    }

    fn disk_done(&mut self, i: usize) {
        let done = self.servers[i].disk.borrow_mut().complete();
        if let (Some((epoch, hidden)), Some(core)) = (done, self.servers[i].core.as_mut()) {
            core.handle_persisted(epoch, hidden);
        }
    }

    /// One loop iteration of the server's driver after its inputs.
    fn drive_server(&mut self, i: usize) {
        let t = self.server_time(i);
        let Some(core) = self.servers[i].core.as_mut() else {
            return;
        };
        core.handle_timeout(t);
        if !self.servers[i].disk.borrow().busy() {
            let batch = self.servers[i].core.as_mut().and_then(|c| c.poll_batch(t));
            if let Some(batch) = batch {
                self.servers[i].disk.borrow_mut().start(batch);
                let (lo, hi) = self.swarm.disk;
                let mut d = self.rng.gen_range(lo..=hi.max(lo));
                if self.swarm.disk_stall > 0.0 && self.rng.gen_bool(self.swarm.disk_stall) {
                    d += Duration::from_millis(self.rng.gen_range(50..500));
                }
                let inc = self.servers[i].inc;
                self.at(self.now + d, Ev::DiskDone { server: i, inc });
            }
        }
        loop {
            let tx = self.servers[i]
                .core
                .as_mut()
                .and_then(|c| c.poll_transmit(t));
            let Some(tx) = tx else { break };
            self.route_from_server(i, tx);
        }
        if let Some(e) = self.servers[i]
            .core
            .as_mut()
            .and_then(ServerCore::take_failure)
        {
            self.violation("store", format!("server-{} store read failed: {e}", i + 1));
        }
        let Some(core) = self.servers[i].core.as_ref() else {
            return;
        };
        let at = core
            .poll_timeout()
            .map_or(self.now + MAX_WAIT, |at| {
                self.now + at.saturating_duration_since(t.mono)
            })
            .clamp(self.now + IMMEDIATE, self.now + MAX_WAIT);
        self.arm_timer(Addr::Server(i), self.servers[i].inc, at);
    }

    fn route_from_server(&mut self, i: usize, tx: Transmit) {
        let me = Addr::Server(i);
        let inc = self.servers[i].inc;
        match tx {
            Transmit::Broker(msg) => {
                let frames = msg.frames();
                self.send(
                    me,
                    Addr::Broker,
                    Msg::ToBroker {
                        server: i,
                        inc,
                        frames,
                    },
                );
            }
            Transmit::Publish { topic, payload } => {
                if topic == TOPIC_SERVERS {
                    self.note_announcement(i, &payload);
                }
                self.send(me, Addr::Proxy, Msg::Publish { topic, payload });
            }
            Transmit::Peer {
                to,
                endpoint,
                id,
                body,
            } => {
                let target = parse_peer_endpoint(&endpoint).filter(|j| *j < self.servers.len());
                match target {
                    Some(j) if self.servers[j].core.is_some() => {
                        self.send(me, Addr::Server(j), Msg::PeerRequest { from: i, inc, body });
                    }
                    _ => {
                        // A DEALER with ZMQ_IMMEDIATE has no connection to queue on.
                        let t = self.server_time(i);
                        if let Some(c) = self.servers[i].core.as_mut() {
                            c.handle_peer_unsent(t, &to, id);
                        }
                    }
                }
            }
            Transmit::PeerReply { envelope, body } => {
                let target = envelope.first().and_then(|id| parse_identity(id, 'p'));
                if let Some((from, from_inc)) = target.filter(|(f, _)| *f < self.servers.len()) {
                    self.send_to(
                        me,
                        Addr::Server(from),
                        from_inc,
                        Msg::PeerReply { peer: i, body },
                    );
                }
            }
            Transmit::Reference { body } => {
                let srv = &mut self.servers[i];
                if srv.ref_awaiting {
                    srv.ref_gen += 1; // Lazy Pirate: a new REQ socket
                }
                srv.ref_awaiting = true;
                let gen = srv.ref_gen;
                self.send(
                    me,
                    Addr::Reference,
                    Msg::RefRequest {
                        server: i,
                        inc,
                        gen,
                        body,
                    },
                );
            }
        }
    }

    fn note_announcement(&mut self, i: usize, payload: &[u8]) {
        let Ok((a, _)) = decode_announcement(payload) else {
            return;
        };
        self.log(|| {
            format!(
                "server-{} announces itself coordinator of term {}",
                i + 1,
                a.term
            )
        });
        match self.terms.get(&a.term) {
            Some(c) if *c != a.coordinator => {
                let detail = format!(
                    "term {} has two coordinators: {c} and {}",
                    a.term, a.coordinator
                );
                self.violation("one coordinator per term", detail);
            }
            Some(_) => {}
            None => {
                self.terms.insert(a.term, a.coordinator);
            }
        }
    }

    // ----- clients ----------------------------------------------------------------------

    fn schedule_client(&mut self, i: usize) {
        if let Some(at) = self.clients[i].due() {
            self.at(
                at.max(self.now),
                Ev::Timer {
                    who: Addr::Client(i),
                    inc: 0,
                },
            );
        }
    }

    fn client_timer(&mut self, i: usize) {
        let wall_ms = self.wall().millis();
        let n = self.clients.len();
        let (send, done) = self.clients[i].on_timer(self.now, wall_ms, &mut self.rng, n);
        if let Some(body) = send {
            let gen = self.clients[i].gen();
            self.send(
                Addr::Client(i),
                Addr::Broker,
                Msg::Request {
                    client: i,
                    gen,
                    body,
                },
            );
        }
        if let Some(done) = done {
            self.client_done(i, done);
        }
        // Timer events of a client are never stale in a harmful way: `on_timer` ignores
        // early calls; avoid piling up by scheduling only when something is due.
        if let Some(at) = self.clients[i].due() {
            if at > self.now {
                self.at(
                    at,
                    Ev::Timer {
                        who: Addr::Client(i),
                        inc: 0,
                    },
                );
            }
        }
    }

    fn at_client(&mut self, i: usize, msg: Msg) {
        if let Msg::Reply { gen, body } = msg {
            if let Some(done) = self.clients[i].on_reply(self.now, &mut self.rng, gen, &body) {
                self.client_done(i, done);
                self.schedule_client(i);
            }
        }
    }

    fn client_done(&mut self, i: usize, done: Done) {
        match done {
            Done::Acked(a) => {
                self.stats.acked += 1;
                // No reply reveals a write that is not durable: the acknowledged write is
                // on some server's disk (synced) at the moment the client hears OK.
                let durable = self
                    .servers
                    .iter()
                    .any(|s| s.disk.borrow().holds_request(&a.rid));
                if !durable {
                    self.violation(
                        "no reply before durable",
                        format!(
                            "client-{i} heard OK for {} ({:?}) but no disk holds it",
                            a.rid, a.write
                        ),
                    );
                }
                self.log(|| format!("client-{i} acked {} {:?}", a.rid, a.write));
                self.acked.insert(a.rid.clone(), a);
            }
            Done::Answered => {}
            Done::GaveUp { started } => {
                self.stats.gave_up += 1;
                self.log(|| {
                    format!(
                        "client-{i} gave up a request started at {:.3}",
                        started.as_secs_f64()
                    )
                });
                if self.healed && started >= self.heal_at + RECOVERY {
                    self.violation(
                        "available after heal",
                        format!(
                            "client-{i}'s request sent {:.1} s after the heal got no answer in {} tries",
                            (started - self.heal_at).as_secs_f64(),
                            crate::client::ATTEMPTS
                        ),
                    );
                }
            }
        }
    }

    // ----- subscribers --------------------------------------------------------------------

    fn at_subscriber(&mut self, k: usize, msg: Msg) {
        let now = self.instant();
        match msg {
            Msg::Publication { topic, payload } => {
                if let Ok(p) = decode_publication(&topic, &payload) {
                    self.log(|| {
                        format!(
                            "subscriber-{k} live {topic} {} rid {:?} prev {:?}",
                            p.id().unwrap_or("-"),
                            p.rid(),
                            p.prev()
                        )
                    });
                    self.subs[k].on_publication(now, &topic, p);
                }
            }
            Msg::Reply { gen, body } => {
                if self.trace.is_some() {
                    if let Ok((env, _)) = chat_core::protocol::decode_reply(&body) {
                        let what = match &env.reply {
                            chat_core::Reply::History(page) => format!(
                                "{} items, next {:?}: {:?}",
                                page.items.len(),
                                page.next,
                                page.items
                                    .iter()
                                    .map(|p| p.id().unwrap_or("-").to_string())
                                    .collect::<Vec<_>>()
                            ),
                            other => format!("{other:?}"),
                        };
                        self.log(|| format!("subscriber-{k} history reply (socket {gen}): {what}"));
                    }
                }
                self.subs[k].on_reply(now, self.now, gen, &body)
            }
            _ => return,
        }
        self.drive_subscriber(k);
    }

    fn drive_subscriber(&mut self, k: usize) {
        let now = self.instant();
        let wall_ms = self.wall().millis();
        if let Some(body) = self.subs[k].step(now, self.now, wall_ms) {
            let gen = self.subs[k].gen();
            if self.trace.is_some() {
                if let Ok((env, _)) = chat_core::protocol::decode_request(&body) {
                    self.log(|| format!("subscriber-{k} reads (socket {gen}) {:?}", env.request));
                }
            }
            self.send(
                Addr::Subscriber(k),
                Addr::Broker,
                Msg::SubRequest { sub: k, gen, body },
            );
        }
        if let Some(at) = self.subs[k].due(now, self.now) {
            let at = at.max(self.now + IMMEDIATE);
            self.arm_timer(Addr::Subscriber(k), 0, at);
        }
    }

    // ----- faults -----------------------------------------------------------------------

    fn fault(&mut self, f: Fault) {
        if self.healed {
            return;
        }
        *self.stats.faults.entry(f.kind()).or_default() += 1;
        self.log(|| format!("fault: {f:?}"));
        match f {
            Fault::Crash {
                server,
                power,
                down,
            } => {
                if self.crash(server, power) {
                    self.at(self.now + down, Ev::Up(Addr::Server(server)));
                }
            }
            Fault::PowerLossAll { down } => {
                for i in 0..self.servers.len() {
                    self.crash(i, true);
                }
                for i in 0..self.servers.len() {
                    let d = down + Duration::from_millis(self.rng.gen_range(0..500));
                    self.at(self.now + d, Ev::Up(Addr::Server(i)));
                }
            }
            Fault::Pause { server, pause } => {
                let s = &mut self.servers[server];
                if s.core.is_some() && !s.paused {
                    s.paused = true;
                    self.at(self.now + pause, Ev::Resume(server));
                }
            }
            Fault::Partition {
                a,
                b,
                one_way,
                span,
            } => {
                self.net.cut(a, b, one_way);
                self.at(self.now + span, Ev::Mend(a, b));
            }
            Fault::ClockJump { server, ms } => self.servers[server].skew_ms += ms,
            Fault::Restart { who, down } => {
                match who {
                    Addr::Broker => {
                        self.check_broker();
                        self.broker = None;
                        self.broker_inc += 1;
                        self.broker_timer_at = None;
                    }
                    Addr::Proxy => {
                        self.proxy_up = false;
                        self.proxy_inc += 1;
                    }
                    Addr::Reference => {
                        self.reference = None;
                        self.reference_inc += 1;
                    }
                    _ => return,
                }
                self.at(self.now + down, Ev::Up(who));
            }
        }
    }

    /// Kills server `i` (`power`: its disk's volatile cache is lost); false if it was down.
    fn crash(&mut self, i: usize, power: bool) -> bool {
        if self.servers[i].core.is_none() {
            return false;
        }
        let kept = !power && self.rng.gen_bool(0.5);
        let srv = &mut self.servers[i];
        srv.core = None;
        srv.inc += 1;
        srv.paused = false;
        srv.inbox.clear();
        srv.disk_done_while_paused = false;
        srv.ref_awaiting = false;
        srv.timer_at = None;
        srv.disk.borrow_mut().crash(kept);
        true
    }

    fn up(&mut self, who: Addr) {
        match who {
            Addr::Server(i) if self.servers[i].core.is_none() => self.start_server(i),
            Addr::Broker if self.broker.is_none() => self.start_broker(),
            Addr::Reference if self.reference.is_none() => self.start_reference(),
            Addr::Proxy if !self.proxy_up => {
                self.proxy_up = true;
                // Every SUB socket reconnects (ZeroMQ re-sends its subscriptions).
                for k in 0..self.subs.len() {
                    let now = self.instant();
                    self.subs[k].on_reconnect(now);
                    self.drive_subscriber(k);
                }
            }
            _ => {}
        }
    }

    fn resume(&mut self, i: usize) {
        if !self.servers[i].paused {
            return;
        }
        self.log(|| format!("server-{} resumes", i + 1));
        self.servers[i].paused = false;
        if std::mem::take(&mut self.servers[i].disk_done_while_paused) {
            self.disk_done(i);
        }
        for msg in std::mem::take(&mut self.servers[i].inbox) {
            self.feed_server(i, msg);
        }
        self.servers[i].timer_at = None;
        self.drive_server(i);
    }

    fn heal(&mut self) {
        self.log(|| "heal: partitions mended, everything restarted and resumed".into());
        self.healed = true;
        self.net.heal();
        self.net.faults = LinkFaults::healthy();
        self.swarm.disk_stall = 0.0;
        self.up(Addr::Broker);
        self.up(Addr::Reference);
        self.up(Addr::Proxy);
        for i in 0..self.servers.len() {
            self.resume(i);
            self.up(Addr::Server(i));
        }
    }

    // ----- the end ----------------------------------------------------------------------

    fn finish(&mut self) {
        self.check_broker();
        let t: Vec<Time> = (0..self.servers.len())
            .map(|i| self.server_time(i))
            .collect();
        let views: Vec<check::ServerView<'_>> = self
            .servers
            .iter()
            .zip(&t)
            .filter_map(|(s, t)| {
                s.core.as_ref().map(|c| check::ServerView {
                    name: &s.name,
                    core: c,
                    time: *t,
                    disk: s.disk.clone(),
                })
            })
            .collect();
        if views.len() != self.servers.len() {
            self.violations.push(Violation {
                at: self.now,
                rule: "all up after heal",
                detail: format!("{} of {} servers run", views.len(), self.servers.len()),
            });
            return;
        }
        let mut found = check::final_checks(&views, &self.acked);
        found.extend(check::check_subscribers(
            &self.subs,
            &self.acked,
            views[0].disk.borrow().store(),
        ));
        for sub in &self.subs {
            self.stats.raw_duplicates += sub.raw().values().filter(|n| **n > 1).count() as u64;
            self.stats.raw_missing += self
                .acked
                .iter()
                .filter(|(rid, a)| {
                    matches!(&a.write, crate::client::Write::Publish { .. })
                        && !sub.raw().contains_key(*rid)
                })
                .count() as u64;
            self.stats.repaired += sub.stats().repaired;
        }
        for (rule, detail) in found {
            self.violations.push(Violation {
                at: self.now,
                rule,
                detail,
            });
        }
        self.stats.twice_accepted = self
            .servers
            .iter()
            .map(|s| s.disk.borrow().twice_accepted() as u64)
            .max()
            .unwrap_or(0);
        self.stats.fenced = views.iter().map(|v| v.core.fenced_requests()).sum();
        self.stats.redispatched = self.broker.as_ref().map_or(0, |b| b.stats().redispatched);
        self.stats.terms = self.terms.len() as u64;
    }
}

fn client_identity(client: usize, gen: u32) -> Vec<u8> {
    format!("c{client}.{gen}").into_bytes()
}

fn server_identity(server: usize, inc: u32) -> Vec<u8> {
    format!("s{server}.{inc}").into_bytes()
}

/// Reads `{kind}{index}.{generation}`.
fn parse_identity(id: &[u8], kind: char) -> Option<(usize, u32)> {
    let s = std::str::from_utf8(id).ok()?.strip_prefix(kind)?;
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn peer_endpoint(i: usize) -> String {
    format!("sim://server/{i}")
}

fn parse_peer_endpoint(e: &str) -> Option<usize> {
    e.strip_prefix("sim://server/")?.parse().ok()
}
