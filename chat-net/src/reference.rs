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
//! than [`sockets::MAX_MSG_SIZE`] close the sender's connection (libzmq `MAXMSGSIZE`).
//! Replies to vanished clients are dropped. The loop polls every 100 ms for the
//! [`Shutdown`] flag.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_core::time::Timestamp;

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
}

impl Default for ReferenceConfig {
    /// The default port of PROTOCOL.md on every interface, and the default limits.
    fn default() -> Self {
        ReferenceConfig {
            bind: "tcp://*:5559".to_string(),
            timeout: DEFAULT_TIMEOUT,
            max_servers: DEFAULT_MAX_SERVERS,
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
    pub fn run(self, shutdown: &Shutdown) -> zmq::Result<ReferenceStats> {
        tracing::info!(
            bind = %self.endpoint,
            timeout_ms = self.cfg.timeout.as_millis() as u64,
            "reference running"
        );
        let mut core = ReferenceCore::new(self.cfg.timeout, self.cfg.max_servers);
        let result = self.serve(&mut core, shutdown);
        core.poll_changes(Instant::now());
        let stats = core.stats();
        tracing::info!(?stats, "reference stopped");
        result.map(|()| stats)
    }

    fn serve(&self, core: &mut ReferenceCore, shutdown: &Shutdown) -> zmq::Result<()> {
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        while !shutdown.is_triggered() {
            let readable = {
                let mut items = [self.socket.as_poll_item(zmq::POLLIN)];
                match zmq::poll(&mut items, POLL_INTERVAL.as_millis() as i64) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                items[0].is_readable()
            };
            if readable {
                for _ in 0..BATCH {
                    let frames = match self.socket.recv_multipart(zmq::DONTWAIT) {
                        Ok(frames) => frames,
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(e),
                    };
                    if let Some((envelope, reply)) =
                        core.handle_message(frames, Instant::now(), wall_clock())
                    {
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
) -> zmq::Result<()> {
    let reference = Reference::bind(ctx, cfg)?;
    if let Some(tx) = bound {
        // The receiver may have gone away; the reference runs anyway.
        let _ = tx.send(reference.endpoint.clone());
    }
    reference.run(shutdown).map(|_| ())
}

/// The wall clock as a wire timestamp.
fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms)
}
