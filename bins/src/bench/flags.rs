//! `chat-bench` flags: the request mix, durations, the store of the in-process servers,
//! and the checks a run makes before it starts.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, ValueEnum};

use super::TAG_LEN;

/// Most client threads (and subscribers, and servers) a run accepts.
pub const MAX_THREADS: usize = 4096;
/// Posts asked for by one `history` request of the mix.
pub const HISTORY_LIMIT: u32 = 20;

/// One kind of request of the chat mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `publish` of a `--size`-byte body on the bench channel.
    Publish,
    /// `history` of the bench channel, [`HISTORY_LIMIT`] posts.
    History,
    /// `users`.
    Users,
    /// `channels`.
    Channels,
    /// `status` of whichever server answers.
    Status,
}

impl Op {
    /// Every operation, in display order.
    pub const ALL: [Op; 5] = [
        Op::Publish,
        Op::History,
        Op::Users,
        Op::Channels,
        Op::Status,
    ];

    /// The name used in `--mix` and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::History => "history",
            Op::Users => "users",
            Op::Channels => "channels",
            Op::Status => "status",
        }
    }
}

/// A request mix: operations with integer weights (`publish=90,history=5,users=5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
}

impl Mix {
    /// Publishes only (the default).
    pub fn publish_only() -> Mix {
        Mix {
            weights: vec![(Op::Publish, 100)],
        }
    }

    /// Parses `op=weight` pairs separated by commas; weights are relative, zero drops the op.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut weights: Vec<(Op, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected op=weight, e.g. publish=90"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.as_str() == name.trim())
                .ok_or_else(|| {
                    format!("unknown operation {name:?}: use publish, history, users, channels or status")
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weights.iter().any(|(o, _)| *o == op) {
                return Err(format!("{name:?} appears twice in the mix"));
            }
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        if weights.is_empty() {
            return Err("the mix has no operation with a positive weight".into());
        }
        weights
            .iter()
            .try_fold(0u32, |acc, (_, w)| acc.checked_add(*w))
            .ok_or_else(|| "the weights add up to more than 2^32".to_string())?;
        Ok(Mix { weights })
    }

    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.weights.iter().map(|(_, w)| *w).sum()
    }

    /// The operation for `roll` in `0..total()`.
    pub fn pick(&self, roll: u32) -> Op {
        let mut left = roll;
        for (op, w) in &self.weights {
            if left < *w {
                return *op;
            }
            left -= w;
        }
        self.weights.last().map_or(Op::Publish, |(op, _)| *op)
    }

    /// Whether the mix publishes at all.
    pub fn publishes(&self) -> bool {
        self.weights.iter().any(|(op, _)| *op == Op::Publish)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(op, w)| format!("{}={w}", op.as_str()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Where the servers of the in-process cluster keep their events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// SQLite (WAL, `synchronous=FULL`) in a temporary directory: durable acknowledgements.
    Sqlite,
    /// In memory: what the chat layers cost without the disk.
    Memory,
}

impl StoreKind {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
        }
    }
}

/// Parses a duration: `5s`, `500ms`, `1.5s`, `2m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 5s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{s:?}: must be between 0 and 24 hours"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `chat-bench` flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Chat servers of the in-process cluster (also the baseline's echo workers).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Client threads, each with its own connection, sending requests back to back.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Measured time: `5s`, `500ms`, `1.5s`, `2m` (a bare number is seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unrecorded load before the measured time (same syntax as --duration).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes of each published message body (at least 21, the tag) and of baseline requests.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Request mix as relative weights, e.g. `publish=90,history=5,users=5`
    /// (operations: publish, history, users, channels, status).
    #[arg(long, default_value = "publish=100", value_parser = Mix::parse)]
    pub mix: Mix,
    /// Subscribers (the SDK's thread-less `Subscriber`) to the bench channel, counting every
    /// publication delivered.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Store of the in-process servers: sqlite (durable, temporary directory) or memory.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Parent of the temporary SQLite directory (default: the system temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra time added to every commit of the in-process servers, to model a slower disk
    /// than this machine's (network volumes take 1-10 ms per fsync); same syntax as
    /// --duration.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub commit_delay: Duration,
    /// Commit on each server's loop thread instead of its writer thread (the loop then
    /// waits for every fsync), to measure what the writer thread buys.
    #[arg(long)]
    pub inline_commit: bool,
    /// Per-user write limit (writes/s) of the in-process servers; 0, the default, turns the
    /// flood protection off, since each bench client is one user writing flat out (the
    /// servers' own default is 1000/s, bursts of 2000).
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u32,
    /// Other servers that must hold a write before its client hears OK (the servers'
    /// `--ack-replicas`; 0 measures local-only acknowledgements).
    #[arg(long, default_value_t = chat_sync::DEFAULT_ACK_REPLICAS)]
    pub ack_replicas: usize,
    /// `replicate` messages in flight to each peer (the servers' `--replicate-window`).
    #[arg(long, default_value_t = chat_sync::DEFAULT_WINDOW,
          value_parser = crate::daemons::parse_window)]
    pub replicate_window: usize,
    /// Broker frontend of a running cluster to load instead of starting one (with --sub).
    #[arg(long, requires = "sub")]
    pub broker: Option<String>,
    /// Proxy XPUB endpoint of that running cluster (with --broker).
    #[arg(long, requires = "broker")]
    pub sub: Option<String>,
    /// Skip the raw-ZeroMQ baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Print the report as a JSON object on stdout instead of the text table.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Only to build [`BenchArgs::default`] from the flags' own defaults.
#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    args: BenchArgs,
}

impl Default for BenchArgs {
    /// Every flag at its default (the same values as `chat-bench` with no flags).
    fn default() -> Self {
        DefaultsOnly::parse_from(["chat-bench"]).args
    }
}

impl BenchArgs {
    /// Refuses flags a run cannot use, with a sentence naming the flag.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        for (flag, value, min) in [
            ("--servers", self.servers, 1),
            ("--clients", self.clients, 1),
            ("--subscribers", self.subscribers, 0),
        ] {
            if !(min..=MAX_THREADS).contains(&value) {
                bail!("{flag} must be between {min} and {MAX_THREADS}, not {value}");
            }
        }
        if self.clients > 0xffff {
            bail!("--clients must fit the tag (at most 65535)");
        }
        if self.size < TAG_LEN {
            bail!(
                "--size must be at least {TAG_LEN} bytes (the tag that identifies each publication)"
            );
        }
        if self.size > chat_core::validate::DEFAULT_MAX_MESSAGE_BYTES {
            bail!(
                "--size must be at most {} bytes (the servers' message limit)",
                chat_core::validate::DEFAULT_MAX_MESSAGE_BYTES
            );
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.broker.is_some() != self.sub.is_some() {
            bail!("--broker and --sub go together");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix = Mix::parse("publish=90,history=5,users=5").expect("mix");
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.pick(0), Op::Publish);
        assert_eq!(mix.pick(89), Op::Publish);
        assert_eq!(mix.pick(90), Op::History);
        assert_eq!(mix.pick(99), Op::Users);
        assert_eq!(mix.to_string(), "publish=90,history=5,users=5");
        assert!(Mix::parse("publish=1,publish=2").is_err());
        assert!(Mix::parse("post=1").is_err());
        assert!(Mix::parse("publish=0").is_err());
    }

    #[test]
    fn defaults_match_the_flags() {
        let a = BenchArgs::default();
        assert_eq!(
            (a.servers, a.clients, a.subscribers, a.size),
            (3, 8, 2, 100)
        );
        assert_eq!(a.duration, Duration::from_secs(5));
        assert_eq!(a.warmup, Duration::from_secs(1));
        assert_eq!(a.mix, Mix::publish_only());
        assert_eq!(a.store, StoreKind::Sqlite);
    }
}
