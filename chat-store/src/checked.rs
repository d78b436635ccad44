//! Encoding of events for storage, refusing those that would not read back identically.

use chat_core::{Encoding, Event};

use crate::StoreError;

/// Encodes `e` as stored (MessagePack), or explains why it cannot be stored faithfully.
///
/// Both stores call this before writing anything, so they accept and refuse the same
/// events: sequence numbers from 1 to `i64::MAX` (SQLite integers are signed), clocks that
/// `Event::decode` accepts, and timestamps that survive the ISO-8601 round trip. Decoding
/// back costs microseconds, nothing next to the fsync of a commit, and guarantees that
/// `load_all` returns exactly what `append` was given.
pub(crate) fn encode_checked(e: &Event) -> Result<Vec<u8>, StoreError> {
    if i64::try_from(e.id.seq).is_err() {
        return Err(StoreError::InvalidEvent(format!(
            "{}: sequence number above {}",
            e.id,
            i64::MAX
        )));
    }
    let bytes = e
        .encode(Encoding::MsgPack)
        .map_err(|err| StoreError::InvalidEvent(format!("{}: {err}", e.id)))?;
    match Event::decode(&bytes) {
        Ok(back) if back == *e => Ok(bytes),
        Ok(_) => Err(StoreError::InvalidEvent(format!(
            "{}: does not read back identically (timestamp out of the ISO-8601 range?)",
            e.id
        ))),
        Err(err) => Err(StoreError::InvalidEvent(format!("{}: {err}", e.id))),
    }
}

/// Checks a whole batch before anything is written, so a bad event leaves the store untouched.
pub(crate) fn encode_batch(events: &[Event]) -> Result<Vec<Vec<u8>>, StoreError> {
    events.iter().map(encode_checked).collect()
}
