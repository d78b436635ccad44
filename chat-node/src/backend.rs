//! The protocol between the broker and servers on the broker's backend socket.
//!
//! The broker binds a ROUTER; each server connects a DEALER (random identity per
//! connection). Frames after the ROUTER's identity frame:
//!
//! | direction | frames | meaning |
//! |---|---|---|
//! | server → broker | `READY`, capacity | "I can take up to `capacity` requests at once" (first message; also re-sent after a broker restart) |
//! | server → broker | `HB`, capacity | heartbeat; an unknown server that sends it is registered too |
//! | server → broker | `REP`, token, reply | the reply to request `token` |
//! | server → broker | `BYE` | leaving: re-dispatch my in-flight requests now |
//! | broker → server | `REQ`, token, request | a client request; answer with `REP` and the same token |
//! | broker → server | `HB` | broker heartbeat; a server that hears none logs it (ZeroMQ reconnects by itself, and the broker re-registers a server on its next `HB`) |
//!
//! `capacity` is a decimal ASCII integer; `token` is 8 bytes, big-endian, chosen by the
//! broker and meaningless to the server. Servers never see client identities. A server
//! silent for [`LIVENESS`] is dropped and its in-flight requests go to another server.

use std::time::Duration;

/// Server announces itself and its capacity.
pub const READY: &[u8] = b"READY";
/// Heartbeat, both directions.
pub const HEARTBEAT: &[u8] = b"HB";
/// Broker hands a request to a server.
pub const REQUEST: &[u8] = b"REQ";
/// Server hands a reply back.
pub const REPLY: &[u8] = b"REP";
/// Server leaves.
pub const BYE: &[u8] = b"BYE";

/// How often each side sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// Silence after which the other side is considered dead.
pub const LIVENESS: Duration = Duration::from_millis(1000);
/// Requests a server takes at once unless configured otherwise.
pub const DEFAULT_CAPACITY: u32 = 256;

/// Encodes a request token.
pub fn token_bytes(token: u64) -> [u8; 8] {
    token.to_be_bytes()
}

/// Decodes a request token; `None` if the frame is not 8 bytes.
pub fn parse_token(frame: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = frame.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// Encodes a capacity.
pub fn capacity_bytes(capacity: u32) -> Vec<u8> {
    capacity.to_string().into_bytes()
}

/// Decodes a capacity; `None` if it is not a positive decimal integer.
pub fn parse_capacity(frame: &[u8]) -> Option<u32> {
    std::str::from_utf8(frame)
        .ok()?
        .parse()
        .ok()
        .filter(|c| *c > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        assert_eq!(parse_token(&token_bytes(0xdead_beef)), Some(0xdead_beef));
        assert_eq!(parse_token(b"short"), None);
        assert_eq!(parse_capacity(&capacity_bytes(7)), Some(7));
        assert_eq!(parse_capacity(b"0"), None);
        assert_eq!(parse_capacity(b"x"), None);
    }
}
