//! Cristian clock synchronisation (seed 004), run by every server that follows a coordinator.
//!
//! Where Berkeley averages everyone's clock under the coordinator, Cristian makes every
//! server **follow** the coordinator's clock: a follower asks the coordinator for its time
//! ([`CristianOutput::RequestTime`], the same `clock` request Berkeley uses), measures the
//! round trip on its monotonic clock, and estimates the coordinator's clock at receipt as
//! `remote + rtt / 2` ([`Sample::offset_ms`]). A round takes
//! [`CristianConfig::samples_per_round`] samples one after the other, drops those whose
//! offset lies farther than a threshold from the median (as Berkeley does), and keeps the
//! one with the **shortest round trip** among the rest: its error is at most half its round
//! trip ([`Sample::error_bound_ms`]), the tightest bound of the round. The follower then
//! moves its own clock by that offset ([`CristianOutput::Adjust`]). The arithmetic is the
//! pure function [`estimate`]; the [`Cristian`] machine runs a round as soon as it follows
//! a new coordinator, then every [`CristianConfig::interval`].
//!
//! The coordinator itself runs nothing: its clock is the reference, and it only answers
//! `clock` requests. Physical times are `i64` milliseconds of the clock the server stamps
//! timestamps with (system time plus the offset applied so far); `now: Instant` measures
//! round trips and drives the timers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::berkeley::{DEFAULT_OUTLIER_THRESHOLD_MS, DEFAULT_REPLY_TIMEOUT, DEFAULT_SYNC_INTERVAL};

/// Default number of time samples a follower takes per round.
pub const DEFAULT_SAMPLES_PER_ROUND: u32 = 5;

/// One time sample: the coordinator's clock, read between our request and its reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Round trip, measured on the monotonic clock (ms, never negative).
    pub rtt_ms: f64,
    /// Our clock when the reply arrived (ms).
    pub received_ms: i64,
    /// The coordinator's clock in its reply (ms).
    pub remote_ms: i64,
}

impl Sample {
    /// A sample whose reply (`remote_ms`) arrived at `received_ms` after `rtt_ms`.
    pub fn new(rtt_ms: f64, received_ms: i64, remote_ms: i64) -> Sample {
        Sample {
            rtt_ms: rtt_ms.max(0.0),
            received_ms,
            remote_ms,
        }
    }

    /// How far the coordinator's clock is ahead of ours (ms): its clock at receipt is
    /// estimated as `remote + rtt / 2`. Adding it to our clock brings it to the coordinator's.
    pub fn offset_ms(&self) -> f64 {
        self.remote_ms as f64 + self.rtt_ms / 2.0 - self.received_ms as f64
    }

    /// Largest error of [`Sample::offset_ms`] (ms): the coordinator read its clock somewhere
    /// within the round trip, so the estimate is off by at most half of it.
    pub fn error_bound_ms(&self) -> f64 {
        self.rtt_ms / 2.0
    }
}

/// What one round's samples say.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Median of the samples' offsets (ms).
    pub median_ms: f64,
    /// The correction to add to our clock (ms): the offset of the chosen sample.
    pub offset_ms: f64,
    /// Index of the chosen sample: the shortest round trip among those kept.
    pub chosen: usize,
    /// Its error bound (ms, half its round trip).
    pub error_bound_ms: f64,
    /// Indices of the samples within the threshold of the median, in input order.
    pub kept: Vec<usize>,
    /// Indices of the outliers, in input order.
    pub discarded: Vec<usize>,
}

/// Reads one round's `samples`: those farther than `threshold_ms` from the median offset
/// are outliers; among the others the shortest round trip wins (the first of equals).
/// `None` without samples, or when every sample is an outlier (possible only with an even
/// number of them, whose two middle ones are far apart): the round is inconclusive.
pub fn estimate(samples: &[Sample], threshold_ms: u64) -> Option<Estimate> {
    if samples.is_empty() {
        return None;
    }
    let offsets: Vec<f64> = samples.iter().map(Sample::offset_ms).collect();
    let median = median(&offsets);
    let threshold = threshold_ms as f64;
    let (kept, discarded): (Vec<usize>, Vec<usize>) =
        (0..samples.len()).partition(|&i| (offsets[i] - median).abs() <= threshold);
    let chosen = kept.iter().copied().reduce(|best, i| {
        if samples[i].rtt_ms < samples[best].rtt_ms {
            i
        } else {
            best
        }
    })?;
    Some(Estimate {
        median_ms: median,
        offset_ms: offsets[chosen],
        chosen,
        error_bound_ms: samples[chosen].error_bound_ms(),
        kept,
        discarded,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Settings of the Cristian machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CristianConfig {
    /// Period of rounds (default 5 s, as Berkeley's).
    pub interval: Duration,
    /// Samples per round, taken one after the other (default 5).
    pub samples_per_round: u32,
    /// Time to wait for one sample's reply before counting it missing (default 500 ms).
    pub reply_timeout: Duration,
    /// Distance from the median offset beyond which a sample is an outlier (default 1000 ms).
    pub outlier_threshold_ms: u64,
}

impl Default for CristianConfig {
    fn default() -> Self {
        CristianConfig {
            interval: DEFAULT_SYNC_INTERVAL,
            samples_per_round: DEFAULT_SAMPLES_PER_ROUND,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            outlier_threshold_ms: DEFAULT_OUTLIER_THRESHOLD_MS,
        }
    }
}

/// What the Cristian machine wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum CristianOutput {
    /// Ask the coordinator `to` for its physical time (`clock` request); give the reply to
    /// [`Cristian::handle_time`] with this `sample` id.
    RequestTime {
        /// The coordinator's name.
        to: String,
        /// Sample id.
        sample: u64,
    },
    /// Add `offset_ms` to this server's clock.
    Adjust {
        /// Correction (ms).
        offset_ms: i64,
    },
    /// A round ended (after its `Adjust`, if any): for logs.
    RoundFinished {
        /// Round id.
        round: u64,
        /// The coordinator followed.
        coordinator: String,
        /// The correction applied (`None`: no sample, or all outliers; nothing changed).
        offset_ms: Option<i64>,
        /// Error bound of that correction (ms, half the chosen round trip).
        error_bound_ms: Option<f64>,
        /// Samples received.
        samples: usize,
        /// Of those, outliers.
        discarded: usize,
        /// Samples that got no reply in time.
        missing: usize,
    },
}

#[derive(Debug, Clone)]
struct InFlight {
    id: u64,
    sent: Instant,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Round {
    id: u64,
    coordinator: String,
    /// Samples still to request after the one in flight.
    to_send: u32,
    inflight: Option<InFlight>,
    samples: Vec<Sample>,
    missing: usize,
}

/// A follower's side of Cristian: when to run rounds, taking samples, adjusting its clock.
#[derive(Debug, Clone)]
pub struct Cristian {
    name: String,
    config: CristianConfig,
    coordinator: Option<String>,
    next_round_at: Option<Instant>,
    rounds: u64,
    samples: u64,
    round: Option<Round>,
    outputs: VecDeque<CristianOutput>,
}

impl Cristian {
    /// A machine for server `name`, following nobody until [`Cristian::set_coordinator`].
    pub fn new(name: impl Into<String>, config: CristianConfig) -> Cristian {
        Cristian {
            name: name.into(),
            config,
            coordinator: None,
            next_round_at: None,
            rounds: 0,
            samples: 0,
            round: None,
            outputs: VecDeque::new(),
        }
    }

    /// This server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration.
    pub fn config(&self) -> &CristianConfig {
        &self.config
    }

    /// The coordinator this server follows (`None` while it is coordinator itself, or
    /// none is known).
    pub fn coordinator(&self) -> Option<&str> {
        self.coordinator.as_deref()
    }

    /// Whether this server follows a coordinator (and so runs rounds).
    pub fn is_active(&self) -> bool {
        self.coordinator.is_some()
    }

    /// The id of the round in progress.
    pub fn round_in_progress(&self) -> Option<u64> {
        self.round.as_ref().map(|r| r.id)
    }

    /// The coordinator changed: a new one (not this server) is followed from now on, with a
    /// round at once; `None` or this server stops the rounds. A round in progress with
    /// another coordinator is dropped unfinished (its samples measured another clock).
    pub fn set_coordinator(&mut self, now: Instant, coordinator: Option<&str>) {
        let follow = coordinator.filter(|c| *c != self.name);
        if follow == self.coordinator.as_deref() {
            return;
        }
        self.coordinator = follow.map(str::to_string);
        self.round = None;
        self.next_round_at = self.coordinator.as_ref().map(|_| now);
    }

    /// Starts a round with the followed coordinator (a round in progress is finished first
    /// with what it has); returns its id, `None` when following nobody.
    pub fn start_round(&mut self, now: Instant) -> Option<u64> {
        let coordinator = self.coordinator.clone()?;
        if self.round.is_some() {
            self.finish();
        }
        self.rounds += 1;
        let id = self.rounds;
        self.round = Some(Round {
            id,
            coordinator,
            to_send: self.config.samples_per_round.max(1),
            inflight: None,
            samples: Vec::new(),
            missing: 0,
        });
        self.next_round_at = Some(now + self.config.interval);
        self.next_sample(now);
        Some(id)
    }

    /// The coordinator `from` answered `remote_ms` to `sample`, received at `local_ms` (our
    /// clock). Unknown samples, strangers and duplicates are ignored; the next sample is
    /// requested at once, and the last one ends the round.
    pub fn handle_time(
        &mut self,
        now: Instant,
        local_ms: i64,
        from: &str,
        sample: u64,
        remote_ms: i64,
    ) {
        let Some(r) = self.round.as_mut() else {
            return;
        };
        let Some(f) = r.inflight.as_ref() else {
            return;
        };
        if f.id != sample || r.coordinator != from {
            return;
        }
        let rtt_ms = now.saturating_duration_since(f.sent).as_secs_f64() * 1000.0;
        r.samples.push(Sample::new(rtt_ms, local_ms, remote_ms));
        r.inflight = None;
        self.next_sample(now);
    }

    /// Counts an overdue sample as missing (and goes on with the next), and starts a round
    /// when one is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let overdue = self
            .round
            .as_ref()
            .and_then(|r| r.inflight.as_ref())
            .is_some_and(|f| now >= f.deadline);
        if overdue {
            if let Some(r) = self.round.as_mut() {
                r.inflight = None;
                r.missing += 1;
            }
            self.next_sample(now);
        }
        if self.round.is_none() && self.next_round_at.is_some_and(|t| now >= t) {
            self.start_round(now);
        }
    }

    /// When [`Cristian::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.round.as_ref().and_then(|r| r.inflight.as_ref()) {
            Some(f) => Some(f.deadline),
            None => self.next_round_at.filter(|_| self.coordinator.is_some()),
        }
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<CristianOutput> {
        self.outputs.pop_front()
    }

    /// Requests the round's next sample, or finishes the round when none is left.
    fn next_sample(&mut self, now: Instant) {
        let Some(r) = self.round.as_mut() else {
            return;
        };
        if r.inflight.is_some() {
            return;
        }
        if r.to_send == 0 {
            self.finish();
            return;
        }
        r.to_send -= 1;
        self.samples += 1;
        let id = self.samples;
        r.inflight = Some(InFlight {
            id,
            sent: now,
            deadline: now + self.config.reply_timeout,
        });
        self.outputs.push_back(CristianOutput::RequestTime {
            to: r.coordinator.clone(),
            sample: id,
        });
    }

    fn finish(&mut self) {
        let Some(r) = self.round.take() else {
            return;
        };
        let missing = r.missing + usize::from(r.inflight.is_some());
        let est = estimate(&r.samples, self.config.outlier_threshold_ms);
        let offset_ms = est.as_ref().map(|e| round_ms(e.offset_ms));
        if let Some(offset_ms) = offset_ms {
            self.outputs.push_back(CristianOutput::Adjust { offset_ms });
        }
        self.outputs.push_back(CristianOutput::RoundFinished {
            round: r.id,
            coordinator: r.coordinator,
            offset_ms,
            error_bound_ms: est.as_ref().map(|e| e.error_bound_ms),
            samples: r.samples.len(),
            discarded: est.map_or(0, |e| e.discarded.len()),
            missing,
        });
    }
}

fn round_ms(x: f64) -> i64 {
    // `as` saturates; clocks are far from the limits.
    x.round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn drain(c: &mut Cristian) -> Vec<CristianOutput> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn request(to: &str, sample: u64) -> CristianOutput {
        CristianOutput::RequestTime {
            to: to.into(),
            sample,
        }
    }

    #[test]
    fn sample_estimates_the_coordinators_clock_at_receipt() {
        // Asked, answered 1550 by the coordinator, received 100 ms later at our 1100.
        let s = Sample::new(100.0, 1100, 1550);
        assert_eq!(s.offset_ms(), 500.0);
        assert_eq!(s.error_bound_ms(), 50.0);
        // A negative round trip (cannot happen on a monotonic clock) counts as zero.
        assert_eq!(Sample::new(-3.0, 0, 0).rtt_ms, 0.0);
    }

    #[test]
    fn shortest_round_trip_among_the_kept_wins() {
        let samples = [
            Sample::new(10.0, 0, 100), // offset 105
            Sample::new(2.0, 0, 103),  // offset 104: shortest
            Sample::new(1.0, 0, 5000), // outlier: shorter still, but dropped
            Sample::new(6.0, 0, 101),  // offset 104
            Sample::new(2.0, 0, 99),   // offset 100: equal rtt, later: not chosen
        ];
        let e = estimate(&samples, 1000).unwrap();
        assert_eq!(e.median_ms, 104.0);
        assert_eq!(e.discarded, [2]);
        assert_eq!(e.kept, [0, 1, 3, 4]);
        assert_eq!(e.chosen, 1);
        assert_eq!(e.offset_ms, 104.0);
        assert_eq!(e.error_bound_ms, 1.0);
    }

    #[test]
    fn inconclusive_when_nothing_is_kept() {
        assert_eq!(estimate(&[], 10), None);
        let split = [Sample::new(1.0, 0, 0), Sample::new(1.0, 0, 1000)];
        assert_eq!(estimate(&split, 10), None, "both 500 ms from the median");
        assert!(estimate(&split, 500).is_some());
    }

    #[test]
    fn a_round_takes_samples_one_after_the_other_then_adjusts() {
        let t0 = Instant::now();
        let mut c = Cristian::new("s1", CristianConfig::default());
        assert_eq!(c.poll_timeout(), None, "following nobody: idle");
        c.set_coordinator(t0, Some("s3"));
        assert_eq!(c.poll_timeout(), Some(t0), "a round at once");
        c.handle_timeout(t0);
        let round = c.round_in_progress().unwrap();
        assert_eq!(drain(&mut c), [request("s3", 1)]);
        // Our clock is 1000 ms behind the coordinator's; 4 ms round trips.
        let mut at = t0;
        for sample in 1..=5u64 {
            at += 4 * MS;
            let local = 10_000 + sample as i64 * 4;
            c.handle_time(at, local, "s3", sample, local + 1000 - 2);
            c.handle_time(at, local, "s3", sample, 0); // duplicate: ignored
            let out = drain(&mut c);
            if sample < 5 {
                assert_eq!(out, [request("s3", sample + 1)]);
            } else {
                assert_eq!(
                    out,
                    [
                        CristianOutput::Adjust { offset_ms: 1000 },
                        CristianOutput::RoundFinished {
                            round,
                            coordinator: "s3".into(),
                            offset_ms: Some(1000),
                            error_bound_ms: Some(2.0),
                            samples: 5,
                            discarded: 0,
                            missing: 0,
                        }
                    ]
                );
            }
        }
        assert_eq!(c.round_in_progress(), None);
        assert_eq!(c.poll_timeout(), Some(t0 + DEFAULT_SYNC_INTERVAL));
    }

    #[test]
    fn strangers_and_stale_samples_are_ignored() {
        let t0 = Instant::now();
        let mut c = Cristian::new("s1", CristianConfig::default());
        c.set_coordinator(t0, Some("s3"));
        c.handle_timeout(t0);
        drain(&mut c);
        c.handle_time(t0 + MS, 0, "s2", 1, 500); // not the coordinator
        c.handle_time(t0 + MS, 0, "s3", 7, 500); // not the sample in flight
        assert!(drain(&mut c).is_empty());
        c.handle_time(t0 + MS, 0, "s3", 1, 500);
        assert_eq!(drain(&mut c), [request("s3", 2)]);
    }

    #[test]
    fn a_silent_coordinator_costs_one_timeout_per_sample() {
        let t0 = Instant::now();
        let cfg = CristianConfig {
            samples_per_round: 2,
            ..CristianConfig::default()
        };
        let mut c = Cristian::new("s1", cfg);
        c.set_coordinator(t0, Some("s3"));
        c.handle_timeout(t0);
        drain(&mut c);
        assert_eq!(c.poll_timeout(), Some(t0 + DEFAULT_REPLY_TIMEOUT));
        c.handle_timeout(t0 + 499 * MS);
        assert!(drain(&mut c).is_empty());
        let t1 = t0 + DEFAULT_REPLY_TIMEOUT;
        c.handle_timeout(t1);
        assert_eq!(drain(&mut c), [request("s3", 2)]);
        // The late reply to the first sample is ignored.
        c.handle_time(t1 + MS, 0, "s3", 1, 99);
        c.handle_timeout(t1 + DEFAULT_REPLY_TIMEOUT);
        let out = drain(&mut c);
        assert_eq!(
            out,
            [CristianOutput::RoundFinished {
                round: 1,
                coordinator: "s3".into(),
                offset_ms: None,
                error_bound_ms: None,
                samples: 0,
                discarded: 0,
                missing: 2,
            }],
            "no sample: the clock is left alone"
        );
    }

    #[test]
    fn a_new_coordinator_drops_the_round_and_starts_another() {
        let t0 = Instant::now();
        let mut c = Cristian::new("s1", CristianConfig::default());
        c.set_coordinator(t0, Some("s3"));
        c.handle_timeout(t0);
        drain(&mut c);
        c.set_coordinator(t0 + MS, Some("s3"));
        assert_eq!(
            c.round_in_progress(),
            Some(1),
            "same coordinator: nothing changes"
        );
        c.set_coordinator(t0 + 2 * MS, Some("s2"));
        assert_eq!(c.round_in_progress(), None);
        c.handle_time(t0 + 3 * MS, 0, "s3", 1, 500); // the old round's reply: ignored
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(t0 + 2 * MS);
        assert_eq!(drain(&mut c), [request("s2", 2)]);
        // Becoming coordinator (or losing the coordinator) stops the rounds.
        c.set_coordinator(t0 + 3 * MS, Some("s1"));
        assert!(!c.is_active());
        assert_eq!(c.round_in_progress(), None);
        assert_eq!(c.poll_timeout(), None);
        c.set_coordinator(t0 + 4 * MS, Some("s2"));
        c.set_coordinator(t0 + 4 * MS, None);
        assert_eq!(c.poll_timeout(), None);
        c.handle_timeout(t0 + DEFAULT_SYNC_INTERVAL);
        assert!(drain(&mut c).is_empty());
    }

    /// A follower with a skewed clock and asymmetric delays: within the round trip of the
    /// coordinator after one round, and a coordinator that jumps is followed at once.
    #[test]
    fn a_skewed_follower_lands_on_the_coordinators_clock() {
        let t0 = Instant::now();
        let mut c = Cristian::new("s1", CristianConfig::default());
        let mut ours = -3000i64; // our clock minus the coordinator's
        let (out, back) = (3i64, 1i64); // one-way delays (ms)
        let mut true_ms = 1_000_000i64;
        c.set_coordinator(t0, Some("s3"));
        let mut at = t0;
        for round in 0..2 {
            if round == 1 {
                ours += 700; // our clock jumps
            }
            c.handle_timeout(at);
            for _ in 0..DEFAULT_SAMPLES_PER_ROUND {
                let Some(CristianOutput::RequestTime { sample, .. }) = c.poll_output() else {
                    panic!("a request");
                };
                let remote = true_ms + out;
                true_ms += out + back;
                at += Duration::from_millis((out + back) as u64);
                c.handle_time(at, true_ms + ours, "s3", sample, remote);
            }
            for o in drain(&mut c) {
                if let CristianOutput::Adjust { offset_ms } = o {
                    ours += offset_ms;
                }
            }
            // Off by half the delay asymmetry (1 ms), at most half the round trip.
            assert!(ours.abs() <= 2, "round {round}: {ours}");
            at += DEFAULT_SYNC_INTERVAL;
            true_ms += DEFAULT_SYNC_INTERVAL.as_millis() as i64;
        }
    }
}
