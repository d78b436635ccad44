//! `chat-web`: the browser client and cluster view (the same as `chat web`).

use bins::daemons::{web, WebArgs};
use clap::Parser;

/// Browser client and cluster view of the chat service, over HTTP. Prints
/// `chat-web listening url=http://HOST:PORT` on stdout once listening; stops on SIGINT/SIGTERM.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: WebArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bins::init_logging("web");
    let shutdown = bins::install_shutdown();
    web(&cli.args, &shutdown)
}
