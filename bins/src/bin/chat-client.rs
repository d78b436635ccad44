//! `chat-client`: the terminal client (interactive, or one command per run for scripts).
//! Everything but flag parsing lives in `bins::client_cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = bins::client_cli::ClientCli::parse();
    bins::init_logging("chat-client");
    bins::client_cli::run(cli)
}
