//! Hostile input: every malformed request gets an error reply with a stable `code` and a
//! sentence, in the request's encoding, and the cluster keeps serving everyone else.
//!
//! - a table of malformed requests sent as raw frames (plain REQ socket, as a seed client
//!   would) to a live cluster through the broker, plus multipart requests (REQ and DEALER);
//! - per-user rate limiting of writes, end to end;
//! - strange publications on the proxy: the SDK yields `Malformed` events and keeps working;
//! - property tests of the socket-free path (decode + `Node`): random bytes and random
//!   well-formed-but-wrong maps never panic and always get a reply that encodes.
//!
//! Every wait has a deadline; nothing sleeps to "let things settle".

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_core::codec::Encoding;
use chat_core::protocol::{
    decode_reply, decode_request, encode_reply, encode_request, Reply, MAX_ACCEPTED_CLOCK,
};
use chat_core::ratelimit::RateLimit;
use chat_core::{ErrorCode, Limits, Meta, Request, RequestEnvelope, Timestamp};
use chat_net::client::ClientEvent;
use chat_net::server::Node;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::{wait_for, TestCluster, DEADLINE};

/// Longest wait for one reply.
const REPLY_WAIT_MS: i64 = 10_000;

fn mp(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("pack")
}

fn js(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// Reads a reply in the encoding it must be in.
fn parse_reply(bytes: &[u8], json: bool) -> Result<Value, String> {
    if json {
        if bytes.first() != Some(&b'{') {
            return Err(format!("expected a JSON reply, got {:?}", preview(bytes)));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("reply is not JSON: {e}"))
    } else {
        if bytes.first() == Some(&b'{') {
            return Err(format!(
                "expected a MessagePack reply, got {:?}",
                preview(bytes)
            ));
        }
        rmp_serde::from_slice(bytes).map_err(|e| format!("reply is not MessagePack: {e}"))
    }
}

fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned()
}

/// Checks an error reply: `status: "erro"`, the expected `code`, a non-empty `description`.
fn check_error(reply: &Value, code: &str) -> Result<(), String> {
    let d = &reply["data"];
    if d["status"] != "erro" {
        return Err(format!("status is not \"erro\": {reply}"));
    }
    if d["code"] != code {
        return Err(format!("code {} instead of {code}: {reply}", d["code"]));
    }
    match d["description"].as_str() {
        Some(s) if !s.trim().is_empty() => Ok(()),
        _ => Err(format!("no description: {reply}")),
    }
}

fn req_socket(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    s
}

fn dealer_socket(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    s
}

/// Sends one frame on a REQ socket and returns the reply.
fn ask(req: &zmq::Socket, frame: &[u8]) -> Vec<u8> {
    req.send(frame, 0).unwrap();
    assert!(
        req.poll(zmq::POLLIN, REPLY_WAIT_MS).unwrap() > 0,
        "no reply to {:?}",
        preview(frame)
    );
    req.recv_bytes(0).unwrap()
}

/// One malformed request and the error it must get.
struct Case {
    what: &'static str,
    frame: Vec<u8>,
    code: &'static str,
    /// Whether the reply must be JSON (otherwise MessagePack).
    json: bool,
}

fn case(what: &'static str, frame: Vec<u8>, code: &'static str) -> Case {
    let json = Encoding::detect(&frame) == Encoding::Json;
    Case {
        what,
        frame,
        code,
        json,
    }
}

/// Both encodings of the same request map.
fn both(what: &'static str, v: Value, code: &'static str) -> [Case; 2] {
    [case(what, mp(&v), code), case(what, js(&v), code)]
}

/// `{"service": "users", "data": {"x": [[[...nil...]]]}}`, `depth` arrays deep.
fn deep_msgpack(depth: usize) -> Vec<u8> {
    let mut f = vec![0x82, 0xa7];
    f.extend_from_slice(b"service");
    f.push(0xa5);
    f.extend_from_slice(b"users");
    f.push(0xa4);
    f.extend_from_slice(b"data");
    f.extend_from_slice(&[0x81, 0xa1, b'x']);
    f.extend(std::iter::repeat_n(0x91, depth));
    f.push(0xc0);
    f
}

/// `{"user": "ana", "message": "m", "x": [[[...nil...]]]}`, `depth` arrays deep.
fn deep_publication(depth: usize) -> Vec<u8> {
    let mut f = vec![0x83, 0xa4];
    f.extend_from_slice(b"user");
    f.push(0xa3);
    f.extend_from_slice(b"ana");
    f.push(0xa7);
    f.extend_from_slice(b"message");
    f.extend_from_slice(&[0xa1, b'm', 0xa1, b'x']);
    f.extend(std::iter::repeat_n(0x91, depth));
    f.push(0xc0);
    f
}

fn login(user: &str) -> Value {
    json!({"service": "login", "data": {"user": user, "clock": 1}})
}

/// The table of docs/protocol.md, "Hostile input".
fn cases() -> Vec<Case> {
    let users = json!({"service": "users", "data": {"clock": 3}});
    let packed_users = mp(&users);
    let mut cases = vec![
        // Not MessagePack or JSON at all.
        case(
            "0xc1 (never valid MessagePack)",
            b"\xc1".to_vec(),
            "bad_request",
        ),
        case("plain text", b"hello, server".to_vec(), "bad_request"),
        case(
            "truncated MessagePack map",
            packed_users[..packed_users.len() - 4].to_vec(),
            "bad_request",
        ),
        case(
            "truncated JSON",
            br#"{"service":"users","da"#.to_vec(),
            "bad_request",
        ),
        case(
            "JSON with trailing garbage",
            br#"{"service":"users"} x"#.to_vec(),
            "bad_request",
        ),
        case(
            "invalid UTF-8 in a MessagePack string",
            vec![
                0x81, 0xa7, b's', b'e', b'r', b'v', b'i', b'c', b'e', 0xa2, 0xff, 0xfe,
            ],
            "bad_request",
        ),
        case(
            "MessagePack nested 100 000 deep",
            vec![0x91; 100_000],
            "bad_request",
        ),
        case(
            "JSON nested 100 000 deep",
            [&br#"{"service":"#[..], &[b'['; 100_000][..]].concat(),
            "bad_request",
        ),
        case(
            "MessagePack nested 100 000 deep in an ignored field",
            deep_msgpack(100_000),
            "bad_request",
        ),
        // Wrong top-level type.
        case("MessagePack array", mp(&json!([1, 2])), "bad_request"),
        case("MessagePack string", mp(&json!("users")), "bad_request"),
        case("MessagePack integer", mp(&json!(42)), "bad_request"),
        case("MessagePack nil", mp(&Value::Null), "bad_request"),
        // A JSON array is JSON (`[` marks JSON too) and gets a JSON reply.
        case("JSON array [1,2]", b"[1,2]".to_vec(), "bad_request"),
        // Envelope shape.
        case(
            "JSON without service",
            js(&json!({"data": {}})),
            "bad_request",
        ),
        case("JSON empty map", b"{}".to_vec(), "bad_request"),
        case(
            "service is a number",
            js(&json!({"service": 5})),
            "bad_request",
        ),
        case(
            "service is null",
            js(&json!({"service": null, "data": {}})),
            "bad_request",
        ),
        case(
            "data is a string",
            js(&json!({"service": "publish", "data": "x"})),
            "bad_request",
        ),
        case(
            "login without data",
            mp(&json!({"service": "login"})),
            "bad_request",
        ),
        case(
            "publish without message",
            mp(&json!({"service": "publish", "data": {"user": "ana", "channel": "geral"}})),
            "bad_request",
        ),
        case(
            "history with limit 0",
            js(&json!({"service": "history", "data": {"channel": "geral", "limit": 0}})),
            "bad_request",
        ),
        case(
            "history with a bad cursor",
            js(
                &json!({"service": "history", "data": {"channel": "geral", "before": "not a cursor"}}),
            ),
            "bad_request",
        ),
    ];
    cases.extend(both(
        "unknown service",
        json!({"service": "fly", "data": {}}),
        "unknown_service",
    ));
    cases.extend(both(
        "server-to-server service through the broker (adjust)",
        json!({"service": "adjust", "data": {"adjust_ms": 3_600_000}}),
        "unknown_service",
    ));
    cases.extend(both(
        "reference service through the broker (rank)",
        json!({"service": "rank", "data": {"user": "x"}}),
        "unknown_service",
    ));
    // Wrong field types.
    cases.extend(both(
        "message is a number",
        json!({"service": "publish", "data": {"user": "ana", "channel": "geral", "message": 5}}),
        "bad_request",
    ));
    cases.extend(both(
        "user is a list",
        json!({"service": "login", "data": {"user": ["ana"]}}),
        "bad_request",
    ));
    cases.extend(both(
        "clock is a string",
        json!({"service": "users", "data": {"clock": "7"}}),
        "bad_request",
    ));
    cases.extend(both(
        "clock is a float",
        json!({"service": "users", "data": {"clock": 1.5}}),
        "bad_request",
    ));
    cases.extend(both(
        "clock -1",
        json!({"service": "users", "data": {"clock": -1}}),
        "bad_request",
    ));
    cases.extend(both(
        "clock 2^60",
        json!({"service": "users", "data": {"clock": 1u64 << 60}}),
        "bad_request",
    ));
    cases.extend(both(
        "top-level clock 2^64-1",
        json!({"service": "users", "clock": u64::MAX}),
        "bad_request",
    ));
    cases.extend(both(
        "timestamp \"yesterday\"",
        json!({"service": "users", "data": {"timestamp": "yesterday"}}),
        "bad_request",
    ));
    cases.extend(both(
        "timestamp in the year 20000",
        json!({"service": "users", "data": {"timestamp": "20000-01-01T00:00:00Z"}}),
        "bad_request",
    ));
    cases.extend(both(
        "timestamp is a map",
        json!({"service": "users", "data": {"timestamp": {"s": 1}}}),
        "bad_request",
    ));
    cases.extend(both(
        "id is a map",
        json!({"service": "users", "data": {"id": {"x": 1}}}),
        "bad_request",
    ));
    // Names.
    cases.extend(both("login \"\"", login(""), "invalid_name"));
    cases.extend(both(
        "login of 65 characters",
        login(&"a".repeat(65)),
        "invalid_name",
    ));
    cases.extend(both("login \"a b\"", login("a b"), "invalid_name"));
    cases.extend(both("login \"a\\u0007\"", login("a\u{7}"), "invalid_name"));
    cases.extend(both("login \"servers\"", login("servers"), "reserved_name"));
    cases.extend(both("login \"$x\"", login("$x"), "reserved_name"));
    cases.extend(both(
        "channel \"replication\"",
        json!({"service": "channel", "data": {"channel": "replication"}}),
        "reserved_name",
    ));
    cases.extend(both(
        "publish as \"a b\"",
        json!({"service": "publish", "data": {"user": "a b", "channel": "geral", "message": "m"}}),
        "invalid_name",
    ));
    // Things that do not exist.
    cases.extend(both(
        "publish to an unknown channel",
        json!({"service": "publish", "data": {"user": "ana", "channel": "nowhere", "message": "m"}}),
        "unknown_channel",
    ));
    cases.extend(both(
        "message to an unknown user",
        json!({"service": "message", "data": {"src": "ana", "dst": "nobody", "message": "m"}}),
        "unknown_user",
    ));
    cases.extend(both(
        "history of an unknown channel",
        json!({"service": "history", "data": {"channel": "nowhere"}}),
        "unknown_channel",
    ));
    // Sizes.
    let body = "x".repeat(64 * 1024 + 1);
    cases.extend(both(
        "publish body over 64 KiB",
        json!({"service": "publish", "data": {"user": "ana", "channel": "geral", "message": body}}),
        "too_large",
    ));
    cases.extend(both(
        "message body over 64 KiB",
        json!({"service": "message", "data": {"src": "ana", "dst": "bia", "message": body}}),
        "too_large",
    ));
    let huge = "x".repeat(2 << 20);
    cases.extend(both(
        "2 MiB frame (over the broker's 1 MiB frame limit)",
        json!({"service": "publish", "data": {"user": "ana", "channel": "geral", "message": huge}}),
        "too_large",
    ));
    cases.push(case("2 MiB of raw bytes", vec![b'x'; 2 << 20], "too_large"));
    cases.push(case("empty frame", Vec::new(), "bad_request"));
    cases
}

#[test]
fn every_malformed_request_gets_an_error_reply_and_the_server_keeps_serving() {
    let cluster = TestCluster::start(1);
    let client = cluster.client();
    client.login("ana").expect("login ana");
    client.login("bia").expect("login bia");
    client.create_channel("geral").expect("create geral");

    let ctx = zmq::Context::new();
    let req = req_socket(&ctx, &cluster.frontend);
    let mut failures = Vec::new();
    let cases = cases();
    for c in &cases {
        let what = format!(
            "{} ({})",
            c.what,
            if c.json { "JSON" } else { "MessagePack" }
        );
        let reply = ask(&req, &c.frame);
        let result = parse_reply(&reply, c.json).and_then(|v| {
            eprintln!(
                "{what} -> {} {}",
                v["data"]["code"], v["data"]["description"]
            );
            check_error(&v, c.code)
        });
        if let Err(e) = result {
            failures.push(format!("{what}: {e}"));
        }
    }

    // Multipart requests where one frame is expected: REQ with two body frames...
    let users = json!({"service": "users", "data": {"id": "mp-1"}});
    req.send(js(&users), zmq::SNDMORE).unwrap();
    req.send(&b"second frame"[..], 0).unwrap();
    assert!(req.poll(zmq::POLLIN, REPLY_WAIT_MS).unwrap() > 0);
    let reply = req.recv_bytes(0).unwrap();
    if let Err(e) = parse_reply(&reply, true).and_then(|v| check_error(&v, "bad_request")) {
        failures.push(format!("REQ multipart: {e}"));
    }
    // ...and DEALER, with and without the empty delimiter.
    let dealer = dealer_socket(&ctx, &cluster.frontend);
    let packed = mp(&users);
    let shapes: [(&str, Vec<&[u8]>, usize); 2] = [
        (
            "DEALER multipart with delimiter",
            vec![b"", &packed, &packed],
            2,
        ),
        (
            "DEALER multipart without delimiter",
            vec![&packed, b"x", b"y"],
            1,
        ),
    ];
    for (what, frames, reply_frames) in shapes {
        dealer.send_multipart(frames, 0).unwrap();
        assert!(
            dealer.poll(zmq::POLLIN, REPLY_WAIT_MS).unwrap() > 0,
            "{what}"
        );
        let reply = dealer.recv_multipart(0).unwrap();
        if reply.len() != reply_frames {
            failures.push(format!("{what}: {} reply frames", reply.len()));
            continue;
        }
        let body = reply.last().map(Vec::as_slice).unwrap_or_default();
        if let Err(e) = parse_reply(body, false).and_then(|v| check_error(&v, "bad_request")) {
            failures.push(format!("{what}: {e}"));
        }
    }

    // A frame beyond the frontend's MAXMSGSIZE (4 MiB) is dropped by libzmq with the
    // connection; nothing else is disturbed.
    let reckless = dealer_socket(&ctx, &cluster.frontend);
    reckless
        .send_multipart([&b""[..], &vec![b'x'; 5 << 20][..]], 0)
        .unwrap();

    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len() + 3,
        failures.join("\n")
    );

    // Deep nesting in a JSON field that is ignored is skipped without recursion (so
    // without a depth limit): the request is valid and answered.
    let deep = [
        &br#"{"service":"users","data":{"x":"#[..],
        &[b'['; 100_000][..],
        &[b']'; 100_000][..],
        b"}}",
    ]
    .concat();
    let v = parse_reply(&ask(&req, &deep), true).unwrap();
    assert_eq!(v["data"]["users"], json!(["ana", "bia"]), "{v}");

    // After all that, normal requests work, raw and through the SDK.
    let reply = ask(
        &req,
        &mp(&json!({"service": "users", "data": {"clock": 9}})),
    );
    let v = parse_reply(&reply, false).unwrap();
    assert_eq!(v["data"]["users"], json!(["ana", "bia"]), "{v}");
    let fresh = req_socket(&ctx, &cluster.frontend);
    let reply = ask(&fresh, br#"{"service":"channels","data":{}}"#);
    let v = parse_reply(&reply, true).unwrap();
    assert_eq!(v["data"]["channels"], json!(["geral"]), "{v}");
    client
        .publish("ana", "geral", "still here")
        .expect("publish");
    assert_eq!(client.users().expect("users"), ["ana", "bia"]);
}

/// A server of `cluster` with an explicit rate limit, stopped on drop.
struct LimitedServer {
    shutdown: chat_net::Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LimitedServer {
    fn start(cluster: &TestCluster, name: &str, rate_limit: RateLimit) -> LimitedServer {
        let cfg = chat_net::server::ServerConfig {
            rate_limit,
            ..cluster.server_config(name)
        };
        let shutdown = chat_net::Shutdown::new();
        let (ctx, sd) = (cluster.ctx.clone(), shutdown.clone());
        let thread = std::thread::spawn(move || {
            let store = Box::new(chat_store::MemoryStore::default());
            chat_net::server::run_server(&ctx, &cfg, store, &sd).expect("server");
        });
        LimitedServer {
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for LimitedServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_flood_of_writes_from_one_user_is_rate_limited_while_others_still_write() {
    // 50 writes/s per user, bursts of 100 (independent of the defaults).
    let cluster = TestCluster::start(0);
    let _server = LimitedServer::start(&cluster, "limited", RateLimit::new(50, 100));
    let client = cluster.client();
    client.login("flooder").expect("login flooder");
    client.login("calm").expect("login calm");
    client.create_channel("geral").expect("create geral");

    // 200 publishes sent at once from one DEALER (fewer than a server's capacity of 256
    // in-flight requests, so none waits in the broker's queue however slow the machine),
    // then every reply collected.
    const N: usize = 200;
    let ctx = zmq::Context::new();
    let dealer = dealer_socket(&ctx, &cluster.frontend);
    for i in 0..N {
        let frame = js(&json!({"service": "publish", "data": {
            "user": "flooder", "channel": "geral", "message": format!("flood {i}"), "id": format!("f-{i}")
        }}));
        dealer.send_multipart([&b""[..], &frame[..]], 0).unwrap();
    }
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut applied = Vec::new();
    let end = Instant::now() + DEADLINE;
    let mut received = 0;
    while received < N && Instant::now() < end {
        if dealer.poll(zmq::POLLIN, 200).unwrap() == 0 {
            continue;
        }
        let frames = dealer.recv_multipart(0).unwrap();
        received += 1;
        let v = parse_reply(frames.last().unwrap(), true).unwrap();
        let code = match v["data"]["status"].as_str() {
            Some("OK") => {
                applied.push(v["data"]["id"].as_str().unwrap().to_string());
                "OK".to_string()
            }
            _ => {
                check_error(&v, v["data"]["code"].as_str().unwrap_or("?")).unwrap();
                v["data"]["code"].as_str().unwrap_or("?").to_string()
            }
        };
        *codes.entry(code).or_default() += 1;
    }
    assert_eq!(received, N, "replies: {codes:?}");
    let limited = codes.get("rate_limited").copied().unwrap_or(0);
    let ok = codes.get("OK").copied().unwrap_or(0);
    assert_eq!(ok + limited, N, "only OK or rate_limited: {codes:?}");
    // The burst of 100, less the token the flooder's login took.
    assert!(ok >= 99, "the burst goes through: {codes:?}");
    assert!(limited > 0, "the flood is limited: {codes:?}");

    // Another user writes at once, the flooder's bucket being empty or not.
    client
        .publish("calm", "geral", "hello")
        .expect("calm publishes");
    client
        .send_message("calm", "flooder", "slow down")
        .expect("calm messages");
    // A retry of a write already applied is answered OK again and costs nothing.
    let retried = &applied[0];
    let reply = client
        .request_with_id(
            Request::Publish {
                user: "flooder".into(),
                channel: "geral".into(),
                message: "flood 0".into(),
            },
            Some(retried.clone()),
        )
        .expect("retry");
    assert_eq!(reply.reply, Reply::Done, "{reply:?}");
    // Reads are not limited.
    assert!(client
        .users()
        .expect("users")
        .contains(&"flooder".to_string()));
}

#[test]
fn the_sdk_survives_strange_publications_and_keeps_working() {
    let cluster = TestCluster::start(1);
    let client = cluster.client();
    client.login("ana").expect("login");
    client.create_channel("weird").expect("channel");
    client.subscribe("weird").expect("subscribe");
    client.subscribe("servers").expect("subscribe servers");

    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.connect(&cluster.xsub).unwrap();
    let post = |message: &str| {
        mp(&json!({"user": "ana", "message": message, "clock": 1,
                   "timestamp": "2025-01-01T00:00:00Z"}))
    };

    // Wait until our publisher's messages reach the client (slow joiner).
    let live = wait_for(DEADLINE, || {
        publisher
            .send_multipart([&b"weird"[..], &post("probe")[..]], 0)
            .unwrap();
        client
            .events()
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|e| matches!(e, ClientEvent::Post(p) if p.message == "probe"))
    });
    assert!(live.is_some(), "the raw publisher never reached the client");
    while client
        .events()
        .recv_timeout(Duration::from_millis(200))
        .is_ok()
    {}

    let big = 1u64 << 60;
    let malformed: Vec<Vec<Vec<u8>>> = vec![
        vec![b"weird".to_vec(), b"\xc1".to_vec()],
        vec![b"weird".to_vec(), Vec::new()],
        vec![b"weird".to_vec()],
        vec![b"weird".to_vec(), mp(&json!({"user": 5, "message": "m"}))],
        vec![
            b"weird".to_vec(),
            mp(&json!({"user": "ana", "message": ["m"]})),
        ],
        vec![b"weird".to_vec(), mp(&json!({"user": "ana"}))],
        vec![b"weird".to_vec(), mp(&json!({"message": "no author"}))],
        vec![
            b"weird".to_vec(),
            mp(&json!({"user": "ana", "message": "m", "clock": big})),
        ],
        vec![
            b"weird".to_vec(),
            mp(&json!({"user": "ana", "message": "m", "clock": -1})),
        ],
        vec![
            b"weird".to_vec(),
            mp(&json!({"user": "ana", "message": "m", "timestamp": "yesterday"})),
        ],
        vec![
            b"weird".to_vec(),
            js(&json!({"user": {"x": 1}, "message": "m"})),
        ],
        vec![b"weird".to_vec(), mp(&json!([1, 2, 3]))],
        vec![b"weird".to_vec(), vec![0x91; 100_000]],
        vec![b"weird".to_vec(), deep_publication(100_000)],
        vec![b"servers".to_vec(), b"\xc1".to_vec()],
        vec![
            b"servers".to_vec(),
            mp(&json!({"service": "election", "data": {"term": 1}})),
        ],
    ];
    // Understood despite oddities: unknown fields, extra frames.
    let odd_but_fine: Vec<Vec<Vec<u8>>> = vec![
        vec![
            b"weird".to_vec(),
            mp(
                &json!({"user": "ana", "message": "unknown fields", "extra": {"deep": [1, 2]}, "foo": 1}),
            ),
        ],
        vec![b"weird".to_vec(), post("extra frame"), b"third".to_vec()],
    ];
    // Not for this client: a longer topic with the same prefix, a non-UTF-8 topic.
    let not_ours: Vec<Vec<Vec<u8>>> = vec![
        vec![b"weirdo".to_vec(), post("must not arrive")],
        vec![b"weird\xff\xfe".to_vec(), post("must not arrive")],
        vec![b"weird\xff".to_vec(), b"\xc1".to_vec()],
    ];
    for frames in malformed.iter().chain(&odd_but_fine).chain(&not_ours) {
        publisher.send_multipart(frames, 0).unwrap();
    }
    publisher
        .send_multipart([&b"weird"[..], &post("end")[..]], 0)
        .unwrap();

    let mut events = Vec::new();
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        match client.events().recv_timeout(Duration::from_millis(100)) {
            Ok(ClientEvent::Post(p)) if p.message == "end" => break,
            Ok(e) => events.push(e),
            Err(_) => {}
        }
    }
    let bad: Vec<&ClientEvent> = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Malformed { .. }))
        .collect();
    assert_eq!(bad.len(), malformed.len(), "{events:#?}");
    for e in &bad {
        if let ClientEvent::Malformed { topic, error } = e {
            assert!(topic == "weird" || topic == "servers", "{topic}");
            assert!(!error.is_empty());
        }
    }
    let posts: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Post(p) => Some(p.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(posts, ["unknown fields", "extra frame"], "{events:#?}");

    // The client still works: requests, and publications through the server.
    assert_eq!(client.users().expect("users"), ["ana"]);
    client.publish("ana", "weird", "after").expect("publish");
    let after = wait_for(DEADLINE, || {
        client
            .events()
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|e| matches!(e, ClientEvent::Post(p) if p.message == "after"))
    });
    assert!(after.is_some(), "no publication after the strange ones");
}

// ----- properties of the socket-free path -----

/// Field names of our protocol, and a few others.
const FIELDS: &[&str] = &[
    "service",
    "data",
    "user",
    "channel",
    "src",
    "dst",
    "message",
    "msg",
    "clock",
    "timestamp",
    "id",
    "limit",
    "before",
    "rank",
    "term",
    "coordinator",
    "endpoint",
    "adjust_ms",
    "events",
    "vector",
    "status",
    "code",
    "x",
];

/// Strings that matter somewhere: service names, names (good, reserved, invalid), times.
const STRINGS: &[&str] = &[
    "login",
    "users",
    "channel",
    "channels",
    "publish",
    "message",
    "history",
    "status",
    "subscribe",
    "unsubscribe",
    "heartbeat",
    "rank",
    "list",
    "election",
    "coordinator",
    "clock",
    "adjust",
    "replicate",
    "sync",
    "ana",
    "geral",
    "servers",
    "$x",
    "",
    " ",
    "a b",
    "a\u{7}",
    "2025-11-12T10:00:00Z",
    "yesterday",
    "9999-12-31T23:59:59.999Z",
    "0/1",
    "server-1/1",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..10).prop_map(Value::from),
        Just(Value::from((1u64 << 53) - 1)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(STRINGS).prop_map(Value::from),
        "\\PC{0,70}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A map of our field names to values of any type.
fn fields() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    prop::collection::vec((prop::sample::select(FIELDS), value()), 0..8)
        .prop_map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// An envelope that is well-formed on the outside and wrong (or right) inside.
fn envelope() -> impl Strategy<Value = Value> {
    let service = prop_oneof![
        4 => prop::sample::select(STRINGS).prop_map(Value::from),
        1 => value(),
    ];
    let data = prop_oneof![4 => fields().prop_map(Value::Object), 1 => value()];
    (prop::option::of(service), prop::option::of(data), fields()).prop_map(
        |(service, data, mut top)| {
            if let Some(s) = service {
                top.insert("service".into(), s);
            }
            if let Some(d) = data {
                top.insert("data".into(), d);
            }
            Value::Object(top)
        },
    )
}

/// A node with a user and a channel, so that writes can succeed too.
fn node() -> Node {
    let mut node = Node::new("prop", Limits::default(), RateLimit::default());
    for request in [
        Request::Login { user: "ana".into() },
        Request::Channel {
            channel: "geral".into(),
        },
    ] {
        let env = RequestEnvelope {
            request,
            meta: Meta::default(),
        };
        node.handle_request(
            env,
            Timestamp::from_millis(1_000),
            &chat_store::MemoryStore::new(),
        );
    }
    node.committed();
    node
}

/// Feeds one frame through decode + `Node` and checks the reply encodes and reads back.
fn answer(node: &mut Node, frame: &[u8]) -> Result<(), TestCaseError> {
    let now = Timestamp::from_millis(1_700_000_000_000);
    let (reply, encoding) = match decode_request(frame) {
        Ok((env, encoding)) => (
            node.handle_request(env, now, &chat_store::MemoryStore::new())
                .reply,
            encoding,
        ),
        Err(failure) => {
            let reply = node.handle_failure(&failure, now);
            prop_assert!(matches!(reply.reply, Reply::Error(_)), "{reply:?}");
            (reply, failure.encoding)
        }
    };
    let bytes = encode_reply(&reply, encoding)
        .map_err(|e| TestCaseError::fail(format!("reply does not encode: {e}")))?;
    prop_assert_eq!(Encoding::detect(&bytes), encoding);
    // The Lamport clock saturates at the protocol maximum: a reply never carries a clock
    // a client would refuse (see `a_request_clock_at_the_accepted_maximum_does_not_poison_later_replies`).
    prop_assert!(
        reply.meta.clock <= MAX_ACCEPTED_CLOCK,
        "reply clock {}",
        reply.meta.clock
    );
    // Read back as a client would.
    let (back, _) = decode_reply(&bytes)
        .map_err(|e| TestCaseError::fail(format!("reply does not decode: {e}")))?;
    if let Reply::Error(e) = &back.reply {
        prop_assert!(!e.description.is_empty());
        prop_assert!(!matches!(e.code, ErrorCode::Other(_)), "{:?}", e.code);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_always_get_an_error_reply(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        answer(&mut node(), &bytes)?;
        // The same bytes behind a JSON brace.
        let mut json = b"{".to_vec();
        json.extend_from_slice(&bytes);
        answer(&mut node(), &json)?;
    }

    #[test]
    fn wrong_maps_never_panic_and_always_get_a_reply(env in envelope(), json in any::<bool>()) {
        let frame = if json { js(&env) } else { mp(&env) };
        answer(&mut node(), &frame)?;
    }

    #[test]
    fn mangled_valid_requests_always_get_a_reply(
        cut in 0usize..200,
        flips in prop::collection::vec((0usize..200, any::<u8>()), 0..4),
        json in any::<bool>(),
    ) {
        let env = RequestEnvelope {
            request: Request::Publish { user: "ana".into(), channel: "geral".into(), message: "oi".into() },
            meta: Meta { clock: 5, timestamp: Some(Timestamp::from_millis(1_000)), id: Some("r1".into()) },
        };
        let encoding = if json { Encoding::Json } else { Encoding::MsgPack };
        let mut frame = encode_request(&env, encoding).unwrap();
        for (at, byte) in flips {
            if let Some(b) = frame.get_mut(at) {
                *b = byte;
            }
        }
        frame.truncate(cut.max(1));
        answer(&mut node(), &frame)?;
    }
}

/// Known issue (reported): a request whose clock is exactly the largest accepted one
/// (2^53 - 1) is served, and pushes the server's Lamport clock past that maximum; from then
/// on every reply of that server carries a clock that clients (the SDK included) refuse as
/// `bad_request`, and the clock is persisted with its events. Enable once the server's clock
/// saturates at `MAX_ACCEPTED_CLOCK` (or request clocks far ahead of it are refused).
#[test]
fn a_request_clock_at_the_accepted_maximum_does_not_poison_later_replies() {
    let cluster = TestCluster::start(1);
    let client = cluster.client();
    client.login("ana").expect("login");
    let ctx = zmq::Context::new();
    let req = req_socket(&ctx, &cluster.frontend);
    let frame = js(&json!({"service": "users", "data": {"clock": MAX_ACCEPTED_CLOCK}}));
    let reply = parse_reply(&ask(&req, &frame), true).unwrap();
    let clock = reply["data"]["clock"].as_u64().expect("clock");
    assert!(clock <= MAX_ACCEPTED_CLOCK, "reply clock {clock}");
    assert_eq!(
        client.users().expect("users after a maximal clock"),
        ["ana"]
    );
}
