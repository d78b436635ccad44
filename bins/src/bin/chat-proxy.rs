//! `chat-proxy`: the XSUB/XPUB forwarder of publications.

use bins::daemons::{proxy, ProxyArgs};
use clap::Parser;

/// Pub/sub forwarder: servers publish on XSUB, clients subscribe on XPUB.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: ProxyArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bins::init_logging("proxy");
    let shutdown = bins::install_shutdown();
    proxy(&cli.args, &shutdown)
}
