//! Every frame of the protocol is a map. A frame whose top-level value is anything else (an
//! array such as `["login", {"user": "a"}]`, a number, a string, a boolean, nil) is refused
//! as `bad_request` by every decoder, with a description that says what was expected, in
//! MessagePack and in JSON. (serde alone reads a struct from an array, field by field: such
//! frames used to be accepted.)

use chat_core::protocol::{
    decode_announcement, decode_client_request, decode_peer_request, decode_publication,
    decode_reference_request, decode_reply, decode_request, RequestFailure,
};
use chat_core::{codec, ChatError, Encoding, ErrorCode, Event};
use serde_json::{json, Value};

fn mp(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("pack")
}

fn js(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// Top-level values that are not maps, with the seed-like shapes first: each is the
/// positional form of a valid frame of one kind, which serde would read as that struct.
fn not_maps() -> Vec<(&'static str, Value)> {
    vec![
        ("request as an array", json!(["login", {"user": "a"}])),
        (
            "reply as an array",
            json!(["login", {"status": "sucesso", "clock": 2}]),
        ),
        (
            "announcement as an array",
            json!(["election", {"coordinator": "server-2", "term": 1, "rank": 2}]),
        ),
        (
            "publication as an array",
            json!(["ana", null, "oi", null, 3, "geral", null, "server-1/1"]),
        ),
        (
            "replicated event as an array",
            json!(["login", {"user": "ana"}, "server-1", 4, 1]),
        ),
        ("empty array", json!([])),
        ("number", json!(42)),
        ("negative number", json!(-7)),
        ("float", json!(1.5)),
        ("string", json!("users")),
        ("boolean", json!(true)),
        ("nil", Value::Null),
    ]
}

/// Each not-map value in both encodings. JSON text that starts with neither `{` nor `[`
/// (`42`, `"users"`, `null`) is read as MessagePack, as any such frame is.
fn frames() -> Vec<(String, Vec<u8>, Encoding)> {
    let mut out = Vec::new();
    for (what, v) in not_maps() {
        out.push((format!("MessagePack {what}"), mp(&v), Encoding::MsgPack));
        let text = js(&v);
        let enc = Encoding::detect(&text);
        out.push((format!("JSON {what}"), text, enc));
    }
    out
}

fn check(what: &str, err: &ChatError, expected: &str) {
    assert_eq!(err.code(), ErrorCode::BadRequest, "{what}: {err}");
    let description = err.to_string();
    assert!(
        description.contains(&format!("expected {expected}")),
        "{what}: the description does not say what was expected: {description}"
    );
}

fn check_failure(what: &str, f: &RequestFailure, enc: Encoding) {
    check(what, &f.error, "a request: a map with `service` and `data`");
    assert_eq!(
        f.encoding, enc,
        "{what}: answered in the request's encoding"
    );
    assert_eq!(
        (f.service.as_deref(), f.clock, f.id.as_deref()),
        (None, 0, None)
    );
}

#[test]
fn requests_must_be_maps() {
    for (what, bytes, enc) in frames() {
        check_failure(&what, &decode_request(&bytes).unwrap_err(), enc);
        check_failure(
            &what,
            &decode_client_request(&bytes).map(|_| ()).unwrap_err(),
            enc,
        );
        check_failure(
            &what,
            &decode_peer_request(&bytes).map(|_| ()).unwrap_err(),
            enc,
        );
        check_failure(
            &what,
            &decode_reference_request(&bytes).map(|_| ()).unwrap_err(),
            enc,
        );
    }
}

#[test]
fn replies_publications_announcements_and_events_must_be_maps() {
    for (what, bytes, _) in frames() {
        check(
            &what,
            &decode_reply(&bytes).unwrap_err(),
            "a reply: a map with `service` and `data`",
        );
        check(
            &what,
            &decode_publication("geral", &bytes).unwrap_err(),
            "a publication: a map with `message` and `user` (channel post) or `src` (private message)",
        );
        check(
            &what,
            &decode_announcement(&bytes).unwrap_err(),
            "an announcement: a map with `service` and `data`",
        );
        check(
            &what,
            &Event::decode(&bytes).unwrap_err(),
            "a replicated event: a map with `operation`, `data`, `server`, `clock` and `seq`",
        );
    }
}

#[test]
fn the_description_names_what_arrived_and_what_was_expected() {
    let f = decode_request(&mp(&json!(["login", {"user": "a"}]))).unwrap_err();
    assert_eq!(
        f.error.to_string(),
        "the request is not a MessagePack or JSON map {\"service\": ..., \"data\": {...}} \
         (decoder: invalid type: sequence, expected a request: a map with `service` and `data`)"
    );
    let f = decode_request(br#"["login", {"user": "a"}]"#).unwrap_err();
    assert_eq!(f.encoding, Encoding::Json);
    assert!(
        f.error.to_string().contains(
            "invalid type: sequence, expected a request: a map with `service` and `data` at line 1 column"
        ),
        "{}",
        f.error
    );
    let f = decode_request(&mp(&json!("users"))).unwrap_err();
    assert!(
        f.error
            .to_string()
            .contains("invalid type: string \"users\", expected a request"),
        "{}",
        f.error
    );
    let f = decode_request(&mp(&Value::Null)).unwrap_err();
    assert!(
        f.error.to_string().contains("expected a request"),
        "{}",
        f.error
    );
}

#[test]
fn maps_still_decode_and_nested_values_may_be_anything() {
    // The map check is on the top level only: arrays inside (ignored fields, `events`, the
    // `users` list of a reply) are read as before.
    let (env, enc) = decode_request(&mp(
        &json!({"service": "login", "data": {"user": "a", "extra": [1, [2]]}}),
    ))
    .expect("a map");
    assert_eq!(env.request.service().as_str(), "login");
    assert_eq!(enc, Encoding::MsgPack);
    let (reply, _) = decode_reply(&js(
        &json!({"service": "users", "data": {"users": ["a", "b"], "clock": 3}}),
    ))
    .expect("a map");
    assert_eq!(
        reply.reply,
        chat_core::Reply::Users(vec!["a".into(), "b".into()])
    );
    // Whitespace before a JSON map is still fine.
    assert!(decode_request(b"  \n {\"service\": \"users\"}").is_ok());
    // The codec's general decoder is unchanged: it still reads a struct from an array.
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Pair {
        a: u8,
        b: u8,
    }
    let (pair, _) = codec::decode::<Pair>(&mp(&json!([1, 2]))).expect("positional");
    assert_eq!(pair, Pair { a: 1, b: 2 });
    let err = codec::decode_map::<Pair>(&mp(&json!([1, 2])), "a pair").unwrap_err();
    assert_eq!(err.0 .0, "invalid type: sequence, expected a pair");
    let (pair, _) = codec::decode_map::<Pair>(&js(&json!({"a": 1, "b": 2})), "a pair").unwrap();
    assert_eq!(pair, Pair { a: 1, b: 2 });
}

#[test]
fn errors_inside_a_map_read_as_before() {
    // Field-level errors come from the same decoder as before, positions included.
    let f = decode_request(br#"{"service":5}"#).unwrap_err();
    assert!(
        f.error
            .to_string()
            .contains("invalid type: integer `5`, expected a string at line 1 column 12"),
        "{}",
        f.error
    );
    let f = decode_request(br#"{"service":"users"} x"#).unwrap_err();
    assert!(
        f.error
            .to_string()
            .contains("trailing characters at line 1 column 21"),
        "{}",
        f.error
    );
    let f = decode_request(br#"{"service":"users","da"#).unwrap_err();
    assert!(
        f.error.to_string().contains("EOF while parsing"),
        "{}",
        f.error
    );
    let f = decode_request(b"\xc1").unwrap_err();
    assert!(
        f.error.to_string().contains("wrong msgpack marker"),
        "{}",
        f.error
    );
}
