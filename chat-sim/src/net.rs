//! The simulated network: who may talk to whom (partitions, symmetric or one-way), and what
//! happens to a message on the way (loss, duplication, delay, reordering by jitter, rare
//! long delays).

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

/// A process of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Addr {
    /// The broker.
    Broker,
    /// The reference service.
    Reference,
    /// The XSUB/XPUB proxy.
    Proxy,
    /// Server `i` (0-based; named `server-{i+1}`).
    Server(usize),
    /// Client `i`.
    Client(usize),
    /// Subscriber `i` (an SDK subscriber: live delivery plus repairs through the broker).
    Subscriber(usize),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Broker => f.write_str("broker"),
            Addr::Reference => f.write_str("reference"),
            Addr::Proxy => f.write_str("proxy"),
            Addr::Server(i) => write!(f, "server-{}", i + 1),
            Addr::Client(i) => write!(f, "client-{i}"),
            Addr::Subscriber(i) => write!(f, "subscriber-{i}"),
        }
    }
}

/// How messages fare on the network during the fault phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub dup: f64,
    /// Shortest one-way delay.
    pub delay_min: Duration,
    /// Longest ordinary one-way delay (messages overtake each other within the spread).
    pub delay_max: Duration,
    /// Probability of a long delay.
    pub spike: f64,
    /// Length of a long delay.
    pub spike_delay: Duration,
}

impl LinkFaults {
    /// A healthy network: no loss, no duplication, 100-500 µs.
    pub fn healthy() -> Self {
        LinkFaults {
            loss: 0.0,
            dup: 0.0,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_micros(500),
            spike: 0.0,
            spike_delay: Duration::ZERO,
        }
    }
}

/// What the network does with one message: the delays of its copies (none: lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Delivered once or more, after these delays.
    Deliver(Vec<Duration>),
    /// Lost on the way.
    Lost,
    /// Cut off by a partition.
    Blocked,
}

/// Partitions and link faults.
#[derive(Debug, Clone)]
pub struct Network {
    /// Faults applied to every message (ZeroMQ over TCP does not lose or duplicate within a
    /// connection, but connections break and messages queued on them are lost; the
    /// protocol must cope with both either way).
    pub faults: LinkFaults,
    /// Directed pairs that cannot talk: `(from, to)`.
    blocked: BTreeSet<(Addr, Addr)>,
}

impl Network {
    /// A network with `faults` and no partition.
    pub fn new(faults: LinkFaults) -> Self {
        Network {
            faults,
            blocked: BTreeSet::new(),
        }
    }

    /// Cuts `from` → `to` (and back unless `one_way`).
    pub fn cut(&mut self, a: Addr, b: Addr, one_way: bool) {
        self.blocked.insert((a, b));
        if !one_way {
            self.blocked.insert((b, a));
        }
    }

    /// Restores `a` ↔ `b` in both directions.
    pub fn mend(&mut self, a: Addr, b: Addr) {
        self.blocked.remove(&(a, b));
        self.blocked.remove(&(b, a));
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether `from` can reach `to` now.
    pub fn connected(&self, from: Addr, to: Addr) -> bool {
        !self.blocked.contains(&(from, to))
    }

    /// What happens to one message from `from` to `to`.
    pub fn fate(&self, rng: &mut StdRng, from: Addr, to: Addr) -> Fate {
        if !self.connected(from, to) {
            return Fate::Blocked;
        }
        let f = &self.faults;
        if f.loss > 0.0 && rng.gen_bool(f.loss) {
            return Fate::Lost;
        }
        let copies = if f.dup > 0.0 && rng.gen_bool(f.dup) {
            2
        } else {
            1
        };
        let delays = (0..copies)
            .map(|_| {
                let mut d = if f.delay_max > f.delay_min {
                    rng.gen_range(f.delay_min..=f.delay_max)
                } else {
                    f.delay_min
                };
                if f.spike > 0.0 && rng.gen_bool(f.spike) {
                    d += f.spike_delay;
                }
                d
            })
            .collect();
        Fate::Deliver(delays)
    }
}
