//! `chat-sim`: runs the deterministic whole-cluster simulator over many seeds, or replays
//! one seed with its trace.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;

/// Flags of `chat-sim`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// How many seeds to run (from `--first`).
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    /// The first seed of the sweep.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Replay one seed and print its trace (what happened, with virtual times).
    #[arg(long, env = "SIM_SEED")]
    pub seed: Option<u64>,
    /// With `--seed`: print the trace even if the run passes.
    #[arg(long)]
    pub trace: bool,
    /// Chat servers in the simulated cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub servers: u64,
    /// Simulated clients.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,
    /// Simulated SDK subscribers (live delivery checked exactly once and gap-free).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=16))]
    pub subscribers: u64,
    /// Length of the fault phase, in virtual seconds.
    #[arg(long, default_value_t = 10)]
    pub fault_secs: u64,
    /// Length of the settling phase after the heal, in virtual seconds.
    #[arg(long, default_value_t = 14)]
    pub settle_secs: u64,
    /// Run without faults (a healthy cluster).
    #[arg(long)]
    pub no_faults: bool,
    /// Keep going after a failing seed (default: stop soon after the first one).
    #[arg(long)]
    pub keep_going: bool,
    /// Threads running seeds side by side (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(usize))]
    pub threads: Option<usize>,
    /// Put a known defect back in every server, to see the checkers catch it:
    /// `reply-before-durable` (a write's reply leaves before its batch is durable).
    #[arg(long, value_parser = parse_defect)]
    pub defect: Option<chat_node::server::Defect>,
    /// The servers' clock synchronisation, `berkeley` or `cristian` (default: each seed
    /// draws one, half of them Cristian).
    #[arg(long, value_parser = crate::daemons::parse_clock_sync)]
    pub clock_sync: Option<chat_sync::ClockSync>,
}

/// Parses a defect name.
pub fn parse_defect(s: &str) -> Result<chat_node::server::Defect, String> {
    match s {
        "reply-before-durable" => Ok(chat_node::server::Defect::ReplyBeforeDurable),
        "none" => Ok(chat_node::server::Defect::None),
        _ => Err(format!(
            "unknown defect {s:?}: the simulator knows reply-before-durable"
        )),
    }
}

impl SimArgs {
    fn options(&self, trace: bool) -> chat_sim::Options {
        chat_sim::Options {
            servers: self.servers as usize,
            clients: self.clients as usize,
            subscribers: self.subscribers as usize,
            fault_phase: Duration::from_secs(self.fault_secs),
            settle: Duration::from_secs(self.settle_secs),
            faults: !self.no_faults,
            trace,
            stop_at_first: true,
            defect: self.defect.unwrap_or_default(),
            clock_sync: self.clock_sync,
        }
    }
}

/// Runs the sweep (or the replay) and prints a report; returns whether every run passed.
pub fn run(args: &SimArgs, out: &mut dyn Write) -> std::io::Result<bool> {
    if let Some(seed) = args.seed {
        let o = chat_sim::run(seed, &args.options(true));
        if args.trace || !o.passed() {
            for line in &o.trace {
                writeln!(out, "{line}")?;
            }
        }
        writeln!(out, "seed {seed}: {:?}", o.stats)?;
        for v in &o.violations {
            writeln!(out, "VIOLATION {v}")?;
        }
        writeln!(
            out,
            "seed {seed}: {}",
            if o.passed() { "passed" } else { "FAILED" }
        )?;
        return Ok(o.passed());
    }
    let opts = args.options(false);
    let started = Instant::now();
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut sweep = chat_sim::Sweep::default();
    let mut last_report = Instant::now();
    let end = args.first.saturating_add(args.seeds);
    let mut next = args.first;
    while next < end {
        // Chunks, so that a failure stops the sweep soon and progress shows.
        let chunk = next..end.min(next.saturating_add(64 * threads as u64));
        next = chunk.end;
        let part = chat_sim::sweep_parallel(chunk, &opts, threads);
        for o in &part.failures {
            for v in &o.violations {
                writeln!(out, "seed {} FAILED: {v}", o.seed)?;
            }
            writeln!(
                out,
                "replay: SIM_SEED={} cargo run --release --bin chat-sim -- --trace",
                o.seed
            )?;
        }
        let failed = !part.failures.is_empty();
        sweep.merge(part);
        if failed && !args.keep_going {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            writeln!(out, "... {} seeds", sweep.runs)?;
            last_report = Instant::now();
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    writeln!(
        out,
        "{} seeds in {secs:.1} s on {threads} thread(s): {:.0} seeds/s, {:.0} events/s, {:.0} s of virtual time",
        sweep.runs,
        sweep.runs as f64 / secs,
        sweep.events as f64 / secs,
        sweep.virtual_time.as_secs_f64()
    )?;
    let modes: Vec<String> = sweep
        .clock_sync
        .iter()
        .map(|(mode, n)| format!("{mode} {n}"))
        .collect();
    writeln!(out, "runs by clock sync: {}", modes.join(", "))?;
    writeln!(out, "faults injected:")?;
    for (kind, n) in &sweep.faults {
        writeln!(out, "  {kind:<20} {n}")?;
    }
    let (sent, lost, dup) = sweep.messages;
    writeln!(
        out,
        "messages: {sent} sent, {lost} lost, {dup} duplicated; writes acknowledged: {}; \
         requests accepted twice (one copy visible): {}; requests fenced by the broker lease: {}",
        sweep.acked, sweep.twice_accepted, sweep.fenced
    )?;
    if args.subscribers > 0 {
        writeln!(
            out,
            "live delivery ({} subscribers per run): a raw subscriber would have seen {} posts \
             twice and missed {} acknowledged posts; the SDK's core repaired {} from history",
            args.subscribers, sweep.raw_duplicates, sweep.raw_missing, sweep.repaired
        )?;
    }
    writeln!(
        out,
        "{} failing seed(s){}",
        sweep.failures.len(),
        if sweep.failures.is_empty() {
            String::new()
        } else {
            format!(
                ": {:?}",
                sweep.failures.iter().map(|o| o.seed).collect::<Vec<_>>()
            )
        }
    )?;
    Ok(sweep.failures.is_empty())
}
