//! `chat-broker`: the reliable request broker (clients on the frontend, servers on the backend).

use bins::daemons::{broker, BrokerArgs};
use clap::Parser;

/// Reliable ROUTER/ROUTER broker: servers heartbeat, a dead server's requests go to another.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: BrokerArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bins::init_logging("broker");
    let shutdown = bins::install_shutdown();
    broker(&cli.args, &shutdown)
}
