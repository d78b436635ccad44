//! A real crash: a child process (this test binary, re-executed) appends batches and prints
//! `ACK <seq>` after each `append` returns; the parent SIGKILLs it mid-stream, reopens the
//! store and checks that every acknowledged event is there, and that the one batch that
//! may have been in flight is either wholly there or wholly absent. Two rounds, so the
//! second child also exercises recovery of a killed database.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use chat_core::Event;
use chat_store::{SqliteStore, Store, StoreRead};
use common::{ev, post};

/// Set (to the data directory) in the child's environment: `crash_child` acts only then.
const CHILD_ENV: &str = "CHAT_STORE_CRASH_CHILD_DIR";
/// Origin of every event the child writes.
const ORIGIN: &str = "crash";
/// Acknowledgements the parent waits for before killing the child, per round.
const ACKS_BEFORE_KILL: usize = 150;
/// Rounds of spawn, wait for acks, kill, check.
const ROUNDS: usize = 2;
/// Bounds of the child's loop, should the parent never kill it.
const CHILD_MAX_BATCHES: u64 = 50_000;
const CHILD_MAX_TIME: Duration = Duration::from_secs(120);
/// Bound of the parent's wait for acknowledgements, per round.
const PARENT_DEADLINE: Duration = Duration::from_secs(120);

/// The event with sequence number `seq`: a deterministic function, so the parent can
/// check contents, not just ids.
fn event(seq: u64) -> Event {
    ev(
        ORIGIN,
        seq,
        seq,
        post("geral", "ana", &format!("message {seq}")),
    )
}

/// Size of the batch that starts at `first` (1 to 4 events).
fn batch_len(first: u64) -> u64 {
    1 + (first / 3) % 4
}

/// Last sequence number of the batch that starts at `first`.
fn batch_end(first: u64) -> u64 {
    first + batch_len(first) - 1
}

/// The child: appends batches forever (bounded), acknowledging each on stdout.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // run as a normal test: nothing to do
    };
    let mut store = SqliteStore::open(Path::new(&dir)).unwrap();
    let mut last = store.applied().unwrap().get(ORIGIN).copied().unwrap_or(0);
    let started = Instant::now();
    let stdout = std::io::stdout();
    for _ in 0..CHILD_MAX_BATCHES {
        if started.elapsed() > CHILD_MAX_TIME {
            break;
        }
        let first = last + 1;
        let batch: Vec<Event> = (first..=batch_end(first)).map(event).collect();
        assert_eq!(store.append(&batch).unwrap(), batch.len());
        last = batch_end(first);
        store.set_meta("last", &last.to_string()).unwrap();
        let mut out = stdout.lock();
        writeln!(out, "ACK {last}").unwrap();
        out.flush().unwrap();
    }
}

/// Runs one child until it has acknowledged `ACKS_BEFORE_KILL` batches, SIGKILLs it, and
/// returns the last sequence number it acknowledged.
fn run_and_kill(dir: &Path) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let parse_ack = |line: &str| -> Option<u64> {
        line.strip_prefix("ACK ")
            .map(|n| n.trim().parse().expect("ACK line"))
    };

    let deadline = Instant::now() + PARENT_DEADLINE;
    let mut acked = 0;
    let mut acks = 0;
    while acks < ACKS_BEFORE_KILL {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(n) = parse_ack(&line) {
                    assert!(n > acked, "acks must grow: {n} after {acked}");
                    acked = n;
                    acks += 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("timed out after {acks} acks");
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.wait();
                panic!("child stopped after {acks} acks: {status:?}");
            }
        }
    }

    child.kill().unwrap(); // SIGKILL on Unix: no destructors, no SQLite close
    let status = child.wait().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
    #[cfg(not(unix))]
    assert!(!status.success());
    reader.join().unwrap();
    // Acks already in the pipe when the child died count too.
    for line in rx.try_iter() {
        if let Some(n) = parse_ack(&line) {
            assert!(n > acked);
            acked = n;
        }
    }
    acked
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut previous = 0;
    for round in 0..ROUNDS {
        let acked = run_and_kill(dir.path());
        assert!(acked > previous, "round {round}: no progress");

        let store = SqliteStore::open(dir.path()).unwrap();
        let all = store.load_all().unwrap();
        let stored = store.applied().unwrap().get(ORIGIN).copied().unwrap_or(0);
        // Every acknowledged event is there, with its content, in append order.
        assert!(
            stored >= acked,
            "round {round}: acked {acked}, stored {stored}"
        );
        let expected: Vec<Event> = (1..=stored).map(event).collect();
        assert_eq!(all, expected, "round {round}: no gaps, no extras");
        // Beyond the acks, at most the one batch that was in flight, and all of it.
        assert!(
            stored == acked || stored == batch_end(acked + 1),
            "round {round}: acked {acked}, stored {stored}: a torn batch"
        );
        let last: u64 = store.get_meta("last").unwrap().unwrap().parse().unwrap();
        assert!(last >= acked && last <= stored, "meta last {last}");
        let want: BTreeMap<String, u64> = [(ORIGIN.to_string(), stored)].into();
        assert_eq!(store.applied().unwrap(), want);
        println!("round {round}: acked {acked}, stored {stored}");
        previous = stored;
    }
}
