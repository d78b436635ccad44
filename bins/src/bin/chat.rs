//! `chat`: the multi-call binary. `chat up` runs the whole cluster; `chat check` checks a
//! running one; `chat broker|proxy|server|...` run one component (the same code as the
//! dedicated binaries).

use bins::daemons::{BrokerArgs, ProxyArgs, ReferenceArgs, ServerArgs, WebArgs};
use bins::up::UpArgs;
use clap::{Parser, Subcommand};

/// Replicated chat over ZeroMQ.
///
/// `chat up` starts broker, proxy, 3 servers and 2 bots on loopback; Ctrl-C stops them.
/// `chat check` tells, step by step, whether a running cluster works (exit code 0 if so).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole cluster on loopback (broker, proxy, servers, bots).
    Up(UpArgs),
    /// Check a running cluster end to end: probe user, channel, post, private message,
    /// every server's status, one coordinator and term, clocks (exit code 0 if all pass).
    Check(bins::check::CheckArgs),
    /// Run the request broker.
    Broker(BrokerArgs),
    /// Run the pub/sub proxy.
    Proxy(ProxyArgs),
    /// Run the reference service (ranks, live servers).
    Reference(ReferenceArgs),
    /// Run one chat server.
    Server(ServerArgs),
    /// Run the web UI (as `chat-web`).
    Web(WebArgs),
    /// Run a bot (as `chat-bot`).
    Bot(bins::bot::BotArgs),
    /// Run the terminal client (as `chat-client`).
    Client(bins::client_cli::ClientCli),
    /// Probe one component on its own endpoint (exit code 0 when it answers): the health
    /// check of the containers.
    Health(bins::health::HealthArgs),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    if let Cmd::Client(args) = cli.command {
        bins::init_logging("chat-client");
        return Ok(bins::client_cli::run(args));
    }
    if let Cmd::Check(args) = cli.command {
        bins::init_logging("check");
        return Ok(bins::check::run(&args));
    }
    if let Cmd::Health(args) = cli.command {
        return Ok(bins::health::run(&args));
    }
    let shutdown = bins::install_shutdown();
    let result = match cli.command {
        Cmd::Up(args) => {
            let exe = std::env::current_exe()?;
            bins::up::run_up(&args, &exe, &shutdown)
        }
        Cmd::Broker(args) => {
            bins::init_logging("broker");
            bins::daemons::broker(&args, &shutdown)
        }
        Cmd::Proxy(args) => {
            bins::init_logging("proxy");
            bins::daemons::proxy(&args, &shutdown)
        }
        Cmd::Reference(args) => {
            bins::init_logging("reference");
            bins::daemons::reference(&args, &shutdown)
        }
        Cmd::Server(args) => {
            bins::init_logging("server");
            bins::daemons::server(&args, &shutdown)
        }
        Cmd::Web(args) => {
            bins::init_logging("web");
            bins::daemons::web(&args, &shutdown)
        }
        Cmd::Bot(args) => {
            bins::init_logging("bot");
            bins::bot::run_bot(&args.config(), &shutdown).map(|_| ())
        }
        Cmd::Client(_) | Cmd::Check(_) | Cmd::Health(_) => Ok(()),
    };
    result.map(|()| std::process::ExitCode::SUCCESS)
}
