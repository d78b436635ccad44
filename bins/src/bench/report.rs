//! The report of a run: what was measured, as a text table or JSON, and the latency
//! figures (percentiles) of an HDR histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Random id of the run (channel `bench-<id>`, tags of its publications).
    pub run_id: String,
    /// What was run.
    pub config: RunConfig,
    /// Where it ran.
    pub machine: Machine,
    /// The chat cluster under load.
    pub chat: LoadReport,
    /// Publications of the measured phase, per subscriber.
    pub delivery: Vec<DeliveryReport>,
    /// Every server's `status` after the load (those that answered), by name.
    pub replicas: Vec<ReplicaReport>,
    /// The raw-ZeroMQ baseline, unless skipped.
    pub baseline: Option<LoadReport>,
    /// Chat over baseline, when both ran.
    pub ratio: Option<Ratio>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

/// The parameters of a run, as used.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `in-process`, or the broker and proxy endpoints of the running cluster.
    pub target: String,
    /// Servers started (in-process) and baseline workers.
    pub servers: usize,
    /// Store of the in-process servers (`None` for a running cluster).
    pub store: Option<String>,
    /// Per-user write limit of the in-process servers (0: off).
    pub rate_limit: u32,
    /// Peer acknowledgements required per write by the in-process servers.
    pub ack_replicas: usize,
    /// Extra time per commit of the in-process servers, in milliseconds.
    pub commit_delay_ms: f64,
    /// Whether the in-process servers commit on their loop thread.
    pub inline_commit: bool,
    /// `replicate` messages in flight per peer in the in-process servers.
    pub replicate_window: usize,
    /// Client threads.
    pub clients: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Message body bytes.
    pub size: usize,
    /// Request mix.
    pub mix: String,
    /// Measured time asked for, in seconds.
    pub duration_s: f64,
    /// Warm-up, in seconds.
    pub warmup_s: f64,
}

/// The machine of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo` (empty if unknown).
    pub cpu_model: String,
    /// Clock ticks per second assumed for CPU times.
    pub clock_ticks: f64,
}

/// One load phase (chat or baseline).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Requests started in the measured phase.
    pub requests: u64,
    /// Of those, requests that succeeded.
    pub ok: u64,
    /// Failed requests by error code.
    pub errors: BTreeMap<String, u64>,
    /// Measured time: start of the phase to completion of its last request, in seconds.
    pub elapsed_s: f64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency of successful requests.
    pub latency: Latency,
    /// Latency per operation.
    pub operations: Vec<OpReport>,
    /// CPU time of this process during the phase (absent without `/proc`).
    pub cpu: Option<CpuReport>,
}

/// Latency figures of an HDR histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Requests recorded (equals the successful requests).
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Latency of one operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Operation name (`publish`, ..., `echo` for the baseline).
    pub op: String,
    /// Its latency figures.
    pub latency: Latency,
}

/// CPU time of this process during a phase.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// User plus system time, in seconds.
    pub seconds: f64,
    /// User time, in seconds.
    pub user_seconds: f64,
    /// System (kernel) time, in seconds.
    pub system_seconds: f64,
    /// User plus system over the phase's wall time, in percent of one core.
    pub percent: f64,
    /// CPU microseconds per successful request.
    pub us_per_request: f64,
    /// By thread group (thread name without its number), most first.
    pub threads: Vec<ThreadCpu>,
}

/// CPU of the threads of one group during a phase.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    /// Thread name without its trailing number (`bench-server`, `ZMQbg/IO`, ...).
    pub group: String,
    /// Threads in the group.
    pub threads: usize,
    /// User plus system time, in seconds.
    pub seconds: f64,
    /// That over the phase's wall time, in percent of one core.
    pub percent: f64,
    /// Context switches (voluntary and not) of the group's threads per successful request:
    /// how often a request wakes or preempts them.
    pub switches_per_request: f64,
}

/// What one subscriber received of the measured publications.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryReport {
    /// Subscriber number, from 1.
    pub subscriber: usize,
    /// Publishes acknowledged to the clients in the measured phase.
    pub acknowledged: u64,
    /// Distinct measured publications received.
    pub delivered: u64,
    /// Acknowledged publications never received.
    pub lost: u64,
    /// Receptions beyond the first of the same publication.
    pub duplicates: u64,
    /// Received publications whose publish was not acknowledged (failed on the client, yet
    /// applied).
    pub unacknowledged: u64,
}

/// One server's `status` after the load.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    /// Server name.
    pub name: String,
    /// Events applied (all origins).
    pub events: u64,
    /// Writes it acknowledged while no other live server held them.
    pub local_only_acks: u64,
    /// Batches it committed to its store since it started (one fsync each with SQLite).
    pub commits: u64,
    /// Digest of its replicated state.
    pub digest: String,
}

/// Chat over baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Chat throughput / baseline throughput.
    pub throughput: f64,
    /// Chat p99 / baseline p99.
    pub p99: f64,
}

impl BenchReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Whether every subscriber received exactly the acknowledged publications.
    pub fn no_loss(&self) -> bool {
        self.delivery.iter().all(|d| d.lost == 0)
    }

    /// The report as a plain-text table.
    pub fn render(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let target = match &c.store {
            Some(store) => format!(
                "in-process cluster, {} servers, {store} store{}{}, ack replicas {}, replicate window {}, per-user rate limit {}",
                c.servers,
                if c.commit_delay_ms > 0.0 {
                    format!(" (+{} ms per commit)", c.commit_delay_ms)
                } else {
                    String::new()
                },
                if c.inline_commit { ", commits on the loop thread" } else { "" },
                c.ack_replicas,
                c.replicate_window,
                match c.rate_limit {
                    0 => "off".to_string(),
                    n => format!("{n}/s"),
                }
            ),
            None => format!("running cluster {}", c.target),
        };
        let _ = writeln!(out, "chat-bench run {}: {target}", self.run_id);
        let _ = writeln!(
            out,
            "load: {} clients (closed loop), {} B bodies, mix {}, {:.1} s measured after {:.1} s warm-up, {} subscribers",
            c.clients, c.size, c.mix, c.duration_s, c.warmup_s, c.subscribers
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}{}",
            self.machine.nproc,
            self.machine.cpu_model,
            if self.interrupted {
                "  (INTERRUPTED)"
            } else {
                ""
            }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<16}{:>10}{:>11}{:>9}{:>9}{:>9}{:>10}{:>10}{:>8}{:>8}{:>12}",
            "",
            "ok",
            "req/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "errors",
            "CPU %",
            "CPU µs/req"
        );
        row(&mut out, "chat", &self.chat);
        if let Some(b) = &self.baseline {
            row(&mut out, "baseline (zmq)", b);
        }
        if let Some(r) = &self.ratio {
            let _ = writeln!(
                out,
                "{:<16}{:>10}{:>11}{:>9}{:>9}{:>9}",
                "chat / baseline",
                "",
                format!("{:.2}x", r.throughput),
                "",
                "",
                format!("{:.2}x", r.p99)
            );
        }
        let _ = writeln!(
            out,
            "\nCPU of this process in the measured phase (% of one core):"
        );
        for (label, load) in [
            ("chat", Some(&self.chat)),
            ("baseline", self.baseline.as_ref()),
        ] {
            if let Some(cpu) = load.and_then(|l| l.cpu.as_ref()) {
                let groups: Vec<String> = cpu
                    .threads
                    .iter()
                    .filter(|t| t.percent >= 1.0)
                    .map(|t| {
                        format!(
                            "{} {:.0} ({:.1} sw/req)",
                            t.group, t.percent, t.switches_per_request
                        )
                    })
                    .collect();
                let window = if cpu.percent > 0.0 {
                    cpu.seconds * 100.0 / cpu.percent
                } else {
                    0.0
                };
                let pct = |s: f64| {
                    if window > 0.0 {
                        100.0 * s / window
                    } else {
                        0.0
                    }
                };
                let _ = writeln!(
                    out,
                    "  {label:<9} user {:.0} + system {:.0}; by thread (context switches per request): {}",
                    pct(cpu.user_seconds),
                    pct(cpu.system_seconds),
                    groups.join(", ")
                );
            }
        }
        if self.chat.operations.len() > 1 {
            let _ = writeln!(out, "\nchat by operation:");
            for op in &self.chat.operations {
                let l = &op.latency;
                let _ = writeln!(
                    out,
                    "  {:<10}{:>10} ok   p50 {:>8.0} µs   p99 {:>8.0} µs   max {:>8.0} µs",
                    op.op, l.count, l.p50_us, l.p99_us, l.max_us
                );
            }
        }
        for (label, load) in [
            ("chat", Some(&self.chat)),
            ("baseline", self.baseline.as_ref()),
        ] {
            if let Some(load) = load.filter(|l| !l.errors.is_empty()) {
                let list: Vec<String> = load
                    .errors
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect();
                let _ = writeln!(out, "\nerrors ({label}): {}", list.join(", "));
            }
        }
        if !self.replicas.is_empty() {
            let list: Vec<String> = self
                .replicas
                .iter()
                .map(|r| {
                    format!(
                        "{} {} events in {} commits ({:.1} per commit), {} local-only acks",
                        r.name,
                        r.events,
                        r.commits,
                        r.events as f64 / r.commits.max(1) as f64,
                        r.local_only_acks
                    )
                })
                .collect();
            let same = self.replicas.windows(2).all(|w| w[0].digest == w[1].digest);
            let _ = writeln!(
                out,
                "\nreplicas after the load: {}; digests {}",
                list.join(", "),
                if same { "equal" } else { "DIFFER" }
            );
        }
        if !self.delivery.is_empty() {
            let _ = writeln!(out, "\npublications of the measured phase:");
            let _ = writeln!(
                out,
                "  {:>10}{:>14}{:>11}{:>8}{:>12}{:>16}",
                "subscriber", "acknowledged", "delivered", "lost", "duplicates", "unacknowledged"
            );
            for d in &self.delivery {
                let _ = writeln!(
                    out,
                    "  {:>10}{:>14}{:>11}{:>8}{:>12}{:>16}",
                    d.subscriber,
                    d.acknowledged,
                    d.delivered,
                    d.lost,
                    d.duplicates,
                    d.unacknowledged
                );
            }
            let lost: u64 = self.delivery.iter().map(|d| d.lost).sum();
            let _ = writeln!(
                out,
                "  loss: {}",
                if lost == 0 {
                    "none".to_string()
                } else {
                    format!("{lost} acknowledged publications not delivered")
                }
            );
        }
        out
    }
}

fn row(out: &mut String, label: &str, l: &LoadReport) {
    let errors: u64 = l.errors.values().sum();
    let (pct, per) = l
        .cpu
        .as_ref()
        .map_or(("-".to_string(), "-".to_string()), |c| {
            (
                format!("{:.0}", c.percent),
                format!("{:.1}", c.us_per_request),
            )
        });
    let lat = &l.latency;
    let _ = writeln!(
        out,
        "{:<16}{:>10}{:>11.1}{:>9.0}{:>9.0}{:>9.0}{:>10.0}{:>10.0}{:>8}{:>8}{:>12}",
        label,
        l.ok,
        l.throughput,
        lat.p50_us,
        lat.p90_us,
        lat.p99_us,
        lat.p999_us,
        lat.max_us,
        errors,
        pct,
        per
    );
}

/// The latency figures of `h` (nanoseconds) in microseconds.
pub(super) fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        count: h.len(),
        mean_us: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}
