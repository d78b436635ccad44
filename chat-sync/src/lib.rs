//! Pure state machines that coordinate servers, with time passed in and outputs returned.
//!
//! # Layout (to come with the coordination and replication issues)
//! - `bully`: Bully election with terms (highest live rank wins).
//! - `berkeley`: Berkeley averaging of physical clocks, run by the coordinator.
//! - `membership`: failure detection by heartbeats and missed replies.
//! - `replication`: per-origin sequence bookkeeping, acknowledgements and catch-up.
//!
//! Every machine follows the sans-IO shape: `handle_*(now, input)` methods feed it,
//! `poll_*` methods drain what it wants done (messages to send, timers to set).
