//! Pure state machines that coordinate servers, with time passed in and outputs returned.
//!
//! # Layout
//! - [`bully`]: Bully election with ballot terms (`term = round << 16 | rank`), so that
//!   each term has exactly one possible coordinator; the highest live rank wins.
//! - [`berkeley`]: Berkeley averaging of physical clocks, run by the coordinator: the pure
//!   [`berkeley::adjustments`] function (RTT compensation, outlier rejection, averaging)
//!   and the [`Berkeley`] round machine (every 10 requests and on a timer).
//! - [`cristian`]: Cristian's algorithm (seed 004), run by every follower of the
//!   coordinator: the pure [`cristian::estimate`] function (round trips, outliers, the
//!   shortest round trip wins) and the [`Cristian`] round machine (on a new coordinator
//!   and on a timer). [`ClockSync`] says which of the two a server runs.
//! - [`membership`]: the [`FailureDetector`] shared by both: heartbeats, last-heard times,
//!   missed replies, `Down`/`Up` verdicts.
//! - [`replication`]: the origin's side of replication: push new events to live peers,
//!   hold client replies until `--ack-replicas` peers have them durably, resend on timeout.
//!
//! Every machine follows the sans-IO shape of `quinn-proto`: `handle_*(now, input)` methods
//! feed it, `poll_*` methods drain what it wants done (messages to send, timers to set),
//! and getters read its state. Nothing here opens a socket, starts a thread, draws a random
//! number or reads a clock: `now` is a [`std::time::Instant`] given by the caller, and
//! physical clock values are `i64` milliseconds given by the caller. The server runtime
//! (`chat-net`) is the driver; `docs/coordination.md` explains the algorithms and what the
//! driver must do (notably: persist [`Bully::term`] before sending the outputs).
//!
//! Defaults are the `DEFAULT_*` constants of each module, re-exported here.

#![warn(missing_docs)]

pub mod berkeley;
pub mod bully;
pub mod cristian;
pub mod membership;
pub mod replication;

pub use berkeley::{
    adjustments, analyze, Analysis, Berkeley, BerkeleyConfig, BerkeleyOutput, Reading,
    DEFAULT_OUTLIER_THRESHOLD_MS, DEFAULT_REPLY_TIMEOUT, DEFAULT_REQUESTS_PER_ROUND,
    DEFAULT_SYNC_INTERVAL,
};
pub use bully::{
    Bully, BullyConfig, BullyMsg, BullyOutput, ElectionPhase, RankTooLarge,
    DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_COORDINATOR_TIMEOUT, DEFAULT_ELECTION_TIMEOUT, MAX_RANK,
};
pub use cristian::{
    estimate, Cristian, CristianConfig, CristianOutput, Estimate, Sample, DEFAULT_SAMPLES_PER_ROUND,
};
pub use membership::{
    DetectorConfig, FailureDetector, Verdict, DEFAULT_FAILURE_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_MISSED_REPLIES,
};
pub use replication::{
    AckPolicy, Release, ReplicationConfig, Replicator, SendRange, DEFAULT_ACK_REPLICAS,
    DEFAULT_ACK_TIMEOUT, DEFAULT_WINDOW,
};

/// Which algorithm keeps the servers' physical clocks in step (every server of a cluster
/// should run the same one; `status` says which runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClockSync {
    /// The coordinator averages every clock and tells each server its correction
    /// (seeds 000-002): the cluster converges to the average of the clocks it kept.
    #[default]
    Berkeley,
    /// Every follower sets its clock to the coordinator's (seed 004): the cluster
    /// converges to the coordinator's clock.
    Cristian,
}

impl ClockSync {
    /// Every algorithm, in the order of the `--clock-sync` help.
    pub const ALL: [ClockSync; 2] = [ClockSync::Berkeley, ClockSync::Cristian];

    /// Its name on the command line and in `status` (`berkeley`, `cristian`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClockSync::Berkeley => "berkeley",
            ClockSync::Cristian => "cristian",
        }
    }

    /// The algorithm named `s` (case-insensitive), if any.
    pub fn parse(s: &str) -> Option<ClockSync> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for ClockSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ClockSync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClockSync::parse(s)
            .ok_or_else(|| format!("unknown clock sync {s:?}: use berkeley or cristian"))
    }
}

#[cfg(test)]
mod tests {
    use super::ClockSync;

    #[test]
    fn clock_sync_names_round_trip() {
        for c in ClockSync::ALL {
            assert_eq!(c.as_str().parse::<ClockSync>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(ClockSync::parse(" Cristian "), Some(ClockSync::Cristian));
        assert!("ntp"
            .parse::<ClockSync>()
            .unwrap_err()
            .contains("berkeley or cristian"));
        assert_eq!(ClockSync::default(), ClockSync::Berkeley);
    }
}
