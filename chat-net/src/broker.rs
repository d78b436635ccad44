//! The reliable request broker over ZeroMQ: a thin driver around
//! [`chat_node::broker::BrokerCore`].
//!
//! Clients connect REQ (or DEALER) sockets to the frontend ROUTER; servers connect DEALER
//! sockets to the backend ROUTER and speak [`crate::backend`]. Everything the broker decides
//! (credits and round robin, session affinity, heartbeats and liveness, re-dispatch,
//! deadlines, error replies, garbage accounting) lives in the core and is documented there;
//! this module only
//!
//! - binds both ROUTERs with `ZMQ_ROUTER_MANDATORY` (so a send to a vanished peer fails
//!   instead of vanishing) and their `MAXMSGSIZE`;
//! - waits in `zmq::poll` until a socket is readable or the core's next timeout;
//! - feeds the core what arrived (servers first: replies free credits for the requests
//!   that follow), the clocks (`Instant::now()`, and the wall clock for the timestamps of
//!   the broker's own error replies), and whether unread server messages are waiting when
//!   a heartbeat is due;
//! - sends what the core hands out, without blocking, and reports every send that fails;
//! - on shutdown, lets the core answer the outstanding requests `unavailable`.
//!
//! The frontend socket's `MAXMSGSIZE` is [`FRONTEND_FRAME_FACTOR`] times the frame limit
//! (4 MiB by default), so a frame up to that size still reaches the broker and is answered
//! `too_large`; only a frame beyond it is refused by libzmq itself, which closes that
//! client's connection without a reply (the bound on what one frame can make the broker
//! allocate).

use std::time::{Duration, Instant};

use chat_node::broker::{
    BrokerCore, BrokerCoreConfig, SendFailure, Transmit, DEFAULT_MAX_PENDING,
    DEFAULT_QUEUE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
};

use crate::{sockets, Shutdown};

pub use chat_node::broker::BrokerStats;

/// Longest the loop sleeps before checking the shutdown flag.
const MAX_POLL: Duration = Duration::from_millis(100);
/// Most messages read from one socket before looking at the other one again.
const BATCH: usize = 1024;
/// The backend accepts frames this many times larger than the frame limit, so an oversized
/// reply reaches the broker (which answers `too_large`) instead of killing the server's
/// connection.
const BACKEND_FRAME_FACTOR: i64 = 4;
/// The frontend accepts frames this many times larger than the frame limit, so an oversized
/// request reaches the broker and gets a `too_large` reply instead of a silently closed
/// connection; libzmq drops only frames beyond this.
pub const FRONTEND_FRAME_FACTOR: i64 = 4;

/// Where the broker listens and how long requests may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Endpoint clients connect to (ROUTER), e.g. `tcp://*:5555`.
    pub frontend: String,
    /// Endpoint servers connect to (ROUTER speaking [`crate::backend`]), e.g. `tcp://*:5556`.
    pub backend: String,
    /// Longest a request waits for a server with a free credit (default 2 s).
    pub queue_timeout: Duration,
    /// Longest a request may stay unanswered, queued or in flight (default 5 s).
    pub request_timeout: Duration,
    /// Most requests waiting in the queue (at least 1); more are refused at once
    /// (default 10 000).
    pub max_pending: usize,
    /// Largest request or reply frame forwarded, in bytes (default `MAX_MSG_SIZE` (1 MiB)).
    pub max_frame: usize,
}

impl Default for BrokerConfig {
    /// The default ports of PROTOCOL.md on every interface, and the default limits.
    fn default() -> Self {
        BrokerConfig {
            frontend: "tcp://*:5555".to_string(),
            backend: "tcp://*:5556".to_string(),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            max_frame: usize::try_from(sockets::MAX_MSG_SIZE).unwrap_or(1 << 20),
        }
    }
}

impl BrokerConfig {
    /// The limits the protocol core works with (everything but the endpoints).
    pub fn core(&self) -> BrokerCoreConfig {
        BrokerCoreConfig {
            queue_timeout: self.queue_timeout,
            request_timeout: self.request_timeout,
            max_pending: self.max_pending,
            max_frame: self.max_frame,
        }
    }
}

/// A bound broker, ready to run (bind first, so bind errors and real ports are known).
pub struct Broker {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    frontend_endpoint: String,
    backend_endpoint: String,
    cfg: BrokerConfig,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("frontend", &self.frontend_endpoint)
            .field("backend", &self.backend_endpoint)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Broker {
    /// Creates and binds both ROUTER sockets.
    pub fn bind(ctx: &crate::Context, cfg: &BrokerConfig) -> zmq::Result<Broker> {
        let ctx = ctx.zmq();
        let frame_limit = i64::try_from(cfg.max_frame)
            .unwrap_or(i64::MAX)
            .max(sockets::MAX_MSG_SIZE);
        let frontend = sockets::socket(ctx, zmq::ROUTER, sockets::REQUEST_HWM)?;
        frontend.set_router_mandatory(true)?;
        frontend.set_maxmsgsize(frame_limit.saturating_mul(FRONTEND_FRAME_FACTOR))?;
        let backend = sockets::socket(ctx, zmq::ROUTER, sockets::REQUEST_HWM)?;
        backend.set_router_mandatory(true)?;
        backend.set_maxmsgsize(frame_limit.saturating_mul(BACKEND_FRAME_FACTOR))?;
        let frontend_endpoint = sockets::bind(&frontend, &cfg.frontend)?;
        let backend_endpoint = sockets::bind(&backend, &cfg.backend)?;
        Ok(Broker {
            frontend,
            backend,
            frontend_endpoint,
            backend_endpoint,
            cfg: cfg.clone(),
        })
    }

    /// The endpoint clients connect to, with the real port.
    pub fn frontend_endpoint(&self) -> &str {
        &self.frontend_endpoint
    }

    /// The endpoint servers connect to, with the real port.
    pub fn backend_endpoint(&self) -> &str {
        &self.backend_endpoint
    }

    /// Serves until `shutdown` is raised; pending requests then get `unavailable`.
    pub fn run(self, shutdown: &Shutdown) -> zmq::Result<BrokerStats> {
        tracing::info!(
            frontend = %self.frontend_endpoint,
            backend = %self.backend_endpoint,
            queue_timeout_ms = self.cfg.queue_timeout.as_millis() as u64,
            request_timeout_ms = self.cfg.request_timeout.as_millis() as u64,
            max_pending = self.cfg.max_pending,
            "broker running"
        );
        let io = Io {
            frontend: self.frontend,
            backend: self.backend,
        };
        // A random first token, so a reply meant for a previous broker run is unlikely to
        // match a token of this one.
        let first_token = rand::random::<u64>() >> 1;
        let mut core = BrokerCore::new(self.cfg.core(), Instant::now(), first_token);
        let result = drive(&mut core, &io, shutdown);
        core.shutdown(crate::wall_clock());
        flush(&mut core, &io);
        let stats = core.stats();
        tracing::info!(?stats, "broker stopped");
        result.map(|()| stats)
    }
}

/// Binds the broker, reports the real `(frontend, backend)` endpoints on `bound` (if given),
/// and serves until `shutdown` is raised.
pub fn run_broker(
    ctx: &crate::Context,
    cfg: &BrokerConfig,
    shutdown: &Shutdown,
    bound: Option<crossbeam_channel::Sender<(String, String)>>,
) -> zmq::Result<()> {
    let broker = Broker::bind(ctx, cfg)?;
    if let Some(tx) = bound {
        // The receiver may have gone away; the broker runs anyway.
        let _ = tx.send((
            broker.frontend_endpoint.clone(),
            broker.backend_endpoint.clone(),
        ));
    }
    broker.run(shutdown).map(|_| ())
}

/// The two sockets.
struct Io {
    frontend: zmq::Socket,
    backend: zmq::Socket,
}

/// The loop: wait, feed the core, send what it wants sent; until `shutdown`.
fn drive(core: &mut BrokerCore, io: &Io, shutdown: &Shutdown) -> zmq::Result<()> {
    while !shutdown.is_triggered() {
        let timeout = poll_millis(core.poll_timeout(), Instant::now());
        let (from_servers, from_clients) = {
            let mut items = [
                io.backend.as_poll_item(zmq::POLLIN),
                io.frontend.as_poll_item(zmq::POLLIN),
            ];
            match zmq::poll(&mut items, timeout) {
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
            (items[0].is_readable(), items[1].is_readable())
        };
        // Servers first: replies free credits for the requests that follow.
        if from_servers {
            for _ in 0..BATCH {
                match io.backend.recv_multipart(zmq::DONTWAIT) {
                    Ok(frames) => {
                        core.handle_server(Instant::now(), crate::wall_clock(), frames);
                        flush(core, io);
                    }
                    Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if from_clients {
            for _ in 0..BATCH {
                match io.frontend.recv_multipart(zmq::DONTWAIT) {
                    Ok(frames) => {
                        core.handle_client(Instant::now(), crate::wall_clock(), frames);
                        flush(core, io);
                    }
                    Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        let now = Instant::now();
        if core.poll_timeout().is_some_and(|at| at <= now) {
            // Messages still unread on the backend may be the very heartbeats that prove a
            // server alive; the core judges silence only without such a backlog.
            let backlog = io.backend.poll(zmq::POLLIN, 0).map_or(true, |n| n > 0);
            core.handle_timeout(now, crate::wall_clock(), backlog);
            flush(core, io);
        }
    }
    Ok(())
}

/// Sends everything the core wants sent; a send that fails goes back to the core (which
/// may want more sent: a request re-dispatched to another server).
fn flush(core: &mut BrokerCore, io: &Io) {
    while let Some(transmit) = core.poll_transmit() {
        let sent = match &transmit {
            Transmit::Client { envelope, body } => {
                let frames: Vec<&[u8]> = envelope
                    .iter()
                    .map(Vec::as_slice)
                    .chain([body.as_slice()])
                    .collect();
                send_now(&io.frontend, &frames)
            }
            Transmit::Server { identity, frames } => {
                let frames: Vec<&[u8]> = std::iter::once(identity.as_slice())
                    .chain(frames.iter().map(Vec::as_slice))
                    .collect();
                send_now(&io.backend, &frames)
            }
        };
        if let Err(e) = sent {
            let failure = match e {
                zmq::Error::EHOSTUNREACH => SendFailure::PeerGone,
                e => SendFailure::Other(e.to_string()),
            };
            core.handle_send_failed(Instant::now(), transmit, failure);
        }
    }
}

/// Milliseconds until `at` (none: [`MAX_POLL`]), at most [`MAX_POLL`].
fn poll_millis(at: Option<Instant>, now: Instant) -> i64 {
    let wait = at.map_or(MAX_POLL, |at| {
        MAX_POLL.min(at.saturating_duration_since(now))
    });
    // Round up so the loop does not spin during the last sub-millisecond.
    wait.as_micros().div_ceil(1000) as i64
}

/// Sends a multipart message without blocking, retrying a frame a signal interrupted.
///
/// On a ROUTER the first frame is the peer identity: with `ZMQ_ROUTER_MANDATORY` an
/// unknown peer (`EHOSTUNREACH`) or a full pipe (`EAGAIN`) fails on that frame, before
/// anything is queued, so a failed send never leaves half a message behind. A frame that
/// fails is not consumed, so retrying just that frame after `EINTR` is safe.
fn send_now(socket: &zmq::Socket, frames: &[&[u8]]) -> zmq::Result<()> {
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.iter().enumerate() {
        let flags = zmq::DONTWAIT | if i < last { zmq::SNDMORE } else { 0 };
        let mut attempts = 0;
        loop {
            match socket.send(*frame, flags) {
                Ok(()) => break,
                Err(zmq::Error::EINTR) if attempts < 3 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_matches_the_core_defaults() {
        let cfg = BrokerConfig::default();
        assert_eq!(cfg.core(), BrokerCoreConfig::default());
    }

    #[test]
    fn poll_waits_round_up_and_are_bounded() {
        let now = Instant::now();
        assert_eq!(poll_millis(None, now), 100);
        assert_eq!(poll_millis(Some(now + Duration::from_secs(9)), now), 100);
        assert_eq!(poll_millis(Some(now + Duration::from_micros(1500)), now), 2);
        assert_eq!(poll_millis(Some(now), now), 0);
        assert_eq!(poll_millis(Some(now), now + Duration::from_secs(1)), 0);
    }
}
