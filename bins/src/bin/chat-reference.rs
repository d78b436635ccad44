//! `chat-reference`: the reference service (ranks for server names, live-server list,
//! heartbeats).

use bins::daemons::{reference, ReferenceArgs};
use clap::Parser;

/// Reference service: gives each server a stable rank and lists the servers that heartbeat.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: ReferenceArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bins::init_logging("reference");
    let shutdown = bins::install_shutdown();
    reference(&cli.args, &shutdown)
}
