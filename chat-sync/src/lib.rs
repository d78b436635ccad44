//! Pure state machines that coordinate servers, with time passed in and outputs returned.
//!
//! # Layout
//! - [`bully`]: Bully election with ballot terms (`term = round << 16 | rank`), so that
//!   each term has exactly one possible coordinator; the highest live rank wins.
//! - [`berkeley`]: Berkeley averaging of physical clocks, run by the coordinator: the pure
//!   [`berkeley::adjustments`] function (RTT compensation, outlier rejection, averaging)
//!   and the [`Berkeley`] round machine (every 10 requests and on a timer).
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
pub use membership::{
    DetectorConfig, FailureDetector, Verdict, DEFAULT_FAILURE_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_MISSED_REPLIES,
};
pub use replication::{
    AckPolicy, Release, ReplicationConfig, Replicator, SendRange, DEFAULT_ACK_REPLICAS,
    DEFAULT_ACK_TIMEOUT, DEFAULT_WINDOW,
};
