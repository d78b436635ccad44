//! The protocol cores of every node of the cluster, with no IO (sans-IO).
//!
//! Each core owns the protocol state of one kind of node and nothing else: no sockets, no
//! threads, no clock reads, no randomness of its own. Inputs are method calls with the
//! time passed in (`handle_*`); what the core wants done comes out of `poll_*` methods
//! (messages to send, batches to persist, the next timeout). `chat-net` drives these cores
//! with ZeroMQ sockets and threads; `chat-sim` drives the same cores in one thread with a
//! simulated network, disks and clocks, under seeded faults.
//!
//! # Layout
//! - [`backend`]: the frame protocol between the broker and servers
//!   (READY/HB/REQ/REP/BYE, the lease stamp and its echo), with builders and parsers.
//! - [`delivery`]: [`delivery::Delivery`], a subscriber's live delivery (drops repeats,
//!   notices losses from the publication chain and the per-origin `heads` of history
//!   replies, repairs them from `history`); the SDK runs it.
//! - [`broker`]: [`broker::BrokerCore`], the request broker's state (credits, round robin,
//!   session affinity, heartbeats, re-dispatch, deadlines) and its invariants.
//! - [`reference`](mod@reference): [`reference::ReferenceCore`], the reference service's
//!   registry (ranks, liveness) and wire rules.
//! - [`server`]: [`server::ServerCore`], everything a chat server decides (state, commit
//!   pipeline, replication, election, clock sync, catch-up, the broker lease).
//! - [`reference`](mod@reference): the reference service's core: [`reference::Registry`]
//!   (ranks, liveness) and [`reference::ReferenceCore`] (envelopes, wire rules, replies).

#![warn(missing_docs)]

pub mod backend;
pub mod broker;
pub mod delivery;
pub mod reference;
pub mod server;
