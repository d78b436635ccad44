//! The frame protocol between the broker and servers; defined in [`chat_node::backend`].

pub use chat_node::backend::*;
