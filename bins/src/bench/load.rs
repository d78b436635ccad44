//! The load engine shared by the chat load and the baseline: phases (set-up, warm-up,
//! measured, stop) read by every worker before each request, closed-loop workers recording
//! latencies in HDR histograms, the merge of their results, the pacing of the phases with
//! a progress line on stderr, and thread helpers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chat_net::Shutdown;
use hdrhistogram::Histogram;

use super::cpu::{cpu_report, cpu_snapshot, CpuSnapshot};
use super::flags::{BenchArgs, Op};
use super::report::{latency, LoadReport, OpReport};

/// Longest latency the histograms hold, in nanoseconds (longer ones are recorded as this).
pub(super) const MAX_LATENCY_NS: u64 = 60_000_000_000;

const SETUP: u8 = 0;
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
/// The phase that ends a load: workers return.
pub(super) const STOP: u8 = 3;

/// The phase every worker of a load reads before each request, and the measured count.
#[derive(Default)]
pub(super) struct Control {
    pub(super) phase: AtomicU8,
    measured: AtomicU64,
}

/// What one worker thread measured.
pub(super) struct WorkerStats {
    hists: Vec<(&'static str, Histogram<u64>)>,
    errors: BTreeMap<String, u64>,
    requests: u64,
    last_done: Option<Instant>,
}

/// Sends requests back to back with `one(measured, seq)` until the phase is `STOP`;
/// records those started in the measured phase.
pub(super) fn drive(
    ctl: &Control,
    template: &Histogram<u64>,
    mut one: impl FnMut(bool, u64) -> (&'static str, Result<(), String>),
) -> WorkerStats {
    let mut stats = WorkerStats {
        hists: Vec::new(),
        errors: BTreeMap::new(),
        requests: 0,
        last_done: None,
    };
    let mut seq = 0u64;
    loop {
        let measured = match ctl.phase.load(Ordering::Acquire) {
            SETUP => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            WARMUP => false,
            MEASURE => true,
            _ => break,
        };
        let started = Instant::now();
        let (op, result) = one(measured, seq);
        seq += 1;
        if !measured {
            continue;
        }
        let done = Instant::now();
        stats.requests += 1;
        stats.last_done = Some(done);
        match result {
            Ok(()) => {
                let ns = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
                let i = match stats.hists.iter().position(|(name, _)| *name == op) {
                    Some(i) => i,
                    None => {
                        stats.hists.push((op, template.clone()));
                        stats.hists.len() - 1
                    }
                };
                stats.hists[i].1.saturating_record(ns.max(1));
            }
            Err(code) => *stats.errors.entry(code).or_default() += 1,
        }
        ctl.measured.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

/// Timing of a load phase, from [`Progress::pace`].
pub(super) struct Timing {
    start: Instant,
    stopped: Instant,
    /// CPU at `start` and at `stopped`.
    cpu: Option<(CpuSnapshot, CpuSnapshot)>,
    pub(super) interrupted: bool,
}

/// Merges the workers' results into a report.
pub(super) fn merge(
    workers: Vec<WorkerStats>,
    timing: &Timing,
    template: &Histogram<u64>,
) -> anyhow::Result<LoadReport> {
    let mut total = template.clone();
    let mut by_op: Vec<(&'static str, Histogram<u64>)> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut requests = 0;
    let mut last = None;
    for w in workers {
        requests += w.requests;
        last = last.max(w.last_done);
        for (code, n) in w.errors {
            *errors.entry(code).or_default() += n;
        }
        for (op, h) in w.hists {
            total.add(&h).context("merging latency histograms")?;
            match by_op.iter_mut().find(|(name, _)| *name == op) {
                Some((_, acc)) => acc.add(&h).context("merging latency histograms")?,
                None => by_op.push((op, h)),
            }
        }
    }
    by_op.sort_by_key(|(op, _)| {
        Op::ALL
            .iter()
            .position(|o| o.as_str() == *op)
            .unwrap_or(usize::MAX)
    });
    // Closed loop: some request is in flight from `start` until the last one completes.
    let end = last.map_or(timing.stopped, |l| l.max(timing.stopped));
    let elapsed = end.saturating_duration_since(timing.start).as_secs_f64();
    let ok = total.len();
    let throughput = if elapsed > 0.0 {
        ok as f64 / elapsed
    } else {
        0.0
    };
    let window = timing.stopped.duration_since(timing.start).as_secs_f64();
    let cpu = timing
        .cpu
        .as_ref()
        .map(|(a, b)| cpu_report(a, b, window, ok));
    Ok(LoadReport {
        requests,
        ok,
        errors,
        elapsed_s: elapsed,
        throughput,
        latency: latency(&total),
        operations: by_op
            .iter()
            .map(|(op, h)| OpReport {
                op: op.to_string(),
                latency: latency(h),
            })
            .collect(),
        cpu,
    })
}

/// The stderr progress line.
pub(super) struct Progress {
    pub(super) quiet: bool,
}

impl Progress {
    /// Prints `line` on stderr unless `--quiet`.
    pub(super) fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("chat-bench: {line}");
        }
    }

    /// Runs the warm-up and the measured phase of `ctl` (workers already running), with a
    /// progress line every second; leaves the phase at `STOP`.
    pub(super) fn pace(
        &self,
        label: &str,
        ctl: &Control,
        args: &BenchArgs,
        stop: &Shutdown,
    ) -> Timing {
        if !args.warmup.is_zero() {
            self.say(&format!(
                "{label}: warming up for {:.1} s",
                args.warmup.as_secs_f64()
            ));
        }
        ctl.phase.store(WARMUP, Ordering::Release);
        let warm_end = Instant::now() + args.warmup;
        while !stop.is_triggered() {
            let left = warm_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        let cpu0 = cpu_snapshot();
        let start = Instant::now();
        ctl.phase.store(MEASURE, Ordering::Release);
        let end = start + args.duration;
        let mut next_tick = start + Duration::from_secs(1);
        let (mut last_count, mut last_at) = (0u64, start);
        while !stop.is_triggered() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if now >= next_tick {
                let count = ctl.measured.load(Ordering::Relaxed);
                let rate = (count - last_count) as f64
                    / now.duration_since(last_at).as_secs_f64().max(1e-9);
                self.say(&format!(
                    "{label}: {:>5.1} s / {:.1} s  {count:>9} requests  {rate:>9.0} req/s",
                    now.duration_since(start).as_secs_f64(),
                    args.duration.as_secs_f64(),
                ));
                (last_count, last_at) = (count, now);
                next_tick += Duration::from_secs(1);
            }
            let wake = end.min(next_tick);
            std::thread::sleep(
                wake.saturating_duration_since(now)
                    .min(Duration::from_millis(100)),
            );
        }
        ctl.phase.store(STOP, Ordering::Release);
        let stopped = Instant::now();
        let cpu = cpu0.zip(cpu_snapshot());
        Timing {
            start,
            stopped,
            cpu,
            interrupted: stop.is_triggered(),
        }
    }
}

/// Runs a closure when dropped: stops worker threads on every early return.
pub(super) struct OnDrop<F: FnMut()>(pub(super) F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Joins every thread; fails if one panicked.
pub(super) fn join<T>(handles: Vec<JoinHandle<T>>, what: &str) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    let mut panicked = false;
    for h in handles {
        match h.join() {
            Ok(v) => out.push(v),
            Err(_) => panicked = true,
        }
    }
    if panicked {
        bail!("a {what} thread panicked");
    }
    Ok(out)
}

/// Starts a thread named `name`.
pub(super) fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .with_context(|| format!("starting thread {name}"))
}
