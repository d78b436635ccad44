//! The protocol between the broker and servers on the broker's backend socket.
//!
//! The broker binds a ROUTER; each server connects a DEALER (random identity per
//! connection). Frames after the ROUTER's identity frame (`[x]` is optional):
//!
//! | direction | frames | meaning |
//! |---|---|---|
//! | server → broker | `READY`, capacity[, stamp] | "I can take up to `capacity` requests at once" (first message; also re-sent after a broker restart) |
//! | server → broker | `HB`, capacity[, stamp] | heartbeat; an unknown server that sends it is registered too |
//! | server → broker | `REP`, token, reply | the reply to request `token` |
//! | server → broker | `BYE` | leaving: re-dispatch my in-flight requests now |
//! | broker → server | `REQ`, token, request[, echo] | a client request; answer with `REP` and the same token |
//! | broker → server | `HB`[, echo] | broker heartbeat; a server that hears none logs it (ZeroMQ reconnects by itself, and the broker re-registers a server on its next `HB`) |
//!
//! `capacity` is a decimal ASCII integer; `token` is 8 bytes, big-endian, chosen by the
//! broker and meaningless to the server. Servers never see client identities. A server
//! silent for [`LIVENESS`] is dropped and its in-flight requests go to another server.
//!
//! **Lease echo.** `stamp` is 8 bytes, big-endian, opaque to the broker (a server puts its
//! own monotonic milliseconds there). The broker remembers, per registered server, the
//! latest stamp it received from it, and puts it back as `echo` on every `HB` and `REQ` it
//! sends that server, whenever it has one. When the broker registers a server (first
//! `READY`/`HB` from an unknown identity) it sends it an `HB` at once, before any `REQ`, so
//! the server holds a lease before its first request arrives. The broker judges a server
//! silent only after [`LIVENESS`] without hearing from it, counted from when it received
//! the message (so after the message carrying `s` was sent): a server that got an echo of
//! its stamp `s` knows that the broker does not declare it silent and re-dispatch its
//! requests before its own clock reads `s + LIVENESS` (clock drift aside). A server paused
//! for longer can thus fence itself instead of applying requests that meanwhile went to
//! another server. Both optional frames may be absent, so old brokers and old servers
//! interoperate with new ones.

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

/// Encodes a server's stamp (or the broker's echo of it).
pub fn stamp_bytes(stamp: u64) -> [u8; 8] {
    stamp.to_be_bytes()
}

/// Decodes a stamp or an echo; `None` if the frame is not 8 bytes.
pub fn parse_stamp(frame: &[u8]) -> Option<u64> {
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

/// Server → broker `READY, capacity[, stamp]`.
pub fn ready_frames(capacity: u32, stamp: Option<u64>) -> Vec<Vec<u8>> {
    with_optional(
        vec![READY.to_vec(), capacity_bytes(capacity)],
        stamp.map(stamp_bytes),
    )
}

/// Server → broker `HB, capacity[, stamp]`.
pub fn server_heartbeat_frames(capacity: u32, stamp: Option<u64>) -> Vec<Vec<u8>> {
    with_optional(
        vec![HEARTBEAT.to_vec(), capacity_bytes(capacity)],
        stamp.map(stamp_bytes),
    )
}

/// Broker → server `HB[, echo]`.
pub fn broker_heartbeat_frames(echo: Option<u64>) -> Vec<Vec<u8>> {
    with_optional(vec![HEARTBEAT.to_vec()], echo.map(stamp_bytes))
}

/// Broker → server `REQ, token, request[, echo]`.
pub fn request_frames(token: u64, request: Vec<u8>, echo: Option<u64>) -> Vec<Vec<u8>> {
    with_optional(
        vec![REQUEST.to_vec(), token_bytes(token).to_vec(), request],
        echo.map(stamp_bytes),
    )
}

fn with_optional(mut frames: Vec<Vec<u8>>, extra: Option<[u8; 8]>) -> Vec<Vec<u8>> {
    if let Some(extra) = extra {
        frames.push(extra.to_vec());
    }
    frames
}

/// A message from the broker, as a server reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromBroker<'a> {
    /// `HB[, echo]`.
    Heartbeat {
        /// The latest stamp the broker had from this server, if any.
        echo: Option<u64>,
    },
    /// `REQ, token, request[, echo]`.
    Request {
        /// The token to put on the `REP`.
        token: u64,
        /// The client's request frame.
        request: &'a [u8],
        /// The latest stamp the broker had from this server, if any.
        echo: Option<u64>,
    },
}

/// Reads a message from the broker (frames after the DEALER's receive); `None` if it is
/// not one of the shapes in the table (an echo that is present must be 8 bytes).
pub fn parse_from_broker(frames: &[Vec<u8>]) -> Option<FromBroker<'_>> {
    let echo = |frame: Option<&Vec<u8>>| match frame {
        None => Some(None),
        Some(f) => parse_stamp(f).map(Some),
    };
    match frames {
        [cmd, rest @ ..] if cmd.as_slice() == HEARTBEAT && rest.len() <= 1 => {
            Some(FromBroker::Heartbeat {
                echo: echo(rest.first())?,
            })
        }
        [cmd, token, request, rest @ ..] if cmd.as_slice() == REQUEST && rest.len() <= 1 => {
            Some(FromBroker::Request {
                token: parse_token(token)?,
                request,
                echo: echo(rest.first())?,
            })
        }
        _ => None,
    }
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

    #[test]
    fn stamps_are_eight_bytes_big_endian() {
        assert_eq!(stamp_bytes(1), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(parse_stamp(&stamp_bytes(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_stamp(&stamp_bytes(0x0102_0304)), Some(0x0102_0304));
        assert_eq!(parse_stamp(b""), None);
        assert_eq!(parse_stamp(&[0; 9]), None);
    }

    #[test]
    fn server_frames_carry_the_stamp_only_when_given() {
        assert_eq!(
            ready_frames(8, None),
            vec![b"READY".to_vec(), b"8".to_vec()]
        );
        assert_eq!(
            ready_frames(8, Some(5)),
            vec![b"READY".to_vec(), b"8".to_vec(), stamp_bytes(5).to_vec()]
        );
        assert_eq!(
            server_heartbeat_frames(3, Some(9)),
            vec![b"HB".to_vec(), b"3".to_vec(), stamp_bytes(9).to_vec()]
        );
        assert_eq!(
            server_heartbeat_frames(3, None),
            vec![b"HB".to_vec(), b"3".to_vec()]
        );
    }

    #[test]
    fn broker_frames_round_trip_through_the_server_parser() {
        let hb = broker_heartbeat_frames(None);
        assert_eq!(hb, vec![b"HB".to_vec()]);
        assert_eq!(
            parse_from_broker(&hb),
            Some(FromBroker::Heartbeat { echo: None })
        );
        let hb = broker_heartbeat_frames(Some(77));
        assert_eq!(hb.len(), 2);
        assert_eq!(
            parse_from_broker(&hb),
            Some(FromBroker::Heartbeat { echo: Some(77) })
        );
        let req = request_frames(3, b"body".to_vec(), None);
        assert_eq!(req.len(), 3);
        assert_eq!(
            parse_from_broker(&req),
            Some(FromBroker::Request {
                token: 3,
                request: b"body",
                echo: None
            })
        );
        let req = request_frames(3, b"body".to_vec(), Some(u64::MAX));
        assert_eq!(req.len(), 4);
        assert_eq!(
            parse_from_broker(&req),
            Some(FromBroker::Request {
                token: 3,
                request: b"body",
                echo: Some(u64::MAX)
            })
        );
    }

    #[test]
    fn malformed_broker_messages_are_refused() {
        let f = |parts: &[&[u8]]| parts.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        assert_eq!(parse_from_broker(&[]), None);
        assert_eq!(parse_from_broker(&f(&[b"HB", b"short"])), None);
        assert_eq!(parse_from_broker(&f(&[b"HB", &[0; 8], &[0; 8]])), None);
        assert_eq!(parse_from_broker(&f(&[b"REQ", &[0; 8]])), None);
        assert_eq!(parse_from_broker(&f(&[b"REQ", b"tok", b"body"])), None);
        assert_eq!(
            parse_from_broker(&f(&[b"REQ", &[0; 8], b"b", b"echo"])),
            None
        );
        assert_eq!(
            parse_from_broker(&f(&[b"REQ", &[0; 8], b"b", &[0; 8], b"x"])),
            None
        );
        assert_eq!(parse_from_broker(&f(&[b"REP", &[0; 8], b"b"])), None);
    }
}
