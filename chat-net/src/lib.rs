//! Everything that touches ZeroMQ: the drivers of the cores of `chat-node` (broker,
//! reference, server), the proxy, and the client SDK.
//!
//! # Layout
//! - [`backend`]: the frame protocol between the broker and servers (READY/HB/REQ/REP/BYE),
//!   re-exported from `chat_node::backend`.
//! - [`broker`]: the reliable request broker's driver (two ROUTERs around
//!   `chat_node::broker::BrokerCore`: heartbeats, re-dispatch, session affinity).
//! - [`proxy`]: the XSUB/XPUB forwarder for publications.
//! - [`reference`](mod@reference): the reference service's driver (ranks, live-server list,
//!   heartbeats; `ranks.json` with a data directory).
//! - [`server`]: the server runtime: one `zmq::poll` loop and a writer thread driving
//!   `chat_node::server::ServerCore`, which decides everything.
//! - [`client`]: the client SDK: typed requests with Lazy Pirate retries, exact-topic
//!   subscriptions delivered over a `crossbeam-channel`, exactly once and gap-free from
//!   each subscription's baseline (the driver of `chat_node::delivery::Delivery`: repeats
//!   dropped, losses repaired from `history` on the subscriber's own REQ socket).
//! - [`probe`]: health probes (a server's status on its peer socket, the reference's list,
//!   a round trip through the proxy), for `chat health` and container health checks.
//! - `sockets` (private): socket options applied everywhere (linger, high-water marks,
//!   TCP keepalive).
//! - [`check`]: the cluster self-check (`chat check`, chat-web's "Check the cluster"): a
//!   probe user and channel through the real broker and proxy, every server's `status`, one
//!   coordinator and term, clocks in step; each step with its result, time and reason.
//! - [`cluster`]: a whole cluster on threads of one process, on OS-chosen loopback ports
//!   (for `chat-bench`, examples and tests).
//! - [`baseline`]: plain ZeroMQ echo (ROUTER/DEALER proxy, REP workers, REQ clients), the
//!   yardstick `chat-bench` measures the chat layers against.
//!
//! Every long-running piece takes a [`Shutdown`] flag and returns when it is raised, and
//! creates its sockets in a [`Context`] (ZeroMQ's, kept opaque so callers need no `zmq`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub mod backend;
pub mod baseline;
pub mod broker;
pub mod check;
pub mod client;
pub mod cluster;
pub mod probe;
pub mod proxy;
pub mod reference;
pub mod server;
pub(crate) mod sockets;

/// The ZeroMQ context the components of this crate create their sockets in (opaque).
///
/// Clones share one context (and its I/O thread); sockets of different contexts talk only
/// over TCP, not `inproc`.
#[derive(Clone, Default)]
pub struct Context(zmq::Context);

impl Context {
    /// A new context with its own I/O thread.
    pub fn new() -> Self {
        Context(zmq::Context::new())
    }

    /// The ZeroMQ context inside.
    pub(crate) fn zmq(&self) -> &zmq::Context {
        &self.0
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Context")
    }
}

/// The operating system's wall clock as a wire timestamp (milliseconds since the Unix
/// epoch; 0 before it). The drivers read it and hand it to the cores.
pub(crate) fn wall_clock() -> chat_core::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    chat_core::Timestamp::from_millis(ms)
}

/// A flag shared between a component and whoever wants it to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag that is not raised.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Raises the flag.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the flag is raised.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
