//! Everything that touches ZeroMQ: broker, proxy, server runtime and client SDK.
//!
//! # Layout
//! - [`backend`]: the frame protocol between the broker and servers (READY/HB/REQ/REP/BYE),
//!   re-exported from `chat_node::backend`.
//! - [`broker`]: the reliable request broker (ROUTER/ROUTER, heartbeats, re-dispatch,
//!   session affinity).
//! - [`proxy`]: the XSUB/XPUB forwarder for publications.
//! - [`reference`](mod@reference): the reference service (ranks, live-server list, heartbeats).
//! - [`server`]: the server runtime: one `zmq::poll` loop driving `chat-core`, the store,
//!   the peer links and the `chat-sync` machines (election, clock sync, replication).
//! - [`client`]: the client SDK: typed requests with Lazy Pirate retries, exact-topic
//!   subscriptions delivered over a `crossbeam-channel`.
//! - [`sockets`]: socket options applied everywhere (linger, high-water marks).
//!
//! Every long-running piece takes a [`Shutdown`] flag and returns when it is raised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub mod backend;
pub mod broker;
pub mod client;
pub mod proxy;
pub mod reference;
pub mod server;
pub mod sockets;

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
