//! `chat-web`: the browser client and cluster view. Prints
//! `chat-web listening url=http://HOST:PORT` on stdout once listening; stops on SIGINT/SIGTERM.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use chat_net::Shutdown;
use chat_web::{run_web, WebConfig, DEFAULT_LISTEN};
use clap::Parser;

/// Browser client and cluster view of the chat service.
#[derive(Debug, Parser)]
#[command(name = "chat-web", version, about)]
struct Args {
    /// HTTP address to listen on (port 0: chosen by the OS).
    #[arg(long, env = "CHAT_WEB_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Broker frontend endpoint.
    #[arg(long, env = "CHAT_BROKER", default_value = chat_core::DEFAULT_BROKER_FRONTEND)]
    broker: String,
    /// Proxy XPUB endpoint to subscribe to.
    #[arg(long, env = "CHAT_SUB", default_value = chat_core::DEFAULT_PROXY_XPUB)]
    sub: String,
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A shutdown flag raised by SIGINT or SIGTERM.
fn install_shutdown() -> Shutdown {
    let shutdown = Shutdown::new();
    let flag = shutdown.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.trigger()) {
        tracing::warn!(error = %e, "cannot install the signal handler; Ctrl-C will kill the process");
    }
    shutdown
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let shutdown = install_shutdown();
    let cfg = WebConfig {
        listen: args.listen,
        broker: args.broker,
        sub: args.sub,
    };
    match run_web(&cfg, &shutdown) {
        Ok(()) => {
            tracing::info!("chat-web stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-web: {e:#}");
            ExitCode::FAILURE
        }
    }
}
