//! The XSUB/XPUB forwarder for publications.
//!
//! Publishers (servers) connect PUB sockets to the XSUB side; subscribers (clients, servers)
//! connect SUB sockets to the XPUB side. Publications flow XSUB → XPUB, subscription
//! messages (`\x01topic` / `\x00topic`) flow XPUB → XSUB. Every frame of a multipart message
//! is forwarded with its "more" flag, so `[topic][payload]` arrives intact.
//!
//! This is `zmq::proxy` written as a `zmq::poll` loop so that it stops when the
//! [`Shutdown`] flag is raised. The XPUB side has a send high-water mark of
//! `PUB_HWM` messages per subscriber and drops past it (pub/sub is lossy by
//! design); the loop never blocks on a slow subscriber. Nothing a peer sends can stop it:
//! frames are forwarded as opaque bytes and every send error is counted and ignored.

use std::time::Duration;

use crate::{sockets, Shutdown};

/// How long one poll waits before checking the shutdown flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most messages forwarded from one side before looking at the other side again.
const BATCH: usize = 1024;

/// Where the proxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Endpoint publishers connect to (XSUB), e.g. `tcp://*:5557`.
    pub xsub: String,
    /// Endpoint subscribers connect to (XPUB), e.g. `tcp://*:5558`.
    pub xpub: String,
}

impl Default for ProxyConfig {
    /// The default ports of PROTOCOL.md on every interface.
    fn default() -> Self {
        ProxyConfig {
            xsub: "tcp://*:5557".to_string(),
            xpub: "tcp://*:5558".to_string(),
        }
    }
}

/// Counters of what the proxy forwarded, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Messages forwarded from publishers to subscribers.
    pub publications: u64,
    /// Messages forwarded from subscribers to publishers (subscriptions and the rest).
    pub upstream: u64,
    /// Frames that could not be sent and were dropped.
    pub send_errors: u64,
}

/// A bound proxy, ready to run (bind first, so bind errors and real ports are known).
pub struct Proxy {
    xsub: zmq::Socket,
    xpub: zmq::Socket,
    xsub_endpoint: String,
    xpub_endpoint: String,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("xsub", &self.xsub_endpoint)
            .field("xpub", &self.xpub_endpoint)
            .finish()
    }
}

impl Proxy {
    /// Creates and binds both sockets.
    pub fn bind(ctx: &crate::Context, cfg: &ProxyConfig) -> zmq::Result<Proxy> {
        let ctx = ctx.zmq();
        let xsub = sockets::socket(ctx, zmq::XSUB, sockets::PUB_HWM)?;
        xsub.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
        let xpub = sockets::socket(ctx, zmq::XPUB, sockets::PUB_HWM)?;
        xpub.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
        let xsub_endpoint = sockets::bind(&xsub, &cfg.xsub)?;
        let xpub_endpoint = sockets::bind(&xpub, &cfg.xpub)?;
        Ok(Proxy {
            xsub,
            xpub,
            xsub_endpoint,
            xpub_endpoint,
        })
    }

    /// The endpoint publishers connect to, with the real port.
    pub fn xsub_endpoint(&self) -> &str {
        &self.xsub_endpoint
    }

    /// The endpoint subscribers connect to, with the real port.
    pub fn xpub_endpoint(&self) -> &str {
        &self.xpub_endpoint
    }

    /// Forwards in both directions until `shutdown` is raised.
    pub fn run(self, shutdown: &Shutdown) -> zmq::Result<ProxyStats> {
        tracing::info!(xsub = %self.xsub_endpoint, xpub = %self.xpub_endpoint, "proxy running");
        let mut stats = ProxyStats::default();
        let mut msg = zmq::Message::new();
        while !shutdown.is_triggered() {
            let (from_pub, from_sub) = {
                let mut items = [
                    self.xsub.as_poll_item(zmq::POLLIN),
                    self.xpub.as_poll_item(zmq::POLLIN),
                ];
                match zmq::poll(&mut items, POLL_INTERVAL.as_millis() as i64) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                (items[0].is_readable(), items[1].is_readable())
            };
            if from_pub {
                let (n, errs) = forward(&self.xsub, &self.xpub, &mut msg)?;
                stats.publications += n;
                stats.send_errors += errs;
            }
            if from_sub {
                let (n, errs) = forward(&self.xpub, &self.xsub, &mut msg)?;
                stats.upstream += n;
                stats.send_errors += errs;
            }
        }
        tracing::info!(
            publications = stats.publications,
            upstream = stats.upstream,
            dropped_frames = stats.send_errors,
            "proxy stopped"
        );
        Ok(stats)
    }
}

/// Forwards up to [`BATCH`] whole messages from `from` to `to` without blocking; returns
/// the messages forwarded and the frames that could not be sent.
fn forward(
    from: &zmq::Socket,
    to: &zmq::Socket,
    msg: &mut zmq::Message,
) -> zmq::Result<(u64, u64)> {
    let mut messages = 0;
    let mut errors = 0;
    for _ in 0..BATCH {
        match from.recv(msg, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
            Err(e) => return Err(e),
        }
        // A message is atomic: once its first frame is here, the rest is too.
        let mut sending = true;
        loop {
            let more = msg.get_more();
            if sending {
                let flags = zmq::DONTWAIT | if more { zmq::SNDMORE } else { 0 };
                if let Err(e) = send_frame(to, msg, flags) {
                    // XPUB and XSUB drop past their HWM instead of failing, so this takes a
                    // signal storm or a closing context; the rest of the message is skipped.
                    errors += 1;
                    sending = false;
                    tracing::debug!(error = %e, "proxy dropped a message");
                }
            }
            if !more {
                break;
            }
            if let Err(e) = recv_frame(from, msg) {
                tracing::warn!(error = %e, "proxy lost the rest of a multipart message");
                break;
            }
        }
        messages += 1;
    }
    Ok((messages, errors))
}

/// Sends a copy of `msg`, retrying if a signal interrupts the call (a frame that fails is
/// not queued, so the retry cannot duplicate it; sending by value would lose it).
fn send_frame(to: &zmq::Socket, msg: &zmq::Message, flags: i32) -> zmq::Result<()> {
    let mut attempts = 0;
    loop {
        match to.send(&msg[..], flags) {
            Err(zmq::Error::EINTR) if attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

/// Receives the next frame of a message that has begun, retrying if a signal interrupts.
fn recv_frame(from: &zmq::Socket, msg: &mut zmq::Message) -> zmq::Result<()> {
    let mut attempts = 0;
    loop {
        match from.recv(msg, zmq::DONTWAIT) {
            Err(zmq::Error::EINTR) if attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

/// Binds the proxy, reports the real `(xsub, xpub)` endpoints on `bound` (if given), and
/// forwards until `shutdown` is raised.
pub fn run_proxy(
    ctx: &crate::Context,
    cfg: &ProxyConfig,
    shutdown: &Shutdown,
    bound: Option<crossbeam_channel::Sender<(String, String)>>,
) -> zmq::Result<()> {
    let proxy = Proxy::bind(ctx, cfg)?;
    if let Some(tx) = bound {
        // The receiver may have gone away; the proxy runs anyway.
        let _ = tx.send((proxy.xsub_endpoint.clone(), proxy.xpub_endpoint.clone()));
    }
    proxy.run(shutdown).map(|_| ())
}
