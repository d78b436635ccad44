//! `BrokerCore` driven by hand: no sockets, a fake clock (`t0` plus milliseconds), and the
//! invariants checked after every input.

use std::collections::HashMap;

use chat_core::protocol::{decode_reply, encode_request};
use chat_core::{ErrorCode, Reply, Request, RequestEnvelope};
use proptest::prelude::*;

use super::*;
use crate::backend::{self, FromBroker};

/// The wall time the fake world reports for error replies.
const WALL: Timestamp = Timestamp::from_millis(1_700_000_000_000);
/// First token of every core under test.
const FIRST_TOKEN: u64 = 1000;

/// A transmit, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    /// `HB[, echo]` to a server.
    Hb { to: String, echo: Option<u64> },
    /// `REQ` to a server.
    Req {
        to: String,
        token: u64,
        body: Vec<u8>,
        echo: Option<u64>,
    },
    /// A reply to a client (its first envelope frame).
    Client { to: String, body: Vec<u8> },
}

impl Out {
    fn read(t: &Transmit) -> Out {
        match t {
            Transmit::Client { envelope, body } => Out::Client {
                to: String::from_utf8_lossy(&envelope[0]).into_owned(),
                body: body.clone(),
            },
            Transmit::Server { identity, frames } => {
                let to = String::from_utf8_lossy(identity).into_owned();
                match backend::parse_from_broker(frames) {
                    Some(FromBroker::Heartbeat { echo }) => Out::Hb { to, echo },
                    Some(FromBroker::Request {
                        token,
                        request,
                        echo,
                    }) => Out::Req {
                        to,
                        token,
                        body: request.to_vec(),
                        echo,
                    },
                    None => panic!("malformed frames to a server: {frames:?}"),
                }
            }
        }
    }
}

/// One broker core and a fake clock.
struct World {
    core: BrokerCore,
    t0: Instant,
}

impl World {
    fn new(cfg: BrokerCoreConfig) -> World {
        let t0 = Instant::now();
        World {
            core: BrokerCore::new(cfg, t0, FIRST_TOKEN),
            t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn check(&self) {
        if let Err(e) = self.core.check_invariants() {
            panic!("invariant broken: {e}\n{:#?}", self.core);
        }
    }

    /// A REQ-style client message `[who, "", body]`.
    fn client(&mut self, ms: u64, who: &str, body: &[u8]) {
        self.client_frames(ms, vec![who.into(), Vec::new(), body.to_vec()]);
    }

    fn client_frames(&mut self, ms: u64, frames: Vec<Vec<u8>>) {
        self.core.handle_client(self.at(ms), WALL, frames);
        self.check();
    }

    /// A backend message from server `who`.
    fn server(&mut self, ms: u64, who: &str, frames: &[&[u8]]) {
        let mut all = vec![who.as_bytes().to_vec()];
        all.extend(frames.iter().map(|f| f.to_vec()));
        self.core.handle_server(self.at(ms), WALL, all);
        self.check();
    }

    fn ready(&mut self, ms: u64, who: &str, capacity: u32) {
        let cap = backend::capacity_bytes(capacity);
        self.server(ms, who, &[backend::READY, &cap]);
    }

    fn reply(&mut self, ms: u64, who: &str, token: u64, body: &[u8]) {
        let tok = backend::token_bytes(token);
        self.server(ms, who, &[backend::REPLY, &tok, body]);
    }

    fn tick(&mut self, ms: u64, backlog: bool) {
        self.core.handle_timeout(self.at(ms), WALL, backlog);
        self.check();
    }

    /// Everything the core wants sent, all sent successfully.
    fn out(&mut self) -> Vec<Out> {
        let mut all = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            all.push(Out::read(&t));
        }
        all
    }

    /// The requests sent out, as `(server, token, body)`, other transmits dropped.
    fn reqs(&mut self) -> Vec<(String, u64, Vec<u8>)> {
        self.out()
            .into_iter()
            .filter_map(|o| match o {
                Out::Req {
                    to, token, body, ..
                } => Some((to, token, body)),
                _ => None,
            })
            .collect()
    }
}

fn cfg() -> BrokerCoreConfig {
    BrokerCoreConfig::default()
}

/// A valid `users` request in `encoding`, with a request id.
fn users(id: &str, encoding: Encoding) -> Vec<u8> {
    let env = RequestEnvelope {
        request: Request::Users,
        meta: Meta {
            clock: 41,
            timestamp: None,
            id: Some(id.to_string()),
        },
    };
    encode_request(&env, encoding).expect("encodes")
}

fn req(id: &str) -> Vec<u8> {
    users(id, Encoding::MsgPack)
}

/// An error reply's code, service, meta and encoding.
fn error_of(bytes: &[u8]) -> (ErrorCode, String, Meta, Encoding) {
    let (env, encoding) = decode_reply(bytes).expect("reply decodes");
    match env.reply {
        Reply::Error(e) => (e.code, env.service, env.meta, encoding),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn client_bodies(outs: &[Out], who: &str) -> Vec<Vec<u8>> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Client { to, body } if to == who => Some(body.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn registration_sends_a_heartbeat_at_once() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 2);
    w.ready(0, "b", 2);
    assert_eq!(
        w.out(),
        vec![
            Out::Hb {
                to: "a".into(),
                echo: None
            },
            Out::Hb {
                to: "b".into(),
                echo: None
            },
        ]
    );
    assert_eq!(w.core.live_servers(), 2);
    assert_eq!(w.core.stats().servers_joined, 2);
}

#[test]
fn requests_go_round_robin_to_servers_with_credits() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 2);
    w.ready(0, "b", 2);
    w.out();
    for c in ["c1", "c2", "c3", "c4", "c5"] {
        w.client(1, c, &req(c));
    }
    let reqs = w.reqs();
    let to: Vec<&str> = reqs.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(to, ["a", "b", "a", "b"], "not round-robin within credits");
    assert_eq!(reqs[0].2, req("c1"));
    assert_eq!(reqs[0].1, FIRST_TOKEN);
    assert_eq!(w.core.queued(), 1, "the fifth request waits for a credit");

    // A reply frees a credit of a: it goes to the waiting request at once.
    w.reply(2, "a", reqs[0].1, b"answer-c1");
    let out = w.out();
    assert_eq!(client_bodies(&out, "c1"), vec![b"answer-c1".to_vec()]);
    let next: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Out::Req { to, body, .. } => Some((to.as_str(), body.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(next, vec![("a", req("c5"))]);
    assert_eq!(w.core.queued(), 0);
    assert_eq!(w.core.stats().replies, 1);
    assert_eq!(w.core.stats().requests, 5);
}

/// `a` takes a request from `c`, falls silent; `b` heartbeats; `a` is dropped after
/// LIVENESS and the request goes to `b`. Returns the world and the request's token.
fn silent_a_and_healthy_b() -> (World, u64) {
    let mut w = World::new(cfg());
    w.ready(0, "a", 8);
    w.client(10, "c", &req("lost-then-found"));
    let reqs = w.reqs();
    assert_eq!(reqs.len(), 1);
    let (first, token, _) = reqs[0].clone();
    assert_eq!(first, "a");
    w.ready(100, "b", 8);
    w.out();
    let hb_b = backend::capacity_bytes(8);
    let mut redispatched = None;
    let mut ms = 250;
    while ms <= 2000 && redispatched.is_none() {
        w.server(ms, "b", &[backend::HEARTBEAT, &hb_b]);
        w.tick(ms, false);
        for (to, tok, body) in w.reqs() {
            assert_eq!((to.as_str(), tok), ("b", token));
            assert_eq!(body, req("lost-then-found"));
            redispatched = Some(ms);
        }
        ms += 250;
    }
    let when = redispatched.expect("the request never went to b");
    // a was last heard at 0: silence over 1 s is first seen by the heartbeat at 1250.
    assert_eq!(when, 1250);
    let stats = w.core.stats();
    assert_eq!((stats.redispatched, stats.servers_lost), (1, 1));
    assert_eq!(w.core.live_servers(), 1);
    (w, token)
}

#[test]
fn silent_server_loses_its_requests_to_another_server() {
    let (mut w, token) = silent_a_and_healthy_b();
    w.reply(1300, "b", token, b"found");
    assert_eq!(client_bodies(&w.out(), "c"), vec![b"found".to_vec()]);
    assert_eq!(w.core.stats().replies, 1);
    assert_eq!(w.core.outstanding(), 0);
}

#[test]
fn late_reply_after_redispatch_is_dropped() {
    let (mut w, token) = silent_a_and_healthy_b();
    // a wakes up (a SIGSTOP ends): its heartbeat registers it again, then its reply to
    // the request that b now holds arrives. It must not reach the client.
    let cap = backend::capacity_bytes(8);
    w.server(1300, "a", &[backend::HEARTBEAT, &cap]);
    w.reply(1301, "a", token, b"stale");
    let out = w.out();
    assert!(client_bodies(&out, "c").is_empty(), "late reply forwarded");
    assert_eq!(w.core.stats().late_replies, 1);
    assert_eq!(w.core.stats().servers_joined, 3);
    // b's answer is the one the client gets, once; a second copy is late too.
    w.reply(1302, "b", token, b"found");
    w.reply(1303, "b", token, b"found-again");
    assert_eq!(client_bodies(&w.out(), "c"), vec![b"found".to_vec()]);
    let stats = w.core.stats();
    assert_eq!((stats.replies, stats.late_replies), (1, 2));
    // A reply from a server that is gone for good is garbage, not a reply.
    w.server(1304, "a", &[backend::BYE]);
    w.reply(1305, "a", token, b"stale");
    assert_eq!(w.core.stats().garbage, 1);
    assert!(w.out().is_empty());
}

#[test]
fn session_affinity_keeps_a_client_on_its_server() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 3);
    w.ready(0, "b", 3);
    w.out();
    w.client(1, "c1", &req("1"));
    w.client(1, "c2", &req("2"));
    // Round-robin would give c2's second request to a; affinity keeps it on b.
    w.client(2, "c2", &req("2b"));
    w.client(2, "c1", &req("1b"));
    w.client(2, "c1", &req("1c"));
    let to: Vec<String> = w.reqs().into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(to, ["a", "b", "b", "a", "a"]);
    // a is full: c1 goes elsewhere rather than wait.
    w.client(3, "c1", &req("1d"));
    let to: Vec<String> = w.reqs().into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(to, ["b"]);
    // ...and stays there while b has credits.
    w.client(4, "c1", &req("1e"));
    assert_eq!(w.reqs().len(), 0, "b is full too: the request waits");
    assert_eq!(w.core.queued(), 1);
}

#[test]
fn queue_deadline_answers_unavailable() {
    let mut w = World::new(BrokerCoreConfig {
        queue_timeout: Duration::from_millis(300),
        ..cfg()
    });
    w.client(0, "c", &users("nobody-home", Encoding::Json));
    assert_eq!(w.core.poll_timeout(), Some(w.at(250)), "heartbeat first");
    w.tick(250, false);
    assert_eq!(w.core.poll_timeout(), Some(w.at(300)));
    w.tick(299, false);
    assert!(w.out().is_empty(), "answered before the deadline");
    w.tick(300, false);
    let bodies = client_bodies(&w.out(), "c");
    assert_eq!(bodies.len(), 1);
    let (code, service, meta, encoding) = error_of(&bodies[0]);
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(service, "users");
    assert_eq!(meta.id.as_deref(), Some("nobody-home"));
    assert_eq!(meta.clock, 42);
    assert_eq!(meta.timestamp, Some(WALL));
    assert_eq!(encoding, Encoding::Json);
    assert_eq!(w.core.stats().unavailable, 1);
    assert_eq!(w.core.outstanding(), 0);
}

#[test]
fn answer_deadline_frees_the_credit_and_drops_the_late_reply() {
    let mut w = World::new(BrokerCoreConfig {
        request_timeout: Duration::from_millis(500),
        ..cfg()
    });
    w.ready(0, "a", 1);
    w.client(0, "c", &req("slow"));
    let (_, slow, _) = w.reqs()[0].clone();
    w.client(0, "d", &req("waits"));
    assert_eq!(w.core.queued(), 1, "a has one credit");
    let cap = backend::capacity_bytes(1);
    w.server(250, "a", &[backend::HEARTBEAT, &cap]);
    w.tick(250, false);
    w.out();
    w.server(499, "a", &[backend::HEARTBEAT, &cap]);
    w.tick(499, false);
    assert!(w.out().is_empty());
    w.tick(500, false);
    let out = w.out();
    // Both requests arrived at 0, so both answer deadlines pass now: the one in flight
    // and the queued one.
    for who in ["c", "d"] {
        let bodies = client_bodies(&out, who);
        assert_eq!(bodies.len(), 1, "{who}: {out:?}");
        assert_eq!(error_of(&bodies[0]).0, ErrorCode::Unavailable);
    }
    // The credit is free again: a new request goes to a at once.
    w.client(510, "e", &req("after"));
    let reqs = w.reqs();
    assert_eq!(reqs.len(), 1);
    let (_, after, _) = reqs[0].clone();
    w.reply(520, "a", slow, b"too late");
    w.reply(521, "a", after, b"on time");
    assert_eq!(client_bodies(&w.out(), "e"), vec![b"on time".to_vec()]);
    let stats = w.core.stats();
    assert_eq!(
        (stats.late_replies, stats.replies, stats.unavailable),
        (1, 1, 2)
    );
    assert_eq!(stats.servers_lost, 0);
}

#[test]
fn answer_deadline_of_a_request_in_flight_alone() {
    let mut w = World::new(BrokerCoreConfig {
        request_timeout: Duration::from_millis(400),
        ..cfg()
    });
    w.ready(0, "a", 4);
    w.client(100, "c", &req("slow"));
    w.reqs();
    assert_eq!(w.core.poll_timeout(), Some(w.at(250)));
    let cap = backend::capacity_bytes(4);
    w.server(250, "a", &[backend::HEARTBEAT, &cap]);
    w.tick(250, false);
    w.out();
    assert_eq!(
        w.core.poll_timeout(),
        Some(w.at(500)),
        "answer deadline at 500"
    );
    w.tick(500, false);
    let bodies = client_bodies(&w.out(), "c");
    assert_eq!(bodies.len(), 1);
    assert_eq!(error_of(&bodies[0]).0, ErrorCode::Unavailable);
}

#[test]
fn full_queue_is_refused_at_once() {
    let mut w = World::new(BrokerCoreConfig {
        max_pending: 1,
        ..cfg()
    });
    w.client(0, "c", &req("waits"));
    assert!(w.out().is_empty());
    w.client(1, "c", &req("refused"));
    let bodies = client_bodies(&w.out(), "c");
    assert_eq!(bodies.len(), 1);
    let (code, _, meta, _) = error_of(&bodies[0]);
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(meta.id.as_deref(), Some("refused"));
    assert_eq!(w.core.queued(), 1);
    assert_eq!(w.core.stats().unavailable, 1);
    // A server arrives: the waiting request goes to it.
    w.ready(2, "a", 1);
    let out = w.out();
    assert!(matches!(&out[0], Out::Hb { .. }), "{out:?}");
    assert!(matches!(&out[1], Out::Req { body, .. } if *body == req("waits")));
}

#[test]
fn malformed_client_messages_get_bad_request_or_too_large() {
    let mut w = World::new(BrokerCoreConfig {
        max_frame: 200,
        ..cfg()
    });
    w.ready(0, "a", 4);
    w.out();
    // Identity alone: nothing to answer.
    w.client_frames(1, vec![b"c".to_vec()]);
    assert!(w.out().is_empty());
    assert_eq!(w.core.stats().garbage, 1);
    // An empty request, REQ-style: the envelope keeps its delimiter.
    w.client_frames(1, vec![b"c".to_vec(), Vec::new(), Vec::new()]);
    match w.out().as_slice() {
        [Out::Client { to, body }] => {
            assert_eq!(to, "c");
            let (code, service, _, _) = error_of(body);
            assert_eq!((code, service.as_str()), (ErrorCode::BadRequest, "error"));
        }
        other => panic!("{other:?}"),
    }
    // Two frames: bad_request, read from the first non-empty one.
    let body = users("multi", Encoding::Json);
    w.client_frames(1, vec![b"c".to_vec(), body.clone(), b"extra".to_vec()]);
    let bodies = client_bodies(&w.out(), "c");
    let (code, service, meta, encoding) = error_of(&bodies[0]);
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(service, "users");
    assert_eq!(meta.id.as_deref(), Some("multi"));
    assert_eq!(encoding, Encoding::Json);
    // Over max_frame: too_large.
    w.client_frames(1, vec![b"c".to_vec(), vec![b'x'; 201]]);
    let t = w.core.poll_transmit().expect("an answer");
    match t {
        Transmit::Client { envelope, body } => {
            assert_eq!(envelope, vec![b"c".to_vec()], "DEALER envelope kept as is");
            assert_eq!(error_of(&body).0, ErrorCode::TooLarge);
        }
        other => panic!("{other:?}"),
    }
    // None reached the server; a proper request still does.
    w.client(2, "c", &req("fine"));
    assert_eq!(w.reqs().len(), 1);
    let stats = w.core.stats();
    assert_eq!((stats.rejected, stats.requests), (3, 5));
}

#[test]
fn oversized_reply_becomes_too_large() {
    let mut w = World::new(BrokerCoreConfig {
        max_frame: 200,
        ..cfg()
    });
    w.ready(0, "a", 4);
    w.client(1, "c", &users("big-reply", Encoding::Json));
    let (_, token, _) = w.reqs()[0].clone();
    w.reply(2, "a", token, &[b'y'; 500]);
    let bodies = client_bodies(&w.out(), "c");
    let (code, service, meta, encoding) = error_of(&bodies[0]);
    assert_eq!(code, ErrorCode::TooLarge);
    assert_eq!(service, "users");
    assert_eq!(meta.id.as_deref(), Some("big-reply"));
    assert_eq!(encoding, Encoding::Json);
    assert_eq!(w.core.stats().rejected, 1);
    assert_eq!(w.core.stats().replies, 0);
}

#[test]
fn garbage_from_servers_is_counted_and_registers_nothing() {
    let mut w = World::new(cfg());
    let crafted: Vec<Vec<&[u8]>> = vec![
        vec![],
        vec![b""],
        vec![b"REP"],
        vec![b"REP", b"short", b"x"],
        vec![b"REP", &[0; 8], b"x"],
        vec![b"READY"],
        vec![b"READY", b"abc"],
        vec![b"READY", b"0"],
        vec![b"HB", b"-3"],
        vec![b"BYE"],
        vec![b"REQ", &[1; 8], b"y"],
    ];
    for frames in &crafted {
        w.server(0, "rogue", frames);
    }
    // Not even an identity: ignored without a count.
    w.core.handle_server(w.at(0), WALL, Vec::new());
    w.check();
    assert!(w.out().is_empty());
    let stats = w.core.stats();
    assert_eq!(stats.servers_joined, 0);
    assert_eq!(stats.garbage, 10, "{stats:?}");

    // A registered server's malformed messages: counted, and it stays registered.
    w.ready(1, "a", 2);
    w.out();
    w.server(2, "a", &[backend::REPLY]);
    w.server(2, "a", &[b"WHAT"]);
    w.server(2, "a", &[backend::HEARTBEAT, b"2", b"bad"]);
    assert_eq!(w.core.stats().garbage, 13);
    assert_eq!(w.core.live_servers(), 1);
    // The garbage warnings are rate-limited, the counting is not.
    for i in 0..100 {
        w.server(3 + i, "rogue", &[b"??"]);
    }
    assert_eq!(w.core.stats().garbage, 113);
}

#[test]
fn bye_hands_in_flight_requests_over_at_once() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 1);
    w.client(1, "c", &req("handover"));
    let (to, token, _) = w.reqs()[0].clone();
    assert_eq!(to, "a");
    w.ready(2, "b", 1);
    w.out();
    w.server(3, "a", &[backend::BYE]);
    assert_eq!(
        w.reqs(),
        vec![("b".to_string(), token, req("handover"))],
        "not handed over at once"
    );
    let stats = w.core.stats();
    assert_eq!(
        (stats.redispatched, stats.servers_lost, stats.servers_joined),
        (1, 1, 2)
    );
    // An unknown server saying BYE is not garbage (it may have been dropped already).
    w.server(4, "a", &[backend::BYE]);
    assert_eq!(w.core.stats().garbage, 0);
}

#[test]
fn failed_send_to_a_server_drops_it_and_redispatches() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 4);
    w.ready(0, "b", 4);
    w.out();
    w.client(1, "c", &req("x"));
    let t = w.core.poll_transmit().expect("a REQ");
    let Out::Req { to, token, .. } = Out::read(&t) else {
        panic!("{t:?}")
    };
    assert_eq!(to, "a");
    w.core.handle_send_failed(w.at(1), t, SendFailure::PeerGone);
    w.check();
    assert_eq!(w.reqs(), vec![("b".to_string(), token, req("x"))]);
    let stats = w.core.stats();
    assert_eq!((stats.servers_lost, stats.redispatched), (1, 1));

    // A failed heartbeat drops the server too; with nobody left, the request waits.
    w.tick(250, false);
    let t = w.core.poll_transmit().expect("a heartbeat");
    assert_eq!(
        Out::read(&t),
        Out::Hb {
            to: "b".into(),
            echo: None
        }
    );
    w.core.handle_send_failed(
        w.at(250),
        t,
        SendFailure::Other("Resource temporarily unavailable".into()),
    );
    w.check();
    assert!(w.out().is_empty());
    assert_eq!(w.core.live_servers(), 0);
    assert_eq!(w.core.queued(), 1);
    assert_eq!(w.core.stats().redispatched, 2);
}

#[test]
fn failed_registration_heartbeat_takes_the_unsent_request_back() {
    let mut w = World::new(cfg());
    w.client(0, "c", &req("early"));
    w.ready(1, "a", 4);
    // The outbox holds [HB a, REQ a]; the HB cannot be sent.
    let t = w.core.poll_transmit().expect("HB");
    assert!(matches!(Out::read(&t), Out::Hb { .. }));
    w.core.handle_send_failed(w.at(1), t, SendFailure::PeerGone);
    w.check();
    assert!(
        w.out().is_empty(),
        "a request to a dropped server was left to send"
    );
    assert_eq!(w.core.queued(), 1);
    // Another server takes it.
    w.ready(2, "b", 4);
    let reqs = w.reqs();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].0, "b");
}

#[test]
fn failed_send_to_a_client_counts_as_undeliverable() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 4);
    w.client(1, "c", &req("leaver"));
    let (_, token, _) = w.reqs()[0].clone();
    w.reply(2, "a", token, b"for nobody");
    let t = w.core.poll_transmit().expect("the reply");
    w.core.handle_send_failed(w.at(2), t, SendFailure::PeerGone);
    w.check();
    let stats = w.core.stats();
    assert_eq!((stats.replies, stats.undeliverable), (1, 1));
    assert_eq!(
        w.core.live_servers(),
        1,
        "a client's absence dropped a server"
    );
}

#[test]
fn heartbeats_echo_the_latest_stamp_and_requests_carry_it() {
    let mut w = World::new(cfg());
    // A request waits; the server registers with a stamp: the heartbeat with the echo
    // leaves before the request.
    w.client(0, "c", &req("first"));
    let cap = backend::capacity_bytes(3);
    w.server(5, "a", &[backend::READY, &cap, &backend::stamp_bytes(100)]);
    let out = w.out();
    assert_eq!(
        out[0],
        Out::Hb {
            to: "a".into(),
            echo: Some(100)
        }
    );
    assert!(
        matches!(&out[1], Out::Req { to, echo: Some(100), .. } if to == "a"),
        "{out:?}"
    );
    assert_eq!(out.len(), 2);
    // A newer stamp on a heartbeat: the next HB and REQ echo it.
    w.server(
        200,
        "a",
        &[backend::HEARTBEAT, &cap, &backend::stamp_bytes(300)],
    );
    w.tick(250, false);
    assert_eq!(
        w.out(),
        vec![Out::Hb {
            to: "a".into(),
            echo: Some(300)
        }]
    );
    w.client(260, "c", &req("second"));
    assert!(matches!(
        &w.out()[..],
        [Out::Req {
            echo: Some(300),
            ..
        }]
    ));
    // A REP or a heartbeat without a stamp keeps the last one.
    w.server(270, "a", &[backend::HEARTBEAT, &cap]);
    w.client(280, "c", &req("third"));
    assert!(matches!(
        &w.out()[..],
        [Out::Req {
            echo: Some(300),
            ..
        }]
    ));
    // a is full now. A server that sends no stamp gets no echo: the old frame shapes
    // exactly.
    w.ready(300, "b", 1);
    let t = w.core.poll_transmit().expect("HB to b");
    assert_eq!(
        t,
        Transmit::Server {
            identity: b"b".to_vec(),
            frames: vec![b"HB".to_vec()]
        }
    );
    w.client(310, "d", &req("old"));
    match w.core.poll_transmit() {
        Some(Transmit::Server { identity, frames }) => {
            assert_eq!(identity, b"b");
            assert_eq!(frames.len(), 3);
            assert_eq!(frames[0], b"REQ");
            assert_eq!(frames[2], req("old"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn heartbeat_waits_for_the_backlog_before_judging_silence() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 4);
    w.out();
    for ms in [250, 500, 750, 1000] {
        w.tick(ms, false);
        assert_eq!(w.out().len(), 1, "a heartbeat to a");
    }
    // Silent for over LIVENESS, but unread backend input may prove it alive.
    w.tick(1250, true);
    assert_eq!(w.core.live_servers(), 1);
    assert_eq!(w.out().len(), 1);
    w.tick(1500, false);
    assert_eq!(w.core.live_servers(), 0);
    assert!(w.out().is_empty(), "a heartbeat to a dropped server");
    assert_eq!(w.core.stats().servers_lost, 1);
}

#[test]
fn shutdown_answers_every_outstanding_request() {
    let mut w = World::new(cfg());
    w.ready(0, "a", 1);
    w.client(1, "c", &req("in-flight"));
    w.client(1, "d", &req("queued"));
    w.out();
    w.core.shutdown(WALL);
    w.check();
    let out = w.out();
    for (who, id) in [("c", "in-flight"), ("d", "queued")] {
        let bodies = client_bodies(&out, who);
        assert_eq!(bodies.len(), 1);
        let (code, _, meta, _) = error_of(&bodies[0]);
        assert_eq!(code, ErrorCode::Unavailable);
        assert_eq!(meta.id.as_deref(), Some(id));
    }
    assert_eq!(w.core.outstanding(), 0);
    assert_eq!(w.core.stats().unavailable, 2);
}

#[test]
fn timeouts_are_clamped() {
    let w = World::new(BrokerCoreConfig {
        queue_timeout: Duration::MAX,
        request_timeout: Duration::MAX,
        ..cfg()
    });
    assert_eq!(w.core.config().queue_timeout, MAX_TIMEOUT);
    assert_eq!(w.core.config().request_timeout, MAX_TIMEOUT);
}

#[test]
fn durations_read_well() {
    assert_eq!(human(Duration::from_secs(2)), "2 s");
    assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
    assert_eq!(human(Duration::from_millis(300)), "300 ms");
}

#[test]
fn error_replies_echo_what_can_be_read() {
    let json = br#"{"service":"users","data":{"clock":7,"id":"r1"}}"#;
    let bytes = error_reply(json, &ChatError::Unavailable("x".into()), WALL);
    assert_eq!(Encoding::detect(&bytes), Encoding::Json);
    let (code, service, meta, _) = error_of(&bytes);
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(service, "users");
    assert_eq!(meta.id.as_deref(), Some("r1"));
    assert_eq!(meta.clock, 8);
    assert_eq!(meta.timestamp, Some(WALL));

    let bytes = error_reply(&[0xc1, 0xff], &ChatError::BadFrame("y".into()), WALL);
    let (code, service, _, encoding) = error_of(&bytes);
    assert_eq!(encoding, Encoding::MsgPack);
    assert_eq!(service, "error");
    assert_eq!(code, ErrorCode::BadRequest);
}

// ----- random schedules -----

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Op {
    /// Client `c` sends a new request.
    Send(u8),
    /// Server `s` says READY (capacity, maybe a stamp).
    Ready(u8, u32, bool),
    /// Server `s` heartbeats.
    Heartbeat(u8),
    /// Server `s` answers the `k`-th request it was ever sent (maybe a stale one).
    Answer(u8, usize),
    /// Server `s` says BYE.
    Bye(u8),
    /// Server `s` sends junk.
    Junk(u8, Vec<Vec<u8>>),
    /// Time passes; the heartbeat sees a backlog or not.
    Advance(u64, bool),
    /// The next send the driver tries fails.
    FailNextSend,
}

fn op() -> impl Strategy<Value = Op> {
    let junk = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..10), 0..4);
    prop_oneof![
        4 => (0..6u8).prop_map(Op::Send),
        1 => (0..3u8, 1..4u32, any::<bool>()).prop_map(|(s, c, st)| Op::Ready(s, c, st)),
        3 => (0..3u8).prop_map(Op::Heartbeat),
        4 => (0..3u8, 0..40usize).prop_map(|(s, k)| Op::Answer(s, k)),
        1 => (0..3u8).prop_map(Op::Bye),
        1 => (0..3u8, junk).prop_map(|(s, j)| Op::Junk(s, j)),
        3 => (0..700u64, any::<bool>()).prop_map(|(ms, b)| Op::Advance(ms, b)),
        1 => Just(Op::FailNextSend),
    ]
}

/// The fake network around one core: what each server was sent, what each request got.
struct Net {
    w: World,
    ms: u64,
    fail_next: bool,
    sent_to: HashMap<u8, Vec<u64>>,
    answers: HashMap<String, u32>,
    next_id: u32,
    stamp: u64,
}

impl Net {
    fn drain(&mut self) {
        while let Some(t) = self.w.core.poll_transmit() {
            let out = Out::read(&t);
            if let Out::Client { body, .. } = &out {
                let id = match body.strip_prefix(b"ok:") {
                    Some(id) => String::from_utf8_lossy(id).into_owned(),
                    None => error_of(body).2.id.expect("an id"),
                };
                let n = self.answers.entry(id.clone()).or_default();
                *n += 1;
                assert_eq!(*n, 1, "request {id} answered twice");
            }
            if self.fail_next {
                self.fail_next = false;
                let failure = SendFailure::Other("fault injected".into());
                self.w
                    .core
                    .handle_send_failed(self.w.at(self.ms), t, failure);
                self.w.check();
                continue;
            }
            if let Out::Req { to, token, .. } = out {
                let s = to.as_bytes()[1] - b'0';
                self.sent_to.entry(s).or_default().push(token);
            }
        }
    }

    fn step(&mut self, op: Op) {
        let name = |s: u8| format!("s{s}");
        match op {
            Op::Send(c) => {
                let id = format!("r{}", self.next_id);
                self.next_id += 1;
                self.answers.insert(id.clone(), 0);
                self.w.client(self.ms, &format!("c{c}"), &req(&id));
            }
            Op::Ready(s, cap, with_stamp) => {
                self.stamp += 1;
                let cap = backend::capacity_bytes(cap);
                let stamp = backend::stamp_bytes(self.stamp);
                let mut frames: Vec<&[u8]> = vec![backend::READY, &cap];
                if with_stamp {
                    frames.push(&stamp);
                }
                self.w.server(self.ms, &name(s), &frames);
            }
            Op::Heartbeat(s) => {
                self.stamp += 1;
                let stamp = backend::stamp_bytes(self.stamp);
                self.w
                    .server(self.ms, &name(s), &[backend::HEARTBEAT, b"2", &stamp]);
            }
            Op::Answer(s, k) => {
                let Some(tokens) = self.sent_to.get(&s) else {
                    return;
                };
                let Some(&token) = tokens.get(k % tokens.len().max(1)) else {
                    return;
                };
                // The server echoes the request's id (it knows it from the body).
                let body = self.id_of(token).map(|id| format!("ok:{id}").into_bytes());
                let Some(body) = body else {
                    return;
                };
                self.w.reply(self.ms, &name(s), token, &body);
            }
            Op::Bye(s) => self.w.server(self.ms, &name(s), &[backend::BYE]),
            Op::Junk(s, frames) => {
                let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                self.w.server(self.ms, &name(s), &frames);
            }
            Op::Advance(ms, backlog) => {
                self.ms += ms;
                while self
                    .w
                    .core
                    .poll_timeout()
                    .is_some_and(|t| t <= self.w.at(self.ms))
                {
                    self.w.tick(self.ms, backlog);
                    self.drain();
                }
            }
            Op::FailNextSend => self.fail_next = true,
        }
        self.drain();
    }

    /// The request id of `token`: tokens are handed out in order from FIRST_TOKEN to the
    /// accepted requests, and every request this test sends is accepted unless refused
    /// (queue full does not happen with the default limits).
    fn id_of(&self, token: u64) -> Option<String> {
        let n = token.checked_sub(FIRST_TOKEN)?;
        Some(format!("r{n}"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random interleavings of clients, servers, faults and time: the invariants hold
    /// after every step, no request is answered twice, and after shutdown every request
    /// has been answered exactly once.
    #[test]
    fn random_schedules_keep_the_invariants(ops in prop::collection::vec(op(), 1..150)) {
        let mut net = Net {
            w: World::new(BrokerCoreConfig {
                queue_timeout: Duration::from_millis(800),
                request_timeout: Duration::from_millis(1500),
                ..cfg()
            }),
            ms: 0,
            fail_next: false,
            sent_to: HashMap::new(),
            answers: HashMap::new(),
            next_id: 0,
            stamp: 0,
        };
        for op in ops {
            net.step(op);
        }
        net.w.core.shutdown(WALL);
        net.w.check();
        net.drain();
        for (id, n) in &net.answers {
            prop_assert_eq!(*n, 1, "request {} answered {} times", id, n);
        }
        let stats = net.w.core.stats();
        prop_assert_eq!(net.w.core.outstanding(), 0);
        // Each one got a forwarded reply or the broker's `unavailable`, nothing else.
        prop_assert_eq!(stats.replies + stats.unavailable, net.answers.len() as u64);
    }
}
