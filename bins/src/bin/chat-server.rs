//! `chat-server`: one replica of the chat state, behind the broker.

use bins::daemons::{server, ServerArgs};
use clap::Parser;

/// Chat server: serves clients through the broker, stores every write durably (SQLite),
/// replicates writes to the other servers.
///
/// Example: chat-server --name server-1 --data ./data/server-1
///
/// Export the seeds' JSON files: chat-server export --data ./data/server-1 --out ./export
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: ServerArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bins::init_logging("server");
    let shutdown = bins::install_shutdown();
    server(&cli.args, &shutdown)
}
