//! Which faults a run injects, and when: each seed draws its own mix ("swarm testing": some
//! runs lossy, some crash-heavy, some partition-heavy), then a schedule of faults over the
//! fault phase.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::net::{Addr, LinkFaults};

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of a server (`power`: its disk's volatile cache is lost too); it restarts
    /// after `down`.
    Crash {
        /// Server index.
        server: usize,
        /// Power loss rather than a process crash.
        power: bool,
        /// How long it stays down.
        down: Duration,
    },
    /// Every server loses power at once; they restart after `down`.
    PowerLossAll {
        /// How long they stay down.
        down: Duration,
    },
    /// `SIGSTOP` of a server, `SIGCONT` after `pause`.
    Pause {
        /// Server index.
        server: usize,
        /// How long it is stopped.
        pause: Duration,
    },
    /// `a` and `b` cannot talk (or only `b` cannot hear `a`) for `span`.
    Partition {
        /// One side.
        a: Addr,
        /// The other side.
        b: Addr,
        /// Only `a` → `b` is cut.
        one_way: bool,
        /// How long.
        span: Duration,
    },
    /// A server's OS clock jumps by `ms` milliseconds.
    ClockJump {
        /// Server index.
        server: usize,
        /// The jump.
        ms: i64,
    },
    /// `kill -9` and restart of the broker, of the proxy or of the reference.
    Restart {
        /// Which one.
        who: Addr,
        /// How long it stays down.
        down: Duration,
    },
}

impl Fault {
    /// A short name for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Crash { power: false, .. } => "kill -9",
            Fault::Crash { power: true, .. } => "power loss",
            Fault::PowerLossAll { .. } => "power loss of all",
            Fault::Pause { .. } => "pause",
            Fault::Partition { one_way: false, .. } => "partition",
            Fault::Partition { one_way: true, .. } => "one-way partition",
            Fault::ClockJump { .. } => "clock jump",
            Fault::Restart {
                who: Addr::Broker, ..
            } => "broker restart",
            Fault::Restart {
                who: Addr::Proxy, ..
            } => "proxy restart",
            Fault::Restart { .. } => "reference restart",
        }
    }
}

/// The mix of faults of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Swarm {
    /// Network faults during the fault phase.
    pub net: LinkFaults,
    /// Mean faults per second of the fault phase.
    pub rate: f64,
    /// Relative weights: crash, pause, partition, clock jump, broker, proxy, reference,
    /// power loss of all.
    pub weights: [u32; 8],
    /// Shortest and longest commit of a batch.
    pub disk: (Duration, Duration),
    /// Probability that a commit stalls (hundreds of milliseconds).
    pub disk_stall: f64,
    /// Largest initial skew of a server's OS clock, in milliseconds (either way).
    pub skew_ms: i64,
    /// The servers' window of request ids in memory: often tiny, so that retries and
    /// copies of one request are decided by the store's index.
    pub request_window: chat_core::RequestWindow,
}

impl Swarm {
    /// Draws a mix.
    pub fn draw(rng: &mut StdRng) -> Swarm {
        let lossy = rng.gen_bool(0.5);
        let net = LinkFaults {
            loss: if lossy {
                *pick(rng, &[0.001, 0.01, 0.05])
            } else {
                0.0
            },
            dup: if rng.gen_bool(0.3) {
                *pick(rng, &[0.001, 0.01, 0.05])
            } else {
                0.0
            },
            delay_min: Duration::from_micros(rng.gen_range(50..500)),
            delay_max: Duration::from_micros(*pick(rng, &[500, 2_000, 10_000])),
            spike: if rng.gen_bool(0.3) { 0.005 } else { 0.0 },
            spike_delay: Duration::from_millis(rng.gen_range(50..400)),
        };
        let mut weights = [0u32; 8];
        for w in &mut weights {
            *w = *pick(rng, &[0, 1, 3]);
        }
        if weights.iter().all(|w| *w == 0) {
            weights[0] = 1;
        }
        // Drawn from a copy of the generator, so that the rest of a seed's run is what it
        // was before the window was part of the mix (the regression seeds keep their runs).
        let mut side = rng.clone();
        let request_window = if side.gen_bool(0.5) {
            chat_core::RequestWindow::default()
        } else {
            chat_core::RequestWindow {
                max_count: *pick(&mut side, &[0, 1, 4, 32]),
                max_age_ms: *pick(&mut side, &[0, 500, 5_000, u64::MAX]),
            }
        };
        Swarm {
            request_window,
            net,
            rate: *pick(rng, &[0.2, 0.5, 1.0, 2.0]),
            weights,
            disk: (
                Duration::from_micros(rng.gen_range(50..300)),
                Duration::from_micros(*pick(rng, &[500, 2_000, 8_000])),
            ),
            disk_stall: if rng.gen_bool(0.2) { 0.01 } else { 0.0 },
            skew_ms: *pick(rng, &[0, 50, 1_000, 3_000]),
        }
    }

    /// The faults of a fault phase of length `span` for `servers` servers, in time order.
    pub fn schedule(
        &self,
        rng: &mut StdRng,
        span: Duration,
        servers: usize,
    ) -> Vec<(Duration, Fault)> {
        let mut out = Vec::new();
        let total: u32 = self.weights.iter().sum();
        if self.rate <= 0.0 || total == 0 || span.is_zero() {
            return out;
        }
        let mut t = Duration::ZERO;
        loop {
            // Exponential gaps: a Poisson process of `rate` faults per second.
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            t += Duration::from_secs_f64(-u.ln() / self.rate);
            if t >= span {
                break;
            }
            let mut w = rng.gen_range(0..total);
            let mut kind = 0;
            while w >= self.weights[kind] {
                w -= self.weights[kind];
                kind += 1;
            }
            let server = rng.gen_range(0..servers);
            let fault = match kind {
                0 => Fault::Crash {
                    server,
                    power: rng.gen_bool(0.4),
                    down: ms(rng, 200, 4_000),
                },
                1 => Fault::Pause {
                    server,
                    pause: ms(rng, 300, 4_000),
                },
                2 => {
                    let mut ends = vec![Addr::Broker, Addr::Reference, Addr::Proxy];
                    ends.extend((0..servers).map(Addr::Server));
                    let a = *pick(rng, &ends);
                    let others: Vec<Addr> = ends.into_iter().filter(|e| *e != a).collect();
                    let b = *pick(rng, &others);
                    Fault::Partition {
                        a,
                        b,
                        one_way: rng.gen_bool(0.3),
                        span: ms(rng, 300, 5_000),
                    }
                }
                3 => Fault::ClockJump {
                    server,
                    ms: rng.gen_range(-5_000..=5_000),
                },
                4 => Fault::Restart {
                    who: Addr::Broker,
                    down: ms(rng, 100, 2_000),
                },
                5 => Fault::Restart {
                    who: Addr::Proxy,
                    down: ms(rng, 100, 2_000),
                },
                6 => Fault::Restart {
                    who: Addr::Reference,
                    down: ms(rng, 100, 3_000),
                },
                _ => Fault::PowerLossAll {
                    down: ms(rng, 200, 2_000),
                },
            };
            out.push((t, fault));
        }
        out
    }
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.gen_range(lo..=hi))
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}
