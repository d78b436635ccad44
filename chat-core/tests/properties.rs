//! Property tests of the protocol and the domain.
//!
//! - Round trips: every typed value encodes and decodes back to itself, in MessagePack and
//!   JSON. Inputs are generated within what the wire can carry (see `meta()`, `reply()`,
//!   `announcement_meta()`), the asserts are exact equality.
//! - Robustness: random bytes, random map-shaped bytes, random JSON-ish text and mutated
//!   valid frames never panic any decoder; well-formed maps with a wrong field type are errors.
//! - Convergence: any order, with duplicates, of the same set of events gives equal states.

use std::collections::BTreeSet;

use chat_core::error::ErrorCode;
use chat_core::protocol::{
    decode_announcement, decode_publication, decode_reply, decode_request, encode_announcement,
    encode_publication, encode_reply, encode_request, ErrorReply, MAX_ACCEPTED_CLOCK,
    MAX_HISTORY_LIMIT,
};
use chat_core::{
    Announcement, ApplyOutcome, ChannelPost, ChatState, DirectPost, Encoding, Event, EventId,
    EventKind, HistoryPage, HistoryTarget, Meta, Publication, Reply, ReplyEnvelope, Request,
    RequestEnvelope, RequestWindow, ServerInfo, ServerStatus, Service, Timestamp,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

const ENCODINGS: [Encoding; 2] = [Encoding::MsgPack, Encoding::Json];

/// 0000-01-01T00:00:00.000Z: the ISO form we write has four-digit years.
const MIN_ISO_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z.
const MAX_ISO_MS: i64 = 253_402_300_799_999;

/// 256 cases per property (each property runs well under 2 s in debug builds);
/// `PROPTEST_CASES=20000 cargo test -p chat-core --test properties` searches harder.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Any text, including control characters, quotes and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    "(?s).{0,16}"
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (MIN_ISO_MS..=MAX_ISO_MS).prop_map(Timestamp::from_millis),
        (1_700_000_000_000i64..1_800_000_000_000).prop_map(Timestamp::from_millis),
        Just(Timestamp::from_millis(MIN_ISO_MS)),
        Just(Timestamp::from_millis(MAX_ISO_MS)),
        Just(Timestamp::from_millis(0)),
        Just(Timestamp::from_millis(-1)),
    ]
}

/// Clocks the wire accepts: at most `MAX_ACCEPTED_CLOCK` (larger ones are refused on read).
fn clock() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=MAX_ACCEPTED_CLOCK,
        0u64..300,
        Just(MAX_ACCEPTED_CLOCK),
        Just(0u64),
    ]
}

fn meta() -> impl Strategy<Value = Meta> {
    (clock(), option::of(timestamp()), option::of(text())).prop_map(|(clock, timestamp, id)| Meta {
        clock,
        timestamp,
        id,
    })
}

/// Announcements carry no request id on the wire.
fn announcement_meta() -> impl Strategy<Value = Meta> {
    (clock(), option::of(timestamp())).prop_map(|(clock, timestamp)| Meta {
        clock,
        timestamp,
        id: None,
    })
}

fn announcement() -> impl Strategy<Value = Announcement> {
    (text(), any::<u64>(), any::<u64>()).prop_map(|(coordinator, term, rank)| Announcement {
        coordinator,
        term,
        rank,
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        text().prop_map(|user| Request::Login { user }),
        Just(Request::Users),
        text().prop_map(|channel| Request::Channel { channel }),
        Just(Request::Channels),
        (text(), text(), text()).prop_map(|(user, channel, message)| Request::Publish {
            user,
            channel,
            message
        }),
        (text(), text(), text()).prop_map(|(src, dst, message)| Request::Message {
            src,
            dst,
            message
        }),
        (
            prop_oneof![
                text().prop_map(HistoryTarget::Channel),
                text().prop_map(HistoryTarget::User)
            ],
            option::of(text()),
            // 0 is refused and larger values are clamped on read.
            1..=MAX_HISTORY_LIMIT,
        )
            .prop_map(|(target, before, limit)| Request::History {
                target,
                before,
                limit
            }),
        Just(Request::Status),
        (option::of(text()), option::of(text()))
            .prop_map(|(user, channel)| Request::Subscribe { user, channel }),
        (option::of(text()), option::of(text()))
            .prop_map(|(user, channel)| Request::Unsubscribe { user, channel }),
        (
            option::of(text()),
            option::of(any::<u64>()),
            option::of(text())
        )
            .prop_map(|(user, rank, endpoint)| Request::Heartbeat {
                user,
                rank,
                endpoint
            }),
        (text(), option::of(text()), option::of(any::<u64>())).prop_map(
            |(name, endpoint, rank)| Request::Rank {
                name,
                endpoint,
                rank
            }
        ),
        Just(Request::List),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(from, rank, term)| Request::Election {
            from,
            rank,
            term
        }),
        announcement().prop_map(Request::Coordinator),
        Just(Request::Clock),
        any::<i64>().prop_map(|offset_ms| Request::Adjust { offset_ms }),
        (text(), vec(event(), 0..3)).prop_map(|(from, events)| Request::Replicate { from, events }),
        (
            text(),
            prop::collection::btree_map(text(), any::<u64>(), 0..3),
            1..=5000u32
        )
            .prop_map(|(from, vector, limit)| Request::Sync {
                from,
                vector,
                limit
            }),
    ]
}

fn channel_post() -> impl Strategy<Value = ChannelPost> {
    (
        text(),
        text(),
        text(),
        timestamp(),
        clock(),
        option::of(text()),
        option::of(text()),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(channel, user, message, timestamp, clock, id, rid, prev)| ChannelPost {
                channel,
                user,
                message,
                timestamp,
                clock,
                id,
                rid,
                prev,
            },
        )
}

fn direct_post() -> impl Strategy<Value = DirectPost> {
    (
        text(),
        text(),
        text(),
        timestamp(),
        clock(),
        option::of(text()),
        option::of(text()),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(src, dst, message, timestamp, clock, id, rid, prev)| DirectPost {
                src,
                dst,
                message,
                timestamp,
                clock,
                id,
                rid,
                prev,
            },
        )
}

fn publication() -> impl Strategy<Value = Publication> {
    prop_oneof![
        channel_post().prop_map(Publication::Channel),
        direct_post().prop_map(Publication::Direct),
    ]
}

fn server_info() -> impl Strategy<Value = ServerInfo> {
    (text(), any::<u64>(), option::of(text())).prop_map(|(name, rank, endpoint)| ServerInfo {
        name,
        rank,
        endpoint,
    })
}

fn server_status() -> impl Strategy<Value = ServerStatus> {
    (
        (
            text(),
            option::of(any::<u64>()),
            option::of(text()),
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
        ),
        (
            vec(server_info(), 0..3),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            text(),
        ),
    )
        .prop_map(
            |(
                (name, rank, coordinator, term, lamport, clock_offset_ms),
                (peers, users, channels, messages, events, digest),
            )| ServerStatus {
                name,
                rank,
                coordinator,
                term,
                lamport,
                clock_offset_ms,
                peers,
                users,
                channels,
                messages,
                events,
                digest,
                ..ServerStatus::default()
            },
        )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        prop::sample::select(ErrorCode::KNOWN.to_vec()),
        // `Other` keeps unknown codes verbatim; a known code's text reads as that code.
        text()
            .prop_filter("known code", |s| matches!(
                ErrorCode::parse(s),
                ErrorCode::Other(_)
            ))
            .prop_map(ErrorCode::Other),
    ]
}

/// Services whose successful reply is a bare status (`Reply::Done`).
fn done_service(s: Service) -> bool {
    !matches!(
        s,
        Service::Users
            | Service::Channels
            | Service::History
            | Service::Status
            | Service::Rank
            | Service::List
            | Service::Election
            | Service::Clock
            | Service::Replicate
            | Service::Sync
    )
}

/// A reply and the service it answers. The service decides how a success is read back
/// (`status` carries no payload type), so each payload goes with its own service; `Done`
/// goes with a service that answers with a bare status, or one we do not know.
fn reply() -> impl Strategy<Value = (String, Reply)> {
    let service = |s: Service| Just(s.as_str().to_string());
    prop_oneof![
        prop_oneof![
            prop::sample::select(Service::ALL.to_vec())
                .prop_filter("payload service", |s| done_service(*s))
                .prop_map(|s| s.as_str().to_string()),
            text().prop_filter("payload service", |s| Service::parse(s)
                .is_none_or(done_service)),
        ]
        .prop_map(|s| (s, Reply::Done)),
        (service(Service::Users), vec(text(), 0..4)).prop_map(|(s, u)| (s, Reply::Users(u))),
        (service(Service::Channels), vec(text(), 0..4)).prop_map(|(s, c)| (s, Reply::Channels(c))),
        (
            service(Service::History),
            vec(publication(), 0..4),
            option::of(text()),
            option::of(btree_map(text(), any::<u64>(), 0..4))
        )
            .prop_map(|(s, items, next, heads)| (
                s,
                Reply::History(HistoryPage { items, next, heads })
            )),
        (service(Service::Status), server_status())
            .prop_map(|(s, st)| (s, Reply::Status(Box::new(st)))),
        (service(Service::Rank), any::<u64>()).prop_map(|(s, r)| (s, Reply::Rank(r))),
        (service(Service::List), vec(server_info(), 0..4)).prop_map(|(s, l)| (s, Reply::List(l))),
        service(Service::Election).prop_map(|s| (s, Reply::Election)),
        (service(Service::Clock), timestamp()).prop_map(|(s, t)| (s, Reply::Clock(t))),
        (
            service(Service::Replicate),
            prop::collection::btree_map(text(), any::<u64>(), 0..3)
        )
            .prop_map(|(s, v)| (s, Reply::Vector(v))),
        (service(Service::Sync), vec(event(), 0..3), any::<bool>())
            .prop_map(|(s, events, more)| (s, Reply::Events { events, more })),
        // An error answers any service, even an unknown one.
        (text(), error_code(), text())
            .prop_map(|(s, code, description)| (s, Reply::Error(ErrorReply { code, description }))),
    ]
}

fn event_kind(names: &[&'static str], bodies: &[&'static str]) -> BoxedStrategy<EventKind> {
    let name = prop::sample::select(names.to_vec()).prop_map(str::to_string);
    let body = prop::sample::select(bodies.to_vec()).prop_map(str::to_string);
    prop_oneof![
        name.clone()
            .prop_map(|user| EventKind::UserLoggedIn { user }),
        name.clone()
            .prop_map(|channel| EventKind::ChannelCreated { channel }),
        (name.clone(), name.clone(), body.clone()).prop_map(|(channel, user, message)| {
            EventKind::ChannelMessage {
                channel,
                user,
                message,
            }
        }),
        (name.clone(), name, body).prop_map(|(src, dst, message)| EventKind::DirectMessage {
            src,
            dst,
            message
        }),
    ]
    .boxed()
}

fn event() -> impl Strategy<Value = Event> {
    (
        text(),
        1..=u64::MAX,
        clock(),
        timestamp(),
        option::of(text()),
        event_kind(&["ana", "bia", "geral", "ação"], &["", "oi", "olá \"x\"\n"]),
    )
        .prop_map(|(origin, seq, clock, timestamp, request_id, kind)| Event {
            id: EventId { origin, seq },
            clock,
            timestamp,
            request_id,
            kind,
        })
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_round_trip(request in request(), meta in meta()) {
        let env = RequestEnvelope { request, meta };
        for enc in ENCODINGS {
            let bytes = encode_request(&env, enc).expect("encode");
            let (back, got) = decode_request(&bytes).map_err(|f| f.error).expect("decode");
            prop_assert_eq!(got, enc);
            prop_assert_eq!(&back, &env);
        }
    }

    #[test]
    fn reply_round_trip((service, reply) in reply(), meta in meta()) {
        let env = ReplyEnvelope { service, reply, meta };
        for enc in ENCODINGS {
            let bytes = encode_reply(&env, enc).expect("encode");
            let (back, got) = decode_reply(&bytes).expect("decode");
            prop_assert_eq!(got, enc);
            prop_assert_eq!(&back, &env);
        }
    }

    #[test]
    fn publication_round_trip(p in publication(), topic in text()) {
        // The payload names its channel / recipient, so the topic it arrives on is not needed.
        for enc in ENCODINGS {
            let bytes = encode_publication(&p, enc).expect("encode");
            prop_assert_eq!(&decode_publication(&topic, &bytes).expect("decode"), &p);
            prop_assert_eq!(&decode_publication(p.topic(), &bytes).expect("decode"), &p);
        }
    }

    #[test]
    fn event_round_trip(e in event()) {
        for enc in ENCODINGS {
            let bytes = e.encode(enc).expect("encode");
            prop_assert_eq!(&Event::decode(&bytes).expect("decode"), &e);
        }
    }

    #[test]
    fn announcement_round_trip(a in announcement(), meta in announcement_meta()) {
        for enc in ENCODINGS {
            let bytes = encode_announcement(&a, &meta, enc).expect("encode");
            let (back_a, back_meta) = decode_announcement(&bytes).expect("decode");
            prop_assert_eq!(&back_a, &a);
            prop_assert_eq!(&back_meta, &meta);
        }
    }

    #[test]
    fn event_publication_matches_history_shape(e in event()) {
        // What a server publishes for an event decodes to the same publication.
        if let Some(p) = e.publication() {
            prop_assert_eq!(p.clock(), e.clock);
            prop_assert_eq!(p_id(&p), Some(e.id.to_string()));
            for enc in ENCODINGS {
                let bytes = encode_publication(&p, enc).expect("encode");
                prop_assert_eq!(&decode_publication(p.topic(), &bytes).expect("decode"), &p);
            }
        }
    }
}

fn p_id(p: &Publication) -> Option<String> {
    match p {
        Publication::Channel(c) => c.id.clone(),
        Publication::Direct(d) => d.id.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------

/// Runs every decoder on `bytes`; any panic fails the test.
fn decode_all(bytes: &[u8]) {
    let _ = decode_request(bytes);
    let _ = decode_reply(bytes);
    let _ = decode_publication("geral", bytes);
    let _ = decode_announcement(bytes);
    let _ = Event::decode(bytes);
}

/// Text made of JSON punctuation, digits, keywords and the field names we read.
fn json_ish() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\\",
        "\\u",
        "\\ud800",
        "null",
        "true",
        "false",
        "-",
        "0",
        "1",
        "9",
        ".",
        "e",
        "E",
        "+",
        "1e400",
        "-1",
        "18446744073709551616",
        " ",
        "\"service\"",
        "\"data\"",
        "\"login\"",
        "\"publish\"",
        "\"history\"",
        "\"user\"",
        "\"channel\"",
        "\"message\"",
        "\"msg\"",
        "\"clock\"",
        "\"timestamp\"",
        "\"id\"",
        "\"operation\"",
        "\"server\"",
        "\"seq\"",
        "\"messages\"",
        "\"status\"",
        "\"erro\"",
        "\"2025-11-12T10:00:00Z\"",
        "\"ação\"",
        "\u{0}",
        "\u{ff}",
    ]);
    vec(token, 0..40).prop_map(|t| format!("{{{}", t.concat()))
}

/// A valid frame of some kind, to mutate.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    let enc = prop::sample::select(ENCODINGS.to_vec());
    prop_oneof![
        (request(), meta(), enc.clone()).prop_map(|(request, meta, enc)| {
            encode_request(&RequestEnvelope { request, meta }, enc).expect("encode")
        }),
        ((reply(), meta()), enc.clone()).prop_map(|(((service, reply), meta), enc)| {
            encode_reply(
                &ReplyEnvelope {
                    service,
                    reply,
                    meta,
                },
                enc,
            )
            .expect("encode")
        }),
        (publication(), enc.clone())
            .prop_map(|(p, enc)| encode_publication(&p, enc).expect("encode")),
        (event(), enc).prop_map(|(e, enc)| e.encode(enc).expect("encode")),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(n)),
        Mutation::Set(i, b) => bytes[i.index(n)] = *b,
        Mutation::Insert(i, b) => bytes.insert(i.index(n + 1), *b),
        Mutation::Remove(i) => {
            bytes.remove(i.index(n));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_all(&bytes);
    }

    #[test]
    fn random_map_shaped_bytes_never_panic(
        header in 0x80u8..=0x8f,
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![header];
        bytes.extend(body);
        decode_all(&bytes);
    }

    #[test]
    fn random_json_ish_text_never_panics(text in json_ish()) {
        decode_all(text.as_bytes());
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        frame in valid_frame(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut bytes = frame;
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        decode_all(&bytes);
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_a_thread_stack() {
    // 2 MiB: the default stack of a spawned thread, and of each test thread.
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            for depth in [200usize, 1_000, 1_030, 100_000] {
                // MessagePack: {"service": "login", "data": {"user": "a", "x": [[[...]]]}}
                for (open, key) in [(0x91u8, false), (0x81, true)] {
                    let mut b = vec![0x82, 0xa7];
                    b.extend_from_slice(b"service\xa5login\xa4data\x82\xa4user\xa1a\xa1x");
                    for _ in 0..depth {
                        b.push(open);
                        if key {
                            b.extend_from_slice(b"\xa1k");
                        }
                    }
                    b.push(0xc0);
                    assert!(decode_request(&b).is_err(), "depth {depth}");
                    decode_all(&b);
                    // The same nesting as a publication / event payload.
                    let mut p = vec![0x82, 0xa4];
                    p.extend_from_slice(b"user\xa1a\xa1x");
                    p.extend(std::iter::repeat_n(0x91, depth));
                    p.push(0xc0);
                    decode_all(&p);
                }
                // JSON, in an ignored field and in a field we read.
                for field in ["x", "users", "data"] {
                    let mut j = format!(r#"{{"service":"login","data":{{"user":"a","{field}":"#);
                    j.push_str(&"[".repeat(depth));
                    j.push_str(&"]".repeat(depth));
                    j.push_str("}}");
                    decode_all(j.as_bytes());
                }
            }
        })
        .expect("spawn");
    handle.join().expect("no panic, no overflow");
}

/// The kind of value a field holds, to choose a value of the wrong kind.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A string.
    Str,
    /// A string, or an integer kept as text (request ids).
    StrOrInt,
    /// A non-negative integer.
    U64,
    /// A signed integer.
    I64,
    /// An ISO-8601 string or a Unix number.
    Time,
    /// A list of strings.
    StrList,
    /// A list of maps.
    MapList,
    /// A map (a struct; serde also reads structs from arrays, so arrays are not "wrong").
    Map,
}

fn wrong_value(kind: Kind) -> BoxedStrategy<Value> {
    let pool: Vec<Value> = match kind {
        Kind::Str => vec![
            json!(1),
            json!(-7),
            json!(2.5),
            json!(true),
            json!(["a"]),
            json!({"a": 1}),
        ],
        Kind::StrOrInt => vec![json!(2.5), json!(false), json!(["a"]), json!({"a": "b"})],
        Kind::U64 => vec![
            json!("12"),
            json!(-1),
            json!(1.5),
            json!(true),
            json!([1]),
            json!({"a": 1}),
        ],
        Kind::I64 => vec![
            json!("-3"),
            json!(u64::MAX),
            json!(0.5),
            json!(false),
            json!([1]),
        ],
        Kind::Time => vec![
            json!("yesterday"),
            json!(""),
            json!(true),
            json!([2025]),
            json!({"t": 1}),
            json!(1e300),
            json!(i64::MAX),
            json!(u64::MAX),
        ],
        Kind::StrList => vec![json!("a"), json!(1), json!([1, 2]), json!({"a": "b"})],
        Kind::MapList => vec![json!("a"), json!(1), json!([1]), json!(["a"])],
        Kind::Map => vec![json!("a"), json!(1), json!(true), json!(-2.5)],
    };
    prop::sample::select(pool).boxed()
}

/// Every `data` field of requests and replies, with its kind.
const DATA_FIELDS: &[(&str, Kind)] = &[
    ("status", Kind::Str),
    ("election", Kind::Str),
    ("user", Kind::Str),
    ("channel", Kind::Str),
    ("src", Kind::Str),
    ("dst", Kind::Str),
    ("message", Kind::Str),
    ("msg", Kind::Str),
    ("users", Kind::StrList),
    ("channels", Kind::StrList),
    ("messages", Kind::MapList),
    ("next", Kind::Str),
    ("before", Kind::Str),
    ("limit", Kind::U64),
    ("rank", Kind::U64),
    ("endpoint", Kind::Str),
    ("list", Kind::MapList),
    ("coordinator", Kind::Str),
    ("term", Kind::U64),
    ("server", Kind::Map),
    ("time", Kind::Time),
    ("adjust_ms", Kind::I64),
    ("description", Kind::Str),
    ("code", Kind::Str),
    ("id", Kind::StrOrInt),
    ("timestamp", Kind::Time),
    ("clock", Kind::U64),
];

/// Envelope fields.
const ENVELOPE_FIELDS: &[(&str, Kind)] = &[
    ("service", Kind::Str),
    ("data", Kind::Map),
    ("timestamp", Kind::Time),
    ("clock", Kind::U64),
];

const PUBLICATION_FIELDS: &[(&str, Kind)] = &[
    ("user", Kind::Str),
    ("src", Kind::Str),
    ("message", Kind::Str),
    ("timestamp", Kind::Time),
    ("clock", Kind::U64),
    ("channel", Kind::Str),
    ("dst", Kind::Str),
    ("id", Kind::StrOrInt),
];

const EVENT_FIELDS: &[(&str, Kind)] = &[
    ("operation", Kind::Str),
    ("data", Kind::Map),
    ("server", Kind::Str),
    ("clock", Kind::U64),
    ("seq", Kind::U64),
];

const EVENT_DATA_FIELDS: &[(&str, Kind)] = &[
    ("user", Kind::Str),
    ("channel", Kind::Str),
    ("src", Kind::Str),
    ("dst", Kind::Str),
    ("message", Kind::Str),
    ("timestamp", Kind::Time),
    // Event request ids are strings only.
    ("id", Kind::Str),
];

fn field_with_wrong_value(
    fields: &'static [(&'static str, Kind)],
) -> BoxedStrategy<(String, Value)> {
    prop::sample::select(fields.to_vec())
        .prop_flat_map(|(name, kind)| (Just(name.to_string()), wrong_value(kind)))
        .boxed()
}

fn both_encodings(v: &Value) -> [Vec<u8>; 2] {
    [
        rmp_serde::to_vec_named(v).expect("msgpack"),
        serde_json::to_vec(v).expect("json"),
    ]
}

fn base_request(service: &str) -> Value {
    json!({
        "service": service,
        "data": {"user": "ana", "channel": "geral", "message": "oi", "src": "ana", "dst": "bia",
                 "rank": 1, "term": 1, "coordinator": "s", "adjust_ms": 1,
                 "timestamp": "2025-11-12T10:00:00Z", "clock": 5},
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wrong_field_type_in_data_is_an_error(
        service in prop::sample::select(Service::ALL.to_vec()),
        (field, value) in field_with_wrong_value(DATA_FIELDS),
    ) {
        let mut v = base_request(service.as_str());
        if field == "msg" {
            v["data"].as_object_mut().expect("map").remove("message");
        }
        v["data"][field.as_str()] = value;
        for bytes in both_encodings(&v) {
            prop_assert!(decode_request(&bytes).is_err());
            prop_assert!(decode_reply(&bytes).is_err());
            prop_assert!(decode_announcement(&bytes).is_err());
        }
    }

    #[test]
    fn wrong_field_type_in_envelope_is_an_error(
        service in prop::sample::select(Service::ALL.to_vec()),
        (field, value) in field_with_wrong_value(ENVELOPE_FIELDS),
    ) {
        let mut v = base_request(service.as_str());
        v[field.as_str()] = value;
        for bytes in both_encodings(&v) {
            prop_assert!(decode_request(&bytes).is_err());
            prop_assert!(decode_reply(&bytes).is_err());
            prop_assert!(decode_announcement(&bytes).is_err());
        }
    }

    #[test]
    fn wrong_field_type_in_publication_is_an_error(
        direct in any::<bool>(),
        (field, value) in field_with_wrong_value(PUBLICATION_FIELDS),
    ) {
        let mut v = if direct {
            json!({"src": "ana", "message": "oi", "timestamp": "2025-11-12T10:00:00Z", "clock": 3, "dst": "bia"})
        } else {
            json!({"user": "ana", "message": "oi", "timestamp": "2025-11-12T10:00:00Z", "clock": 3, "channel": "geral"})
        };
        v[field.as_str()] = value;
        for bytes in both_encodings(&v) {
            prop_assert!(decode_publication("geral", &bytes).is_err());
        }
    }

    #[test]
    fn wrong_field_type_in_event_is_an_error(
        operation in prop::sample::select(vec!["login", "channel", "publication", "message"]),
        in_data in any::<bool>(),
        (top_field, top_value) in field_with_wrong_value(EVENT_FIELDS),
        (data_field, data_value) in field_with_wrong_value(EVENT_DATA_FIELDS),
    ) {
        let mut v = json!({
            "operation": operation,
            "data": {"user": "ana", "channel": "geral", "src": "ana", "dst": "bia", "message": "oi",
                     "timestamp": "2025-11-12T10:00:00Z", "id": "r1"},
            "server": "s1", "clock": 3, "seq": 1,
        });
        if in_data {
            v["data"][data_field.as_str()] = data_value;
        } else {
            v[top_field.as_str()] = top_value;
        }
        for bytes in both_encodings(&v) {
            prop_assert!(Event::decode(&bytes).is_err());
        }
    }
}

#[test]
fn base_maps_of_wrong_type_tests_are_valid() {
    // The wrong-type tests mean something only if the untouched maps decode.
    for service in [
        Service::Login,
        Service::Publish,
        Service::Message,
        Service::Election,
    ] {
        for bytes in both_encodings(&base_request(service.as_str())) {
            assert!(decode_request(&bytes).is_ok(), "{service:?}");
        }
    }
    let p = json!({"user": "ana", "message": "oi", "timestamp": "2025-11-12T10:00:00Z", "clock": 3, "channel": "geral"});
    for bytes in both_encodings(&p) {
        assert!(decode_publication("geral", &bytes).is_ok());
    }
    let e = json!({"operation": "publication",
        "data": {"user": "ana", "channel": "geral", "message": "oi", "timestamp": "2025-11-12T10:00:00Z", "id": "r1"},
        "server": "s1", "clock": 3, "seq": 1});
    for bytes in both_encodings(&e) {
        assert!(Event::decode(&bytes).is_ok());
    }
}

// ---------------------------------------------------------------------------------------
// Domain convergence
// ---------------------------------------------------------------------------------------

/// Names shared by users and channels, so creations, logins and posts collide.
const NAMES: &[&str] = &["ana", "bia", "geral", "tech"];
const ORIGINS: &[&str] = &["s1", "s2", "s3", "s4"];
const REQUEST_IDS: &[&str] = &["r1", "r2", "r3"];

/// Events from 2 to 4 origins, sequence numbers contiguous from 1 per origin.
fn event_set() -> impl Strategy<Value = Vec<Event>> {
    let one = (
        event_kind(NAMES, &["oi", "olá", ""]),
        0u64..40,
        1_762_941_600_000i64..1_762_941_700_000,
        option::of(prop::sample::select(REQUEST_IDS.to_vec())),
    );
    vec(vec(one, 0..12), 2..=4).prop_map(|per_origin| {
        let mut out = Vec::new();
        for (o, list) in per_origin.into_iter().enumerate() {
            for (i, (kind, clock, ms, rid)) in list.into_iter().enumerate() {
                out.push(Event {
                    id: EventId {
                        origin: ORIGINS[o].to_string(),
                        seq: i as u64 + 1,
                    },
                    clock,
                    timestamp: Timestamp::from_millis(ms),
                    request_id: rid.map(str::to_string),
                    kind,
                });
            }
        }
        out
    })
}

/// The events in a random order, with random duplicates.
fn delivery(events: Vec<Event>) -> impl Strategy<Value = Vec<Event>> {
    vec(any::<Index>(), 0..10).prop_flat_map(move |dups| {
        let mut all = events.clone();
        if !events.is_empty() {
            all.extend(dups.iter().map(|d| events[d.index(events.len())].clone()));
        }
        Just(all).prop_shuffle()
    })
}

fn scenario() -> impl Strategy<Value = (Vec<Event>, Vec<Event>, Vec<Event>)> {
    event_set().prop_flat_map(|events| {
        (
            Just(events.clone()),
            delivery(events.clone()),
            delivery(events),
        )
    })
}

fn apply_all(events: &[Event]) -> (ChatState, usize) {
    let mut s = ChatState::new();
    let applied = events
        .iter()
        .filter(|e| s.apply(e) == ApplyOutcome::Applied)
        .count();
    (s, applied)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn replicas_converge_whatever_the_delivery((events, a, b) in scenario()) {
        let (reference, n) = apply_all(&events);
        prop_assert_eq!(n, events.len());
        let (sa, na) = apply_all(&a);
        let (sb, nb) = apply_all(&b);
        // Duplicates are recognised: each distinct event is applied exactly once.
        prop_assert_eq!(na, events.len());
        prop_assert_eq!(nb, events.len());
        prop_assert_eq!(&sa, &sb);
        prop_assert_eq!(&sa, &reference);
        prop_assert_eq!(sa.digest(), sb.digest());
        prop_assert_eq!(sa.event_count(), events.len() as u64);

        // Every visible post and private message is counted once. Events sharing a
        // request id are copies of one write: only the one with the smallest event id is
        // visible.
        let winner = |rid: &str| events.iter().filter(|e| e.request_id.as_deref() == Some(rid)).map(|e| &e.id).min();
        let messages = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ChannelMessage { .. } | EventKind::DirectMessage { .. }))
            .filter(|e| e.request_id.as_deref().is_none_or(|rid| winner(rid) == Some(&e.id)))
            .count();
        prop_assert_eq!(sa.message_count(), messages as u64);
        // Request ids map to the same (smallest) event everywhere.
        for rid in REQUEST_IDS {
            prop_assert_eq!(sa.event_for_request(rid), sb.event_for_request(rid));
        }
        let origins: BTreeSet<&String> = events.iter().map(|e| &e.id.origin).collect();
        for o in origins {
            prop_assert_eq!(sa.applied_through(o), sb.applied_through(o));
        }
    }

    #[test]
    fn a_bounded_window_with_a_lookup_decides_as_an_unbounded_one((events, a, _b) in scenario(), keep in 0usize..3) {
        let (reference, _) = apply_all(&events);
        // The window forgets all but `keep` ids after every event; the lookup plays the
        // store's index: the visible copy among the events applied before.
        let mut s = ChatState::new();
        let mut applied: Vec<Event> = Vec::new();
        let tight = RequestWindow { max_count: keep, max_age_ms: u64::MAX };
        for e in &a {
            let outcome = s.apply_with(e, |rid| {
                Ok::<_, ()>(applied.iter().filter(|x| x.request_id.as_deref() == Some(rid)).min_by(|x, y| x.id.cmp(&y.id)).cloned())
            });
            if outcome == Ok(ApplyOutcome::Applied) {
                applied.push(e.clone());
            }
            s.trim_requests(s.request_mark(), 0, tight);
            prop_assert!(s.window_len() <= keep);
        }
        prop_assert_eq!(s.summary(), reference.summary());
    }
}
