//! The shared test scaffolding (`chat-testkit`), under the name these tests use.

#![allow(unused_imports)]

pub use chat_testkit::*;
