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

use chat_core::{Event, EventKind, Timestamp};
use serde::ser::{SerializeSeq, Serializer as _};
use serde::Serialize;

use crate::sqlite::sync_dir;
use crate::{Store, StoreError, VisibleKind};

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

/// What the seed files hold, read into memory (for tests and checks; [`export_seed_files`]
/// streams instead): what users see, each accepted request once.
pub fn seed_files(store: &dyn Store) -> Result<SeedFiles, StoreError> {
    let mut messages = Vec::new();
    store.visible_in_order(VisibleKind::Messages, &mut |e| {
        messages.extend(message_record(e));
        Ok(())
    })?;
    let mut publications = Vec::new();
    store.visible_in_order(VisibleKind::Posts, &mut |e| {
        publications.extend(publication_record(e));
        Ok(())
    })?;
    Ok(SeedFiles {
        users: logins(store)?,
        channels: store.summary()?.channels.into_keys().collect(),
        messages,
        publications,
    })
}

/// Login times per user, in history order (users are few next to messages: this map is
/// held in memory).
fn logins(store: &dyn Store) -> Result<BTreeMap<String, Vec<Timestamp>>, StoreError> {
    let mut users: BTreeMap<String, Vec<Timestamp>> = BTreeMap::new();
    store.visible_in_order(VisibleKind::Logins, &mut |e| {
        if let EventKind::UserLoggedIn { user } = e.kind {
            users.entry(user).or_default().push(e.timestamp);
        }
        Ok(())
    })?;
    Ok(users)
}

fn message_record(e: Event) -> Option<MessageRecord> {
    match e.kind {
        EventKind::DirectMessage { src, dst, message } => Some(MessageRecord {
            src,
            dst,
            message,
            timestamp: e.timestamp,
            clock: e.clock,
        }),
        _ => None,
    }
}

fn publication_record(e: Event) -> Option<PublicationRecord> {
    match e.kind {
        EventKind::ChannelMessage {
            channel,
            user,
            message,
        } => Some(PublicationRecord {
            channel,
            user,
            message,
            timestamp: e.timestamp,
            clock: e.clock,
        }),
        _ => None,
    }
}

/// Writes the four seed files from `store` into `out_dir` (created if missing),
/// streaming the messages and publications from the store in history order: memory stays
/// flat however long the history. A request accepted twice (a retry that reached a second
/// server before the first copy was replicated) is stored twice but exported once, as in
/// `history`.
pub fn export_seed_files(store: &dyn Store, out_dir: &Path) -> Result<ExportSummary, StoreError> {
    std::fs::create_dir_all(out_dir)?;
    let users = logins(store)?;
    let channels: Vec<String> = store.summary()?.channels.into_keys().collect();
    write_json_atomic(out_dir, USERS_FILE, &users)?;
    write_json_atomic(out_dir, CHANNELS_FILE, &channels)?;
    let messages = write_array_atomic(out_dir, MESSAGES_FILE, |each| {
        store.visible_in_order(VisibleKind::Messages, &mut |e| {
            message_record(e).map_or(Ok(()), |r| each(&r))
        })
    })?;
    let publications = write_array_atomic(out_dir, PUBLICATIONS_FILE, |each| {
        store.visible_in_order(VisibleKind::Posts, &mut |e| {
            publication_record(e).map_or(Ok(()), |r| each(&r))
        })
    })?;
    sync_dir(out_dir)?;
    Ok(ExportSummary {
        users: users.len(),
        logins: users.values().map(Vec::len).sum(),
        channels: channels.len(),
        messages,
        publications,
    })
}

/// A record written by [`write_array_atomic`]'s producer.
type Each<'a, T> = &'a mut dyn FnMut(&T) -> Result<(), StoreError>;

/// Writes the records `produce` hands over as one pretty JSON array to `dir/name`, the
/// way [`write_json_atomic`] writes a value; returns how many there were.
fn write_array_atomic<T: Serialize>(
    dir: &Path,
    name: &str,
    produce: impl FnOnce(Each<'_, T>) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    let mut count = 0;
    write_atomic(dir, name, |w| {
        let mut ser = serde_json::Serializer::with_formatter(
            w,
            serde_json::ser::PrettyFormatter::with_indent(b"  "),
        );
        let mut seq = ser.serialize_seq(None).map_err(std::io::Error::from)?;
        produce(&mut |r| {
            count += 1;
            seq.serialize_element(r)
                .map_err(|e| StoreError::Io(e.into()))
        })?;
        seq.end().map_err(std::io::Error::from)?;
        Ok(())
    })?;
    Ok(count)
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
    write_atomic(dir, name, |w| {
        serde_json::to_writer_pretty(w, value).map_err(std::io::Error::from)?;
        Ok(())
    })
}

/// Writes `dir/name` with `write` (then a final newline) through a fsynced temporary file
/// and a rename.
fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| -> Result<(), StoreError> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        w.write_all(b"\n")?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}
