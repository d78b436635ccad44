//! `chat-bench`: load generator for the chat cluster, with a raw-ZeroMQ baseline.

use bins::bench::{history_scale, run, BenchArgs, ScaleArgs};
use clap::{Parser, Subcommand};

/// Chat benchmark: closed-loop clients against a chat cluster (started in this process on
/// loopback, or a running one with --broker/--sub), subscribers counting every delivered
/// publication, then the same load on plain ZeroMQ (ROUTER/DEALER proxy, echo workers).
///
/// Example: chat-bench --servers 3 --clients 32 --size 1024 --store memory
///
/// Progress goes to stderr every second; the report to stdout (text, or JSON with --json).
#[derive(Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    args: BenchArgs,
}

/// Other measurements.
#[derive(Subcommand)]
enum BenchCommand {
    /// What a long history costs one server: fill a store with a million posts, then time
    /// the restart of the real chat-server on it, its memory, and history pages from the
    /// middle of a long channel.
    HistoryScale(ScaleArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_none() {
        // The in-process components log every start and stop at info: keep stderr readable.
        std::env::set_var("RUST_LOG", "warn");
    }
    bins::init_logging("bench");
    if let Some(BenchCommand::HistoryScale(args)) = &cli.command {
        return history_scale(args);
    }
    let shutdown = bins::install_shutdown();
    let report = run(&cli.args, &shutdown)?;
    if cli.args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
