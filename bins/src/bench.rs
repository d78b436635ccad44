//! `chat-bench`: closed-loop load on a chat cluster, with a raw-ZeroMQ baseline measured in
//! the same run, so the cost of the chat layers reads as a ratio on the same machine.
//!
//! # One run ([`run`])
//! 1. **Cluster.** Unless `--broker`/`--sub` name a running cluster, one is started in this
//!    process on loopback with OS-chosen ports: proxy, broker, reference and `--servers`
//!    servers with their default settings (a write is acknowledged once another server
//!    holds it) except the per-user flood protection, off unless `--rate-limit`; each on
//!    its own thread with its own ZeroMQ context (as separate processes would have), the
//!    servers on SQLite in a temporary directory (or in memory with `--store memory`). The
//!    run waits until every server, asked `status` on new connections, knows every other
//!    server and has caught up.
//! 2. **Setup.** A channel unique to the run (`bench-<run id>`) is created, and probes are
//!    published, each on a new connection (the broker keeps a connection on the server that
//!    served it last, new ones go round-robin), until [`SETUP_STREAK`] × servers in a row
//!    succeed (every server knows the channel); the clients log in; the subscribers
//!    subscribe and probes are published until each has received one (its subscription is
//!    live: slow joiner).
//! 3. **Load.** `--clients` threads, each with its own SDK [`Client`], send requests back to
//!    back (closed loop) drawn from `--mix`: `--warmup` unrecorded, then `--duration`
//!    recorded. The latency of each request (the SDK call, retries included) goes into an
//!    HDR histogram; failures are counted by error code and stay out of the histogram. A
//!    request belongs to the phase in which it started; the measured time runs from the start
//!    of the measured phase to the completion of its last request.
//! 4. **Delivery.** Every bench publication starts with a [`TAG_LEN`]-byte tag (phase `P`
//!    probe, `W` warm-up or `M` measured; run id; client; sequence number), padded to
//!    `--size` bytes. Subscribers keep the distinct measured publications they receive;
//!    after the load they get up to [`DRAIN_MAX`] for their counts to stop growing (no growth
//!    for [`DRAIN_QUIET`]). Each subscriber's set is compared with the acknowledged
//!    publishes: lost, duplicated, and delivered although not acknowledged (a publish that
//!    timed out on the client but was applied).
//!    Then every server's `status` is read ([`ReplicaReport`]): events, writes acknowledged
//!    without a replica, and whether the state digests agree.
//! 5. **Baseline.** With the chat cluster stopped: a ROUTER/DEALER `zmq::proxy_steerable`
//!    broker (stopped with `TERMINATE` on its control socket), `--servers` no-op REP workers
//!    echoing the request bytes, and `--clients` REQ clients sending `--size` bytes, each
//!    on its own context, for the same warm-up and duration.
//! 6. **Report.** A [`BenchReport`]: a text table ([`BenchReport::render`]) or JSON
//!    ([`BenchReport::to_json`]). A progress line goes to stderr every second.
//!
//! # CPU time
//! `utime + stime` of this process (fields 14 and 15 of `/proc/self/stat`) at the start and
//! the end of each measured phase, converted with [`CLOCK_TICKS`] = 100 ticks per second:
//! `USER_HZ` is 100 on every mainstream Linux platform (`getconf CLK_TCK`); it is assumed,
//! not queried, to stay free of `libc`. With an in-process cluster everything (clients,
//! broker, proxy, servers, subscribers) runs in this process, so the figure is the CPU of
//! the whole system under test; against a running cluster it is only the clients' and
//! subscribers' share. The same is read for every thread (`/proc/self/task/*/stat`) and
//! summed by thread name without its number ([`thread_group`]): `bench-server`,
//! `server-N-commit` (the servers' writer threads), `bench-broker`, `bench-proxy`,
//! `bench-reference`, `bench-client` (SDK callers), `chat-client-sub` (the SDK clients'
//! background subscriber threads, idle here), `bench-sub` (thread-less
//! [`Subscriber`]s counting), and for the baseline `bench-req`, `bench-echo`,
//! `bench-zmq-proxy`. libzmq's I/O threads take the name of the thread that created their
//! context's first socket, so they count with their component; threads that kept the
//! process name are reported as [`UNNAMED_THREADS`]. Context switches per request come from
//! `/proc/self/task/*/status`. Without `/proc` CPU is reported as absent.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chat_core::ratelimit::RateLimit;
use chat_core::{ErrorCode, HistoryTarget};
use chat_net::baseline::{EchoClient, EchoService};
use chat_net::client::{Client, ClientConfig, ClientError, ClientEvent, Subscriber};
use chat_net::cluster::Cluster;
use chat_net::Shutdown;
use chat_store::{HookedStore, MemoryStore, SqliteStore, Store};
use clap::{Args, Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;

/// Length of the tag that starts every bench publication: phase (1), run id (8 hex),
/// client (4 hex), sequence number (8 hex). `--size` must be at least this.
pub const TAG_LEN: usize = 21;
/// Longest any setup step (channel known everywhere, logins, live subscriptions) may take.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(15);
/// Consecutive successful probe publishes, per server, that show every server knows the
/// bench channel (the broker hands requests to servers in turn).
pub const SETUP_STREAK: usize = 3;
/// Longest wait after the load for the subscribers' counts to settle.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Counts that have not grown for this long are settled.
pub const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// CPU clock ticks per second assumed when reading `/proc/self/stat` (`USER_HZ`).
pub const CLOCK_TICKS: f64 = 100.0;
/// Most client threads (and subscribers, and servers) a run accepts.
pub const MAX_THREADS: usize = 4096;
/// Posts asked for by one `history` request of the mix.
pub const HISTORY_LIMIT: u32 = 20;
/// How often subscriber loops look at their stop flags.
const POLL: Duration = Duration::from_millis(50);
/// Longest latency the histograms hold, in nanoseconds (longer ones are recorded as this).
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Interval between two probe publishes while waiting for subscriptions.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// One kind of request of the chat mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `publish` of a `--size`-byte body on the bench channel.
    Publish,
    /// `history` of the bench channel, [`HISTORY_LIMIT`] posts.
    History,
    /// `users`.
    Users,
    /// `channels`.
    Channels,
    /// `status` of whichever server answers.
    Status,
}

impl Op {
    /// Every operation, in display order.
    pub const ALL: [Op; 5] = [
        Op::Publish,
        Op::History,
        Op::Users,
        Op::Channels,
        Op::Status,
    ];

    /// The name used in `--mix` and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::History => "history",
            Op::Users => "users",
            Op::Channels => "channels",
            Op::Status => "status",
        }
    }
}

/// A request mix: operations with integer weights (`publish=90,history=5,users=5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
}

impl Mix {
    /// Publishes only (the default).
    pub fn publish_only() -> Mix {
        Mix {
            weights: vec![(Op::Publish, 100)],
        }
    }

    /// Parses `op=weight` pairs separated by commas; weights are relative, zero drops the op.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut weights: Vec<(Op, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected op=weight, e.g. publish=90"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.as_str() == name.trim())
                .ok_or_else(|| {
                    format!("unknown operation {name:?}: use publish, history, users, channels or status")
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weights.iter().any(|(o, _)| *o == op) {
                return Err(format!("{name:?} appears twice in the mix"));
            }
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        if weights.is_empty() {
            return Err("the mix has no operation with a positive weight".into());
        }
        weights
            .iter()
            .try_fold(0u32, |acc, (_, w)| acc.checked_add(*w))
            .ok_or_else(|| "the weights add up to more than 2^32".to_string())?;
        Ok(Mix { weights })
    }

    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.weights.iter().map(|(_, w)| *w).sum()
    }

    /// The operation for `roll` in `0..total()`.
    pub fn pick(&self, roll: u32) -> Op {
        let mut left = roll;
        for (op, w) in &self.weights {
            if left < *w {
                return *op;
            }
            left -= w;
        }
        self.weights.last().map_or(Op::Publish, |(op, _)| *op)
    }

    /// Whether the mix publishes at all.
    pub fn publishes(&self) -> bool {
        self.weights.iter().any(|(op, _)| *op == Op::Publish)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(op, w)| format!("{}={w}", op.as_str()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Where the servers of the in-process cluster keep their events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// SQLite (WAL, `synchronous=FULL`) in a temporary directory: durable acknowledgements.
    Sqlite,
    /// In memory: what the chat layers cost without the disk.
    Memory,
}

impl StoreKind {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
        }
    }
}

/// Parses a duration: `5s`, `500ms`, `1.5s`, `2m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 5s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{s:?}: must be between 0 and 24 hours"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `chat-bench` flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Chat servers of the in-process cluster (also the baseline's echo workers).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Client threads, each with its own connection, sending requests back to back.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Measured time: `5s`, `500ms`, `1.5s`, `2m` (a bare number is seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unrecorded load before the measured time (same syntax as --duration).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes of each published message body (at least 21, the tag) and of baseline requests.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Request mix as relative weights, e.g. `publish=90,history=5,users=5`
    /// (operations: publish, history, users, channels, status).
    #[arg(long, default_value = "publish=100", value_parser = Mix::parse)]
    pub mix: Mix,
    /// Subscribers (the SDK's thread-less `Subscriber`) to the bench channel, counting every
    /// publication delivered.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Store of the in-process servers: sqlite (durable, temporary directory) or memory.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Parent of the temporary SQLite directory (default: the system temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra time added to every commit of the in-process servers, to model a slower disk
    /// than this machine's (network volumes take 1-10 ms per fsync); same syntax as
    /// --duration.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub commit_delay: Duration,
    /// Commit on each server's loop thread instead of its writer thread (the loop then
    /// waits for every fsync), to measure what the writer thread buys.
    #[arg(long)]
    pub inline_commit: bool,
    /// Per-user write limit (writes/s) of the in-process servers; 0, the default, turns the
    /// flood protection off, since each bench client is one user writing flat out (the
    /// servers' own default is 1000/s, bursts of 2000).
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u32,
    /// Other servers that must hold a write before its client hears OK (the servers'
    /// `--ack-replicas`; 0 measures local-only acknowledgements).
    #[arg(long, default_value_t = chat_sync::DEFAULT_ACK_REPLICAS)]
    pub ack_replicas: usize,
    /// `replicate` messages in flight to each peer (the servers' `--replicate-window`).
    #[arg(long, default_value_t = chat_sync::DEFAULT_WINDOW,
          value_parser = crate::daemons::parse_window)]
    pub replicate_window: usize,
    /// Broker frontend of a running cluster to load instead of starting one (with --sub).
    #[arg(long, requires = "sub")]
    pub broker: Option<String>,
    /// Proxy XPUB endpoint of that running cluster (with --broker).
    #[arg(long, requires = "broker")]
    pub sub: Option<String>,
    /// Skip the raw-ZeroMQ baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Print the report as a JSON object on stdout instead of the text table.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Only to build [`BenchArgs::default`] from the flags' own defaults.
#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    args: BenchArgs,
}

impl Default for BenchArgs {
    /// Every flag at its default (the same values as `chat-bench` with no flags).
    fn default() -> Self {
        DefaultsOnly::parse_from(["chat-bench"]).args
    }
}

impl BenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        for (flag, value, min) in [
            ("--servers", self.servers, 1),
            ("--clients", self.clients, 1),
            ("--subscribers", self.subscribers, 0),
        ] {
            if !(min..=MAX_THREADS).contains(&value) {
                bail!("{flag} must be between {min} and {MAX_THREADS}, not {value}");
            }
        }
        if self.clients > 0xffff {
            bail!("--clients must fit the tag (at most 65535)");
        }
        if self.size < TAG_LEN {
            bail!(
                "--size must be at least {TAG_LEN} bytes (the tag that identifies each publication)"
            );
        }
        if self.size > chat_core::validate::DEFAULT_MAX_MESSAGE_BYTES {
            bail!(
                "--size must be at most {} bytes (the servers' message limit)",
                chat_core::validate::DEFAULT_MAX_MESSAGE_BYTES
            );
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.broker.is_some() != self.sub.is_some() {
            bail!("--broker and --sub go together");
        }
        Ok(())
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Random id of the run (channel `bench-<id>`, tags of its publications).
    pub run_id: String,
    /// What was run.
    pub config: RunConfig,
    /// Where it ran.
    pub machine: Machine,
    /// The chat cluster under load.
    pub chat: LoadReport,
    /// Publications of the measured phase, per subscriber.
    pub delivery: Vec<DeliveryReport>,
    /// Every server's `status` after the load (those that answered), by name.
    pub replicas: Vec<ReplicaReport>,
    /// The raw-ZeroMQ baseline, unless skipped.
    pub baseline: Option<LoadReport>,
    /// Chat over baseline, when both ran.
    pub ratio: Option<Ratio>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

/// The parameters of a run, as used.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `in-process`, or the broker and proxy endpoints of the running cluster.
    pub target: String,
    /// Servers started (in-process) and baseline workers.
    pub servers: usize,
    /// Store of the in-process servers (`None` for a running cluster).
    pub store: Option<String>,
    /// Per-user write limit of the in-process servers (0: off).
    pub rate_limit: u32,
    /// Peer acknowledgements required per write by the in-process servers.
    pub ack_replicas: usize,
    /// Extra time per commit of the in-process servers, in milliseconds.
    pub commit_delay_ms: f64,
    /// Whether the in-process servers commit on their loop thread.
    pub inline_commit: bool,
    /// `replicate` messages in flight per peer in the in-process servers.
    pub replicate_window: usize,
    /// Client threads.
    pub clients: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Message body bytes.
    pub size: usize,
    /// Request mix.
    pub mix: String,
    /// Measured time asked for, in seconds.
    pub duration_s: f64,
    /// Warm-up, in seconds.
    pub warmup_s: f64,
}

/// The machine of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo` (empty if unknown).
    pub cpu_model: String,
    /// Clock ticks per second assumed for CPU times.
    pub clock_ticks: f64,
}

/// One load phase (chat or baseline).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Requests started in the measured phase.
    pub requests: u64,
    /// Of those, requests that succeeded.
    pub ok: u64,
    /// Failed requests by error code.
    pub errors: BTreeMap<String, u64>,
    /// Measured time: start of the phase to completion of its last request, in seconds.
    pub elapsed_s: f64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency of successful requests.
    pub latency: Latency,
    /// Latency per operation.
    pub operations: Vec<OpReport>,
    /// CPU time of this process during the phase (absent without `/proc`).
    pub cpu: Option<CpuReport>,
}

/// Latency figures of an HDR histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Requests recorded (equals the successful requests).
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Latency of one operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Operation name (`publish`, ..., `echo` for the baseline).
    pub op: String,
    /// Its latency figures.
    pub latency: Latency,
}

/// CPU time of this process during a phase.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// User plus system time, in seconds.
    pub seconds: f64,
    /// User time, in seconds.
    pub user_seconds: f64,
    /// System (kernel) time, in seconds.
    pub system_seconds: f64,
    /// User plus system over the phase's wall time, in percent of one core.
    pub percent: f64,
    /// CPU microseconds per successful request.
    pub us_per_request: f64,
    /// By thread group (thread name without its number), most first.
    pub threads: Vec<ThreadCpu>,
}

/// CPU of the threads of one group during a phase.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    /// Thread name without its trailing number (`bench-server`, `ZMQbg/IO`, ...).
    pub group: String,
    /// Threads in the group.
    pub threads: usize,
    /// User plus system time, in seconds.
    pub seconds: f64,
    /// That over the phase's wall time, in percent of one core.
    pub percent: f64,
    /// Context switches (voluntary and not) of the group's threads per successful request:
    /// how often a request wakes or preempts them.
    pub switches_per_request: f64,
}

/// What one subscriber received of the measured publications.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryReport {
    /// Subscriber number, from 1.
    pub subscriber: usize,
    /// Publishes acknowledged to the clients in the measured phase.
    pub acknowledged: u64,
    /// Distinct measured publications received.
    pub delivered: u64,
    /// Acknowledged publications never received.
    pub lost: u64,
    /// Receptions beyond the first of the same publication.
    pub duplicates: u64,
    /// Received publications whose publish was not acknowledged (failed on the client, yet
    /// applied).
    pub unacknowledged: u64,
}

/// One server's `status` after the load.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    /// Server name.
    pub name: String,
    /// Events applied (all origins).
    pub events: u64,
    /// Writes it acknowledged while no other live server held them.
    pub local_only_acks: u64,
    /// Batches it committed to its store since it started (one fsync each with SQLite).
    pub commits: u64,
    /// Digest of its replicated state.
    pub digest: String,
}

/// Chat over baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Chat throughput / baseline throughput.
    pub throughput: f64,
    /// Chat p99 / baseline p99.
    pub p99: f64,
}

impl BenchReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Whether every subscriber received exactly the acknowledged publications.
    pub fn no_loss(&self) -> bool {
        self.delivery.iter().all(|d| d.lost == 0)
    }

    /// The report as a plain-text table.
    pub fn render(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let target = match &c.store {
            Some(store) => format!(
                "in-process cluster, {} servers, {store} store{}{}, ack replicas {}, replicate window {}, per-user rate limit {}",
                c.servers,
                if c.commit_delay_ms > 0.0 {
                    format!(" (+{} ms per commit)", c.commit_delay_ms)
                } else {
                    String::new()
                },
                if c.inline_commit { ", commits on the loop thread" } else { "" },
                c.ack_replicas,
                c.replicate_window,
                match c.rate_limit {
                    0 => "off".to_string(),
                    n => format!("{n}/s"),
                }
            ),
            None => format!("running cluster {}", c.target),
        };
        let _ = writeln!(out, "chat-bench run {}: {target}", self.run_id);
        let _ = writeln!(
            out,
            "load: {} clients (closed loop), {} B bodies, mix {}, {:.1} s measured after {:.1} s warm-up, {} subscribers",
            c.clients, c.size, c.mix, c.duration_s, c.warmup_s, c.subscribers
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}{}",
            self.machine.nproc,
            self.machine.cpu_model,
            if self.interrupted {
                "  (INTERRUPTED)"
            } else {
                ""
            }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<16}{:>10}{:>11}{:>9}{:>9}{:>9}{:>10}{:>10}{:>8}{:>8}{:>12}",
            "",
            "ok",
            "req/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "errors",
            "CPU %",
            "CPU µs/req"
        );
        row(&mut out, "chat", &self.chat);
        if let Some(b) = &self.baseline {
            row(&mut out, "baseline (zmq)", b);
        }
        if let Some(r) = &self.ratio {
            let _ = writeln!(
                out,
                "{:<16}{:>10}{:>11}{:>9}{:>9}{:>9}",
                "chat / baseline",
                "",
                format!("{:.2}x", r.throughput),
                "",
                "",
                format!("{:.2}x", r.p99)
            );
        }
        let _ = writeln!(
            out,
            "\nCPU of this process in the measured phase (% of one core):"
        );
        for (label, load) in [
            ("chat", Some(&self.chat)),
            ("baseline", self.baseline.as_ref()),
        ] {
            if let Some(cpu) = load.and_then(|l| l.cpu.as_ref()) {
                let groups: Vec<String> = cpu
                    .threads
                    .iter()
                    .filter(|t| t.percent >= 1.0)
                    .map(|t| {
                        format!(
                            "{} {:.0} ({:.1} sw/req)",
                            t.group, t.percent, t.switches_per_request
                        )
                    })
                    .collect();
                let window = if cpu.percent > 0.0 {
                    cpu.seconds * 100.0 / cpu.percent
                } else {
                    0.0
                };
                let pct = |s: f64| {
                    if window > 0.0 {
                        100.0 * s / window
                    } else {
                        0.0
                    }
                };
                let _ = writeln!(
                    out,
                    "  {label:<9} user {:.0} + system {:.0}; by thread (context switches per request): {}",
                    pct(cpu.user_seconds),
                    pct(cpu.system_seconds),
                    groups.join(", ")
                );
            }
        }
        if self.chat.operations.len() > 1 {
            let _ = writeln!(out, "\nchat by operation:");
            for op in &self.chat.operations {
                let l = &op.latency;
                let _ = writeln!(
                    out,
                    "  {:<10}{:>10} ok   p50 {:>8.0} µs   p99 {:>8.0} µs   max {:>8.0} µs",
                    op.op, l.count, l.p50_us, l.p99_us, l.max_us
                );
            }
        }
        for (label, load) in [
            ("chat", Some(&self.chat)),
            ("baseline", self.baseline.as_ref()),
        ] {
            if let Some(load) = load.filter(|l| !l.errors.is_empty()) {
                let list: Vec<String> = load
                    .errors
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect();
                let _ = writeln!(out, "\nerrors ({label}): {}", list.join(", "));
            }
        }
        if !self.replicas.is_empty() {
            let list: Vec<String> = self
                .replicas
                .iter()
                .map(|r| {
                    format!(
                        "{} {} events in {} commits ({:.1} per commit), {} local-only acks",
                        r.name,
                        r.events,
                        r.commits,
                        r.events as f64 / r.commits.max(1) as f64,
                        r.local_only_acks
                    )
                })
                .collect();
            let same = self.replicas.windows(2).all(|w| w[0].digest == w[1].digest);
            let _ = writeln!(
                out,
                "\nreplicas after the load: {}; digests {}",
                list.join(", "),
                if same { "equal" } else { "DIFFER" }
            );
        }
        if !self.delivery.is_empty() {
            let _ = writeln!(out, "\npublications of the measured phase:");
            let _ = writeln!(
                out,
                "  {:>10}{:>14}{:>11}{:>8}{:>12}{:>16}",
                "subscriber", "acknowledged", "delivered", "lost", "duplicates", "unacknowledged"
            );
            for d in &self.delivery {
                let _ = writeln!(
                    out,
                    "  {:>10}{:>14}{:>11}{:>8}{:>12}{:>16}",
                    d.subscriber,
                    d.acknowledged,
                    d.delivered,
                    d.lost,
                    d.duplicates,
                    d.unacknowledged
                );
            }
            let lost: u64 = self.delivery.iter().map(|d| d.lost).sum();
            let _ = writeln!(
                out,
                "  loss: {}",
                if lost == 0 {
                    "none".to_string()
                } else {
                    format!("{lost} acknowledged publications not delivered")
                }
            );
        }
        out
    }
}

fn row(out: &mut String, label: &str, l: &LoadReport) {
    let errors: u64 = l.errors.values().sum();
    let (pct, per) = l
        .cpu
        .as_ref()
        .map_or(("-".to_string(), "-".to_string()), |c| {
            (
                format!("{:.0}", c.percent),
                format!("{:.1}", c.us_per_request),
            )
        });
    let lat = &l.latency;
    let _ = writeln!(
        out,
        "{:<16}{:>10}{:>11.1}{:>9.0}{:>9.0}{:>9.0}{:>10.0}{:>10.0}{:>8}{:>8}{:>12}",
        label,
        l.ok,
        l.throughput,
        lat.p50_us,
        lat.p90_us,
        lat.p99_us,
        lat.p999_us,
        lat.max_us,
        errors,
        pct,
        per
    );
}

/// Runs the chat load and (unless `--no-baseline`) the baseline; `stop` (Ctrl-C) ends the
/// current measured phase early and skips what remains.
pub fn run(args: &BenchArgs, stop: &Shutdown) -> anyhow::Result<BenchReport> {
    args.check()?;
    let template = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .context("creating the latency histogram")?;
    let run_id: u32 = rand::random();
    let progress = Progress { quiet: args.quiet };
    let chat = run_chat(args, run_id, stop, &template, &progress)?;
    let mut interrupted = chat.interrupted;
    let baseline = if args.no_baseline || interrupted {
        None
    } else {
        let b = run_baseline(args, stop, &template, &progress)?;
        interrupted |= b.interrupted;
        Some(b.load)
    };
    let ratio = baseline.as_ref().map(|b| Ratio {
        throughput: ratio(chat.load.throughput, b.throughput),
        p99: ratio(chat.load.latency.p99_us, b.latency.p99_us),
    });
    let external = args.broker.as_ref().zip(args.sub.as_ref());
    Ok(BenchReport {
        run_id: format!("{run_id:08x}"),
        config: RunConfig {
            target: external.map_or("in-process".to_string(), |(b, s)| {
                format!("broker={b} sub={s}")
            }),
            servers: args.servers,
            store: external.is_none().then(|| args.store.as_str().to_string()),
            rate_limit: args.rate_limit,
            ack_replicas: args.ack_replicas,
            replicate_window: args.replicate_window,
            commit_delay_ms: args.commit_delay.as_secs_f64() * 1000.0,
            inline_commit: args.inline_commit,
            clients: args.clients,
            subscribers: args.subscribers,
            size: args.size,
            mix: args.mix.to_string(),
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
        },
        machine: machine(),
        chat: chat.load,
        delivery: chat.delivery,
        replicas: chat.replicas,
        baseline,
        ratio,
        interrupted,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        clock_ticks: CLOCK_TICKS,
    }
}

/// Reads a `stat` file of procfs: `(command name, utime, stime)` in clock ticks.
fn read_stat(path: &std::path::Path) -> Option<(String, u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // The fields after the name start at field 3 (state): utime is 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime, stime))
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
pub fn process_cpu_seconds() -> Option<f64> {
    read_stat(std::path::Path::new("/proc/self/stat")).map(|(_, u, s)| (u + s) as f64 / CLOCK_TICKS)
}

/// The group a thread's CPU is reported under: its name without a trailing number
/// (`bench-server-2` → `bench-server`, `ZMQbg/IO/0` → `ZMQbg/IO`).
pub fn thread_group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '/')
        .to_string()
}

/// Context switches of a thread so far (voluntary plus involuntary), from its
/// `/proc/.../status`.
fn read_switches(path: &std::path::Path) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let mut total = 0;
    for line in status.lines() {
        if let Some(v) = line
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
        {
            total += v.trim().parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// CPU ticks of the process and of each of its threads at one instant.
struct CpuSnapshot {
    user: u64,
    system: u64,
    /// Thread id → (name, user + system ticks, context switches).
    threads: BTreeMap<String, (String, u64, u64)>,
}

/// Threads that kept the process name: libzmq's I/O and reaper threads (this build does
/// not name them). The main thread is reported as `main`.
pub const UNNAMED_THREADS: &str = "zmq-io";

fn cpu_snapshot() -> Option<CpuSnapshot> {
    let (process, user, system) = read_stat(std::path::Path::new("/proc/self/stat"))?;
    let pid = std::process::id().to_string();
    let mut threads = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            if let Some((name, u, s)) = read_stat(&entry.path().join("stat")) {
                let tid = entry.file_name().to_string_lossy().into_owned();
                let name = if tid == pid {
                    "main".to_string()
                } else if name == process {
                    UNNAMED_THREADS.to_string()
                } else {
                    name
                };
                let switches = read_switches(&entry.path().join("status")).unwrap_or(0);
                threads.insert(tid, (name, u + s, switches));
            }
        }
    }
    Some(CpuSnapshot {
        user,
        system,
        threads,
    })
}

/// CPU used between two snapshots, over `window` of wall time.
fn cpu_report(a: &CpuSnapshot, b: &CpuSnapshot, window: f64, ok: u64) -> CpuReport {
    let secs = |ticks: u64| ticks as f64 / CLOCK_TICKS;
    let pct = |s: f64| {
        if window > 0.0 {
            100.0 * s / window
        } else {
            0.0
        }
    };
    let user = secs(b.user.saturating_sub(a.user));
    let system = secs(b.system.saturating_sub(a.system));
    let seconds = user + system;
    let mut groups: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for (tid, (name, ticks, switches)) in &b.threads {
        let (t0, s0) = a.threads.get(tid).map_or((0, 0), |(_, t, s)| (*t, *s));
        let g = groups.entry(thread_group(name)).or_default();
        g.0 += 1;
        g.1 += ticks.saturating_sub(t0);
        g.2 += switches.saturating_sub(s0);
    }
    let mut threads: Vec<ThreadCpu> = groups
        .into_iter()
        .filter(|(_, (_, ticks, _))| *ticks > 0)
        .map(|(group, (threads, ticks, switches))| ThreadCpu {
            group,
            threads,
            seconds: secs(ticks),
            percent: pct(secs(ticks)),
            switches_per_request: if ok > 0 {
                switches as f64 / ok as f64
            } else {
                0.0
            },
        })
        .collect();
    threads.sort_by(|x, y| y.seconds.total_cmp(&x.seconds));
    CpuReport {
        seconds,
        user_seconds: user,
        system_seconds: system,
        percent: pct(seconds),
        us_per_request: if ok > 0 {
            seconds * 1e6 / ok as f64
        } else {
            0.0
        },
        threads,
    }
}

// ---------------------------------------------------------------------------------------
// Phases, workers and histograms, shared by the chat load and the baseline.

const SETUP: u8 = 0;
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
const STOP: u8 = 3;

/// The phase every worker of a load reads before each request, and the measured count.
#[derive(Default)]
struct Control {
    phase: AtomicU8,
    measured: AtomicU64,
}

/// What one worker thread measured.
struct WorkerStats {
    hists: Vec<(&'static str, Histogram<u64>)>,
    errors: BTreeMap<String, u64>,
    requests: u64,
    last_done: Option<Instant>,
}

/// Sends requests back to back with `one(measured, seq)` until the phase is `STOP`;
/// records those started in the measured phase.
fn drive(
    ctl: &Control,
    template: &Histogram<u64>,
    mut one: impl FnMut(bool, u64) -> (&'static str, Result<(), String>),
) -> WorkerStats {
    let mut stats = WorkerStats {
        hists: Vec::new(),
        errors: BTreeMap::new(),
        requests: 0,
        last_done: None,
    };
    let mut seq = 0u64;
    loop {
        let measured = match ctl.phase.load(Ordering::Acquire) {
            SETUP => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            WARMUP => false,
            MEASURE => true,
            _ => break,
        };
        let started = Instant::now();
        let (op, result) = one(measured, seq);
        seq += 1;
        if !measured {
            continue;
        }
        let done = Instant::now();
        stats.requests += 1;
        stats.last_done = Some(done);
        match result {
            Ok(()) => {
                let ns = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
                let i = match stats.hists.iter().position(|(name, _)| *name == op) {
                    Some(i) => i,
                    None => {
                        stats.hists.push((op, template.clone()));
                        stats.hists.len() - 1
                    }
                };
                stats.hists[i].1.saturating_record(ns.max(1));
            }
            Err(code) => *stats.errors.entry(code).or_default() += 1,
        }
        ctl.measured.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        count: h.len(),
        mean_us: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// Timing of a load phase, from [`Progress::pace`].
struct Timing {
    start: Instant,
    stopped: Instant,
    /// CPU at `start` and at `stopped`.
    cpu: Option<(CpuSnapshot, CpuSnapshot)>,
    interrupted: bool,
}

/// Merges the workers' results into a report.
fn merge(
    workers: Vec<WorkerStats>,
    timing: &Timing,
    template: &Histogram<u64>,
) -> anyhow::Result<LoadReport> {
    let mut total = template.clone();
    let mut by_op: Vec<(&'static str, Histogram<u64>)> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut requests = 0;
    let mut last = None;
    for w in workers {
        requests += w.requests;
        last = last.max(w.last_done);
        for (code, n) in w.errors {
            *errors.entry(code).or_default() += n;
        }
        for (op, h) in w.hists {
            total.add(&h).context("merging latency histograms")?;
            match by_op.iter_mut().find(|(name, _)| *name == op) {
                Some((_, acc)) => acc.add(&h).context("merging latency histograms")?,
                None => by_op.push((op, h)),
            }
        }
    }
    by_op.sort_by_key(|(op, _)| {
        Op::ALL
            .iter()
            .position(|o| o.as_str() == *op)
            .unwrap_or(usize::MAX)
    });
    // Closed loop: some request is in flight from `start` until the last one completes.
    let end = last.map_or(timing.stopped, |l| l.max(timing.stopped));
    let elapsed = end.saturating_duration_since(timing.start).as_secs_f64();
    let ok = total.len();
    let throughput = if elapsed > 0.0 {
        ok as f64 / elapsed
    } else {
        0.0
    };
    let window = timing.stopped.duration_since(timing.start).as_secs_f64();
    let cpu = timing
        .cpu
        .as_ref()
        .map(|(a, b)| cpu_report(a, b, window, ok));
    Ok(LoadReport {
        requests,
        ok,
        errors,
        elapsed_s: elapsed,
        throughput,
        latency: latency(&total),
        operations: by_op
            .iter()
            .map(|(op, h)| OpReport {
                op: op.to_string(),
                latency: latency(h),
            })
            .collect(),
        cpu,
    })
}

/// The stderr progress line.
struct Progress {
    quiet: bool,
}

impl Progress {
    fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("chat-bench: {line}");
        }
    }

    /// Runs the warm-up and the measured phase of `ctl` (workers already running), with a
    /// progress line every second; leaves the phase at `STOP`.
    fn pace(&self, label: &str, ctl: &Control, args: &BenchArgs, stop: &Shutdown) -> Timing {
        if !args.warmup.is_zero() {
            self.say(&format!(
                "{label}: warming up for {:.1} s",
                args.warmup.as_secs_f64()
            ));
        }
        ctl.phase.store(WARMUP, Ordering::Release);
        let warm_end = Instant::now() + args.warmup;
        while !stop.is_triggered() {
            let left = warm_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        let cpu0 = cpu_snapshot();
        let start = Instant::now();
        ctl.phase.store(MEASURE, Ordering::Release);
        let end = start + args.duration;
        let mut next_tick = start + Duration::from_secs(1);
        let (mut last_count, mut last_at) = (0u64, start);
        while !stop.is_triggered() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if now >= next_tick {
                let count = ctl.measured.load(Ordering::Relaxed);
                let rate = (count - last_count) as f64
                    / now.duration_since(last_at).as_secs_f64().max(1e-9);
                self.say(&format!(
                    "{label}: {:>5.1} s / {:.1} s  {count:>9} requests  {rate:>9.0} req/s",
                    now.duration_since(start).as_secs_f64(),
                    args.duration.as_secs_f64(),
                ));
                (last_count, last_at) = (count, now);
                next_tick += Duration::from_secs(1);
            }
            let wake = end.min(next_tick);
            std::thread::sleep(
                wake.saturating_duration_since(now)
                    .min(Duration::from_millis(100)),
            );
        }
        ctl.phase.store(STOP, Ordering::Release);
        let stopped = Instant::now();
        let cpu = cpu0.zip(cpu_snapshot());
        Timing {
            start,
            stopped,
            cpu,
            interrupted: stop.is_triggered(),
        }
    }
}

/// Runs a closure when dropped: stops worker threads on every early return.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn join<T>(handles: Vec<JoinHandle<T>>, what: &str) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    let mut panicked = false;
    for h in handles {
        match h.join() {
            Ok(v) => out.push(v),
            Err(_) => panicked = true,
        }
    }
    if panicked {
        bail!("a {what} thread panicked");
    }
    Ok(out)
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .with_context(|| format!("starting thread {name}"))
}

// ---------------------------------------------------------------------------------------
// The chat cluster and its load.

/// The in-process cluster of a run and its SQLite directory, removed once the cluster has
/// stopped (fields drop in order).
struct InProcess {
    cluster: Cluster,
    _dir: Option<tempfile::TempDir>,
}

/// Starts proxy, broker, reference and `--servers` servers on threads of this process.
fn start_cluster(args: &BenchArgs) -> anyhow::Result<InProcess> {
    let dir = match args.store {
        StoreKind::Memory => None,
        StoreKind::Sqlite => Some(
            match &args.data_dir {
                Some(parent) => tempfile::Builder::new()
                    .prefix("chat-bench-")
                    .tempdir_in(parent),
                None => tempfile::Builder::new().prefix("chat-bench-").tempdir(),
            }
            .context("creating the temporary data directory")?,
        ),
    };
    let path = dir.as_ref().map(|d| d.path().to_path_buf());
    let delay = args.commit_delay;
    let (rate_limit, inline_commit) = (args.rate_limit, args.inline_commit);
    let (ack_replicas, window) = (args.ack_replicas, args.replicate_window);
    let cluster = Cluster::builder()
        .servers(args.servers)
        .reference(true)
        .thread_prefix("bench")
        .stores(move |name| {
            let mut store: Box<dyn Store> = match &path {
                None => Box::new(MemoryStore::default()),
                Some(d) => Box::new(SqliteStore::open(&d.join(name))?),
            };
            if !delay.is_zero() {
                // A slower disk: every commit takes that much longer.
                store = Box::new(HookedStore::new(
                    store,
                    Box::new(move |_| std::thread::sleep(delay)),
                ));
            }
            Ok(store)
        })
        .configure(move |cfg| {
            cfg.rate_limit = match rate_limit {
                0 => RateLimit::disabled(),
                n => RateLimit::new(n, n.saturating_mul(2)),
            };
            cfg.inline_commit = inline_commit;
            cfg.replication = chat_sync::ReplicationConfig {
                ack_replicas,
                window,
                ..chat_sync::ReplicationConfig::default()
            };
        })
        .start()?;
    Ok(InProcess { cluster, _dir: dir })
}

/// The tag of a bench publication: phase, run, client, sequence number.
fn write_body(body: &mut String, phase: char, run: u32, client: u16, seq: u32, size: usize) {
    body.clear();
    let _ = write!(body, "{phase}{run:08x}{client:04x}{seq:08x}");
    while body.len() < size {
        body.push('.');
    }
}

/// Reads the tag of a publication of run `run`: `(phase, client, seq)`.
fn parse_tag(message: &str, run: u32) -> Option<(u8, u16, u32)> {
    let tag = message.get(..TAG_LEN)?;
    let phase = tag.as_bytes()[0];
    let their_run = u32::from_str_radix(tag.get(1..9)?, 16).ok()?;
    if their_run != run {
        return None;
    }
    let client = u16::from_str_radix(tag.get(9..13)?, 16).ok()?;
    let seq = u32::from_str_radix(tag.get(13..21)?, 16).ok()?;
    Some((phase, client, seq))
}

fn key(client: u16, seq: u32) -> u64 {
    (u64::from(client) << 32) | u64::from(seq)
}

/// Counters a subscriber thread shares while running.
#[derive(Default)]
struct SubShared {
    live: AtomicBool,
    received: AtomicU64,
}

/// What a subscriber thread kept.
#[derive(Default)]
struct SubStats {
    seen: HashSet<u64>,
    received: u64,
}

fn subscriber_loop(
    mut sub: Subscriber,
    channel: String,
    run: u32,
    shared: Arc<SubShared>,
    stop: Arc<AtomicBool>,
) -> SubStats {
    let mut stats = SubStats {
        seen: HashSet::new(),
        received: 0,
    };
    while !stop.load(Ordering::Acquire) {
        match sub.recv(POLL) {
            Ok(Some(ClientEvent::Post(p))) if p.channel == channel => {
                match parse_tag(&p.message, run) {
                    Some((b'P', _, _)) => shared.live.store(true, Ordering::Release),
                    Some((b'M', client, seq)) => {
                        stats.received += 1;
                        stats.seen.insert(key(client, seq));
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bench subscriber stopped");
                break;
            }
        }
    }
    stats
}

struct ChatOutcome {
    load: LoadReport,
    delivery: Vec<DeliveryReport>,
    replicas: Vec<ReplicaReport>,
    interrupted: bool,
}

/// Retries `f` on failure (every [`PROBE_INTERVAL`]) until [`SETUP_DEADLINE`].
fn with_retry<T>(what: &str, mut f: impl FnMut() -> Result<T, ClientError>) -> anyhow::Result<T> {
    let end = Instant::now() + SETUP_DEADLINE;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= end => {
                return Err(anyhow::Error::new(e).context(format!("{what} (setup)")))
            }
            Err(_) => std::thread::sleep(PROBE_INTERVAL),
        }
    }
}

fn run_chat(
    args: &BenchArgs,
    run: u32,
    stop: &Shutdown,
    template: &Histogram<u64>,
    progress: &Progress,
) -> anyhow::Result<ChatOutcome> {
    let cluster = match (&args.broker, &args.sub) {
        (Some(_), Some(_)) => None,
        _ => {
            progress.say(&format!(
                "starting {} servers ({} store), broker, proxy and reference on loopback",
                args.servers,
                args.store.as_str()
            ));
            Some(start_cluster(args)?)
        }
    };
    let (broker, sub) = match (&cluster, &args.broker, &args.sub) {
        (Some(c), _, _) => {
            let endpoints = c.cluster.endpoints();
            (endpoints.frontend.clone(), endpoints.xpub.clone())
        }
        (None, Some(b), Some(s)) => (b.clone(), s.clone()),
        _ => bail!("--broker and --sub go together"),
    };
    let config = ClientConfig {
        broker,
        sub,
        ..ClientConfig::default()
    };
    let channel = format!("bench-{run:08x}");
    let setup_user = format!("bench-{run:08x}-setup");
    let mut probe = String::new();
    let mut probe_seq = 0u32;
    let mut publish_probe = |client: &Client| {
        write_body(&mut probe, 'P', run, 0, probe_seq, args.size);
        probe_seq = probe_seq.wrapping_add(1);
        client.publish(&setup_user, &channel, &probe)
    };

    // The cluster, formed; the channel, known to every server.
    let setup = Client::connect(config.clone()).context("connecting the setup client")?;
    if cluster.is_some() {
        wait_formed(&config, args.servers)?;
    }
    with_retry("creating the bench channel", || {
        match setup.create_channel(&channel) {
            Err(e) if e.code() == ErrorCode::AlreadyExists => Ok(()), // a retry applied twice
            other => other,
        }
    })?;
    let need = SETUP_STREAK * args.servers;
    let mut streak = 0;
    let end = Instant::now() + SETUP_DEADLINE;
    while streak < need {
        if Instant::now() >= end {
            bail!(
                "the bench channel {channel} did not reach every server within {SETUP_DEADLINE:?}"
            );
        }
        match on_fresh(&config, &mut publish_probe) {
            Ok(()) => streak += 1,
            Err(_) => {
                streak = 0;
                std::thread::sleep(PROBE_INTERVAL);
            }
        }
    }

    // Subscribers, live; clients, logged in. Each connects on its own thread, so that the
    // I/O threads of its ZeroMQ context are named after it (CPU by thread group).
    let sub_stop = Arc::new(AtomicBool::new(false));
    let flag = sub_stop.clone();
    let _stop_subscribers = OnDrop(move || flag.store(true, Ordering::Release));
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), String>>();
    let mut subs = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let shared = Arc::new(SubShared::default());
        let (sh, st, ch) = (shared.clone(), sub_stop.clone(), channel.clone());
        let (config, ready) = (config.clone(), ready_tx.clone());
        let thread = spawn(format!("bench-sub-{i}"), move || {
            // The SDK's thread-less subscriber: events are read here, one wake-up each.
            let connected =
                Subscriber::connect(&config.sub).and_then(|mut s| s.subscribe(&ch).map(|()| s));
            match connected {
                Ok(client) => {
                    let _ = ready.send(Ok(()));
                    subscriber_loop(client, ch, run, sh, st)
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("subscribing to the bench channel: {e}")));
                    SubStats::default()
                }
            }
        })?;
        subs.push((shared, thread));
    }
    wait_ready(&ready_rx, args.subscribers)?;
    let end = Instant::now() + SETUP_DEADLINE;
    while !subs.iter().all(|(s, _)| s.live.load(Ordering::Acquire)) {
        if Instant::now() >= end {
            bail!("a subscription to {channel} never became live within {SETUP_DEADLINE:?}");
        }
        let _ = publish_probe(&setup);
        std::thread::sleep(PROBE_INTERVAL);
    }

    let ctl = Arc::new(Control::default());
    let c = ctl.clone();
    let _stop_workers = OnDrop(move || c.phase.store(STOP, Ordering::Release));
    let mut workers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (ctl, template, mix, channel) = (
            ctl.clone(),
            template.clone(),
            args.mix.clone(),
            channel.clone(),
        );
        let (config, ready) = (config.clone(), ready_tx.clone());
        let size = args.size;
        let id = u16::try_from(i).unwrap_or(u16::MAX);
        workers.push(spawn(format!("bench-client-{i}"), move || {
            let user = format!("bench-{run:08x}-c{i}");
            let connected = Client::connect(config)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    with_retry("logging a bench client in", || c.login(&user)).map(|()| c)
                });
            let client = match connected {
                Ok(client) => {
                    let _ = ready.send(Ok(()));
                    client
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("{e:#}")));
                    return None;
                }
            };
            let mut rng = rand::thread_rng();
            let total = mix.total();
            let mut body = String::with_capacity(size);
            let mut acked: Vec<u32> = Vec::new();
            let stats = drive(&ctl, &template, |measured, seq| {
                let op = mix.pick(rng.gen_range(0..total));
                let result = match op {
                    Op::Publish => {
                        let seq = seq as u32; // the tag holds 32 bits
                        let phase = if measured { 'M' } else { 'W' };
                        write_body(&mut body, phase, run, id, seq, size);
                        let r = client.publish(&user, &channel, &body);
                        if r.is_ok() && measured {
                            acked.push(seq);
                        }
                        r
                    }
                    Op::History => client
                        .history(HistoryTarget::Channel(channel.clone()), None, HISTORY_LIMIT)
                        .map(drop),
                    Op::Users => client.users().map(drop),
                    Op::Channels => client.channels().map(drop),
                    Op::Status => client.status().map(drop),
                };
                (
                    op.as_str(),
                    result.map_err(|e| e.code().as_str().to_string()),
                )
            });
            Some((stats, id, acked))
        })?);
    }
    wait_ready(&ready_rx, args.clients)?;

    // The load.
    progress.say(&format!(
        "chat: {} clients, {} B, mix {}, {} subscribers",
        args.clients, args.size, args.mix, args.subscribers
    ));
    let timing = progress.pace("chat", &ctl, args, stop);
    let results: Vec<_> = join(workers, "bench client")?
        .into_iter()
        .flatten()
        .collect();

    // Let the subscribers catch up, then compare.
    let acked_total: u64 = results.iter().map(|(_, _, a)| a.len() as u64).sum();
    settle(&subs, acked_total, progress);
    sub_stop.store(true, Ordering::Release);
    let (shared, threads): (Vec<_>, Vec<_>) = subs.into_iter().unzip();
    drop(shared);
    let seen = join(threads, "subscriber")?;
    let replicas = replicas(&config, args.servers);
    let acked: HashSet<u64> = results
        .iter()
        .flat_map(|(_, id, a)| a.iter().map(move |s| key(*id, *s)))
        .collect();
    let delivery = seen
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let delivered_acked = s.seen.iter().filter(|k| acked.contains(k)).count() as u64;
            DeliveryReport {
                subscriber: i + 1,
                acknowledged: acked.len() as u64,
                delivered: s.seen.len() as u64,
                lost: acked.len() as u64 - delivered_acked,
                duplicates: s.received - s.seen.len() as u64,
                unacknowledged: s.seen.len() as u64 - delivered_acked,
            }
        })
        .collect();
    let load = merge(
        results.into_iter().map(|(s, _, _)| s).collect(),
        &timing,
        template,
    )?;
    drop(setup);
    drop(cluster);
    Ok(ChatOutcome {
        load,
        delivery,
        replicas,
        interrupted: timing.interrupted,
    })
}

/// Waits for `n` threads to report that they are connected (or why they are not).
fn wait_ready(
    ready: &crossbeam_channel::Receiver<Result<(), String>>,
    n: usize,
) -> anyhow::Result<()> {
    let end = Instant::now() + SETUP_DEADLINE * 2;
    for _ in 0..n {
        match ready.recv_deadline(end) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!(
                "bench threads did not connect within {:?}",
                SETUP_DEADLINE * 2
            ),
        }
    }
    Ok(())
}

/// Runs `f` on a client of its own: a new connection, which the broker hands to the next
/// server in turn (it keeps a connection on the server that served it last).
fn on_fresh<T>(
    config: &ClientConfig,
    f: impl FnOnce(&Client) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let client = Client::connect(config.clone())?;
    f(&client)
}

/// Waits until `servers` distinct servers have answered `status` knowing the
/// `servers - 1` others and caught up, and the last [`SETUP_STREAK`] × `servers` replies
/// (each on a new connection) all did.
fn wait_formed(config: &ClientConfig, servers: usize) -> anyhow::Result<()> {
    let need = SETUP_STREAK * servers;
    let end = Instant::now() + SETUP_DEADLINE;
    let mut streak = 0;
    let mut formed: HashSet<String> = HashSet::new();
    let mut last = String::from("no reply");
    while streak < need || formed.len() < servers {
        if Instant::now() >= end {
            bail!("the cluster did not form within {SETUP_DEADLINE:?}; last status: {last}");
        }
        match on_fresh(config, Client::status) {
            Ok(st)
                if st.caught_up
                    && st.peers.iter().filter(|p| p.name != st.name).count() + 1 >= servers =>
            {
                formed.insert(st.name);
                streak += 1;
            }
            other => {
                last = match other {
                    Ok(st) => format!(
                        "{} knows {} peers, caught up: {}",
                        st.name,
                        st.peers.len(),
                        st.caught_up
                    ),
                    Err(e) => e.to_string(),
                };
                streak = 0;
                std::thread::sleep(PROBE_INTERVAL);
            }
        }
    }
    Ok(())
}

/// Reads `status` on new connections until `servers` servers answered (bounded), by name.
fn replicas(config: &ClientConfig, servers: usize) -> Vec<ReplicaReport> {
    let mut found: BTreeMap<String, ReplicaReport> = BTreeMap::new();
    for _ in 0..servers * 8 {
        if found.len() >= servers {
            break;
        }
        if let Ok(st) = on_fresh(config, Client::status) {
            found.insert(
                st.name.clone(),
                ReplicaReport {
                    name: st.name,
                    events: st.events,
                    local_only_acks: st.local_only_acks,
                    commits: st.commits,
                    digest: st.digest,
                },
            );
        }
    }
    found.into_values().collect()
}

/// Waits (at most [`DRAIN_MAX`]) until the subscribers' counts stop growing.
fn settle(subs: &[(Arc<SubShared>, JoinHandle<SubStats>)], acked: u64, progress: &Progress) {
    if subs.is_empty() {
        return;
    }
    let counts = || -> Vec<u64> {
        subs.iter()
            .map(|(s, _)| s.received.load(Ordering::Relaxed))
            .collect()
    };
    let start = Instant::now();
    let mut last = counts();
    let mut changed = start;
    loop {
        std::thread::sleep(POLL);
        let now = Instant::now();
        let current = counts();
        if current != last {
            (last, changed) = (current, now);
        }
        if now.duration_since(changed) >= DRAIN_QUIET || now.duration_since(start) >= DRAIN_MAX {
            break;
        }
    }
    if last.iter().any(|n| *n < acked) {
        progress.say(&format!(
            "subscribers settled after {:.1} s with {last:?} of {acked} publications",
            start.elapsed().as_secs_f64()
        ));
    }
}

// ---------------------------------------------------------------------------------------
// The raw-ZeroMQ baseline.

struct BaselineOutcome {
    load: LoadReport,
    interrupted: bool,
}

fn run_baseline(
    args: &BenchArgs,
    stop: &Shutdown,
    template: &Histogram<u64>,
    progress: &Progress,
) -> anyhow::Result<BaselineOutcome> {
    progress.say(&format!(
        "baseline: zmq::proxy ROUTER/DEALER, {} echo workers, {} REQ clients, {} B",
        args.servers, args.clients, args.size
    ));
    let service = EchoService::start(args.servers, "bench")?;
    let frontend = service.frontend().to_string();

    let ctl = Arc::new(Control::default());
    let c = ctl.clone();
    let _stop_workers = OnDrop(move || c.phase.store(STOP, Ordering::Release));
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (ctl, template, frontend) = (ctl.clone(), template.clone(), frontend.clone());
        let payload = vec![b'.'; args.size];
        clients.push(spawn(format!("bench-req-{i}"), move || {
            // Created here, so its I/O thread is named after this one.
            let mut client = EchoClient::new(&frontend);
            drive(&ctl, &template, |_, _| {
                let result = client.round_trip(&payload);
                ("echo", result.map_err(|e| e.code().to_string()))
            })
        })?);
    }
    let timing = progress.pace("baseline", &ctl, args, stop);
    let results = join(clients, "baseline client");
    drop(service);
    Ok(BaselineOutcome {
        load: merge(results?, &timing, template)?,
        interrupted: timing.interrupted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix = Mix::parse("publish=90,history=5,users=5").expect("mix");
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.pick(0), Op::Publish);
        assert_eq!(mix.pick(89), Op::Publish);
        assert_eq!(mix.pick(90), Op::History);
        assert_eq!(mix.pick(99), Op::Users);
        assert_eq!(mix.to_string(), "publish=90,history=5,users=5");
        assert!(Mix::parse("publish=1,publish=2").is_err());
        assert!(Mix::parse("post=1").is_err());
        assert!(Mix::parse("publish=0").is_err());
    }

    #[test]
    fn tags_round_trip_and_pad_to_size() {
        let mut body = String::new();
        write_body(&mut body, 'M', 0xdead_beef, 7, 42, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(parse_tag(&body, 0xdead_beef), Some((b'M', 7, 42)));
        assert_eq!(parse_tag(&body, 1), None);
        assert_eq!(parse_tag("short", 0xdead_beef), None);
    }

    #[test]
    fn defaults_match_the_flags() {
        let a = BenchArgs::default();
        assert_eq!(
            (a.servers, a.clients, a.subscribers, a.size),
            (3, 8, 2, 100)
        );
        assert_eq!(a.duration, Duration::from_secs(5));
        assert_eq!(a.warmup, Duration::from_secs(1));
        assert_eq!(a.mix, Mix::publish_only());
        assert_eq!(a.store, StoreKind::Sqlite);
    }

    #[test]
    fn thread_groups_drop_the_number() {
        assert_eq!(thread_group("bench-server-12"), "bench-server");
        assert_eq!(thread_group("ZMQbg/IO/0"), "ZMQbg/IO");
        assert_eq!(thread_group("chat-client-sub"), "chat-client-sub");
    }

    #[test]
    fn cpu_time_is_readable_here() {
        assert!(process_cpu_seconds().is_some_and(|s| s >= 0.0));
    }
}
