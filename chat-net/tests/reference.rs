//! The reference service over real sockets on loopback: seed-shaped requests from plain REQ
//! sockets (hand-built MessagePack maps and JSON), rank rules, liveness timeout, rebuild
//! after a restart, and clients that misbehave.
//!
//! Every wait has a deadline; nothing synchronises by sleeping.

use chat_testkit::{wait_for, Running};
use std::time::{Duration, Instant};

use chat_net::reference::{run_reference, Reference, ReferenceConfig, ReferenceStats};
use chat_net::Shutdown;
use serde_json::{json, Value};

/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(5);

fn test_config(timeout: Duration) -> ReferenceConfig {
    ReferenceConfig {
        bind: "tcp://127.0.0.1:*".to_string(),
        timeout,
        ..ReferenceConfig::default()
    }
}

/// A reference running in its own thread.
struct Harness {
    ctx: zmq::Context,
    endpoint: String,
    running: Running<Result<ReferenceStats, chat_net::reference::ReferenceError>>,
}

impl Harness {
    fn start(cfg: ReferenceConfig) -> Harness {
        Harness::start_in(zmq::Context::new(), cfg)
    }

    fn start_in(ctx: zmq::Context, cfg: ReferenceConfig) -> Harness {
        // Rebinding an endpoint just released may fail for a moment (sockets close in
        // libzmq's I/O thread): retry within the deadline.
        let end = Instant::now() + SOON;
        let reference = loop {
            match Reference::bind(&chat_net::Context::new(), &cfg) {
                Ok(r) => break r,
                Err(zmq::Error::EADDRINUSE) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("bind reference on {}: {e}", cfg.bind),
            }
        };
        let endpoint = reference.endpoint().to_string();
        assert!(!endpoint.ends_with(":*"), "{endpoint}");
        let running = Running::spawn(move |flag| reference.run(flag));
        Harness {
            ctx,
            endpoint,
            running,
        }
    }

    /// Stops the reference and returns its counters.
    fn stop(self) -> ReferenceStats {
        self.running
            .stop(SOON)
            .expect("reference returned an error")
    }

    fn socket(&self, kind: zmq::SocketType) -> zmq::Socket {
        let s = self.ctx.socket(kind).unwrap();
        s.set_linger(0).unwrap();
        s.connect(&self.endpoint).unwrap();
        s
    }

    fn req(&self) -> zmq::Socket {
        self.socket(zmq::REQ)
    }
}

/// Receives one message within [`SOON`].
fn recv(s: &zmq::Socket) -> Vec<Vec<u8>> {
    let mut items = [s.as_poll_item(zmq::POLLIN)];
    let n = zmq::poll(&mut items, SOON.as_millis() as i64).unwrap();
    assert!(n > 0, "no reply within {SOON:?}");
    s.recv_multipart(0).unwrap()
}

/// Sends a raw frame on a REQ socket and returns the single reply frame.
fn call_raw(s: &zmq::Socket, body: &[u8]) -> Vec<u8> {
    s.send(body, 0).unwrap();
    let mut frames = recv(s);
    assert_eq!(frames.len(), 1, "a REQ socket sees one reply frame");
    frames.remove(0)
}

/// A MessagePack request built by hand, the reply decoded as a generic map.
fn call(s: &zmq::Socket, req: Value) -> Value {
    let reply = call_raw(s, &rmp_serde::to_vec_named(&req).unwrap());
    assert_ne!(
        reply.first(),
        Some(&b'{'),
        "MessagePack in, MessagePack out"
    );
    rmp_serde::from_slice(&reply).expect("reply is a MessagePack map")
}

/// A JSON request, the reply decoded as JSON.
fn call_json(s: &zmq::Socket, req: Value) -> Value {
    let reply = call_raw(s, &serde_json::to_vec(&req).unwrap());
    serde_json::from_slice(&reply).expect("JSON in, JSON out")
}

fn rank(s: &zmq::Socket, data: Value) -> u64 {
    let r = call(s, json!({"service": "rank", "data": data}));
    r["data"]["rank"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rank in {r}"))
}

fn heartbeat(s: &zmq::Socket, data: Value) -> Value {
    call(s, json!({"service": "heartbeat", "data": data}))
}

/// `(name, rank)` of every listed server.
fn list(s: &zmq::Socket) -> Vec<(String, u64)> {
    let r = call(s, json!({"service": "list", "data": {}}));
    r["data"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("no list in {r}"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["rank"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(n, r)| (n.to_string(), *r)).collect()
}

#[test]
fn seed_shaped_rank_list_heartbeat_in_msgpack() {
    let h = Harness::start(test_config(Duration::from_secs(30)));
    let s = h.req();
    let r = call(
        &s,
        json!({"service": "rank", "data": {
            "user": "server-1", "timestamp": "2025-11-12T10:00:00Z", "clock": 41, "id": "q1"
        }}),
    );
    assert_eq!(r["service"], "rank");
    let data = r["data"].as_object().expect("data is a map");
    assert_eq!(data["rank"], 1);
    assert!(data["timestamp"].is_string(), "{r}");
    assert!(data["clock"].as_u64().unwrap() > 41, "Lamport: {r}");
    assert_eq!(data["id"], "q1");
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["clock", "id", "rank", "timestamp"]);

    // Our extension: the peer endpoint, shown in `list`.
    let r = call(
        &s,
        json!({"service": "rank", "data": {"user": "server-2", "endpoint": "tcp://127.0.0.1:5602"}}),
    );
    assert_eq!(r["data"]["rank"], 2);

    let r = heartbeat(&s, json!({"user": "server-1", "clock": 3}));
    assert_eq!(r["service"], "heartbeat");
    assert_eq!(r["data"]["status"], "OK");
    assert!(r["data"]["timestamp"].is_string());

    // Seed 003 puts clock and timestamp at the top level.
    let r = call(
        &s,
        json!({"service": "list", "data": {}, "clock": 1000, "timestamp": 1731405600}),
    );
    assert_eq!(r["service"], "list");
    assert_eq!(
        r["data"]["list"],
        json!([
            {"name": "server-1", "rank": 1},
            {"name": "server-2", "rank": 2, "endpoint": "tcp://127.0.0.1:5602"}
        ])
    );
    assert!(r["data"]["clock"].as_u64().unwrap() > 1000);
    let stats = h.stop();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.errors, 0);
}

#[test]
fn json_in_json_out() {
    let h = Harness::start(test_config(Duration::from_secs(30)));
    let s = h.req();
    let r = call_json(
        &s,
        json!({"service": "rank", "data": {"user": "js", "clock": 7}}),
    );
    assert_eq!(r["data"]["rank"], 1);
    assert!(r["data"]["clock"].as_u64().unwrap() > 7);
    let r = call_json(&s, json!({"service": "heartbeat", "data": {"user": "js"}}));
    assert_eq!(r["data"]["status"], "OK");
    let r = call_json(&s, json!({"service": "list"}));
    assert_eq!(r["data"]["list"], json!([{"name": "js", "rank": 1}]));
    let r = call_json(&s, json!({"service": "nope"}));
    assert_eq!(r["data"]["status"], "erro");
    assert_eq!(r["data"]["code"], "unknown_service");
}

#[test]
fn ranks_are_unique_and_stable() {
    let h = Harness::start(test_config(Duration::from_secs(30)));
    let a = h.req();
    let b = h.req();
    let mut seen = Vec::new();
    for i in 1..=5 {
        let s = if i % 2 == 0 { &a } else { &b };
        seen.push(rank(s, json!({"user": format!("server-{i}")})));
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    // Asking again, from another socket, with another endpoint or another requested rank:
    // same rank.
    assert_eq!(rank(&a, json!({"user": "server-3"})), 3);
    assert_eq!(
        rank(
            &b,
            json!({"user": "server-3", "endpoint": "tcp://h:9", "rank": 5})
        ),
        3
    );
    let r = call(&a, json!({"service": "list"}));
    let s3 = r["data"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "server-3")
        .cloned()
        .unwrap();
    assert_eq!(
        s3,
        json!({"name": "server-3", "rank": 3, "endpoint": "tcp://h:9"})
    );
}

#[test]
fn requested_rank_is_honoured_only_when_free() {
    let h = Harness::start(test_config(Duration::from_secs(30)));
    let s = h.req();
    assert_eq!(rank(&s, json!({"user": "a", "rank": 4})), 4);
    assert_eq!(rank(&s, json!({"user": "b", "rank": 4})), 5, "taken by a");
    assert_eq!(rank(&s, json!({"user": "c", "rank": 2})), 2, "free");
    assert_eq!(rank(&s, json!({"user": "d"})), 6, "max ever + 1");
    assert_eq!(list(&s), pairs(&[("c", 2), ("a", 4), ("b", 5), ("d", 6)]));
}

#[test]
fn silent_servers_leave_the_list() {
    let timeout = Duration::from_millis(500);
    let h = Harness::start(test_config(timeout));
    let s = h.req();
    let started = Instant::now();
    assert_eq!(rank(&s, json!({"user": "quiet"})), 1);
    assert_eq!(rank(&s, json!({"user": "chatty"})), 2);
    assert_eq!(list(&s), pairs(&[("quiet", 1), ("chatty", 2)]));
    let gone = wait_for(SOON, || {
        let r = heartbeat(&s, json!({"user": "chatty"}));
        assert_eq!(r["data"]["status"], "OK", "{r}");
        let l = list(&s);
        (l == pairs(&[("chatty", 2)])).then_some(())
    });
    assert!(gone.is_some(), "quiet server still listed after {SOON:?}");
    assert!(started.elapsed() >= timeout, "dropped before the timeout");
    // It comes back with its rank.
    assert_eq!(
        heartbeat(&s, json!({"user": "quiet"}))["data"]["status"],
        "OK"
    );
    assert_eq!(list(&s), pairs(&[("quiet", 1), ("chatty", 2)]));
    let stats = h.stop();
    assert_eq!(stats.joins, 3, "{stats:?}");
    assert_eq!(stats.leaves, 1, "{stats:?}");
}

#[test]
fn heartbeat_with_rank_rebuilds_after_a_restart() {
    let ctx = zmq::Context::new();
    let first = Harness::start_in(ctx.clone(), test_config(Duration::from_secs(30)));
    let endpoint = first.endpoint.clone();
    {
        let s = first.req();
        assert_eq!(rank(&s, json!({"user": "s1"})), 1);
        assert_eq!(rank(&s, json!({"user": "s2"})), 2);
        assert_eq!(rank(&s, json!({"user": "s3"})), 3);
    }
    first.stop();

    // A new reference on the same endpoint knows nobody.
    let cfg = ReferenceConfig {
        bind: endpoint.clone(),
        ..test_config(Duration::from_secs(30))
    };
    let second = Harness::start_in(ctx, cfg);
    assert_eq!(second.endpoint, endpoint);
    let s = second.req();
    // Without a rank: unknown, send `rank` again.
    let r = heartbeat(&s, json!({"user": "s1"}));
    assert_eq!(r["data"]["status"], "erro");
    assert_eq!(r["data"]["code"], "unknown_user");
    assert!(r["data"]["description"].is_string());
    // With its rank: registered again, endpoint included.
    let r = heartbeat(
        &s,
        json!({"user": "s3", "rank": 3, "endpoint": "tcp://127.0.0.1:5603"}),
    );
    assert_eq!(r["data"]["status"], "OK", "{r}");
    // A restarted server that remembers its rank keeps it through `rank` too.
    assert_eq!(rank(&s, json!({"user": "s2", "rank": 2})), 2);
    // A name claiming a rank someone else holds is refused.
    let r = heartbeat(&s, json!({"user": "intruder", "rank": 3}));
    assert_eq!(r["data"]["code"], "unknown_user");
    // s1 re-ranks: its old rank is free, so it gets it back when it asks for it.
    assert_eq!(rank(&s, json!({"user": "s1", "rank": 1})), 1);
    assert_eq!(rank(&s, json!({"user": "new"})), 4);
    let r = call(&s, json!({"service": "list"}));
    assert_eq!(
        r["data"]["list"],
        json!([
            {"name": "s1", "rank": 1},
            {"name": "s2", "rank": 2},
            {"name": "s3", "rank": 3, "endpoint": "tcp://127.0.0.1:5603"},
            {"name": "new", "rank": 4}
        ])
    );
}

#[test]
fn malformed_requests_get_error_replies() {
    let h = Harness::start(test_config(Duration::from_secs(30)));
    let s = h.req();
    let code = |reply: &Value| reply["data"]["code"].as_str().unwrap_or("").to_string();

    // Not MessagePack.
    let reply = call_raw(&s, &[0xc1, 0xc1, 0xc1]);
    let v: Value = rmp_serde::from_slice(&reply).unwrap();
    assert_eq!(code(&v), "bad_request");
    assert_eq!(v["data"]["status"], "erro");
    // Not JSON (but looks like it): answered in JSON.
    let reply = call_raw(&s, b"{\"service\": ");
    let v: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(code(&v), "bad_request");
    // A MessagePack value that is not a map.
    let reply = call_raw(&s, &rmp_serde::to_vec(&[1, 2, 3]).unwrap());
    let v: Value = rmp_serde::from_slice(&reply).unwrap();
    assert_eq!(code(&v), "bad_request");
    // A request written as an array, which serde alone would read field by field: refused
    // (in both encodings), and the name it carries is not registered.
    let positional = json!(["rank", {"user": "by-position", "clock": 4}]);
    let v = call(&s, positional.clone());
    assert_eq!(code(&v), "bad_request", "{v}");
    assert!(
        v["data"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("expected a request: a map with `service` and `data`")),
        "{v}"
    );
    let v = call_json(&s, positional);
    assert_eq!(code(&v), "bad_request", "{v}");
    for not_a_map in [json!(42), json!("list"), Value::Null] {
        let v = call(&s, not_a_map);
        assert_eq!(code(&v), "bad_request", "{v}");
    }
    let v = call(&s, json!({"service": "list", "data": {}}));
    assert!(
        !v["data"]["list"].to_string().contains("by-position"),
        "{v}"
    );

    for (req, expected) in [
        (json!({"service": "rank", "data": {}}), "bad_request"),
        (
            json!({"service": "rank", "data": {"user": 12}}),
            "bad_request",
        ),
        (
            json!({"service": "rank", "data": {"user": "a", "rank": "x"}}),
            "bad_request",
        ),
        (json!({"service": "rank", "data": "nope"}), "bad_request"),
        (json!({"service": 5}), "bad_request"),
        (json!({"data": {"user": "a"}}), "bad_request"),
        (json!({"service": "heartbeat", "data": {}}), "bad_request"),
        (
            json!({"service": "rank", "data": {"user": "  "}}),
            "invalid_name",
        ),
        (json!({"service": "frobnicate"}), "unknown_service"),
        (
            json!({"service": "login", "data": {"user": "ana"}}),
            "unknown_service",
        ),
        (
            json!({"service": "publish", "data": {"user": "ana", "channel": "c", "message": "m"}}),
            "unknown_service",
        ),
    ] {
        let v = call(&s, req.clone());
        assert_eq!(code(&v), expected, "{req} -> {v}");
        assert_eq!(v["data"]["status"], "erro", "{v}");
        assert!(v["data"]["description"].is_string(), "{v}");
        assert!(v["data"]["clock"].is_u64(), "{v}");
    }
    // Still serving.
    assert_eq!(rank(&s, json!({"user": "after"})), 1);
}

#[test]
fn misbehaving_clients_do_not_stop_it() {
    let h = Harness::start(test_config(Duration::from_secs(30)));

    // REQ sending a two-frame request: bad_request, and the socket can go on.
    let s = h.req();
    s.send_multipart([&b"a"[..], &b"b"[..]], 0).unwrap();
    let frames = recv(&s);
    assert_eq!(frames.len(), 1);
    let v: Value = rmp_serde::from_slice(&frames[0]).unwrap();
    assert_eq!(v["data"]["code"], "bad_request");
    assert_eq!(rank(&s, json!({"user": "one"})), 1);

    // DEALER sending garbage multipart without a delimiter, an empty message, and
    // delimiter-only messages.
    let d = h.socket(zmq::DEALER);
    d.send_multipart([&b"x"[..], &b""[..], &b"\xff\xfe"[..]], 0)
        .unwrap();
    d.send(&b""[..], 0).unwrap();
    d.send_multipart([&b""[..], &b""[..]], 0).unwrap();
    d.send(&b"\x92\x01\x02"[..], 0).unwrap();
    // Each gets an answer (bad_request), in order.
    for _ in 0..4 {
        let frames = recv(&d);
        let body = frames.last().unwrap();
        let v: Value = rmp_serde::from_slice(body).unwrap();
        assert_eq!(v["data"]["code"], "bad_request", "{frames:?}");
    }

    // Clients that send and vanish before the reply.
    for i in 0..20 {
        let gone = h.req();
        let body = rmp_serde::to_vec_named(
            &json!({"service": "rank", "data": {"user": format!("ghost-{i}")}}),
        )
        .unwrap();
        gone.send(body, 0).unwrap();
        drop(gone);
    }
    // A DEALER that asks a lot and never reads.
    let deaf = h.socket(zmq::DEALER);
    let body = rmp_serde::to_vec_named(&json!({"service": "list"})).unwrap();
    for _ in 0..200 {
        deaf.send_multipart([&b""[..], &body[..]], zmq::DONTWAIT)
            .unwrap();
    }

    // The next client is served.
    let next = h.req();
    assert_eq!(rank(&next, json!({"user": "one"})), 1);
    let r = call(&next, json!({"service": "list"}));
    assert!(r["data"]["list"].is_array());
    drop(deaf);
    let stats = h.stop();
    assert!(stats.errors >= 5, "{stats:?}");
}

#[test]
fn run_reference_reports_its_endpoint_and_stops() {
    let ctx = zmq::Context::new();
    let shutdown = Shutdown::new();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let thread = {
        let ctx = chat_net::Context::new();
        let flag = shutdown.clone();
        std::thread::spawn(move || {
            let cfg = test_config(Duration::from_secs(3));
            let _ = done_tx.send(run_reference(&ctx, &cfg, &flag, Some(tx)));
        })
    };
    let endpoint: String = rx.recv_timeout(SOON).expect("endpoint reported");
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
    assert!(!endpoint.ends_with(":*"), "{endpoint}");
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_linger(0).unwrap();
    s.connect(&endpoint).unwrap();
    assert_eq!(rank(&s, json!({"user": "x"})), 1);
    let started = Instant::now();
    shutdown.trigger();
    let result = done.recv_timeout(SOON).expect("stopped in time");
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    thread.join().unwrap();

    // Binding a busy endpoint is an error, not a hang.
    let holder = ctx.socket(zmq::ROUTER).unwrap();
    holder.set_linger(0).unwrap();
    holder.bind("tcp://127.0.0.1:*").unwrap();
    let busy = holder.get_last_endpoint().unwrap().unwrap();
    let cfg = ReferenceConfig {
        bind: busy,
        ..test_config(Duration::from_secs(3))
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    assert!(run_reference(&chat_net::Context::new(), &cfg, &Shutdown::new(), Some(tx)).is_err());
    assert!(
        rx.try_recv().is_err(),
        "no endpoint reported when bind fails"
    );
}

/// With a data directory, ranks survive a restart of the reference: a server that is away
/// meanwhile keeps its rank, and a newcomer gets a rank nobody ever had (two servers with
/// one rank could claim the same election term).
#[test]
fn ranks_survive_a_restart_with_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ReferenceConfig {
        data: Some(dir.path().to_path_buf()),
        ..test_config(Duration::from_secs(3))
    };
    let first = Harness::start(cfg.clone());
    let s = first.req();
    assert_eq!(rank(&s, json!({"user": "server-1"})), 1);
    assert_eq!(rank(&s, json!({"user": "server-2"})), 2);
    first.stop();
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(chat_net::reference::RANKS_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(saved, json!({"server-1": 1, "server-2": 2}));

    // Restarted: server-2 is away; server-3 must not get its rank.
    let again = Harness::start(cfg.clone());
    let s = again.req();
    assert_eq!(rank(&s, json!({"user": "server-3"})), 3);
    assert_eq!(rank(&s, json!({"user": "server-1", "rank": 9})), 1);
    let r = heartbeat(&s, json!({"user": "server-2", "rank": 2}));
    assert_eq!(r["data"]["status"], "OK", "{r}");
    again.stop();

    // Without a data directory the same restart forgets: the newcomer gets rank 1.
    let forgetful = Harness::start(test_config(Duration::from_secs(3)));
    let s = forgetful.req();
    assert_eq!(rank(&s, json!({"user": "server-3"})), 1);
    forgetful.stop();

    // A file that is not a map of ranks stops the reference with an error that says so.
    std::fs::write(dir.path().join(chat_net::reference::RANKS_FILE), "[1, 2]").unwrap();
    let broken = Harness::start(cfg);
    let err = broken.running.stop(SOON).unwrap_err();
    assert!(err.to_string().contains("ranks.json"), "{err}");
}
