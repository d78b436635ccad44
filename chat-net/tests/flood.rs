//! Flood: several sockets throw garbage at the broker, the proxy and the reference for a few
//! seconds while a normal SDK client keeps working.
//!
//! What must hold: every request of the normal client gets a correct answer (failures = 0),
//! the broker, proxy, reference and server threads are still running afterwards and stop
//! cleanly, and the resident memory of this process does not keep growing during the flood.
//!
//! Every loop is bounded in count and in time; the only timing in the assertions is the
//! SDK's own request timeout.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_core::codec::Encoding;
use chat_core::protocol::encode_request;
use chat_core::{HistoryTarget, Meta, Request, RequestEnvelope};
use chat_net::broker::BrokerStats;
use chat_net::client::{Client, ClientConfig, ClientEvent};
use chat_net::cluster::Cluster;
use chat_net::proxy::ProxyStats;
use chat_net::reference::ReferenceStats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{subscribe_live, wait_for, DEADLINE};

/// How long the garbage flows.
const FLOOD: Duration = Duration::from_secs(3);
/// When the first memory sample is taken, after the flood started.
const WARMUP: Duration = Duration::from_secs(1);
/// Largest growth of resident memory allowed between the two samples.
///
/// Everything the flood can fill is bounded by design: libzmq pipes by their high-water
/// marks (in messages) and `MAXMSGSIZE` (bytes per frame), the broker queue by
/// `max_pending`, the SDK's event channel by `EVENT_QUEUE`, the rate limiter and the
/// reference registry by their key bounds. Those fill, and malloc's arenas reach their
/// working size, within the first second. What is left to see from 1 s to 3 s is a leak
/// that grows with traffic: the flood sends tens of thousands of messages and about a
/// hundred frames of 1.5 to 5 MiB in that window, so keeping even one oversized frame in
/// ten, or a few hundred bytes per small message, would exceed 64 MiB. The bound stays
/// generous because the allocator may legitimately keep a few freed multi-MiB frames
/// cached per thread (6 flood threads, libzmq I/O threads, broker, server, proxy).
const MEMORY_BOUND: u64 = 64 << 20;
/// Hard stop for every flood thread, whatever happens to the stop flag.
const HARD_STOP: Duration = Duration::from_secs(20);

/// Resident set size of this process, in bytes (`/proc/self/statm`, field 2, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("resident pages");
    pages * page_size()
}

/// The page size, from the kernel's auxiliary vector as `/proc/self/smaps` reports it.
fn page_size() -> u64 {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("KernelPageSize:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4096, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Broker, proxy, reference and one server (in memory, not registered with the
/// reference, which only takes the flood), each on its own thread, plus a context for the
/// flood's own sockets.
struct Infra {
    ctx: zmq::Context,
    frontend: String,
    backend: String,
    xsub: String,
    xpub: String,
    reference: String,
    cluster: Cluster,
}

impl Infra {
    fn start() -> Infra {
        let cluster = Cluster::builder()
            .servers(1)
            .reference(true)
            .shared_context(chat_net::Context::new())
            .memory_stores()
            .configure(|cfg| cfg.reference = None)
            .start()
            .expect("cluster");
        let e = cluster.endpoints().clone();
        Infra {
            ctx: zmq::Context::new(),
            frontend: e.frontend,
            backend: e.backend,
            xsub: e.xsub,
            xpub: e.xpub,
            reference: e.reference.expect("reference endpoint"),
            cluster,
        }
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            timeout: Duration::from_secs(3),
            attempts: 3,
            ..self.cluster.client_config()
        }
    }

    /// Whether every component thread is still running.
    fn all_running(&self) -> Vec<(String, bool)> {
        self.cluster.running()
    }

    /// Stops everything; returns the stats of broker, proxy and reference.
    fn stop(self) -> (BrokerStats, ProxyStats, ReferenceStats) {
        let stats = self.cluster.stop().expect("every component stops cleanly");
        (
            stats.broker,
            stats.proxy,
            stats.reference.expect("reference stats"),
        )
    }
}

/// A bounded flood loop: runs `step` until `stop` is raised, `max` steps are done, or the
/// hard stop passes; returns the steps done.
fn flood_loop(stop: &AtomicBool, max: u64, mut step: impl FnMut(u64)) -> u64 {
    let hard = Instant::now() + HARD_STOP;
    let mut n = 0;
    while n < max && !stop.load(Ordering::Relaxed) && Instant::now() < hard {
        step(n);
        n += 1;
    }
    n
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(kind).expect("socket");
    s.set_linger(0).expect("linger");
    s.set_sndtimeo(100).expect("sndtimeo");
    s.connect(endpoint).expect("connect");
    s
}

/// Receives whatever is waiting, without blocking; returns how many messages.
fn drain(s: &zmq::Socket) -> u64 {
    let mut n = 0;
    while n < 10_000 && s.recv_multipart(zmq::DONTWAIT).is_ok() {
        n += 1;
    }
    n
}

/// A valid request, encoded.
fn valid(request: Request, encoding: Encoding) -> Vec<u8> {
    let env = RequestEnvelope {
        request,
        meta: Meta::default(),
    };
    encode_request(&env, encoding).expect("encode")
}

/// One frame of garbage: random bytes, a mangled valid request, JSON-looking junk, or a
/// map with the wrong field types.
fn junk_frame(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..5) {
        0 => (0..rng.gen_range(0..256)).map(|_| rng.gen()).collect(),
        1 => {
            let encoding = if rng.gen() {
                Encoding::Json
            } else {
                Encoding::MsgPack
            };
            let mut f = valid(
                Request::Publish {
                    user: "ana".into(),
                    channel: "geral".into(),
                    message: "x".repeat(rng.gen_range(0..64)),
                },
                encoding,
            );
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..f.len());
                f[i] = rng.gen();
            }
            f.truncate(rng.gen_range(1..=f.len()));
            f
        }
        2 => {
            let mut f = b"{\"service\":".to_vec();
            f.extend((0..rng.gen_range(0..64)).map(|_| rng.gen_range(b' '..=b'~')));
            f
        }
        3 => {
            let service = ["publish", "message", "login", "nope"][rng.gen_range(0..4)];
            rmp_serde::to_vec_named(&serde_json::json!({
            "service": service,
            "data": {"user": rng.gen::<i32>(), "message": [1, 2], "clock": -5},
            }))
            .expect("pack")
        }
        _ => vec![0x91; rng.gen_range(1..2000)],
    }
}

/// Several frames of garbage, sometimes with empty frames among them.
fn junk_multipart(rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..rng.gen_range(2..6))
        .map(|_| {
            if rng.gen_ratio(1, 4) {
                Vec::new()
            } else {
                junk_frame(rng)
            }
        })
        .collect()
}

/// Garbage to the broker from a DEALER: mostly multipart junk (answered by the broker
/// itself), some single frames (answered by the server), empty frames; replies are read
/// only now and then, so some pile up and are dropped by the broker.
fn dealer_junk(ctx: zmq::Context, frontend: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(1);
    let s = socket(&ctx, zmq::DEALER, &frontend);
    let mut replies = 0;
    let sent = flood_loop(&stop, 2_000_000, |i| {
        let frames = match i % 4 {
            0 => vec![Vec::new(), junk_frame(&mut rng)],
            1 => vec![Vec::new()],
            _ => junk_multipart(&mut rng),
        };
        let _ = s.send_multipart(frames, zmq::DONTWAIT);
        if i % 32 == 31 {
            if i % 256 == 255 {
                replies += drain(&s);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (sent, replies)
}

/// Garbage to the broker from a REQ socket, one frame at a time, each answered.
fn req_junk(ctx: zmq::Context, frontend: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut s = socket(&ctx, zmq::REQ, &frontend);
    let mut replies = 0;
    let sent = flood_loop(&stop, 1_000_000, |_| {
        if s.send(junk_frame(&mut rng), 0).is_err() {
            s = socket(&ctx, zmq::REQ, &frontend);
            return;
        }
        match s.poll(zmq::POLLIN, 2_000) {
            Ok(n) if n > 0 && s.recv_bytes(0).is_ok() => replies += 1,
            // No answer: a REQ socket is stuck until it is replaced (Lazy Pirate).
            _ => s = socket(&ctx, zmq::REQ, &frontend),
        }
    });
    (sent, replies)
}

/// Frames over the frame limit (1.5 MiB: answered `too_large`) and over the socket's
/// maximum (5 MiB: dropped by libzmq with the connection).
fn oversize(ctx: zmq::Context, frontend: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let over_limit = vec![b'x'; 3 << 19];
    let over_socket = vec![b'y'; 5 << 20];
    let mut s = socket(&ctx, zmq::DEALER, &frontend);
    let mut replies = 0;
    let sent = flood_loop(&stop, 10_000, |i| {
        if i % 3 == 2 {
            let _ = s.send_multipart([&b""[..], &over_socket[..]], 0);
            // The broker's libzmq closes this connection: start over with a new socket.
            replies += drain(&s);
            s = socket(&ctx, zmq::DEALER, &frontend);
        } else {
            let _ = s.send_multipart([&b""[..], &over_limit[..]], 0);
        }
        std::thread::sleep(Duration::from_millis(30));
        replies += drain(&s);
    });
    (sent, replies)
}

/// Connect, send, disconnect: DEALERs that vanish before their reply, and raw TCP
/// connections writing junk (sometimes after a ZMTP greeting) to every port.
fn churn(ctx: zmq::Context, endpoints: Vec<String>, stop: Arc<AtomicBool>) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(3);
    let frontend = endpoints[0].clone();
    let users = valid(Request::Users, Encoding::MsgPack);
    let mut connected = 0;
    let sent = flood_loop(&stop, 100_000, |i| {
        if i % 2 == 0 {
            let s = socket(&ctx, zmq::DEALER, &frontend);
            let _ = s.send_multipart([&b""[..], &users[..]], zmq::DONTWAIT);
            drop(s);
        } else {
            let ep = &endpoints[rng.gen_range(0..endpoints.len())];
            let addr = ep.trim_start_matches("tcp://");
            if let Ok(mut tcp) = TcpStream::connect(addr) {
                connected += 1;
                let _ = tcp.set_write_timeout(Some(Duration::from_millis(200)));
                if rng.gen() {
                    // A ZMTP 3.0 signature and version, then nonsense.
                    let _ = tcp.write_all(&[0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0]);
                }
                let junk: Vec<u8> = (0..rng.gen_range(1..2048)).map(|_| rng.gen()).collect();
                let _ = tcp.write_all(&junk);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    });
    (sent, connected)
}

/// Junk publications on the proxy's XSUB side, and junk subscriptions on its XPUB side
/// (from sockets that come and go, so their subscriptions are dropped with them).
fn proxy_junk(ctx: zmq::Context, xsub: String, xpub: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(4);
    let publisher = socket(&ctx, zmq::PUB, &xsub);
    let mut subscriber = socket(&ctx, zmq::XSUB, &xpub);
    let mut subscriptions = 0;
    let sent = flood_loop(&stop, 2_000_000, |i| {
        let mut frames = junk_multipart(&mut rng);
        if rng.gen_ratio(1, 50) {
            frames.push(vec![0; rng.gen_range(10_000..200_000)]);
        }
        let _ = publisher.send_multipart(frames, zmq::DONTWAIT);
        if i % 4 == 0 {
            let mut sub = vec![if rng.gen() { 1 } else { 0 }];
            sub.extend((0..rng.gen_range(0..32)).map(|_| rng.gen::<u8>()));
            if subscriber.send(sub, zmq::DONTWAIT).is_ok() {
                subscriptions += 1;
            }
            let _ = subscriber.send_multipart(junk_multipart(&mut rng), zmq::DONTWAIT);
        }
        if i % 512 == 511 {
            drain(&subscriber);
            subscriber = socket(&ctx, zmq::XSUB, &xpub);
        }
        if i % 32 == 31 {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (sent, subscriptions)
}

/// Garbage to the reference: junk frames and multipart junk, unknown services, and `rank`
/// for made-up names (the registry is bounded).
fn reference_junk(ctx: zmq::Context, reference: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(5);
    let s = socket(&ctx, zmq::DEALER, &reference);
    let mut replies = 0;
    let sent = flood_loop(&stop, 1_000_000, |i| {
        let frames = match i % 4 {
            0 => vec![Vec::new(), junk_frame(&mut rng)],
            1 => junk_multipart(&mut rng),
            2 => vec![
                Vec::new(),
                valid(
                    Request::Rank {
                        name: format!("fake-{}", rng.gen::<u32>()),
                        endpoint: None,
                        rank: None,
                    },
                    Encoding::MsgPack,
                ),
            ],
            _ => vec![Vec::new(), valid(Request::Users, Encoding::Json)],
        };
        let _ = s.send_multipart(frames, zmq::DONTWAIT);
        if i % 32 == 31 {
            replies += drain(&s);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (sent, replies)
}

#[test]
fn garbage_floods_neither_stop_normal_clients_nor_grow_memory() {
    let infra = Infra::start();
    let client = Client::connect(infra.client_config()).expect("client");
    client.login("normal").expect("login");
    client.create_channel("geral").expect("channel");
    subscribe_live(&client, &client, "normal", "geral");

    let stop = Arc::new(AtomicBool::new(false));
    let endpoints = vec![
        infra.frontend.clone(),
        infra.backend.clone(),
        infra.xsub.clone(),
        infra.xpub.clone(),
        infra.reference.clone(),
    ];
    // (name, what the second count is, thread returning (messages sent, second count))
    type Flood = (&'static str, &'static str, JoinHandle<(u64, u64)>);
    let mut floods: Vec<Flood> = Vec::new();
    {
        let (ctx, ep, st) = (infra.ctx.clone(), infra.frontend.clone(), stop.clone());
        floods.push((
            "dealer junk",
            "replies read",
            std::thread::spawn(move || dealer_junk(ctx, ep, st)),
        ));
        let (ctx, ep, st) = (infra.ctx.clone(), infra.frontend.clone(), stop.clone());
        floods.push((
            "req junk",
            "replies",
            std::thread::spawn(move || req_junk(ctx, ep, st)),
        ));
        let (ctx, ep, st) = (infra.ctx.clone(), infra.frontend.clone(), stop.clone());
        floods.push((
            "oversize",
            "replies (too_large)",
            std::thread::spawn(move || oversize(ctx, ep, st)),
        ));
        let (ctx, st) = (infra.ctx.clone(), stop.clone());
        floods.push((
            "churn",
            "raw TCP connections",
            std::thread::spawn(move || churn(ctx, endpoints, st)),
        ));
        let (ctx, xs, xp, st) = (
            infra.ctx.clone(),
            infra.xsub.clone(),
            infra.xpub.clone(),
            stop.clone(),
        );
        floods.push((
            "proxy junk",
            "junk subscriptions",
            std::thread::spawn(move || proxy_junk(ctx, xs, xp, st)),
        ));
        let (ctx, ep, st) = (infra.ctx.clone(), infra.reference.clone(), stop.clone());
        floods.push((
            "reference junk",
            "replies read",
            std::thread::spawn(move || reference_junk(ctx, ep, st)),
        ));
    }

    // The normal client keeps working while the flood runs.
    let start = Instant::now();
    let mut rss_warm = None;
    let mut requests = 0u64;
    let mut failures: Vec<String> = Vec::new();
    for i in 0..1_000_000u64 {
        let elapsed = start.elapsed();
        if elapsed >= FLOOD {
            break;
        }
        if rss_warm.is_none() && elapsed >= WARMUP {
            rss_warm = Some(rss_bytes());
        }
        requests += 1;
        let outcome = match i % 8 {
            0 | 4 => client
                .publish("normal", "geral", &format!("normal {i}"))
                .map_err(|e| e.to_string()),
            1 | 5 => match client.users() {
                Ok(u) if u == ["normal"] => Ok(()),
                Ok(u) => Err(format!("users: {u:?}")),
                Err(e) => Err(e.to_string()),
            },
            2 | 6 => match client.channels() {
                Ok(c) if c == ["geral"] => Ok(()),
                Ok(c) => Err(format!("channels: {c:?}")),
                Err(e) => Err(e.to_string()),
            },
            3 => match client.history(HistoryTarget::Channel("geral".into()), None, 5) {
                Ok(p) if !p.items.is_empty() => Ok(()),
                Ok(p) => Err(format!("history: {p:?}")),
                Err(e) => Err(e.to_string()),
            },
            _ => client.status().map(drop).map_err(|e| e.to_string()),
        };
        if let Err(e) = outcome {
            failures.push(format!("request {i} at {:?}: {e}", start.elapsed()));
        }
        // Publications of our own posts arrive (or are dropped: pub/sub is lossy); keep
        // the event queue short either way.
        while client.events().try_recv().is_ok() {}
    }
    let rss_end = rss_bytes();
    stop.store(true, Ordering::SeqCst);
    let mut counts = Vec::new();
    for (name, second, handle) in floods {
        let (sent, n) = handle.join().expect("flood thread");
        counts.push(format!("{name}: {sent} sent, {n} {second}"));
    }

    let rss_warm = rss_warm.expect("the flood ran past its warm-up");
    eprintln!(
        "flood: {requests} normal requests, {} failed; RSS {:.1} MiB after {:?}, {:.1} MiB after {:?} ({:+.1} MiB)\n  {}",
        failures.len(),
        mib(rss_warm),
        WARMUP,
        mib(rss_end),
        FLOOD,
        mib(rss_end) - mib(rss_warm),
        counts.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} normal requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(requests > 0);
    assert!(
        rss_end.saturating_sub(rss_warm) <= MEMORY_BOUND,
        "resident memory grew from {:.1} MiB to {:.1} MiB during the flood",
        mib(rss_warm),
        mib(rss_end)
    );

    // Everything is still running and answering.
    let running = infra.all_running();
    assert!(running.iter().all(|(_, up)| *up), "{running:?}");
    client
        .publish("normal", "geral", "after the flood")
        .expect("publish after the flood");
    let arrived = wait_for(DEADLINE, || {
        client
            .events()
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|e| matches!(e, ClientEvent::Post(p) if p.message == "after the flood"))
    });
    assert!(
        arrived.is_some(),
        "the proxy no longer forwards publications"
    );
    let req = socket(&infra.ctx, zmq::REQ, &infra.reference);
    req.send(valid(Request::List, Encoding::Json), 0).unwrap();
    assert!(
        req.poll(zmq::POLLIN, 5_000).unwrap() > 0,
        "the reference no longer answers"
    );
    let list: serde_json::Value = serde_json::from_slice(&req.recv_bytes(0).unwrap()).unwrap();
    assert!(list["data"]["list"].is_array(), "{list}");

    drop(client);
    let (broker, proxy, reference) = infra.stop();
    eprintln!("broker: {broker:?}\nproxy: {proxy:?}\nreference: {reference:?}");
    assert!(broker.rejected > 0, "the broker saw no garbage: {broker:?}");
}
