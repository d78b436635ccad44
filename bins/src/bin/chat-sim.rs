//! `chat-sim`: the deterministic whole-cluster simulator.

use bins::sim::{run, SimArgs};
use clap::Parser;

/// Deterministic whole-cluster simulation: the real server, broker and reference cores
/// with simulated clients, network, disks and clocks under seeded faults (loss,
/// duplication, delay, partitions, crashes, power loss, pauses, clock jumps). Exits
/// non-zero if a seed breaks a rule; a failing seed replays exactly with `--seed S`.
///
/// Example: chat-sim --seeds 100000
///
/// Replay: chat-sim --seed 1234 --trace
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.args.seed.is_some() {
        // The cores' log lines go into the replay's trace, stamped with virtual times.
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        chat_sim::logs::install(&filter);
    }
    match run(&cli.args, &mut std::io::stdout().lock()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chat-sim: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
