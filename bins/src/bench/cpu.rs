//! CPU time and context switches of this process and its threads, from procfs (see the
//! "CPU time" section of [`bench`](super)), and the machine a run is on.

use std::collections::BTreeMap;

use super::report::{CpuReport, Machine, ThreadCpu};

/// CPU clock ticks per second assumed when reading `/proc/self/stat` (`USER_HZ`).
pub const CLOCK_TICKS: f64 = 100.0;

/// The machine of this run: CPUs available and their model.
pub(super) fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        clock_ticks: CLOCK_TICKS,
    }
}

/// Reads a `stat` file of procfs: `(command name, utime, stime)` in clock ticks.
fn read_stat(path: &std::path::Path) -> Option<(String, u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // The fields after the name start at field 3 (state): utime is 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime, stime))
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
pub fn process_cpu_seconds() -> Option<f64> {
    read_stat(std::path::Path::new("/proc/self/stat")).map(|(_, u, s)| (u + s) as f64 / CLOCK_TICKS)
}

/// The group a thread's CPU is reported under: its name without a trailing number
/// (`bench-server-2` → `bench-server`, `ZMQbg/IO/0` → `ZMQbg/IO`).
pub fn thread_group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '/')
        .to_string()
}

/// Context switches of a thread so far (voluntary plus involuntary), from its
/// `/proc/.../status`.
fn read_switches(path: &std::path::Path) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let mut total = 0;
    for line in status.lines() {
        if let Some(v) = line
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
        {
            total += v.trim().parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// CPU ticks of the process and of each of its threads at one instant.
pub(super) struct CpuSnapshot {
    user: u64,
    system: u64,
    /// Thread id → (name, user + system ticks, context switches).
    threads: BTreeMap<String, (String, u64, u64)>,
}

/// Threads that kept the process name: libzmq's I/O and reaper threads (this build does
/// not name them). The main thread is reported as `main`.
pub const UNNAMED_THREADS: &str = "zmq-io";

/// CPU ticks of this process and of each of its threads, now.
pub(super) fn cpu_snapshot() -> Option<CpuSnapshot> {
    let (process, user, system) = read_stat(std::path::Path::new("/proc/self/stat"))?;
    let pid = std::process::id().to_string();
    let mut threads = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            if let Some((name, u, s)) = read_stat(&entry.path().join("stat")) {
                let tid = entry.file_name().to_string_lossy().into_owned();
                let name = if tid == pid {
                    "main".to_string()
                } else if name == process {
                    UNNAMED_THREADS.to_string()
                } else {
                    name
                };
                let switches = read_switches(&entry.path().join("status")).unwrap_or(0);
                threads.insert(tid, (name, u + s, switches));
            }
        }
    }
    Some(CpuSnapshot {
        user,
        system,
        threads,
    })
}

/// CPU used between two snapshots, over `window` of wall time.
pub(super) fn cpu_report(a: &CpuSnapshot, b: &CpuSnapshot, window: f64, ok: u64) -> CpuReport {
    let secs = |ticks: u64| ticks as f64 / CLOCK_TICKS;
    let pct = |s: f64| {
        if window > 0.0 {
            100.0 * s / window
        } else {
            0.0
        }
    };
    let user = secs(b.user.saturating_sub(a.user));
    let system = secs(b.system.saturating_sub(a.system));
    let seconds = user + system;
    let mut groups: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for (tid, (name, ticks, switches)) in &b.threads {
        let (t0, s0) = a.threads.get(tid).map_or((0, 0), |(_, t, s)| (*t, *s));
        let g = groups.entry(thread_group(name)).or_default();
        g.0 += 1;
        g.1 += ticks.saturating_sub(t0);
        g.2 += switches.saturating_sub(s0);
    }
    let mut threads: Vec<ThreadCpu> = groups
        .into_iter()
        .filter(|(_, (_, ticks, _))| *ticks > 0)
        .map(|(group, (threads, ticks, switches))| ThreadCpu {
            group,
            threads,
            seconds: secs(ticks),
            percent: pct(secs(ticks)),
            switches_per_request: if ok > 0 {
                switches as f64 / ok as f64
            } else {
                0.0
            },
        })
        .collect();
    threads.sort_by(|x, y| y.seconds.total_cmp(&x.seconds));
    CpuReport {
        seconds,
        user_seconds: user,
        system_seconds: system,
        percent: pct(seconds),
        us_per_request: if ok > 0 {
            seconds * 1e6 / ok as f64
        } else {
            0.0
        },
        threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_groups_drop_the_number() {
        assert_eq!(thread_group("bench-server-12"), "bench-server");
        assert_eq!(thread_group("ZMQbg/IO/0"), "ZMQbg/IO");
        assert_eq!(thread_group("chat-client-sub"), "chat-client-sub");
    }

    #[test]
    fn cpu_time_is_readable_here() {
        assert!(process_cpu_seconds().is_some_and(|s| s >= 0.0));
    }
}
