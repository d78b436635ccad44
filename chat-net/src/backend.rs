//! The protocol between the broker and servers on the broker's backend socket.
//!
//! It is defined, with its frame table (`READY`/`HB`/`REQ`/`REP`/`BYE`, and the optional
//! lease `stamp` from servers and its `echo` from the broker), in
//! [`chat_node::backend`], next to the broker's sans-IO core that speaks it; everything
//! there is re-exported here, so `chat_net::backend::READY` and friends keep working.

pub use chat_node::backend::*;
