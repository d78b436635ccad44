//! `chat-reference`: the reference service (ranks for server names, live-server list,
//! heartbeats).

use std::time::Duration;

use anyhow::Context as _;
use chat_net::reference::{run_reference, ReferenceConfig};
use clap::Parser;

/// Reference service: gives each server a stable rank and lists the servers that heartbeat.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Endpoint servers connect to (REQ clients are answered by a ROUTER).
    #[arg(long, env = "CHAT_REFERENCE_BIND", default_value = "tcp://*:5559")]
    bind: String,
    /// How long a server may stay silent (no rank, no heartbeat) before it leaves `list`.
    #[arg(long, env = "CHAT_REFERENCE_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bins::init_logging("reference");
    let shutdown = bins::install_shutdown();
    let ctx = zmq::Context::new();
    let cfg = ReferenceConfig {
        bind: cli.bind.clone(),
        timeout: Duration::from_millis(cli.timeout_ms),
        ..ReferenceConfig::default()
    };
    let (tx, rx) = crossbeam_channel::bounded::<String>(1);
    // Prints the endpoint actually bound, on stdout, for scripts, tests and `chat up`.
    let announcer = std::thread::spawn(move || {
        if let Ok(endpoint) = rx.recv() {
            println!("chat-reference listening bind={endpoint}");
        }
    });
    let result = run_reference(&ctx, &cfg, &shutdown, Some(tx))
        .with_context(|| format!("reference on {}", cli.bind));
    let _ = announcer.join();
    result
}
