//! Writes the seeds' JSON files (`users.json`, `channels.json`, `messages.json`,
//! `publications.json`) from what a [`Store`] holds.
//!
//! Shapes (seed 000, "Persistência"):
//! - `users.json`: `{"user": ["<ISO login time>", ...]}`, users sorted, logins in history order;
//! - `channels.json`: `["channel", ...]`, sorted;
//! - `messages.json`: `[{"src", "dst", "message", "timestamp", "clock"}, ...]`;
//! - `publications.json`: `[{"channel", "user", "message", "timestamp", "clock"}, ...]`;
//!
//! messages and publications in history order (Lamport clock, origin, sequence number),
//! each accepted request once: what users see in `history`, whatever copies the store holds
//! (see `ChatState::apply` on requests accepted twice).
//! Each file is replaced atomically (written to a temporary file in the same directory,
//! fsynced, renamed over the old one), so a reader sees the old file or the new one, never
//! half of one; the four files are not replaced together as one unit.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use chat_core::{ChatState, Event, EventKind, Timestamp};
use serde::Serialize;

use crate::sqlite::sync_dir;
use crate::{Store, StoreError};

/// File name of the users export.
pub const USERS_FILE: &str = "users.json";
/// File name of the channels export.
pub const CHANNELS_FILE: &str = "channels.json";
/// File name of the private messages export.
pub const MESSAGES_FILE: &str = "messages.json";
/// File name of the channel posts export.
pub const PUBLICATIONS_FILE: &str = "publications.json";

/// How many records the exported files hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Users in `users.json`.
    pub users: usize,
    /// Login times in `users.json`, all users together.
    pub logins: usize,
    /// Channels in `channels.json`.
    pub channels: usize,
    /// Private messages in `messages.json`.
    pub messages: usize,
    /// Channel posts in `publications.json`.
    pub publications: usize,
}

/// One entry of `messages.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRecord {
    /// Sender.
    pub src: String,
    /// Recipient.
    pub dst: String,
    /// Body.
    pub message: String,
    /// When the accepting server stamped it.
    pub timestamp: Timestamp,
    /// Lamport stamp.
    pub clock: u64,
}

/// One entry of `publications.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicationRecord {
    /// Channel.
    pub channel: String,
    /// Author.
    pub user: String,
    /// Body.
    pub message: String,
    /// When the accepting server stamped it.
    pub timestamp: Timestamp,
    /// Lamport stamp.
    pub clock: u64,
}

/// The content of the four seed files, as exported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedFiles {
    /// `users.json`: login times per user, in history order.
    pub users: BTreeMap<String, Vec<Timestamp>>,
    /// `channels.json`, sorted.
    pub channels: Vec<String>,
    /// `messages.json`, in history order.
    pub messages: Vec<MessageRecord>,
    /// `publications.json`, in history order.
    pub publications: Vec<PublicationRecord>,
}

impl SeedFiles {
    /// How many records each file holds.
    pub fn summary(&self) -> ExportSummary {
        ExportSummary {
            users: self.users.len(),
            logins: self.users.values().map(Vec::len).sum(),
            channels: self.channels.len(),
            messages: self.messages.len(),
            publications: self.publications.len(),
        }
    }
}

/// Rebuilds the chat state from `store` and returns what the seed files hold: what users
/// see, each accepted request once.
pub fn seed_files(store: &dyn Store) -> Result<SeedFiles, StoreError> {
    let events = store.load_all()?;
    let mut state = ChatState::new();
    for e in &events {
        state.apply(e);
    }

    let users: BTreeMap<String, Vec<Timestamp>> = state
        .users()
        .into_iter()
        .map(|u| {
            let logins = state.logins(&u);
            (u, logins)
        })
        .collect();
    let channels = state.channels();
    let messages: Vec<MessageRecord> = state
        .all_directs()
        .map(|p| MessageRecord {
            src: p.src.clone(),
            dst: p.dst.clone(),
            message: p.message.clone(),
            timestamp: p.timestamp,
            clock: p.clock,
        })
        .collect();
    // ChatState keeps posts per channel; the file lists them all in history order. A
    // request accepted twice (a retry that reached a second server before the first copy
    // was replicated) is stored twice but seen once: only the copy the state keeps visible
    // (the smallest event id of that request id) is exported, as in `history`.
    let mut posts: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ChannelMessage { .. }))
        .filter(|e| is_visible(&state, e))
        .collect();
    posts.sort_by_key(|e| e.stamp());
    posts.dedup_by(|a, b| a.id == b.id);
    let publications: Vec<PublicationRecord> = posts
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ChannelMessage {
                channel,
                user,
                message,
            } => Some(PublicationRecord {
                channel: channel.clone(),
                user: user.clone(),
                message: message.clone(),
                timestamp: e.timestamp,
                clock: e.clock,
            }),
            _ => None,
        })
        .collect();
    Ok(SeedFiles {
        users,
        channels,
        messages,
        publications,
    })
}

/// Rebuilds the chat state from `store` and writes the four seed files into `out_dir`
/// (created if missing).
pub fn export_seed_files(store: &dyn Store, out_dir: &Path) -> Result<ExportSummary, StoreError> {
    let files = seed_files(store)?;
    std::fs::create_dir_all(out_dir)?;
    write_json_atomic(out_dir, USERS_FILE, &files.users)?;
    write_json_atomic(out_dir, CHANNELS_FILE, &files.channels)?;
    write_json_atomic(out_dir, MESSAGES_FILE, &files.messages)?;
    write_json_atomic(out_dir, PUBLICATIONS_FILE, &files.publications)?;
    sync_dir(out_dir)?;
    Ok(files.summary())
}

/// Whether `e` is the copy users see: an event without a request id, or the winner among
/// the events that carry its request id.
fn is_visible(state: &ChatState, e: &Event) -> bool {
    e.request_id
        .as_deref()
        .is_none_or(|rid| state.event_for_request(rid) == Some(&e.id))
}

/// Distinguishes temporary files of concurrent exports within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `value` as pretty JSON to `dir/name` through a fsynced temporary file and a
/// rename (a reader sees the old file or the new one, never half of one). Sync the
/// directory ([`sync_dir`]) for the rename itself to survive a power loss.
pub fn write_json_atomic<T: Serialize + ?Sized>(
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::from)?;
    bytes.push(b'\n');
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}
