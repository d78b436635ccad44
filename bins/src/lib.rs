//! Command-line front ends of the chat service: argument parsing, logging and wiring.
//!
//! # Layout
//! - [`client_cli`]: the terminal client (`chat-client`): command parsing, rendering, modes.
//! - [`bench`](mod@bench): `chat-bench`, the load generator with a raw-ZeroMQ baseline in the same run.
//! - [`bot`]: the seed bot (`chat-bot`).
//! - [`check`]: `chat check`, the cluster self-check's flags and report (the steps are
//!   `chat_net::check`).
//! - [`daemons`]: flags and entry points of the broker, proxy, reference, server and web UI.
//! - [`health`]: `chat health`, each component's health probe (container health checks).
//! - [`sim`]: `chat-sim`, the deterministic whole-cluster simulator over many seeds.
//! - [`up`]: `chat up`, which starts a whole cluster of child processes on loopback.
//!
//! The binaries in `src/bin/` only parse flags and call into this library.

pub mod bench;
pub mod bot;
pub mod check;
pub mod client_cli;
pub mod daemons;
pub mod health;
pub mod sim;
pub mod up;

use chat_net::Shutdown;

/// Starts `tracing` to stderr with `RUST_LOG` (default `info`), each line tagged with `component`.
pub fn init_logging(component: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    tracing::debug!(component, "logging started");
}

/// A shutdown flag raised by SIGINT or SIGTERM.
pub fn install_shutdown() -> Shutdown {
    let shutdown = Shutdown::new();
    let flag = shutdown.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.trigger()) {
        tracing::warn!(error = %e, "cannot install the signal handler; Ctrl-C will kill the process");
    }
    shutdown
}
