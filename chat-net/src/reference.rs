//! The reference service: ranks for server names, the list of live servers, heartbeats.
//!
//! The registry, the wire rules and the replies are [`chat_node::reference`]'s
//! [`ReferenceCore`] (re-exported here with the names around it); this module is its
//! ZeroMQ driver.
//!
//! # Socket
//!
//! A ROUTER, so no client can wedge it (a REP would be stuck by a client that sends and
//! vanishes, or by a malformed envelope). REQ clients arrive as `[identity]["" ][body]` and
//! get `[identity]["" ][reply]`; DEALER clients may omit the empty delimiter. Frames larger
//! than `MAX_MSG_SIZE` (1 MiB) close the sender's connection (libzmq `MAXMSGSIZE`).
//! Replies to vanished clients are dropped. The loop polls every 100 ms for the
//! [`Shutdown`] flag.
//!
//! # Ranks across restarts
//!
//! With a data directory ([`ReferenceConfig::data`]), every rank assignment is written to
//! `ranks.json` there (atomically, fsynced) before the reply that reveals it is sent, and
//! read back on start: a name keeps its rank and no rank is ever given to another name,
//! even if its server is down while the reference restarts. (Without one, a restarted
//! reference can give a newcomer the rank of a server that is away, and two servers can
//! then claim the same election term; the simulator finds that in seconds.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use chat_node::reference::{
    Change, ReferenceCore, ReferenceStats, Registry, RegistryError, DEFAULT_MAX_SERVERS,
    DEFAULT_TIMEOUT, MAX_ENDPOINT_CHARS, MAX_RANK, MAX_SERVER_NAME_CHARS,
};

use crate::{sockets, Shutdown};

/// Longest the loop sleeps before checking the shutdown flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often servers that went silent are looked for (to log their leaving).
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Most messages handled before the loop looks at the clock and the flag again.
const BATCH: usize = 1024;

// ----- configuration and socket -----

/// Where the reference listens and how long servers stay listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceConfig {
    /// Endpoint servers connect to (ROUTER answering REQ), e.g. `tcp://*:5559`.
    pub bind: String,
    /// How long a silent server stays in `list` (default 3 s).
    pub timeout: Duration,
    /// Most distinct names kept; new names beyond it get `unavailable` (default 4096).
    pub max_servers: usize,
    /// Directory where rank assignments are kept (`ranks.json`), so that they survive a
    /// restart; `None` keeps them in memory only.
    pub data: Option<PathBuf>,
}

/// File name of the saved rank assignments in [`ReferenceConfig::data`].
pub const RANKS_FILE: &str = "ranks.json";

/// Why the reference stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// ZeroMQ failed.
    #[error("transport error: {0}")]
    Zmq(#[from] zmq::Error),
    /// The saved rank assignments could not be read or written.
    #[error("rank assignments in {path}: {reason}")]
    Ranks {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl Default for ReferenceConfig {
    /// The default port of PROTOCOL.md on every interface, and the default limits.
    fn default() -> Self {
        ReferenceConfig {
            bind: "tcp://*:5559".to_string(),
            timeout: DEFAULT_TIMEOUT,
            max_servers: DEFAULT_MAX_SERVERS,
            data: None,
        }
    }
}

/// A bound reference service, ready to run (bind first, so bind errors and the real port
/// are known).
pub struct Reference {
    socket: zmq::Socket,
    endpoint: String,
    cfg: ReferenceConfig,
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reference")
            .field("endpoint", &self.endpoint)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Reference {
    /// Creates and binds the ROUTER socket.
    pub fn bind(ctx: &crate::Context, cfg: &ReferenceConfig) -> zmq::Result<Reference> {
        let ctx = ctx.zmq();
        let socket = sockets::socket(ctx, zmq::ROUTER, sockets::REQUEST_HWM)?;
        socket.set_router_mandatory(true)?;
        socket.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
        let endpoint = sockets::bind(&socket, &cfg.bind)?;
        Ok(Reference {
            socket,
            endpoint,
            cfg: cfg.clone(),
        })
    }

    /// The endpoint servers connect to, with the real port.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Serves until `shutdown` is raised.
    pub fn run(self, shutdown: &Shutdown) -> Result<ReferenceStats, ReferenceError> {
        let mut core = match &self.cfg.data {
            Some(dir) => {
                let saved = load_ranks(dir)?;
                tracing::info!(dir = %dir.display(), ranks = saved.len(), "rank assignments loaded");
                ReferenceCore::restore(self.cfg.timeout, self.cfg.max_servers, saved)
            }
            None => ReferenceCore::new(self.cfg.timeout, self.cfg.max_servers),
        };
        tracing::info!(
            bind = %self.endpoint,
            timeout_ms = self.cfg.timeout.as_millis() as u64,
            "reference running"
        );
        let result = self.serve(&mut core, shutdown);
        core.poll_changes(Instant::now());
        let stats = core.stats();
        tracing::info!(?stats, "reference stopped");
        result.map(|()| stats)
    }

    fn serve(&self, core: &mut ReferenceCore, shutdown: &Shutdown) -> Result<(), ReferenceError> {
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        while !shutdown.is_triggered() {
            let readable = {
                let mut items = [self.socket.as_poll_item(zmq::POLLIN)];
                match zmq::poll(&mut items, POLL_INTERVAL.as_millis() as i64) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                items[0].is_readable()
            };
            if readable {
                for _ in 0..BATCH {
                    let frames = match self.socket.recv_multipart(zmq::DONTWAIT) {
                        Ok(frames) => frames,
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e.into()),
                    };
                    let reply = core.handle_message(frames, Instant::now(), crate::wall_clock());
                    // A new rank is durable before the reply that reveals it leaves; if it
                    // cannot be saved, the reference stops rather than hand it out.
                    if let Some(assignments) = core.take_unsaved() {
                        if let Some(dir) = &self.cfg.data {
                            save_ranks(dir, &assignments)?;
                        }
                    }
                    if let Some((envelope, reply)) = reply {
                        self.send(core, &envelope, &reply);
                    }
                }
            }
            let now = Instant::now();
            if now >= next_sweep {
                core.poll_changes(now);
                next_sweep = now + SWEEP_INTERVAL;
            }
        }
        Ok(())
    }

    /// Sends `[envelope][reply]`; a client that is gone or not reading is dropped.
    fn send(&self, core: &mut ReferenceCore, envelope: &[Vec<u8>], reply: &[u8]) {
        let frames = envelope.iter().map(Vec::as_slice).chain([reply]);
        if let Err(e) = self.socket.send_multipart(frames, zmq::DONTWAIT) {
            core.note_undeliverable();
            tracing::debug!(error = %e, "reply dropped; client gone or not reading");
        }
    }
}

/// Binds the reference, reports the real endpoint on `bound` (if given), and serves until
/// `shutdown` is raised.
pub fn run_reference(
    ctx: &crate::Context,
    cfg: &ReferenceConfig,
    shutdown: &Shutdown,
    bound: Option<crossbeam_channel::Sender<String>>,
) -> Result<(), ReferenceError> {
    let reference = Reference::bind(ctx, cfg)?;
    if let Some(tx) = bound {
        // The receiver may have gone away; the reference runs anyway.
        let _ = tx.send(reference.endpoint.clone());
    }
    reference.run(shutdown).map(|_| ())
}

/// Reads the saved assignments of `dir` (none if the file does not exist yet).
fn load_ranks(dir: &Path) -> Result<Vec<(String, u64)>, ReferenceError> {
    let path = dir.join(RANKS_FILE);
    let fail = |reason: String| ReferenceError::Ranks {
        path: path.clone(),
        reason,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(e.to_string())),
    };
    let ranks: BTreeMap<String, u64> = serde_json::from_str(&text)
        .map_err(|e| fail(format!("not a JSON map of server name to rank: {e}")))?;
    Ok(ranks.into_iter().collect())
}

/// Saves every assignment in `dir` (created if missing), durably.
fn save_ranks(dir: &Path, assignments: &[(String, u64)]) -> Result<(), ReferenceError> {
    let ranks: BTreeMap<&str, u64> = assignments.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    std::fs::create_dir_all(dir)
        .map_err(chat_store::StoreError::from)
        .and_then(|()| chat_store::write_json_atomic(dir, RANKS_FILE, &ranks))
        .and_then(|()| chat_store::sync_dir(dir))
        .map_err(|e| ReferenceError::Ranks {
            path: dir.join(RANKS_FILE),
            reason: e.to_string(),
        })
}
