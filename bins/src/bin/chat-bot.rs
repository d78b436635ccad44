//! `chat-bot`: the seed bot (login `bot_XXXXX`, rounds of 10 messages, 2 s apart).
//! Everything but flag parsing lives in `bins::bot`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = bins::bot::BotArgs::parse();
    bins::init_logging("chat-bot");
    let shutdown = bins::install_shutdown();
    match bins::bot::run_bot(&args.config(), &shutdown) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
