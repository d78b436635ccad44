//! Plain ZeroMQ with none of the chat layers, as a yardstick for `chat-bench`: a
//! ROUTER/DEALER `zmq::proxy_steerable` broker, REP workers echoing each request, and REQ
//! clients.
//!
//! [`EchoService`] is the proxy (stopped with `TERMINATE` on its control socket) and its
//! workers, each on its own thread and ZeroMQ context, bound on loopback ports chosen by
//! the OS. [`EchoClient`] is one REQ client on a context of its own (create it on the
//! thread that uses it, so libzmq's I/O thread is named after that thread); a round trip
//! that gets no echo within [`REPLY_TIMEOUT`] drops the socket (Lazy Pirate) and counts as
//! a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chat_core::ErrorCode;

use crate::cluster::{spawn, spawn_bound, ClusterError, LOOPBACK};
use crate::sockets;

/// How long a client waits for its echo before counting a timeout.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How often workers look at their stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Why one round trip failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EchoError {
    /// A socket could not be created, connected, or used.
    #[error("transport error: {0}")]
    Transport(String),
    /// No echo within [`REPLY_TIMEOUT`].
    #[error("no echo within {REPLY_TIMEOUT:?}")]
    Timeout,
    /// The echo is not as long as the request.
    #[error("the echo differs from the request")]
    BadReply,
}

impl EchoError {
    /// The code reports count it under: `unavailable`, `timeout` or `bad_reply`.
    pub fn code(&self) -> &'static str {
        match self {
            EchoError::Transport(_) => ErrorCode::Unavailable.as_str(),
            EchoError::Timeout => ErrorCode::Timeout.as_str(),
            EchoError::BadReply => "bad_reply",
        }
    }
}

impl From<zmq::Error> for EchoError {
    fn from(e: zmq::Error) -> Self {
        EchoError::Transport(e.to_string())
    }
}

/// The proxy and its echo workers; stopped (workers, then the proxy) on drop.
pub struct EchoService {
    frontend: String,
    // Declared first: the workers stop before the proxy.
    _workers: Workers,
    _proxy: SteeredProxy,
}

impl std::fmt::Debug for EchoService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoService")
            .field("frontend", &self.frontend)
            .finish()
    }
}

impl EchoService {
    /// Starts the proxy on thread `<prefix>-zmq-proxy` and `workers` echo workers on threads
    /// `<prefix>-echo-<i>`.
    pub fn start(workers: usize, prefix: &str) -> Result<EchoService, ClusterError> {
        let ctx = zmq::Context::new();
        let control_addr = format!(
            "inproc://chat-baseline-proxy-{:016x}",
            rand::random::<u64>()
        );
        let addr = control_addr.clone();
        let name = format!("{prefix}-zmq-proxy");
        let ((frontend, backend), thread) = spawn_bound(
            &name,
            ctx.clone(),
            move |ctx| {
                let front = sockets::socket(ctx, zmq::ROUTER, sockets::REQUEST_HWM)?;
                let frontend = sockets::bind(&front, LOOPBACK)?;
                let back = sockets::socket(ctx, zmq::DEALER, sockets::REQUEST_HWM)?;
                let backend = sockets::bind(&back, LOOPBACK)?;
                let control = sockets::socket(ctx, zmq::PAIR, 16)?;
                control.bind(&addr)?;
                Ok(((frontend, backend), (front, back, control)))
            },
            |(mut front, mut back, mut control)| {
                let result = zmq::proxy_steerable(&mut front, &mut back, &mut control);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "baseline proxy failed");
                }
                result
            },
        )?;
        let steer = sockets::socket(&ctx, zmq::PAIR, 16)
            .and_then(|s| s.connect(&control_addr).map(|()| s))
            .map_err(|source| ClusterError::Bind {
                name: name.clone(),
                source,
            })?;
        let proxy = SteeredProxy {
            control: steer,
            thread: Some(thread),
        };
        let mut pool = Workers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for i in 0..workers {
            let (backend, stop) = (backend.clone(), pool.stop.clone());
            pool.threads
                .push(spawn(&format!("{prefix}-echo-{i}"), move || {
                    if let Err(e) = echo_worker(&backend, &stop) {
                        tracing::error!(error = %e, "baseline echo worker failed");
                    }
                })?);
        }
        Ok(EchoService {
            frontend,
            _workers: pool,
            _proxy: proxy,
        })
    }

    /// The endpoint clients connect to.
    pub fn frontend(&self) -> &str {
        &self.frontend
    }
}

/// One REQ client of an [`EchoService`], on its own context.
pub struct EchoClient {
    ctx: zmq::Context,
    socket: Option<zmq::Socket>,
    frontend: String,
}

impl std::fmt::Debug for EchoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoClient")
            .field("frontend", &self.frontend)
            .finish()
    }
}

impl EchoClient {
    /// A client of `frontend`; it connects at its first round trip.
    pub fn new(frontend: &str) -> EchoClient {
        EchoClient {
            ctx: zmq::Context::new(),
            socket: None,
            frontend: frontend.to_string(),
        }
    }

    /// Sends `payload` and waits for its echo; on silence the socket is dropped (Lazy
    /// Pirate) and the next round trip opens a new one.
    pub fn round_trip(&mut self, payload: &[u8]) -> Result<(), EchoError> {
        let s = match self.socket.take() {
            Some(s) => s,
            None => {
                let s = sockets::socket(&self.ctx, zmq::REQ, sockets::REQUEST_HWM)?;
                s.connect(&self.frontend)?;
                s
            }
        };
        s.send(payload, 0)?;
        if s.poll(zmq::POLLIN, REPLY_TIMEOUT.as_millis() as i64)? == 0 {
            return Err(EchoError::Timeout);
        }
        let reply = s.recv_bytes(0)?;
        self.socket = Some(s);
        if reply.len() != payload.len() {
            return Err(EchoError::BadReply);
        }
        Ok(())
    }
}

/// The steerable proxy thread; sends `TERMINATE` and joins on drop.
struct SteeredProxy {
    control: zmq::Socket,
    thread: Option<JoinHandle<zmq::Result<()>>>,
}

impl Drop for SteeredProxy {
    fn drop(&mut self) {
        let _ = self.control.send(&b"TERMINATE"[..], 0);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Worker threads with a stop flag; raised and joined on drop.
struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A REP worker echoing every request until `stop`.
fn echo_worker(backend: &str, stop: &AtomicBool) -> zmq::Result<()> {
    let ctx = zmq::Context::new();
    let socket = sockets::socket(&ctx, zmq::REP, sockets::REQUEST_HWM)?;
    socket.connect(backend)?;
    let mut msg = zmq::Message::new();
    while !stop.load(Ordering::Acquire) {
        match socket.poll(zmq::POLLIN, POLL.as_millis() as i64) {
            Ok(0) | Err(zmq::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        socket.recv(&mut msg, 0)?;
        socket.send(&msg[..], 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_round_trip_and_stop() {
        let service = EchoService::start(2, "test").expect("start");
        let mut client = EchoClient::new(service.frontend());
        for size in [1, 100, 10_000] {
            assert_eq!(client.round_trip(&vec![b'.'; size]), Ok(()));
        }
        drop(client);
        drop(service);
    }

    #[test]
    fn error_codes_are_the_chat_ones() {
        assert_eq!(EchoError::Timeout.code(), "timeout");
        assert_eq!(EchoError::Transport(String::new()).code(), "unavailable");
        assert_eq!(EchoError::BadReply.code(), "bad_reply");
    }
}
