//! Flags and entry points of the long-running components: broker, proxy, server.
//!
//! Each `*Args` is a `clap` argument set used both by its own binary (`chat-broker`, ...)
//! and by the multi-call `chat` binary (`chat broker ...`), so `chat up` can start every
//! component from one executable.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chat_core::{Encoding, Limits};
use chat_net::broker::{run_broker, BrokerConfig};
use chat_net::proxy::{run_proxy, ProxyConfig};
use chat_net::reference::{run_reference, ReferenceConfig};
use chat_net::server::{run_server_reporting, ServerConfig};
use chat_net::Shutdown;
use chat_store::{MemoryStore, SqliteStore, Store};
use chat_sync::{AckPolicy, ClockSync, ReplicationConfig};
use clap::{Args, Subcommand};

/// Prints the endpoints a component actually bound, on stdout, for scripts and tests.
fn announce(component: &str, pairs: &[(&str, &str)]) {
    let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{component} listening {}", fields.join(" "));
}

/// `chat-broker`: the reliable request broker between clients and servers.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Endpoint clients connect to (ROUTER).
    #[arg(long, env = "CHAT_FRONTEND", default_value = "tcp://*:5555")]
    pub frontend: String,
    /// Endpoint servers connect to (ROUTER, READY/HB/REQ/REP protocol).
    #[arg(long, env = "CHAT_BACKEND", default_value = "tcp://*:5556")]
    pub backend: String,
    /// How long a request may wait for any server before the client gets `unavailable`.
    #[arg(long, env = "CHAT_QUEUE_TIMEOUT_MS", default_value_t = 2000)]
    pub queue_timeout_ms: u64,
    /// How long a request may take in all before the client gets `unavailable`.
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Most requests waiting for a server; beyond it requests are refused at once.
    #[arg(long, env = "CHAT_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,
}

/// Runs the broker until `shutdown`.
pub fn broker(args: &BrokerArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    let ctx = chat_net::Context::new();
    let cfg = BrokerConfig {
        frontend: args.frontend.clone(),
        backend: args.backend.clone(),
        queue_timeout: Duration::from_millis(args.queue_timeout_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        max_pending: args.max_pending,
        ..BrokerConfig::default()
    };
    let (tx, rx) = crossbeam_channel::bounded::<(String, String)>(1);
    let announcer = std::thread::spawn(move || {
        if let Ok((f, b)) = rx.recv() {
            announce(
                "chat-broker",
                &[("frontend", f.as_str()), ("backend", b.as_str())],
            );
        }
    });
    let result = run_broker(&ctx, &cfg, shutdown, Some(tx))
        .with_context(|| format!("broker on {} / {}", args.frontend, args.backend));
    let _ = announcer.join();
    result
}

/// `chat-proxy`: the XSUB/XPUB forwarder of publications.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Endpoint publishers (servers) connect to.
    #[arg(long, env = "CHAT_XSUB", default_value = "tcp://*:5557")]
    pub xsub: String,
    /// Endpoint subscribers (clients, servers) connect to.
    #[arg(long, env = "CHAT_XPUB", default_value = "tcp://*:5558")]
    pub xpub: String,
}

/// Runs the proxy until `shutdown`.
pub fn proxy(args: &ProxyArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    let ctx = chat_net::Context::new();
    let cfg = ProxyConfig {
        xsub: args.xsub.clone(),
        xpub: args.xpub.clone(),
    };
    let (tx, rx) = crossbeam_channel::bounded::<(String, String)>(1);
    let announcer = std::thread::spawn(move || {
        if let Ok((s, p)) = rx.recv() {
            announce("chat-proxy", &[("xsub", s.as_str()), ("xpub", p.as_str())]);
        }
    });
    let result = run_proxy(&ctx, &cfg, shutdown, Some(tx))
        .with_context(|| format!("proxy on {} / {}", args.xsub, args.xpub));
    let _ = announcer.join();
    result
}

/// `chat-web`: the browser client and cluster view.
#[derive(Debug, Clone, Args)]
pub struct WebArgs {
    /// HTTP listen address (`host:port`; port 0 lets the OS choose).
    #[arg(long, env = "CHAT_WEB_LISTEN", default_value = chat_web::DEFAULT_LISTEN)]
    pub listen: String,
    /// Broker frontend endpoint.
    #[arg(long, env = "CHAT_BROKER", default_value = chat_core::DEFAULT_BROKER_FRONTEND)]
    pub broker: String,
    /// Proxy XPUB endpoint.
    #[arg(long, env = "CHAT_SUB", default_value = chat_core::DEFAULT_PROXY_XPUB)]
    pub sub: String,
}

/// Runs the web UI until `shutdown` (prints `chat-web listening url=...`).
pub fn web(args: &WebArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    let cfg = chat_web::WebConfig {
        listen: args.listen.clone(),
        broker: args.broker.clone(),
        sub: args.sub.clone(),
    };
    chat_web::run_web(&cfg, shutdown)
}

/// `chat-reference`: ranks for server names, the live-server list, heartbeats.
#[derive(Debug, Clone, Args)]
pub struct ReferenceArgs {
    /// Endpoint servers connect to (REQ clients are answered by a ROUTER).
    #[arg(long, env = "CHAT_REFERENCE_BIND", default_value = "tcp://*:5559")]
    pub bind: String,
    /// How long a server may stay silent (no rank, no heartbeat) before it leaves `list`.
    #[arg(long, env = "CHAT_REFERENCE_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Directory where assigned ranks are kept (`ranks.json`, written before a rank is
    /// handed out), so a restart never gives a server's rank to another one; without it
    /// ranks live in memory and a restarted reference forgets those of absent servers.
    #[arg(long, env = "CHAT_REFERENCE_DATA")]
    pub data: Option<PathBuf>,
}

/// Runs the reference until `shutdown`.
pub fn reference(args: &ReferenceArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    let ctx = chat_net::Context::new();
    let cfg = ReferenceConfig {
        bind: args.bind.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
        data: args.data.clone(),
        ..ReferenceConfig::default()
    };
    let (tx, rx) = crossbeam_channel::bounded::<String>(1);
    let announcer = std::thread::spawn(move || {
        if let Ok(endpoint) = rx.recv() {
            announce("chat-reference", &[("bind", endpoint.as_str())]);
        }
    });
    let result = run_reference(&ctx, &cfg, shutdown, Some(tx))
        .with_context(|| format!("reference on {}", args.bind));
    let _ = announcer.join();
    result
}

/// `chat-server`: one replica holding the chat state.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    /// Unique name of this server (the origin of its events).
    #[arg(long, env = "CHAT_NAME", default_value = "server-1")]
    pub name: String,
    /// Data directory (SQLite database); default `./data/<name>`.
    #[arg(long, env = "CHAT_DATA")]
    pub data: Option<PathBuf>,
    /// Keep everything in memory (nothing survives a restart; for experiments).
    #[arg(long)]
    pub memory: bool,
    /// Broker backend endpoint.
    #[arg(long, env = "CHAT_BROKER", default_value = chat_core::DEFAULT_BROKER_BACKEND)]
    pub broker: String,
    /// Proxy XSUB endpoint (publications and replication go out here).
    #[arg(long = "pub", env = "CHAT_PUB", default_value = chat_core::DEFAULT_PROXY_XSUB)]
    pub publish: String,
    /// Proxy XPUB endpoint (replication comes in here).
    #[arg(long = "sub", env = "CHAT_SUB", default_value = chat_core::DEFAULT_PROXY_XPUB)]
    pub subscribe: String,
    /// Reference service endpoint (ranks, live servers); `none` runs without peers.
    #[arg(long, env = "CHAT_REFERENCE", default_value = chat_core::DEFAULT_REFERENCE)]
    pub reference: String,
    /// Endpoint this server binds for server-to-server requests (`tcp://127.0.0.1:*` picks a port).
    #[arg(long, env = "CHAT_PEER", default_value = "tcp://127.0.0.1:5601")]
    pub peer: String,
    /// Endpoint other servers should use to reach this one (default: the bound peer endpoint).
    #[arg(long, env = "CHAT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Other servers that must hold a write before the client hears OK.
    #[arg(long, env = "CHAT_ACK_REPLICAS", default_value_t = chat_sync::DEFAULT_ACK_REPLICAS)]
    pub ack_replicas: usize,
    /// With no other live server: `local` acknowledges writes durable here only (logged and
    /// counted in status), `refuse` answers `unavailable`.
    #[arg(long, env = "CHAT_ACK_POLICY", default_value = "local", value_parser = parse_policy)]
    pub ack_policy: AckPolicy,
    /// `replicate` messages in flight to each peer; commits made while the window is full
    /// leave together in the next message (bigger batches under load, fewer wake-ups).
    #[arg(long, env = "CHAT_REPLICATE_WINDOW", default_value_t = chat_sync::DEFAULT_WINDOW,
          value_parser = parse_window)]
    pub replicate_window: usize,
    /// Skew added to this server's physical clock, in milliseconds.
    #[arg(
        long,
        env = "CHAT_CLOCK_SKEW_MS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub clock_skew_ms: i64,
    /// How the servers' physical clocks are kept in step: `berkeley` (the coordinator
    /// averages every clock and tells each server its correction; seeds 000-002) or
    /// `cristian` (every server sets its clock to the coordinator's, measured with the round
    /// trip; seed 004). Run every server of a cluster with the same choice.
    #[arg(long, env = "CHAT_CLOCK_SYNC", default_value = "berkeley", value_parser = parse_clock_sync)]
    pub clock_sync: ClockSync,
    /// Requests the broker may hand this server at once.
    #[arg(long, env = "CHAT_CAPACITY", default_value_t = chat_net::backend::DEFAULT_CAPACITY)]
    pub capacity: u32,
    /// Largest message body in bytes.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = chat_core::validate::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Encoding of publications: msgpack or json.
    #[arg(long, env = "CHAT_SERDE", default_value = "msgpack", value_parser = parse_encoding)]
    pub encoding: Encoding,
    /// Writes per second each user may make, sustained (`rate_limited` beyond); 0 disables.
    #[arg(long, env = "CHAT_RATE_LIMIT_PER_SEC", default_value_t = chat_core::ratelimit::DEFAULT_PER_SEC)]
    pub rate_limit_per_sec: u32,
    /// Writes a quiet user may make at once before the per-second rate applies.
    #[arg(long, env = "CHAT_RATE_LIMIT_BURST", default_value_t = chat_core::ratelimit::DEFAULT_BURST)]
    pub rate_limit_burst: u32,
    /// Request ids kept in memory to answer a retried write without a new event; a retry
    /// of an older one is answered from the store's index instead (same answer, one disk
    /// read). Bounds the memory that deduplication takes.
    #[arg(long, env = "CHAT_DEDUP_WINDOW_COUNT", default_value_t = chat_core::RequestWindow::default().max_count)]
    pub dedup_window_count: usize,
    /// Seconds of event time a request id stays in memory (see --dedup-window-count).
    #[arg(long, env = "CHAT_DEDUP_WINDOW_SECS", default_value_t = chat_core::RequestWindow::default().max_age_ms / 1000)]
    pub dedup_window_secs: u64,
    /// Maintenance commands.
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
}

/// `chat-server` maintenance commands.
#[derive(Debug, Clone, Subcommand)]
pub enum ServerCommand {
    /// Writes the seeds' JSON files (users.json, channels.json, messages.json, publications.json).
    Export {
        /// Data directory of the server to export.
        #[arg(long)]
        data: PathBuf,
        /// Directory to write the files into.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Parses a replication window: 1 to 1024 messages in flight per peer.
pub fn parse_window(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a window: give a number of messages from 1 to 1024"
        )),
    }
}

/// Parses `local` or `refuse`.
pub fn parse_policy(s: &str) -> Result<AckPolicy, String> {
    match s {
        "local" => Ok(AckPolicy::AcceptLocal),
        "refuse" => Ok(AckPolicy::Refuse),
        _ => Err(format!("unknown policy {s:?}: use local or refuse")),
    }
}

/// Parses `berkeley` or `cristian`.
pub fn parse_clock_sync(s: &str) -> Result<ClockSync, String> {
    s.parse()
}

/// Parses `msgpack` or `json`.
pub fn parse_encoding(s: &str) -> Result<Encoding, String> {
    Encoding::parse(s).ok_or_else(|| format!("unknown encoding {s:?}: use msgpack or json"))
}

/// Runs a server (or its maintenance command) until `shutdown`.
pub fn server(args: &ServerArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    if let Some(ServerCommand::Export { data, out }) = &args.command {
        let store =
            SqliteStore::open(data).with_context(|| format!("opening {}", data.display()))?;
        let summary = chat_store::export::export_seed_files(&store, out)
            .with_context(|| format!("exporting to {}", out.display()))?;
        println!("exported to {}: {summary:?}", out.display());
        return Ok(());
    }
    let store: Box<dyn Store> = if args.memory {
        Box::new(MemoryStore::default())
    } else {
        let dir = args
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from("data").join(&args.name));
        Box::new(
            SqliteStore::open(&dir)
                .with_context(|| format!("opening the store in {}", dir.display()))?,
        )
    };
    let cfg = ServerConfig {
        broker: args.broker.clone(),
        publish: args.publish.clone(),
        subscribe: args.subscribe.clone(),
        clock_skew_ms: args.clock_skew_ms,
        clock_sync: args.clock_sync,
        capacity: args.capacity,
        limits: Limits {
            max_message_bytes: args.max_message_bytes,
        },
        encoding: args.encoding,
        rate_limit: chat_core::ratelimit::RateLimit::new(
            args.rate_limit_per_sec,
            args.rate_limit_burst,
        ),
        reference: (args.reference != "none").then(|| args.reference.clone()),
        peer: args.peer.clone(),
        advertise: args.advertise.clone(),
        replication: ReplicationConfig {
            ack_replicas: args.ack_replicas,
            policy: args.ack_policy,
            window: args.replicate_window,
            ..ReplicationConfig::default()
        },
        request_window: chat_core::RequestWindow {
            max_count: args.dedup_window_count,
            max_age_ms: args.dedup_window_secs.saturating_mul(1000),
        },
        ..ServerConfig::new(args.name.clone())
    };
    let ctx = chat_net::Context::new();
    tracing::info!(server = %cfg.name, broker = %cfg.broker, clock_sync = %cfg.clock_sync, "starting");
    let (tx, rx) = crossbeam_channel::bounded::<String>(1);
    let name = cfg.name.clone();
    let announcer = std::thread::spawn(move || {
        if let Ok(peer) = rx.recv() {
            announce(
                "chat-server",
                &[("peer", peer.as_str()), ("name", name.as_str())],
            );
        }
    });
    let result = run_server_reporting(&ctx, &cfg, store, shutdown, Some(tx))
        .with_context(|| format!("server {}", cfg.name));
    let _ = announcer.join();
    result
}
