//! Golden wire vectors: our encoder against a reference MessagePack (and JSON) implementation.
//!
//! How the vectors were made: `python3 chat-core/tests/golden/make_golden.py >
//! chat-core/tests/golden/vectors.txt`, with Python 3.11 and the `msgpack` package 1.2.4
//! (`msgpack.packb(d)` with its defaults) and `json.dumps(d, separators=(",", ":"),
//! ensure_ascii=False)`. The script builds the seed 000 example dicts with concrete values,
//! keys in the order our encoder writes them. This test never runs Python: it reads the
//! committed hex. Regenerate only when the wire format changes on purpose.
//!
//! - `enc/*`: our encoder must produce exactly these bytes from the typed value below, and
//!   decoding them must give that typed value back.
//! - `dec/*`: shapes other clients send (seed 002 Unix times, seed 003 top-level clock and
//!   `msg`, unknown extra fields); they must decode to the typed value below.

use std::collections::{BTreeMap, BTreeSet};

use chat_core::protocol::{
    decode_announcement, decode_publication, decode_reply, decode_request, encode_announcement,
    encode_publication, encode_reply, encode_request,
};
use chat_core::{
    codec, Announcement, ChannelPost, ChatError, DirectPost, Encoding, Event, EventId, EventKind,
    HistoryPage, HistoryTarget, Meta, Publication, Reply, ReplyEnvelope, Request, RequestEnvelope,
    Timestamp,
};

const VECTORS: &str = include_str!("golden/vectors.txt");

/// `2025-11-12T10:00:00.000Z`
const TS: Timestamp = Timestamp::from_millis(1_762_941_600_000);
/// `2025-11-12T10:00:01.250Z`
const TS2: Timestamp = Timestamp::from_millis(1_762_941_601_250);

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair.len(), 2, "odd hex length");
            let pair = std::str::from_utf8(pair).expect("ASCII hex");
            u8::from_str_radix(pair, 16).expect("hex digit")
        })
        .collect()
}

fn vectors() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for line in VECTORS.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, hex) = line.split_once(' ').expect("`name hex` line");
        assert!(
            out.insert(name.to_string(), unhex(hex.trim())).is_none(),
            "duplicate vector {name}"
        );
    }
    out
}

fn vector(all: &BTreeMap<String, Vec<u8>>, name: &str) -> Vec<u8> {
    all.get(name)
        .unwrap_or_else(|| panic!("vector {name} missing from vectors.txt"))
        .clone()
}

fn encodings() -> [(Encoding, &'static str); 2] {
    [(Encoding::MsgPack, "msgpack"), (Encoding::Json, "json")]
}

/// A typed value of any kind that travels on the wire.
#[derive(Debug, Clone, PartialEq)]
enum Typed {
    Req(RequestEnvelope),
    Rep(ReplyEnvelope),
    /// A publication and the topic it arrives on.
    Pub(Publication, &'static str),
    Ev(Event),
    Ann(Announcement, Meta),
}

impl Typed {
    fn encode(&self, enc: Encoding) -> Vec<u8> {
        match self {
            Typed::Req(r) => encode_request(r, enc),
            Typed::Rep(r) => encode_reply(r, enc),
            Typed::Pub(p, _) => encode_publication(p, enc),
            Typed::Ev(e) => e.encode(enc),
            Typed::Ann(a, m) => encode_announcement(a, m, enc),
        }
        .expect("encode")
    }

    /// Decodes `bytes` as the same kind of value, checking the detected encoding.
    fn decode_like(&self, bytes: &[u8], enc: Encoding) -> Typed {
        match self {
            Typed::Req(_) => {
                let (r, got) = decode_request(bytes).expect("decode_request");
                assert_eq!(got, enc, "decode_request detected the wrong encoding");
                Typed::Req(r)
            }
            Typed::Rep(_) => {
                let (r, got) = decode_reply(bytes).expect("decode_reply");
                assert_eq!(got, enc, "decode_reply detected the wrong encoding");
                Typed::Rep(r)
            }
            Typed::Pub(_, topic) => Typed::Pub(
                decode_publication(topic, bytes).expect("decode_publication"),
                topic,
            ),
            Typed::Ev(_) => Typed::Ev(Event::decode(bytes).expect("Event::decode")),
            Typed::Ann(_, _) => {
                let (a, m) = decode_announcement(bytes).expect("decode_announcement");
                Typed::Ann(a, m)
            }
        }
    }
}

fn meta(clock: u64, ts: Timestamp) -> Meta {
    Meta::new(clock, ts)
}

fn req(request: Request, clock: u64) -> Typed {
    Typed::Req(RequestEnvelope {
        request,
        meta: meta(clock, TS),
    })
}

fn rep(service: &str, reply: Reply, clock: u64) -> Typed {
    Typed::Rep(ReplyEnvelope {
        service: service.into(),
        reply,
        meta: meta(clock, TS2),
    })
}

fn channel_post(user: &str, message: &str, clock: u64, id: Option<&str>) -> ChannelPost {
    ChannelPost {
        channel: "geral".into(),
        user: user.into(),
        message: message.into(),
        timestamp: TS2,
        clock,
        id: id.map(str::to_string),
        rid: None,
        prev: None,
    }
}

fn event(server: &str, seq: u64, clock: u64, ts: Timestamp, kind: EventKind) -> Event {
    Event {
        id: EventId {
            origin: server.into(),
            seq,
        },
        clock,
        timestamp: ts,
        request_id: None,
        kind,
    }
}

/// The typed value of every `enc/` vector.
fn encode_table() -> Vec<(&'static str, Typed)> {
    let publish = Request::Publish {
        user: "user1".into(),
        channel: "geral".into(),
        message: "Olá!".into(),
    };
    let mut publish_with_id = RequestEnvelope {
        request: Request::Publish {
            user: "ana".into(),
            channel: "geral".into(),
            message: "x".repeat(40),
        },
        meta: meta(1 << 40, TS),
    };
    publish_with_id.meta.id = Some("req-1".into());
    let mut event_publication = event(
        "server_1234",
        3,
        300,
        TS2,
        EventKind::ChannelMessage {
            channel: "geral".into(),
            user: "user1".into(),
            message: "Olá!".into(),
        },
    );
    event_publication.request_id = Some("req-9".into());
    vec![
        (
            "login_request",
            req(
                Request::Login {
                    user: "user1".into(),
                },
                10,
            ),
        ),
        ("login_reply", rep("login", Reply::Done, 11)),
        ("users_request", req(Request::Users, 12)),
        (
            "users_reply",
            rep(
                "users",
                Reply::Users(vec!["user1".into(), "user2".into()]),
                13,
            ),
        ),
        (
            "channel_request",
            req(
                Request::Channel {
                    channel: "geral".into(),
                },
                14,
            ),
        ),
        ("channel_reply", rep("channel", Reply::Done, 15)),
        ("channels_request", req(Request::Channels, 16)),
        (
            "channels_reply",
            rep(
                "channels",
                Reply::Channels(vec!["geral".into(), "tech".into()]),
                17,
            ),
        ),
        ("publish_request", req(publish, 18)),
        ("publish_reply", rep("publish", Reply::Done, 19)),
        (
            "message_request",
            req(
                Request::Message {
                    src: "user1".into(),
                    dst: "user2".into(),
                    message: "Oi!".into(),
                },
                20,
            ),
        ),
        ("message_reply", rep("message", Reply::Done, 21)),
        (
            "channel_publication",
            Typed::Pub(
                Publication::Channel(channel_post("user1", "Olá!", 19, Some("server-1/7"))),
                "geral",
            ),
        ),
        (
            "user_publication",
            Typed::Pub(
                Publication::Direct(DirectPost {
                    src: "user1".into(),
                    dst: "user2".into(),
                    message: "Oi!".into(),
                    timestamp: TS2,
                    clock: 21,
                    id: Some("server-1/8".into()),
                    rid: None,
                    prev: None,
                }),
                "user2",
            ),
        ),
        (
            "channel_publication_live",
            Typed::Pub(
                Publication::Channel(ChannelPost {
                    rid: Some("9f86d081884c7d659a2feaa0c55ad015".into()),
                    prev: Some(4),
                    ..channel_post("user1", "Olá!", 19, Some("server-1/7"))
                }),
                "geral",
            ),
        ),
        (
            "user_publication_live",
            Typed::Pub(
                Publication::Direct(DirectPost {
                    src: "user1".into(),
                    dst: "user2".into(),
                    message: "Oi!".into(),
                    timestamp: TS2,
                    clock: 21,
                    id: Some("server-1/8".into()),
                    rid: Some("r-8".into()),
                    prev: Some(0),
                }),
                "user2",
            ),
        ),
        (
            "event_login",
            Typed::Ev(event(
                "server_1234",
                1,
                42,
                TS,
                EventKind::UserLoggedIn {
                    user: "user1".into(),
                },
            )),
        ),
        (
            "event_channel",
            Typed::Ev(event(
                "server_1234",
                2,
                43,
                TS,
                EventKind::ChannelCreated {
                    channel: "geral".into(),
                },
            )),
        ),
        ("event_publication", Typed::Ev(event_publication)),
        (
            "event_message",
            Typed::Ev(event(
                "server-2",
                65536,
                70000,
                TS2,
                EventKind::DirectMessage {
                    src: "user1".into(),
                    dst: "user2".into(),
                    message: "Oi!".into(),
                },
            )),
        ),
        ("publish_request_with_id", Typed::Req(publish_with_id)),
        (
            "error_reply",
            Typed::Rep(ReplyEnvelope::error(
                "publish",
                &ChatError::UnknownChannel("nada".into()),
                meta(23, TS2),
            )),
        ),
        (
            "history_request",
            req(
                Request::History {
                    target: HistoryTarget::Channel("geral".into()),
                    before: Some("19.7.server-1".into()),
                    limit: 20,
                },
                24,
            ),
        ),
        (
            "history_reply",
            rep(
                "history",
                Reply::History(HistoryPage {
                    items: vec![
                        Publication::Channel(channel_post("user1", "Olá!", 19, Some("server-1/7"))),
                        Publication::Channel(channel_post("ana", &"é".repeat(150), 255, None)),
                    ],
                    next: Some("19.7.server-1".into()),
                    heads: None,
                }),
                25,
            ),
        ),
        (
            "adjust_request",
            req(Request::Adjust { offset_ms: -1500 }, 26),
        ),
        (
            "announcement",
            Typed::Ann(
                Announcement {
                    coordinator: "server-2".into(),
                    term: 3,
                    rank: 7,
                },
                meta(30, TS),
            ),
        ),
    ]
}

/// The typed value every `dec/` vector must decode to.
fn decode_table() -> Vec<(&'static str, Typed)> {
    let no_ts = |clock| Meta {
        clock,
        timestamp: None,
        id: None,
    };
    vec![
        (
            "seed003_publish",
            Typed::Req(RequestEnvelope {
                request: Request::Publish {
                    user: "x".into(),
                    channel: "Geral".into(),
                    message: "Olá".into(),
                },
                // naive ISO time is UTC
                meta: meta(7, TS),
            }),
        ),
        (
            "seed003_login",
            Typed::Req(RequestEnvelope {
                request: Request::Login {
                    user: "nome".into(),
                },
                meta: no_ts(5),
            }),
        ),
        (
            "seed003_message",
            Typed::Req(RequestEnvelope {
                request: Request::Message {
                    src: "ana".into(),
                    dst: "Pedro".into(),
                    message: "Privado".into(),
                },
                meta: no_ts(8),
            }),
        ),
        (
            "seed002_login_int",
            Typed::Req(RequestEnvelope {
                request: Request::Login { user: "ana".into() },
                meta: meta(42, TS),
            }),
        ),
        (
            "seed002_login_float",
            Typed::Req(RequestEnvelope {
                request: Request::Login { user: "ana".into() },
                meta: meta(42, TS.offset(500)),
            }),
        ),
        (
            "extra_fields_publish",
            Typed::Req(RequestEnvelope {
                request: Request::Publish {
                    user: "user1".into(),
                    channel: "geral".into(),
                    message: "Olá!".into(),
                },
                meta: Meta {
                    clock: 18,
                    timestamp: Some(TS),
                    id: Some("17".into()),
                },
            }),
        ),
        ("seed003_publish_reply", rep("publish", Reply::Done, 19)),
        (
            "seed000_channel_publication",
            Typed::Pub(
                Publication::Channel(channel_post("user1", "Olá!", 19, None)),
                "geral",
            ),
        ),
        (
            "seed002_user_publication",
            Typed::Pub(
                Publication::Direct(DirectPost {
                    src: "user1".into(),
                    dst: "user2".into(),
                    message: "Oi!".into(),
                    timestamp: TS2,
                    clock: 21,
                    id: None,
                    rid: None,
                    prev: None,
                }),
                "user2",
            ),
        ),
    ]
}

fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if bytes.first() == Some(&b'{') => s.to_string(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[test]
fn vector_file_and_tables_agree() {
    let all = vectors();
    let mut expected = BTreeSet::new();
    for (prefix, table) in [("enc", encode_table()), ("dec", decode_table())] {
        for (name, _) in table {
            for (_, ext) in encodings() {
                assert!(
                    expected.insert(format!("{prefix}/{name}.{ext}")),
                    "{name} twice in the tables"
                );
            }
        }
    }
    let found: BTreeSet<String> = all.keys().cloned().collect();
    assert_eq!(
        found, expected,
        "vectors.txt and golden.rs list different vectors"
    );
}

#[test]
fn encoder_is_byte_identical_to_reference() {
    let all = vectors();
    for (name, typed) in encode_table() {
        for (enc, ext) in encodings() {
            let want = vector(&all, &format!("enc/{name}.{ext}"));
            let got = typed.encode(enc);
            assert_eq!(
                show(&got),
                show(&want),
                "{name}.{ext}: our bytes (left) differ from the reference (right)"
            );
        }
    }
}

#[test]
fn reference_bytes_decode_to_typed_values() {
    let all = vectors();
    for (name, typed) in encode_table() {
        for (enc, ext) in encodings() {
            let bytes = vector(&all, &format!("enc/{name}.{ext}"));
            assert_eq!(typed.decode_like(&bytes, enc), typed, "{name}.{ext}");
        }
    }
}

#[test]
fn seed_variants_and_extra_fields_decode() {
    let all = vectors();
    for (name, typed) in decode_table() {
        for (enc, ext) in encodings() {
            let bytes = vector(&all, &format!("dec/{name}.{ext}"));
            assert_eq!(typed.decode_like(&bytes, enc), typed, "{name}.{ext}");
        }
    }
}

#[test]
fn codec_encode_of_wire_struct_matches_reference() {
    // The same check one level down: codec::encode of the wire structs.
    let all = vectors();
    let RequestEnvelope { request, meta } = match &encode_table()[0].1 {
        Typed::Req(r) => r.clone(),
        other => panic!("login_request is a request, not {other:?}"),
    };
    let wire = RequestEnvelope { request, meta }.to_wire();
    for (enc, ext) in encodings() {
        assert_eq!(
            codec::encode(&wire, enc).expect("encode"),
            vector(&all, &format!("enc/login_request.{ext}"))
        );
    }
}

#[test]
fn json_request_is_answered_in_json() {
    let text = br#"  {"service": "publish",
        "data": {"user": "user1", "channel": "geral", "message": "Ol\u00e1!",
                 "timestamp": "2025-11-12T07:00:00-03:00", "clock": 18, "unknown": [1, 2]}}"#;
    let (env, enc) = decode_request(text).expect("decode");
    assert_eq!(enc, Encoding::Json);
    assert_eq!(
        env,
        RequestEnvelope {
            request: Request::Publish {
                user: "user1".into(),
                channel: "geral".into(),
                message: "Olá!".into(),
            },
            meta: meta(18, TS),
        }
    );
    // The reply in the request's encoding is JSON text.
    let reply = ReplyEnvelope {
        service: "publish".into(),
        reply: Reply::Done,
        meta: meta(19, TS2),
    };
    let bytes = encode_reply(&reply, enc).expect("encode");
    assert_eq!(
        std::str::from_utf8(&bytes).expect("utf-8"),
        r#"{"service":"publish","data":{"status":"OK","timestamp":"2025-11-12T10:00:01.250Z","clock":19}}"#
    );
    // A failure to decode a JSON frame still says JSON, so the error reply is JSON too.
    let failure = decode_request(b"{\"service\": \"login\", \"data\": {}}").unwrap_err();
    assert_eq!(failure.encoding, Encoding::Json);
    assert_eq!(failure.service.as_deref(), Some("login"));
    let failure = decode_request(b"{not json").unwrap_err();
    assert_eq!(failure.encoding, Encoding::Json);
    let (_, enc) = decode_request(&vector(&vectors(), "enc/login_request.msgpack")).expect("ok");
    assert_eq!(enc, Encoding::MsgPack);
}

#[test]
fn clock_in_data_wins_over_top_level() {
    let text =
        br#"{"service":"login","data":{"user":"ana","clock":3},"clock":9,"timestamp":1762941600}"#;
    let (env, _) = decode_request(text).expect("decode");
    assert_eq!(env.meta, meta(3, TS));
}

#[test]
fn seed_000_event_without_seq_is_refused() {
    // The seed 000 replication dict has no `seq`. Our replication needs (origin, seq) to
    // apply each write exactly once, so an event without one is refused, not guessed at.
    let seed = br#"{"operation":"login","data":{"user":"user1","timestamp":"2025-11-12T10:00:00Z"},"server":"server_1234","clock":42}"#;
    let err = Event::decode(seed).unwrap_err();
    assert!(
        matches!(err, ChatError::InvalidField { field: "seq", .. }),
        "{err:?}"
    );
}
