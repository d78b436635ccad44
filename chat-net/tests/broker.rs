//! The broker over real sockets on loopback: fake servers speaking `backend.rs`, REQ and
//! DEALER clients, garbage from both sides, dead and silent servers.
//!
//! Every wait has a deadline; nothing synchronises by sleeping.

use chat_testkit::{recv_within, Running};
use std::io::Write;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_core::codec::Encoding;
use chat_core::protocol::{decode_reply, encode_request, Reply};
use chat_core::{ErrorCode, Meta, Request, RequestEnvelope};
use chat_net::backend;
use chat_net::broker::{Broker, BrokerConfig, BrokerStats};
use chat_net::Shutdown;
use crossbeam_channel::{Receiver, Sender};
use rand::{Rng, SeedableRng};

/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(5);

fn test_config() -> BrokerConfig {
    BrokerConfig {
        frontend: "tcp://127.0.0.1:*".to_string(),
        backend: "tcp://127.0.0.1:*".to_string(),
        ..BrokerConfig::default()
    }
}

/// A broker running in its own thread.
struct Harness {
    ctx: zmq::Context,
    front: String,
    back: String,
    running: Running<zmq::Result<BrokerStats>>,
}

impl Harness {
    fn start(cfg: BrokerConfig) -> Harness {
        let ctx = zmq::Context::new();
        let broker = Broker::bind(&chat_net::Context::new(), &cfg).expect("bind broker");
        let front = broker.frontend_endpoint().to_string();
        let back = broker.backend_endpoint().to_string();
        assert!(
            !front.ends_with(":*") && !back.ends_with(":*"),
            "{front} {back}"
        );
        let running = Running::spawn(move |flag| broker.run(flag));
        Harness {
            ctx,
            front,
            back,
            running,
        }
    }

    /// Stops the broker and returns its counters.
    fn stop(self) -> BrokerStats {
        self.running.stop(SOON).expect("broker returned an error")
    }

    fn req_client(&self) -> zmq::Socket {
        let s = self.ctx.socket(zmq::REQ).unwrap();
        s.set_linger(0).unwrap();
        s.connect(&self.front).unwrap();
        s
    }

    fn dealer_client(&self) -> zmq::Socket {
        let s = self.ctx.socket(zmq::DEALER).unwrap();
        s.set_linger(0).unwrap();
        s.connect(&self.front).unwrap();
        s
    }
}

/// How a fake server treats requests.
enum Mode {
    /// Echo every request body at once.
    Echo,
    /// Take one request, then fall silent: no replies, no heartbeats.
    SilentAfterFirst,
    /// Hold the first request until the gate opens, echo everything else at once.
    HoldFirst(Receiver<()>),
}

/// A fake chat server: a DEALER on the broker backend speaking `backend.rs`.
struct FakeServer {
    shutdown: Shutdown,
    /// Bodies of the requests it received.
    received: Receiver<Vec<u8>>,
    /// Fires once, on the first broker heartbeat (proof that the broker registered it).
    registered: Receiver<()>,
    /// Fires when a held request has been answered (`Mode::HoldFirst`).
    released: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(ctx: &zmq::Context, backend_ep: &str, mode: Mode) -> FakeServer {
        let sock = ctx.socket(zmq::DEALER).unwrap();
        sock.set_linger(0).unwrap();
        sock.connect(backend_ep).unwrap();
        let shutdown = Shutdown::new();
        let (rx_tx, received) = crossbeam_channel::unbounded();
        let (reg_tx, registered) = crossbeam_channel::bounded(1);
        let (rel_tx, released) = crossbeam_channel::bounded(1);
        let flag = shutdown.clone();
        let thread = std::thread::spawn(move || {
            fake_server_loop(sock, mode, &flag, &rx_tx, &reg_tx, &rel_tx)
        });
        FakeServer {
            shutdown,
            received,
            registered,
            released,
            thread: Some(thread),
        }
    }

    fn wait_registered(&self) {
        self.registered
            .recv_timeout(SOON)
            .expect("the broker never heartbeated the fake server");
    }

    fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            t.join().expect("fake server panicked");
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fake_server_loop(
    sock: zmq::Socket,
    mode: Mode,
    shutdown: &Shutdown,
    received: &Sender<Vec<u8>>,
    registered: &Sender<()>,
    released: &Sender<()>,
) {
    let capacity = backend::capacity_bytes(8);
    sock.send_multipart([backend::READY, &capacity[..]], 0)
        .unwrap();
    let mut next_hb = Instant::now() + backend::HEARTBEAT_INTERVAL;
    let mut silent = false;
    let mut held: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut held_once = false;
    while !shutdown.is_triggered() {
        if sock.poll(zmq::POLLIN, 10).unwrap() > 0 {
            let frames = sock.recv_multipart(0).unwrap();
            match frames.first().map(Vec::as_slice) {
                Some(backend::HEARTBEAT) => {
                    let _ = registered.try_send(());
                }
                Some(backend::REQUEST) if frames.len() == 3 => {
                    let (token, body) = (frames[1].clone(), frames[2].clone());
                    received.send(body.clone()).unwrap();
                    match &mode {
                        _ if silent => {}
                        Mode::SilentAfterFirst => silent = true,
                        Mode::HoldFirst(_) if !held_once => {
                            held_once = true;
                            held = Some((token, body));
                        }
                        Mode::Echo | Mode::HoldFirst(_) => {
                            sock.send_multipart([backend::REPLY, &token, &body], 0)
                                .unwrap();
                        }
                    }
                }
                other => panic!("fake server got an unexpected message: {other:?}"),
            }
        }
        if let Mode::HoldFirst(gate) = &mode {
            if held.is_some() && gate.try_recv().is_ok() {
                if let Some((token, body)) = held.take() {
                    sock.send_multipart([backend::REPLY, &token, &body], 0)
                        .unwrap();
                    let _ = released.try_send(());
                }
            }
        }
        if !silent && Instant::now() >= next_hb {
            sock.send_multipart([backend::HEARTBEAT, &capacity[..]], 0)
                .unwrap();
            next_hb += backend::HEARTBEAT_INTERVAL;
        }
    }
}

/// A valid `users` request in `encoding`, with a request id.
fn users_request(id: &str, encoding: Encoding) -> Vec<u8> {
    let env = RequestEnvelope {
        request: Request::Users,
        meta: Meta {
            clock: 41,
            timestamp: None,
            id: Some(id.to_string()),
        },
    };
    encode_request(&env, encoding).unwrap()
}

/// Sends a single-frame request on a REQ socket and waits for the single-frame reply.
fn ask(sock: &zmq::Socket, body: &[u8], timeout: Duration) -> Vec<u8> {
    sock.send(body, 0).unwrap();
    let mut frames = recv_within(sock, timeout).expect("no reply in time");
    assert_eq!(frames.len(), 1, "REQ got {frames:?}");
    frames.pop().unwrap()
}

/// Decodes a reply that must be an error, returning its code and the envelope's service.
fn error_code(bytes: &[u8]) -> (ErrorCode, String, Meta, Encoding) {
    let (env, encoding) = decode_reply(bytes).expect("reply decodes");
    match env.reply {
        Reply::Error(e) => {
            assert!(!e.description.is_empty());
            (e.code, env.service, env.meta, encoding)
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn req_client_gets_its_echo() {
    let broker = Harness::start(test_config());
    let server = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    let client = broker.req_client();
    for (i, enc) in [Encoding::MsgPack, Encoding::Json, Encoding::MsgPack]
        .into_iter()
        .enumerate()
    {
        let body = users_request(&format!("r{i}"), enc);
        assert_eq!(ask(&client, &body, SOON), body);
    }
    server.stop();
    let stats = broker.stop();
    assert_eq!(stats.replies, 3);
    assert_eq!(stats.servers_joined, 1);
    assert_eq!(stats.garbage, 0);
}

#[test]
fn dealer_clients_keep_their_envelope() {
    let broker = Harness::start(test_config());
    let server = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    let dealer = broker.dealer_client();
    let body = users_request("d1", Encoding::MsgPack);
    // Without a delimiter: [body] comes back as [reply].
    dealer.send(&body[..], 0).unwrap();
    assert_eq!(recv_within(&dealer, SOON).unwrap(), vec![body.clone()]);
    // With a delimiter, REQ-style: ["", body] comes back as ["", reply].
    dealer.send_multipart([&b""[..], &body[..]], 0).unwrap();
    assert_eq!(
        recv_within(&dealer, SOON).unwrap(),
        vec![Vec::new(), body.clone()]
    );
    server.stop();
    broker.stop();
}

#[test]
fn two_servers_share_requests_round_robin() {
    let broker = Harness::start(test_config());
    let a = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    let b = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    a.wait_registered();
    b.wait_registered();
    // New clients are assigned round-robin...
    let clients: Vec<_> = (0..10).map(|_| broker.req_client()).collect();
    for (i, client) in clients.iter().enumerate() {
        let body = users_request(&format!("rr{i}"), Encoding::MsgPack);
        assert_eq!(ask(client, &body, SOON), body);
    }
    let (na, nb) = (a.received.len(), b.received.len());
    assert_eq!((na, nb), (5, 5), "new clients were not shared round-robin");
    // ...and each client stays with its server (session affinity keeps its order).
    for (i, client) in clients.iter().enumerate().take(4) {
        let body = users_request(&format!("again{i}"), Encoding::MsgPack);
        assert_eq!(ask(client, &body, SOON), body);
    }
    assert_eq!(
        (a.received.len(), b.received.len()),
        (7, 7),
        "clients moved between servers"
    );
    a.stop();
    b.stop();
    let stats = broker.stop();
    assert_eq!(stats.replies, 14);
    assert_eq!(stats.servers_joined, 2);
}

#[test]
fn silent_server_loses_its_request_to_another_server() {
    let broker = Harness::start(test_config());
    let silent = FakeServer::start(&broker.ctx, &broker.back, Mode::SilentAfterFirst);
    silent.wait_registered();
    let client = broker.req_client();
    let body = users_request("lost-then-found", Encoding::MsgPack);
    let sent = Instant::now();
    client.send(&body[..], 0).unwrap();
    let got = silent
        .received
        .recv_timeout(SOON)
        .expect("the first server never got the request");
    assert_eq!(got, body);
    // A healthy server joins; the silent one is dropped after LIVENESS and its request
    // goes to the healthy one.
    let healthy = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    let reply = recv_within(&client, SOON).expect("no reply after re-dispatch");
    let elapsed = sent.elapsed();
    assert_eq!(reply, vec![body.clone()]);
    assert!(
        elapsed < Duration::from_millis(2500),
        "re-dispatch took {elapsed:?}"
    );
    assert_eq!(healthy.received.try_recv().unwrap(), body);
    silent.stop();
    healthy.stop();
    let stats = broker.stop();
    assert_eq!(stats.redispatched, 1);
    assert!(stats.servers_lost >= 1);
    assert_eq!(stats.replies, 1);
}

#[test]
fn no_server_means_unavailable_after_queue_timeout() {
    let queue_timeout = Duration::from_millis(300);
    let broker = Harness::start(BrokerConfig {
        queue_timeout,
        ..test_config()
    });
    let client = broker.req_client();
    let body = users_request("nobody-home", Encoding::Json);
    let sent = Instant::now();
    let reply = ask(&client, &body, queue_timeout + Duration::from_secs(2));
    let elapsed = sent.elapsed();
    let (code, service, meta, encoding) = error_code(&reply);
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(service, "users");
    assert_eq!(meta.id.as_deref(), Some("nobody-home"));
    assert!(
        meta.clock > 41,
        "clock {} not after the request's",
        meta.clock
    );
    assert!(meta.timestamp.is_some());
    assert_eq!(
        encoding,
        Encoding::Json,
        "reply not in the request's encoding"
    );
    assert!(
        elapsed >= queue_timeout - Duration::from_millis(50),
        "answered too early: {elapsed:?}"
    );
    let stats = broker.stop();
    assert_eq!(stats.unavailable, 1);
}

#[test]
fn full_queue_is_refused_at_once() {
    let queue_timeout = Duration::from_millis(800);
    let broker = Harness::start(BrokerConfig {
        max_pending: 1,
        queue_timeout,
        ..test_config()
    });
    // One DEALER, so the two requests reach the broker in order.
    let client = broker.dealer_client();
    let sent = Instant::now();
    for id in ["waits", "refused"] {
        let body = users_request(id, Encoding::MsgPack);
        client.send_multipart([&b""[..], &body[..]], 0).unwrap();
    }
    let reply = recv_within(&client, SOON).expect("no reply");
    assert!(sent.elapsed() < queue_timeout, "refusal was not immediate");
    let (code, _, meta, _) = error_code(&reply[1]);
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(meta.id.as_deref(), Some("refused"));
    let reply = recv_within(&client, SOON).expect("first request never answered");
    assert!(sent.elapsed() >= queue_timeout - Duration::from_millis(50));
    let (code, _, meta, _) = error_code(&reply[1]);
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(meta.id.as_deref(), Some("waits"));
    let stats = broker.stop();
    assert_eq!(stats.unavailable, 2);
}

#[test]
fn unanswered_request_times_out_and_late_reply_is_dropped() {
    let broker = Harness::start(BrokerConfig {
        request_timeout: Duration::from_millis(500),
        ..test_config()
    });
    let (open_gate, gate) = crossbeam_channel::bounded(1);
    let server = FakeServer::start(&broker.ctx, &broker.back, Mode::HoldFirst(gate));
    let client = broker.req_client();
    let sent = Instant::now();
    let reply = ask(
        &client,
        &users_request("slow", Encoding::MsgPack),
        Duration::from_secs(3),
    );
    assert!(sent.elapsed() >= Duration::from_millis(450));
    assert_eq!(error_code(&reply).0, ErrorCode::Unavailable);
    // The held reply now arrives late and must not reach the client; the next request
    // (same server, same pipe, so processed after the late reply) is answered normally.
    open_gate.send(()).unwrap();
    server
        .released
        .recv_timeout(SOON)
        .expect("held reply never sent");
    let body = users_request("after", Encoding::MsgPack);
    assert_eq!(ask(&client, &body, SOON), body);
    server.stop();
    let stats = broker.stop();
    assert_eq!(stats.late_replies, 1);
    assert_eq!(stats.replies, 1);
    assert_eq!(stats.servers_lost, 0, "a heartbeating server was dropped");
}

#[test]
fn multipart_and_empty_requests_are_bad_requests() {
    let broker = Harness::start(test_config());
    let server = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    let client = broker.req_client();
    let body = users_request("multi", Encoding::Json);
    client
        .send_multipart([&body[..], &b"extra"[..]], 0)
        .unwrap();
    let reply = recv_within(&client, SOON).expect("no reply to a multipart request");
    assert_eq!(reply.len(), 1);
    let (code, service, meta, encoding) = error_code(&reply[0]);
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(service, "users");
    assert_eq!(meta.id.as_deref(), Some("multi"));
    assert_eq!(encoding, Encoding::Json);

    let reply = ask(&client, b"", SOON);
    let (code, service, _, _) = error_code(&reply);
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(service, "error");

    let dealer = broker.dealer_client();
    dealer.send(&b""[..], 0).unwrap();
    let reply = recv_within(&dealer, SOON).expect("no reply to an empty DEALER request");
    assert_eq!(reply[0], b"", "delimiter not kept");
    assert_eq!(error_code(&reply[1]).0, ErrorCode::BadRequest);

    // The server never saw any of them, and still works.
    let ok = users_request("fine", Encoding::MsgPack);
    assert_eq!(ask(&client, &ok, SOON), ok);
    assert_eq!(server.received.len(), 1);
    server.stop();
    let stats = broker.stop();
    assert_eq!(stats.rejected, 3);
}

/// One to four frames of random bytes (some empty).
fn random_frames(rng: &mut rand::rngs::StdRng) -> Vec<Vec<u8>> {
    let n = rng.gen_range(1..5);
    (0..n)
        .map(|_| {
            let len = rng.gen_range(0..40);
            (0..len).map(|_| rng.gen()).collect()
        })
        .collect()
}

#[test]
fn garbage_from_both_sides_does_not_stop_the_broker() {
    let broker = Harness::start(test_config());
    let server = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    // An unknown DEALER on the backend: malformed commands and random frames.
    let rogue = broker.ctx.socket(zmq::DEALER).unwrap();
    rogue.set_linger(0).unwrap();
    rogue.connect(&broker.back).unwrap();
    let crafted: Vec<Vec<Vec<u8>>> = vec![
        vec![b"".to_vec()],
        vec![b"REP".to_vec()],
        vec![b"REP".to_vec(), b"short".to_vec(), b"x".to_vec()],
        vec![b"REP".to_vec(), vec![0; 8], b"x".to_vec()],
        vec![b"READY".to_vec()],
        vec![b"READY".to_vec(), b"abc".to_vec()],
        vec![b"READY".to_vec(), b"0".to_vec()],
        vec![b"HB".to_vec(), b"-3".to_vec()],
        vec![b"BYE".to_vec()],
        vec![b"REQ".to_vec(), vec![1; 8], b"y".to_vec()],
    ];
    for frames in &crafted {
        rogue.send_multipart(frames, 0).unwrap();
    }
    for _ in 0..200 {
        rogue.send_multipart(random_frames(&mut rng), 0).unwrap();
    }

    // A DEALER client sending random frames, and raw bytes on both TCP ports.
    let noisy = broker.dealer_client();
    for _ in 0..200 {
        noisy.send_multipart(random_frames(&mut rng), 0).unwrap();
    }
    for ep in [&broker.front, &broker.back] {
        let addr = ep.trim_start_matches("tcp://");
        if let Ok(mut tcp) = std::net::TcpStream::connect(addr) {
            let junk: Vec<u8> = (0..512).map(|_| rng.gen()).collect();
            let _ = tcp.write_all(&junk);
        }
    }

    // A normal client is still served, several times over.
    let client = broker.req_client();
    for i in 0..5 {
        let body = users_request(&format!("g{i}"), Encoding::MsgPack);
        assert_eq!(ask(&client, &body, SOON), body);
    }
    server.stop();
    let stats = broker.stop();
    assert!(stats.garbage > 0, "{stats:?}");
    assert_eq!(
        stats.servers_joined, 1,
        "garbage registered a server: {stats:?}"
    );
}

#[test]
fn client_gone_before_its_reply_breaks_nothing() {
    let broker = Harness::start(test_config());
    let (open_gate, gate) = crossbeam_channel::bounded(1);
    let server = FakeServer::start(&broker.ctx, &broker.back, Mode::HoldFirst(gate));
    {
        let leaver = broker.req_client();
        leaver
            .send(&users_request("leaver", Encoding::MsgPack)[..], 0)
            .unwrap();
        server
            .received
            .recv_timeout(SOON)
            .expect("server never got the request");
        // Dropping the socket disconnects the client before its reply exists.
    }
    open_gate.send(()).unwrap();
    server
        .released
        .recv_timeout(SOON)
        .expect("held reply never sent");
    let client = broker.req_client();
    for i in 0..3 {
        let body = users_request(&format!("stay{i}"), Encoding::MsgPack);
        assert_eq!(ask(&client, &body, SOON), body);
    }
    server.stop();
    let stats = broker.stop();
    assert_eq!(stats.replies, 4);
}

#[test]
fn server_saying_bye_hands_its_requests_over_at_once() {
    let broker = Harness::start(test_config());
    // A hand-driven server: registers, takes one request, then says BYE.
    let leaving = broker.ctx.socket(zmq::DEALER).unwrap();
    leaving.set_linger(0).unwrap();
    leaving.connect(&broker.back).unwrap();
    leaving.send_multipart([backend::READY, b"1"], 0).unwrap();
    let hb = recv_within(&leaving, SOON).expect("never heartbeated by the broker");
    assert_eq!(hb, vec![backend::HEARTBEAT.to_vec()]);
    let client = broker.req_client();
    let body = users_request("handover", Encoding::MsgPack);
    client.send(&body[..], 0).unwrap();
    let req = loop {
        let frames = recv_within(&leaving, SOON).expect("request never dispatched");
        if frames[0] == backend::REQUEST {
            break frames;
        }
    };
    assert_eq!(req.len(), 3);
    assert_eq!(req[2], body);
    let healthy = FakeServer::start(&broker.ctx, &broker.back, Mode::Echo);
    healthy.wait_registered();
    // Keep alive until now, then leave: the hand-over must not wait for LIVENESS.
    leaving
        .send_multipart([backend::HEARTBEAT, b"1"], 0)
        .unwrap();
    let bye_sent = Instant::now();
    leaving.send_multipart([backend::BYE], 0).unwrap();
    let reply = recv_within(&client, SOON).expect("request lost with its server");
    assert_eq!(reply, vec![body]);
    assert!(
        bye_sent.elapsed() < backend::LIVENESS / 2,
        "hand-over took {:?}",
        bye_sent.elapsed()
    );
    // A late REP from the departed server is dropped, not forwarded.
    leaving
        .send_multipart([backend::REPLY, &req[1], b"late"], 0)
        .unwrap();
    healthy.stop();
    let stats = broker.stop();
    assert_eq!(stats.redispatched, 1);
    assert_eq!(stats.servers_joined, 2);
    assert_eq!(stats.servers_lost, 1);
    assert_eq!(stats.replies, 1);
}

#[test]
fn heartbeat_alone_registers_and_oversized_frames_become_too_large() {
    let broker = Harness::start(BrokerConfig {
        max_frame: 200,
        ..test_config()
    });
    // A server that only heartbeats (as after a broker restart) is registered too.
    let server = broker.ctx.socket(zmq::DEALER).unwrap();
    server.set_linger(0).unwrap();
    server.connect(&broker.back).unwrap();
    server
        .send_multipart([backend::HEARTBEAT, b"4"], 0)
        .unwrap();
    let client = broker.req_client();

    // A request over max_frame never reaches a server.
    let big = [b'x'; 201];
    let (code, service, _, _) = error_code(&ask(&client, &big, SOON));
    assert_eq!((code, service.as_str()), (ErrorCode::TooLarge, "error"));

    // A reply over max_frame is replaced by an error in the request's encoding.
    let body = users_request("big-reply", Encoding::Json);
    client.send(&body[..], 0).unwrap();
    let req = loop {
        let frames = recv_within(&server, SOON).expect("request never dispatched");
        if frames[0] == backend::REQUEST {
            break frames;
        }
    };
    assert_eq!(req[2], body);
    server
        .send_multipart([backend::REPLY, &req[1], &[b'y'; 500][..]], 0)
        .unwrap();
    let reply = recv_within(&client, SOON).expect("no reply");
    let (code, service, meta, encoding) = error_code(&reply[0]);
    assert_eq!(code, ErrorCode::TooLarge);
    assert_eq!(service, "users");
    assert_eq!(meta.id.as_deref(), Some("big-reply"));
    assert_eq!(encoding, Encoding::Json);

    // A reply within the limit goes through untouched.
    client.send(&body[..], 0).unwrap();
    let req = loop {
        let frames = recv_within(&server, SOON).expect("request never dispatched");
        if frames[0] == backend::REQUEST {
            break frames;
        }
    };
    server
        .send_multipart([backend::REPLY, &req[1], b"small"], 0)
        .unwrap();
    assert_eq!(recv_within(&client, SOON).unwrap(), vec![b"small".to_vec()]);
    let stats = broker.stop();
    assert_eq!(stats.servers_joined, 1);
    assert_eq!(stats.rejected, 2);
    assert_eq!(stats.replies, 1);
}
