//! Berkeley clock synchronisation, run by the coordinator.
//!
//! The coordinator asks every live server for its physical time ([`BerkeleyOutput::RequestTime`]),
//! estimates each server's offset from its own clock with the round-trip time
//! ([`Reading::offset_ms`]: the remote clock at receipt is `remote + rtt / 2`), discards the
//! readings farther than a threshold from the median (never its own), averages the rest and
//! tells every server (itself included) the correction that brings its clock to that average
//! ([`BerkeleyOutput::Adjust`]). The arithmetic is the pure function [`analyze`] /
//! [`adjustments`]; the [`Berkeley`] machine runs rounds every
//! [`BerkeleyConfig::requests_per_round`] handled client requests and every
//! [`BerkeleyConfig::interval`].
//!
//! Physical times are `i64` milliseconds read by the driver from the clock it stamps
//! timestamps with (system time plus the offset applied so far); `now: Instant` only drives
//! the timers.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Default period of timer-driven rounds (an idle cluster stays in step too).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// Default number of handled client requests that triggers a round.
pub const DEFAULT_REQUESTS_PER_ROUND: u32 = 10;

/// Default time to wait for the servers' clock readings.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// Default distance from the median beyond which a reading is an outlier.
pub const DEFAULT_OUTLIER_THRESHOLD_MS: u64 = 1000;

/// One clock reading taken by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Server name.
    pub name: String,
    /// Coordinator's clock when the request was sent (ms).
    pub sent_ms: i64,
    /// Coordinator's clock when the reply arrived (ms).
    pub received_ms: i64,
    /// The server's clock in its reply (ms).
    pub remote_ms: i64,
    /// Whether this is the coordinator's own reading (offset 0, never discarded).
    pub own: bool,
}

impl Reading {
    /// The coordinator's own reading at `local_ms`.
    pub fn own(name: impl Into<String>, local_ms: i64) -> Reading {
        Reading {
            name: name.into(),
            sent_ms: local_ms,
            received_ms: local_ms,
            remote_ms: local_ms,
            own: true,
        }
    }

    /// A peer's reading: asked at `sent_ms`, answered `remote_ms`, received at `received_ms`.
    pub fn remote(
        name: impl Into<String>,
        sent_ms: i64,
        received_ms: i64,
        remote_ms: i64,
    ) -> Reading {
        Reading {
            name: name.into(),
            sent_ms,
            received_ms,
            remote_ms,
            own: false,
        }
    }

    /// Round-trip time (ms, never negative).
    pub fn rtt_ms(&self) -> i64 {
        self.received_ms.saturating_sub(self.sent_ms).max(0)
    }

    /// Estimated offset of the server's clock from the coordinator's (ms): the server's
    /// clock at receipt is estimated as `remote + rtt / 2`. Exactly 0 for the own reading.
    pub fn offset_ms(&self) -> f64 {
        if self.own {
            return 0.0;
        }
        self.remote_ms as f64 + self.rtt_ms() as f64 / 2.0 - self.received_ms as f64
    }
}

/// The result of one averaging.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Median of the estimated offsets (ms, relative to the coordinator's clock).
    pub median_ms: f64,
    /// Average of the kept offsets: the clock every server is brought to (ms).
    pub average_ms: f64,
    /// Names of the readings that were averaged, in input order.
    pub kept: Vec<String>,
    /// Names of the outliers, in input order (they are adjusted too, not averaged).
    pub discarded: Vec<String>,
    /// Correction for every reading, in input order (ms, to add to that server's clock).
    pub adjustments: Vec<(String, i64)>,
}

/// Averages `readings`: offsets with RTT compensation, readings farther than
/// `threshold_ms` from the median discarded (except the coordinator's own; if nothing is
/// left the median is used), and one adjustment per reading that brings its estimated
/// clock to the average. Empty input gives an empty analysis.
pub fn analyze(readings: &[Reading], threshold_ms: u64) -> Analysis {
    if readings.is_empty() {
        return Analysis {
            median_ms: 0.0,
            average_ms: 0.0,
            kept: Vec::new(),
            discarded: Vec::new(),
            adjustments: Vec::new(),
        };
    }
    let offsets: Vec<f64> = readings.iter().map(Reading::offset_ms).collect();
    let median = median(&offsets);
    let threshold = threshold_ms as f64;
    let mut kept = Vec::new();
    let mut discarded = Vec::new();
    let mut sum = 0.0;
    for (r, off) in readings.iter().zip(&offsets) {
        if r.own || (off - median).abs() <= threshold {
            kept.push(r.name.clone());
            sum += off;
        } else {
            discarded.push(r.name.clone());
        }
    }
    let average = if kept.is_empty() {
        median
    } else {
        sum / kept.len() as f64
    };
    let adjustments = readings
        .iter()
        .zip(&offsets)
        .map(|(r, off)| (r.name.clone(), round_ms(average - off)))
        .collect();
    Analysis {
        median_ms: median,
        average_ms: average,
        kept,
        discarded,
        adjustments,
    }
}

/// The adjustment (ms) of every reading's server, in input order; see [`analyze`].
pub fn adjustments(readings: &[Reading], threshold_ms: u64) -> Vec<(String, i64)> {
    analyze(readings, threshold_ms).adjustments
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

fn round_ms(x: f64) -> i64 {
    // `as` saturates; clocks are far from the limits.
    x.round() as i64
}

/// Settings of the Berkeley machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BerkeleyConfig {
    /// Period of timer-driven rounds (default 5 s).
    pub interval: Duration,
    /// Handled client requests that trigger a round (default 10).
    pub requests_per_round: u32,
    /// Time to wait for readings before averaging what arrived (default 500 ms).
    pub reply_timeout: Duration,
    /// Distance from the median beyond which a reading is an outlier (default 1000 ms).
    pub outlier_threshold_ms: u64,
}

impl Default for BerkeleyConfig {
    fn default() -> Self {
        BerkeleyConfig {
            interval: DEFAULT_SYNC_INTERVAL,
            requests_per_round: DEFAULT_REQUESTS_PER_ROUND,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            outlier_threshold_ms: DEFAULT_OUTLIER_THRESHOLD_MS,
        }
    }
}

/// What the Berkeley machine wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum BerkeleyOutput {
    /// Ask server `to` for its physical time (`clock` request) in round `round`.
    RequestTime {
        /// Server name.
        to: String,
        /// Round id, to give back to [`Berkeley::handle_time`].
        round: u64,
    },
    /// Tell server `to` (possibly this one) to add `offset_ms` to its clock.
    Adjust {
        /// Server name.
        to: String,
        /// Correction (ms).
        offset_ms: i64,
    },
    /// A round ended (after its `Adjust` outputs): for logs, status and failure detection.
    RoundFinished {
        /// Round id.
        round: u64,
        /// The average the clocks were brought to, relative to the coordinator's clock (ms).
        average_offset_ms: i64,
        /// Outliers (adjusted but not averaged).
        discarded: Vec<String>,
        /// Servers that did not answer in time (a missed reply each).
        missing: Vec<String>,
    },
}

#[derive(Debug, Clone)]
struct Round {
    id: u64,
    deadline: Instant,
    sent_ms: i64,
    pending: BTreeSet<String>,
    readings: Vec<Reading>,
}

/// The coordinator's side of Berkeley: when to run rounds, collecting readings, adjusting.
#[derive(Debug, Clone)]
pub struct Berkeley {
    name: String,
    config: BerkeleyConfig,
    peers: Vec<String>,
    active: bool,
    next_round_at: Option<Instant>,
    requests: u32,
    rounds: u64,
    round: Option<Round>,
    outputs: VecDeque<BerkeleyOutput>,
}

impl Berkeley {
    /// A machine for server `name`, inactive until [`Berkeley::set_active`].
    pub fn new(name: impl Into<String>, config: BerkeleyConfig) -> Berkeley {
        Berkeley {
            name: name.into(),
            config,
            peers: Vec::new(),
            active: false,
            next_round_at: None,
            requests: 0,
            rounds: 0,
            round: None,
            outputs: VecDeque::new(),
        }
    }

    /// This server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration.
    pub fn config(&self) -> &BerkeleyConfig {
        &self.config
    }

    /// Whether this server runs rounds (it is coordinator).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The id of the round in progress.
    pub fn round_in_progress(&self) -> Option<u64> {
        self.round.as_ref().map(|r| r.id)
    }

    /// The servers that automatic rounds measure (live peers; this server is skipped).
    pub fn set_peers<'a>(&mut self, peers: impl IntoIterator<Item = &'a str>) {
        self.peers = peers
            .into_iter()
            .filter(|p| *p != self.name)
            .map(str::to_string)
            .collect();
        self.peers.sort();
        self.peers.dedup();
    }

    /// Becomes (`true`, a round is due at once) or stops being (`false`, the round in
    /// progress is dropped) the coordinator that runs rounds.
    pub fn set_active(&mut self, now: Instant, active: bool) {
        if active == self.active {
            return;
        }
        self.active = active;
        self.requests = 0;
        if active {
            self.next_round_at = Some(now);
        } else {
            self.next_round_at = None;
            self.round = None;
        }
    }

    /// A client request was handled; every `requests_per_round`-th starts a round.
    pub fn note_request(&mut self, now: Instant, local_ms: i64) {
        if !self.active {
            return;
        }
        self.requests = self.requests.saturating_add(1);
        if self.requests >= self.config.requests_per_round && self.round.is_none() {
            let peers = self.peers.clone();
            self.start_round(now, local_ms, &peers);
        }
    }

    /// Starts a round measuring `peers` (this server is measured by itself); a round in
    /// progress is finished first with what it has. Returns the round id.
    pub fn start_round(&mut self, now: Instant, local_ms: i64, peers: &[String]) -> u64 {
        if self.round.is_some() {
            self.finish();
        }
        self.rounds += 1;
        let id = self.rounds;
        let pending: BTreeSet<String> =
            peers.iter().filter(|p| **p != self.name).cloned().collect();
        for to in &pending {
            self.outputs.push_back(BerkeleyOutput::RequestTime {
                to: to.clone(),
                round: id,
            });
        }
        self.round = Some(Round {
            id,
            deadline: now + self.config.reply_timeout,
            sent_ms: local_ms,
            pending,
            readings: vec![Reading::own(self.name.clone(), local_ms)],
        });
        self.requests = 0;
        if self.active {
            self.next_round_at = Some(now + self.config.interval);
        }
        if self.round.as_ref().is_some_and(|r| r.pending.is_empty()) {
            self.finish();
        }
        id
    }

    /// Server `from` answered `remote_ms` in `round`, received at `local_ms`. Unknown
    /// rounds, strangers and duplicates are ignored; the last awaited reply ends the round.
    pub fn handle_time(
        &mut self,
        _now: Instant,
        local_ms: i64,
        from: &str,
        round: u64,
        remote_ms: i64,
    ) {
        let Some(r) = self.round.as_mut() else {
            return;
        };
        if r.id != round || !r.pending.remove(from) {
            return;
        }
        r.readings
            .push(Reading::remote(from, r.sent_ms, local_ms, remote_ms));
        if r.pending.is_empty() {
            self.finish();
        }
    }

    /// Ends a round whose replies are overdue, and starts a timer-driven round when due.
    pub fn handle_timeout(&mut self, now: Instant, local_ms: i64) {
        if self.round.as_ref().is_some_and(|r| now >= r.deadline) {
            self.finish();
        }
        if self.active && self.round.is_none() && self.next_round_at.is_some_and(|t| now >= t) {
            let peers = self.peers.clone();
            self.start_round(now, local_ms, &peers);
        }
    }

    /// When [`Berkeley::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.round {
            Some(r) => Some(r.deadline),
            None => self.next_round_at.filter(|_| self.active),
        }
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<BerkeleyOutput> {
        self.outputs.pop_front()
    }

    fn finish(&mut self) {
        let Some(r) = self.round.take() else {
            return;
        };
        let analysis = analyze(&r.readings, self.config.outlier_threshold_ms);
        for (to, offset_ms) in analysis.adjustments {
            self.outputs
                .push_back(BerkeleyOutput::Adjust { to, offset_ms });
        }
        self.outputs.push_back(BerkeleyOutput::RoundFinished {
            round: r.id,
            average_offset_ms: round_ms(analysis.average_ms),
            discarded: analysis.discarded,
            missing: r.pending.into_iter().collect(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn drain(b: &mut Berkeley) -> Vec<BerkeleyOutput> {
        std::iter::from_fn(|| b.poll_output()).collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rtt_compensation_estimates_remote_clock_at_receipt() {
        // Sent at 1000, received at 1100: the remote read its clock ~50 ms after sending.
        let r = Reading::remote("b", 1000, 1100, 1550);
        assert_eq!(r.rtt_ms(), 100);
        assert_eq!(r.offset_ms(), 500.0);
        assert_eq!(Reading::own("a", 123).offset_ms(), 0.0);
        // A clock that went backwards counts as rtt 0.
        assert_eq!(Reading::remote("b", 1100, 1000, 1000).rtt_ms(), 0);
    }

    #[test]
    fn textbook_example() {
        // Coordinator at 3:00, others at 3:25 and 2:50 (minutes as ms), no delay.
        let readings = [
            Reading::own("a", 180),
            Reading::remote("b", 180, 180, 205),
            Reading::remote("c", 180, 180, 170),
        ];
        assert_eq!(
            adjustments(&readings, 1000),
            [("a".into(), 5), ("b".into(), -20), ("c".into(), 15)]
        );
        // docs/coordination.md: a fourth server far away is discarded but adjusted.
        let mut with_outlier = readings.to_vec();
        with_outlier.push(Reading::remote("d", 180, 180, 180 + 60_000));
        let a = analyze(&with_outlier, DEFAULT_OUTLIER_THRESHOLD_MS);
        assert_eq!(a.median_ms, 12.5);
        assert_eq!(a.discarded, ["d"]);
        assert_eq!(a.adjustments[3], ("d".into(), -59_995));
        assert_eq!(a.adjustments[..3], adjustments(&readings, 1000)[..]);
    }

    #[test]
    fn outlier_is_adjusted_but_not_averaged() {
        let readings = [
            Reading::own("a", 0),
            Reading::remote("b", 0, 0, 10),
            Reading::remote("c", 0, 0, 20),
            Reading::remote("d", 0, 0, 60_000),
        ];
        let a = analyze(&readings, 1000);
        assert_eq!(a.discarded, ["d"]);
        assert_eq!(a.kept, ["a", "b", "c"]);
        assert_eq!(a.average_ms, 10.0);
        assert_eq!(
            a.adjustments,
            [
                ("a".into(), 10),
                ("b".into(), 0),
                ("c".into(), -10),
                ("d".into(), -59_990)
            ]
        );
    }

    #[test]
    fn own_reading_is_never_discarded() {
        let readings = [
            Reading::own("a", 0),
            Reading::remote("b", 0, 0, 5000),
            Reading::remote("c", 0, 0, 5010),
            Reading::remote("d", 0, 0, 9000),
        ];
        let a = analyze(&readings, 100);
        assert_eq!(a.median_ms, 5005.0);
        assert_eq!(a.kept, ["a", "b", "c"], "a is 5 s from the median but kept");
        assert_eq!(a.discarded, ["d"]);
        assert_eq!(a.average_ms, 10_010.0 / 3.0);
    }

    #[test]
    fn everything_discarded_falls_back_to_median() {
        let readings = [
            Reading::remote("b", 0, 0, 0),
            Reading::remote("c", 0, 0, 1000),
        ];
        let a = analyze(&readings, 10);
        assert!(a.kept.is_empty());
        assert_eq!(a.average_ms, 500.0);
        assert_eq!(a.adjustments, [("b".into(), 500), ("c".into(), -500)]);
        assert!(adjustments(&[], 10).is_empty());
    }

    #[test]
    fn round_collects_readings_and_adjusts_everyone() {
        let t0 = Instant::now();
        let mut b = Berkeley::new("a", BerkeleyConfig::default());
        let id = b.start_round(t0, 10_000, &names(&["a", "b", "c"]));
        assert_eq!(
            drain(&mut b),
            [
                BerkeleyOutput::RequestTime {
                    to: "b".into(),
                    round: id
                },
                BerkeleyOutput::RequestTime {
                    to: "c".into(),
                    round: id
                },
            ]
        );
        b.handle_time(t0 + 10 * MS, 10_010, "b", id, 10_305); // offset +300
        b.handle_time(t0 + 10 * MS, 10_010, "b", id, 99_999); // duplicate: ignored
        b.handle_time(t0 + 10 * MS, 10_010, "c", id + 1, 0); // other round: ignored
        assert_eq!(b.round_in_progress(), Some(id));
        b.handle_time(t0 + 20 * MS, 10_020, "c", id, 9_910); // offset -100
        assert_eq!(b.round_in_progress(), None);
        assert_eq!(
            drain(&mut b),
            [
                BerkeleyOutput::Adjust {
                    to: "a".into(),
                    offset_ms: 67
                },
                BerkeleyOutput::Adjust {
                    to: "b".into(),
                    offset_ms: -233
                },
                BerkeleyOutput::Adjust {
                    to: "c".into(),
                    offset_ms: 167
                },
                BerkeleyOutput::RoundFinished {
                    round: id,
                    average_offset_ms: 67,
                    discarded: vec![],
                    missing: vec![],
                },
            ]
        );
    }

    #[test]
    fn reply_timeout_averages_what_arrived() {
        let t0 = Instant::now();
        let mut b = Berkeley::new("a", BerkeleyConfig::default());
        let id = b.start_round(t0, 0, &names(&["b", "c"]));
        drain(&mut b);
        b.handle_time(t0 + MS, 0, "b", id, 100);
        assert_eq!(b.poll_timeout(), Some(t0 + DEFAULT_REPLY_TIMEOUT));
        b.handle_timeout(t0 + 499 * MS, 499);
        assert!(drain(&mut b).is_empty());
        b.handle_timeout(t0 + 500 * MS, 500);
        let out = drain(&mut b);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2],
            BerkeleyOutput::RoundFinished {
                round: id,
                average_offset_ms: 50,
                discarded: vec![],
                missing: vec!["c".into()],
            }
        );
    }

    #[test]
    fn every_tenth_request_triggers_a_round_when_active() {
        let t0 = Instant::now();
        let mut b = Berkeley::new("a", BerkeleyConfig::default());
        b.set_peers(["b", "a"]);
        for _ in 0..20 {
            b.note_request(t0, 0);
        }
        assert!(drain(&mut b).is_empty(), "inactive: nothing");
        b.set_active(t0, true);
        for _ in 0..9 {
            b.note_request(t0, 0);
        }
        assert!(drain(&mut b).is_empty());
        b.note_request(t0, 0);
        assert_eq!(
            drain(&mut b),
            [BerkeleyOutput::RequestTime {
                to: "b".into(),
                round: 1
            }]
        );
        // Timer-driven rounds follow one interval after the last round.
        b.handle_time(t0, 0, "b", 1, 0);
        drain(&mut b);
        assert_eq!(b.poll_timeout(), Some(t0 + DEFAULT_SYNC_INTERVAL));
    }

    #[test]
    fn timer_drives_rounds_for_an_idle_cluster() {
        let t0 = Instant::now();
        let mut b = Berkeley::new("a", BerkeleyConfig::default());
        b.set_peers(["b"]);
        b.set_active(t0, true);
        assert_eq!(b.poll_timeout(), Some(t0));
        b.handle_timeout(t0, 0);
        assert_eq!(b.round_in_progress(), Some(1));
        b.handle_timeout(t0 + 500 * MS, 500);
        drain(&mut b);
        assert_eq!(b.poll_timeout(), Some(t0 + DEFAULT_SYNC_INTERVAL));
        b.handle_timeout(t0 + DEFAULT_SYNC_INTERVAL, 5000);
        assert_eq!(b.round_in_progress(), Some(2));
        b.set_active(t0 + DEFAULT_SYNC_INTERVAL, false);
        assert_eq!(b.round_in_progress(), None);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn round_without_peers_adjusts_only_self() {
        let t0 = Instant::now();
        let mut b = Berkeley::new("a", BerkeleyConfig::default());
        b.start_round(t0, 0, &[]);
        let out = drain(&mut b);
        assert_eq!(
            out[0],
            BerkeleyOutput::Adjust {
                to: "a".into(),
                offset_ms: 0
            }
        );
    }

    /// Three clocks with skews, symmetric delays: a few rounds bring them together.
    #[test]
    fn skewed_clocks_converge() {
        let t0 = Instant::now();
        let servers = ["a", "b", "c"];
        let mut offsets = [0i64, 3000, -200]; // each server's clock minus true time
        let delay = 7i64; // one-way delay (ms)
        let mut b = Berkeley::new("a", BerkeleyConfig::default());
        let mut true_ms = 1_000_000i64;
        for _ in 0..3 {
            let peers = names(&servers[1..]);
            let id = b.start_round(t0, true_ms + offsets[0], &peers);
            drain(&mut b);
            for (i, name) in servers.iter().enumerate().skip(1) {
                let remote = true_ms + delay + offsets[i];
                let received = true_ms + 2 * delay + offsets[0];
                b.handle_time(t0, received, name, id, remote);
            }
            for out in drain(&mut b) {
                if let BerkeleyOutput::Adjust { to, offset_ms } = out {
                    let i = servers.iter().position(|n| *n == to).unwrap();
                    offsets[i] += offset_ms;
                }
            }
            true_ms += 5000;
        }
        let spread = offsets.iter().max().unwrap() - offsets.iter().min().unwrap();
        assert!(spread <= 1, "offsets {offsets:?}");
        // The 3 s skew was an outlier: the others barely moved.
        assert!(offsets[0].abs() <= 200, "offsets {offsets:?}");
    }
}
