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
//!
//! # Layout
//! - `flags`: the command-line arguments ([`BenchArgs`], [`Mix`], [`StoreKind`]).
//! - `report`: [`BenchReport`] and its parts, the text table and JSON, percentiles.
//! - `cpu`: CPU time and context switches from procfs, the machine.
//! - `load`: the load engine: phases, closed-loop workers, histograms, pacing.
//! - `cluster`: the in-process cluster (`chat_net::cluster` with the bench's settings).
//! - `chat`: the chat load, its set-up, subscribers and delivery check.
//! - `baseline`: the raw-ZeroMQ baseline (`chat_net::baseline`).
//!
//! [`Client`]: chat_net::client::Client
//! [`Subscriber`]: chat_net::client::Subscriber

mod baseline;
mod chat;
mod cluster;
mod cpu;
mod flags;
mod load;
mod report;
mod scale;

use anyhow::Context as _;
use chat_net::Shutdown;
use hdrhistogram::Histogram;

pub use chat::{DRAIN_MAX, DRAIN_QUIET, SETUP_DEADLINE, SETUP_STREAK, TAG_LEN};
pub use cpu::{process_cpu_seconds, thread_group, CLOCK_TICKS, UNNAMED_THREADS};
pub use flags::{parse_duration, BenchArgs, Mix, Op, StoreKind, HISTORY_LIMIT, MAX_THREADS};
pub use report::{
    BenchReport, CpuReport, DeliveryReport, Latency, LoadReport, Machine, OpReport, Ratio,
    ReplicaReport, RunConfig, ThreadCpu,
};
pub use scale::{history_scale, ScaleArgs};

use baseline::run_baseline;
use chat::run_chat;
use cpu::machine;
use load::{Progress, MAX_LATENCY_NS};

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
