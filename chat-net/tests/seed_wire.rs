//! A seed-style client: a plain ZeroMQ REQ and SUB socket, MessagePack maps built by hand
//! (as the seeds' Python does with `msgpack.packb(dict)`), no SDK. Checks the seed reply
//! and publication shapes key by key.

mod support;

use serde_json::{json, Value};
use support::{wait_for, TestCluster, DEADLINE};

fn pack(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("pack")
}

fn unpack(b: &[u8]) -> Value {
    rmp_serde::from_slice(b).expect("reply is MessagePack")
}

struct SeedClient {
    req: zmq::Socket,
    clock: u64,
}

impl SeedClient {
    fn call(&mut self, service: &str, mut data: Value) -> Value {
        self.clock += 1;
        data["timestamp"] = json!("2025-11-12T10:00:00Z");
        data["clock"] = json!(self.clock);
        self.req
            .send(pack(&json!({"service": service, "data": data})), 0)
            .unwrap();
        assert!(
            self.req.poll(zmq::POLLIN, 5000).unwrap() > 0,
            "no reply to {service}"
        );
        let reply = unpack(&self.req.recv_bytes(0).unwrap());
        let clock = reply["data"]["clock"].as_u64().expect("reply clock");
        assert!(clock > 0);
        self.clock = self.clock.max(clock) + 1;
        reply
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("a map").keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn plain_req_and_sub_sockets_get_the_seed_shapes() {
    let cluster = TestCluster::start(1);
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::REQ).unwrap();
    req.set_linger(0).unwrap();
    req.connect(&cluster.frontend).unwrap();
    let mut c = SeedClient { req, clock: 0 };

    let r = c.call("login", json!({"user": "ana"}));
    assert_eq!(r["service"], "login");
    assert_eq!(r["data"]["status"], "sucesso");
    assert!(r["data"]["timestamp"].is_string());
    let r = c.call("users", json!({}));
    assert_eq!(r["data"]["users"], json!(["ana"]));
    let r = c.call("channel", json!({"channel": "geral"}));
    assert_eq!(r["data"]["status"], "sucesso");
    let r = c.call("channels", json!({}));
    assert_eq!(r["data"]["channels"], json!(["geral"]));
    let r = c.call("channel", json!({"channel": "geral"}));
    assert_eq!(r["data"]["status"], "erro");
    assert_eq!(r["data"]["code"], "already_exists");
    assert!(r["data"]["description"].as_str().unwrap().contains("geral"));

    // Seed SUB socket on the channel topic; wait until it is live.
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.connect(&cluster.xpub).unwrap();
    sub.set_subscribe(b"geral").unwrap();
    let first = wait_for(DEADLINE, || {
        let r = c.call(
            "publish",
            json!({"user": "ana", "channel": "geral", "message": "Olá!"}),
        );
        assert_eq!(r["data"]["status"], "OK");
        (sub.poll(zmq::POLLIN, 100).unwrap() > 0).then(|| sub.recv_multipart(0).unwrap())
    })
    .expect("publication on the channel topic");
    assert_eq!(first.len(), 2, "multipart [topic][payload]");
    assert_eq!(first[0], b"geral");
    let p = unpack(&first[1]);
    assert_eq!(p["user"], "ana");
    assert_eq!(p["message"], "Olá!");
    assert!(p["timestamp"].is_string() && p["clock"].is_u64());

    // Private message on the recipient's topic, seed 003 shape (`msg`, top-level clock).
    c.call("login", json!({"user": "bia"}));
    let dm_sub = ctx.socket(zmq::SUB).unwrap();
    dm_sub.set_linger(0).unwrap();
    dm_sub.connect(&cluster.xpub).unwrap();
    dm_sub.set_subscribe(b"bia").unwrap();
    let dm = wait_for(DEADLINE, || {
        c.clock += 1;
        let frame = pack(&json!({"service": "message", "data": {"src": "ana", "dst": "bia", "msg": "Oi!"}, "clock": c.clock}));
        c.req.send(frame, 0).unwrap();
        assert!(c.req.poll(zmq::POLLIN, 5000).unwrap() > 0);
        let r = unpack(&c.req.recv_bytes(0).unwrap());
        assert_eq!(r["data"]["status"], "OK", "{r}");
        (dm_sub.poll(zmq::POLLIN, 100).unwrap() > 0).then(|| dm_sub.recv_multipart(0).unwrap())
    })
    .expect("private message on the user topic");
    assert_eq!(dm[0], b"bia");
    let p = unpack(&dm[1]);
    assert_eq!(p["src"], "ana");
    assert_eq!(p["message"], "Oi!");
    for k in ["src", "message", "timestamp", "clock"] {
        assert!(
            keys(&p).contains(&k.to_string()),
            "publication lacks {k}: {p}"
        );
    }

    // JSON in, JSON out.
    c.req
        .send(&br#"{"service":"channels","data":{"clock":1}}"#[..], 0)
        .unwrap();
    assert!(c.req.poll(zmq::POLLIN, 5000).unwrap() > 0);
    let raw = c.req.recv_bytes(0).unwrap();
    let v: Value = serde_json::from_slice(&raw).expect("JSON reply to a JSON request");
    assert_eq!(v["data"]["channels"], json!(["geral"]));

    // Garbage gets an error reply, and the server keeps serving.
    c.req.send(&b"\xc1\xc1 not msgpack"[..], 0).unwrap();
    assert!(c.req.poll(zmq::POLLIN, 5000).unwrap() > 0);
    let r = unpack(&c.req.recv_bytes(0).unwrap());
    assert_eq!(r["data"]["status"], "erro");
    assert_eq!(r["data"]["code"], "bad_request");
    let r = c.call("nonsense", json!({}));
    assert_eq!(r["data"]["code"], "unknown_service");
    let r = c.call("users", json!({}));
    assert_eq!(r["data"]["users"], json!(["ana", "bia"]));
}
