//! Group commit off the loop thread: the server hands a batch of events to a writer
//! thread and keeps serving while the batch is written and fsynced.
//!
//! At most one batch is in flight. While it commits, the loop keeps decoding requests and
//! applying writes to its in-memory state (they form the next batch); what depends on a
//! batch (its publications, pushes to peers, replies that reveal its events) waits until
//! the writer reports the batch durable. So the loop never blocks on the disk, and the
//! longer a commit takes, the bigger the next batch grows (one fsync for all of it).
//!
//! A batch carries events and metadata (rank, term): the events go in one transaction,
//! then the metadata; the server core releases what waits on the batch (replies,
//! publications, election messages) only when the whole batch is reported durable.
//!
//! The store stays shared behind a mutex: the loop reads it directly for the rare paths
//! (catch-up answers, pushes that fell out of memory), waiting at most for the commit in
//! progress. A store that does not touch the disk ([`Store::is_durable`]
//! false: the in-memory store) is committed inline instead: handing it to a thread would
//! only add two wake-ups per batch.
//!
//! Completion is signalled on an `inproc` PAIR socket, so the loop's `zmq::poll` wakes for
//! it like for any other input.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chat_node::server::Batch;
use chat_store::{Store, StoreError};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tracing::warn;

/// The store shared by the loop and the writer thread.
pub type SharedStore = Arc<Mutex<Box<dyn Store>>>;

/// A batch that finished committing.
#[derive(Debug)]
pub struct Completed {
    /// The batch number given to [`Committer::submit`].
    pub epoch: u64,
    /// Whether the events are durable (an error stops the server), and how many events
    /// the batch made invisible ([`chat_store::Appended::hidden`]).
    pub result: Result<usize, StoreError>,
}

enum Mode {
    /// The store is written on this thread, in `submit`.
    Inline { done: Option<Completed> },
    /// A writer thread commits; it reports on `signal`.
    Threaded {
        jobs: Option<Sender<Batch>>,
        results: Receiver<Completed>,
        signal: zmq::Socket,
        thread: Option<JoinHandle<()>>,
        /// Disconnects when the writer thread ends.
        exited: Receiver<()>,
    },
}

/// How long dropping a [`Committer`] waits for the batch being written.
pub const STOP_WAIT: Duration = Duration::from_secs(5);

/// Commits batches of events to the store, one at a time, without blocking the loop.
pub struct Committer {
    store: SharedStore,
    mode: Mode,
    inflight: Option<u64>,
}

impl Committer {
    /// A committer for `store`: a writer thread (named after `name`) for a durable store,
    /// inline commits for an in-memory one or when `inline` is set.
    pub fn start(
        ctx: &zmq::Context,
        name: &str,
        store: SharedStore,
        inline: bool,
    ) -> Result<Self, super::ServerError> {
        let threaded = store.lock().is_durable() && !inline;
        let mode = if threaded {
            let addr = format!("inproc://chat-commit-{}", rand::random::<u64>());
            let signal = ctx.socket(zmq::PAIR)?;
            signal.set_linger(0)?;
            signal.bind(&addr)?;
            let notify = ctx.socket(zmq::PAIR)?;
            notify.set_linger(0)?;
            notify.connect(&addr)?;
            let (jobs, job_rx) = crossbeam_channel::unbounded::<Batch>();
            let (res_tx, results) = crossbeam_channel::unbounded();
            let writer_store = store.clone();
            let (exit_tx, exited) = crossbeam_channel::bounded::<()>(0);
            let thread = std::thread::Builder::new()
                .name(format!("{name}-commit"))
                .spawn(move || {
                    let _exit = exit_tx;
                    writer(writer_store, job_rx, res_tx, notify)
                })
                .map_err(super::ServerError::Thread)?;
            Mode::Threaded {
                jobs: Some(jobs),
                results,
                signal,
                thread: Some(thread),
                exited,
            }
        } else {
            Mode::Inline { done: None }
        };
        Ok(Committer {
            store,
            mode,
            inflight: None,
        })
    }

    /// Whether a batch is being committed.
    pub fn busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// The socket to poll for completions (`None` when commits are inline).
    pub fn socket(&self) -> Option<&zmq::Socket> {
        match &self.mode {
            Mode::Inline { .. } => None,
            Mode::Threaded { signal, .. } => Some(signal),
        }
    }

    /// Starts committing `batch` (its events, then its metadata). Only one batch at a
    /// time: call it when [`Committer::busy`] is false.
    pub fn submit(&mut self, batch: Batch) {
        debug_assert!(self.inflight.is_none(), "one batch at a time");
        self.inflight = Some(batch.epoch);
        match &mut self.mode {
            Mode::Inline { done } => {
                let epoch = batch.epoch;
                let result = commit(&mut **self.store.lock(), &batch);
                *done = Some(Completed { epoch, result });
            }
            Mode::Threaded { jobs, .. } => {
                // If the writer is gone (it stops after a store error, or if it panicked),
                // `poll_completed` reports the batch failed.
                if let Some(j) = jobs.as_ref() {
                    if j.send(batch).is_err() {
                        warn!("the commit thread is gone");
                    }
                }
            }
        }
    }

    /// The batch that finished, if any (never blocks).
    pub fn poll_completed(&mut self) -> Option<Completed> {
        let done = match &mut self.mode {
            Mode::Inline { done } => done.take(),
            Mode::Threaded {
                results, signal, ..
            } => {
                // Drain the wake-up signals; the result itself travels on the channel.
                while signal.recv_bytes(zmq::DONTWAIT).is_ok() {}
                match results.try_recv() {
                    Ok(c) => Some(c),
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        self.inflight.map(|epoch| Completed {
                            epoch,
                            result: Err(StoreError::Io(std::io::Error::other(
                                "the commit thread stopped",
                            ))),
                        })
                    }
                }
            }
        };
        if done.is_some() {
            self.inflight = None;
        }
        done
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if let Mode::Threaded {
            jobs,
            thread,
            exited,
            ..
        } = &mut self.mode
        {
            // Closing the channel stops the writer after the batch it is on. A disk that
            // does not answer must not hang the loop's shutdown: past the wait, the thread is
            // left to finish (or not) on its own; the batch was never acknowledged either
            // way. (Its signal socket then keeps the ZeroMQ context open until it returns.)
            jobs.take();
            match exited.recv_timeout(STOP_WAIT) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    warn!("the store did not finish its commit in time; not waiting for it")
                }
                _ => {
                    if let Some(t) = thread.take() {
                        let _ = t.join();
                    }
                }
            }
        }
    }
}

/// Writes one batch: its events in one transaction, then its metadata. Returns how many
/// events it made invisible.
fn commit(store: &mut dyn Store, batch: &Batch) -> Result<usize, StoreError> {
    let appended = store.append_counting(&batch.events)?;
    for (key, value) in &batch.meta {
        store.set_meta(key, value)?;
    }
    Ok(appended.hidden)
}

fn writer(
    store: SharedStore,
    jobs: Receiver<Batch>,
    results: Sender<Completed>,
    notify: zmq::Socket,
) {
    for batch in jobs.iter() {
        let result = commit(&mut **store.lock(), &batch);
        let failed = result.is_err();
        if results
            .send(Completed {
                epoch: batch.epoch,
                result,
            })
            .is_err()
        {
            return;
        }
        // A full or closed signal pipe is fine: one pending signal wakes the loop.
        let _ = notify.send(&[][..], zmq::DONTWAIT);
        if failed {
            return;
        }
    }
}
