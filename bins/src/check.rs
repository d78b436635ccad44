//! `chat check`: the cluster self-check for terminals and scripts (the steps live in
//! [`chat_net::check`]; this module parses flags and prints the report).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use chat_net::check::{run_check, CheckConfig, CheckReport};
use chat_net::client::ClientConfig;
use clap::Args;

use crate::client_cli::sanitize;

/// `chat check` flags.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Steps: log in the probe user (_check-probe), create the probe channel (_check-channel),
publish a post and receive it on the SUB socket, send a private message and receive it,
`status` of every server (through the broker, then each at its peer endpoint), one
coordinator in one term, clocks within --clock-bound-ms of the coordinator's.

Exit code: 0 when every step passed, 1 when one failed, 2 for bad flags.

Examples:
  chat check
  chat check --servers server-1,server-2,server-3
  chat check --broker tcp://10.0.0.5:5555 --sub tcp://10.0.0.5:5558 --json")]
pub struct CheckArgs {
    /// Broker frontend endpoint (requests).
    #[arg(long, env = "CHAT_BROKER", default_value = chat_core::DEFAULT_BROKER_FRONTEND)]
    pub broker: String,
    /// Proxy XPUB endpoint (subscriptions).
    #[arg(long, env = "CHAT_SUB", default_value = chat_core::DEFAULT_PROXY_XPUB)]
    pub sub: String,
    /// Servers that must answer, by name (comma-separated), besides those the cluster names
    /// itself. A server down for more than a few seconds drops out of every list: name the
    /// servers you expect, and one that is down fails the check (`chat up` starts
    /// server-1 .. server-N).
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Largest distance of a server's clock from the coordinator's, in milliseconds.
    #[arg(long, default_value_t = chat_net::check::DEFAULT_CLOCK_BOUND_MS)]
    pub clock_bound_ms: u64,
    /// How long to wait for each reply through the broker, in milliseconds (the probe's
    /// post and private message may take as long to arrive).
    #[arg(long = "timeout-ms", env = "CHAT_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// How many times to send each request through the broker in all.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,
    /// How long to wait for each server asked directly, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub server_timeout_ms: u64,
    /// Print the report as one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

impl CheckArgs {
    /// The check's configuration.
    pub fn config(&self) -> CheckConfig {
        let timeout = Duration::from_millis(self.timeout_ms);
        CheckConfig {
            client: ClientConfig {
                broker: self.broker.clone(),
                sub: self.sub.clone(),
                timeout,
                attempts: self.attempts,
                ..ClientConfig::default()
            },
            expect_servers: self
                .servers
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            clock_bound_ms: self.clock_bound_ms,
            delivery_timeout: timeout,
            server_timeout: Duration::from_millis(self.server_timeout_ms),
        }
    }
}

/// The report as lines for a terminal: one per step, then the summary.
pub fn render(report: &CheckReport) -> Vec<String> {
    let mut lines = vec![format!(
        "checking the cluster: broker {}, subscriptions {}",
        sanitize(&report.broker),
        sanitize(&report.sub)
    )];
    let width = report.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &report.steps {
        lines.push(format!(
            "{} {:<width$} {:>6} ms  {}",
            s.outcome.label(),
            s.name,
            s.ms,
            sanitize(&s.detail)
        ));
    }
    lines.push(report.summary());
    lines
}

/// Runs the check and prints its report on stdout; exit code 0 only if every step passed.
pub fn run(args: &CheckArgs) -> ExitCode {
    let report = run_check(&args.config());
    let mut out = std::io::stdout().lock();
    if args.json {
        match serde_json::to_string(&report) {
            Ok(j) => {
                let _ = writeln!(out, "{j}");
            }
            Err(e) => {
                let _ = writeln!(out, "cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        for line in render(&report) {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = out.flush();
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
