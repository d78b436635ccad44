//! The XSUB/XPUB proxy over real sockets on loopback.
//!
//! Every wait has a deadline; subscription liveness is established by publishing probes
//! until one arrives, never by sleeping.

use chat_testkit::{recv_within, Running};
use std::io::Write;
use std::time::{Duration, Instant};

use chat_net::proxy::{run_proxy, ProxyConfig};

const SOON: Duration = Duration::from_secs(5);

/// A proxy running in its own thread, started through `run_proxy`.
struct Harness {
    ctx: zmq::Context,
    xsub: String,
    xpub: String,
    running: Running<zmq::Result<()>>,
}

impl Harness {
    fn start() -> Harness {
        let ctx = zmq::Context::new();
        let cfg = ProxyConfig {
            xsub: "tcp://127.0.0.1:*".to_string(),
            xpub: "tcp://127.0.0.1:*".to_string(),
        };
        let (bound_tx, bound_rx) = crossbeam_channel::bounded(1);
        let thread_ctx = chat_net::Context::new();
        let running =
            Running::spawn(move |flag| run_proxy(&thread_ctx, &cfg, flag, Some(bound_tx)));
        let (xsub, xpub) = match bound_rx.recv_timeout(SOON) {
            Ok(eps) => eps,
            Err(_) => panic!("proxy never bound: {:?}", running.try_result()),
        };
        assert!(
            !xsub.ends_with(":*") && !xpub.ends_with(":*"),
            "{xsub} {xpub}"
        );
        Harness {
            ctx,
            xsub,
            xpub,
            running,
        }
    }

    fn stop(self) {
        self.running.stop(SOON).expect("proxy returned an error");
    }

    fn publisher(&self) -> zmq::Socket {
        let s = self.ctx.socket(zmq::PUB).unwrap();
        s.set_linger(0).unwrap();
        s.connect(&self.xsub).unwrap();
        s
    }

    fn subscriber(&self, topics: &[&[u8]]) -> zmq::Socket {
        let s = self.ctx.socket(zmq::SUB).unwrap();
        s.set_linger(0).unwrap();
        for t in topics {
            s.set_subscribe(t).unwrap();
        }
        s.connect(&self.xpub).unwrap();
        s
    }
}

/// Publishes `[topic]["probe"]` until `sub` receives one (the path is live), then drains
/// the probes still in flight.
fn wait_live(publ: &zmq::Socket, sub: &zmq::Socket, topic: &[u8]) {
    let deadline = Instant::now() + SOON;
    loop {
        assert!(Instant::now() < deadline, "subscription never became live");
        publ.send_multipart([topic, b"probe"], 0).unwrap();
        if let Some(m) = recv_within(sub, Duration::from_millis(20)) {
            assert_eq!(m, vec![topic.to_vec(), b"probe".to_vec()]);
            break;
        }
    }
    while recv_within(sub, Duration::from_millis(50)).is_some() {}
}

/// The next message that is not a probe, within `timeout`.
fn next_real(sub: &zmq::Socket, timeout: Duration) -> Option<Vec<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = recv_within(sub, left)?;
        if m.get(1).map(Vec::as_slice) != Some(b"probe") {
            return Some(m);
        }
    }
}

#[test]
fn multipart_publications_arrive_intact() {
    let proxy = Harness::start();
    let publ = proxy.publisher();
    let sub = proxy.subscriber(&[b"general"]);
    wait_live(&publ, &sub, b"general");

    let payload: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    publ.send_multipart([&b"general"[..], &payload[..]], 0)
        .unwrap();
    publ.send_multipart([&b"other"[..], &b"not for you"[..]], 0)
        .unwrap();
    publ.send_multipart([&b"general"[..], &b""[..], &b"three"[..]], 0)
        .unwrap();
    publ.send_multipart([&b"general"[..], &b"last"[..]], 0)
        .unwrap();

    assert_eq!(
        next_real(&sub, SOON).unwrap(),
        vec![b"general".to_vec(), payload]
    );
    assert_eq!(
        next_real(&sub, SOON).unwrap(),
        vec![b"general".to_vec(), Vec::new(), b"three".to_vec()]
    );
    assert_eq!(
        next_real(&sub, SOON).unwrap(),
        vec![b"general".to_vec(), b"last".to_vec()]
    );
    proxy.stop();
}

#[test]
fn each_subscriber_gets_only_its_topics() {
    let proxy = Harness::start();
    let publ = proxy.publisher();
    let ana = proxy.subscriber(&[b"ana"]);
    let bob = proxy.subscriber(&[b"bob"]);
    wait_live(&publ, &ana, b"ana");
    wait_live(&publ, &bob, b"bob");
    for i in 0..20u8 {
        publ.send_multipart([&b"ana"[..], &[i][..]], 0).unwrap();
        publ.send_multipart([&b"bob"[..], &[i, i][..]], 0).unwrap();
    }
    for i in 0..20u8 {
        assert_eq!(
            next_real(&ana, SOON).unwrap(),
            vec![b"ana".to_vec(), vec![i]]
        );
        assert_eq!(
            next_real(&bob, SOON).unwrap(),
            vec![b"bob".to_vec(), vec![i, i]]
        );
    }
    proxy.stop();
}

#[test]
fn garbage_does_not_stop_the_proxy() {
    let proxy = Harness::start();
    // Raw bytes on both TCP ports (not ZMTP): libzmq drops those connections.
    for ep in [&proxy.xsub, &proxy.xpub] {
        if let Ok(mut tcp) = std::net::TcpStream::connect(ep.trim_start_matches("tcp://")) {
            let _ = tcp.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\x01\xff garbage");
        }
    }
    // An XPUB-side peer sending arbitrary upstream messages, and odd subscriptions.
    let weird = proxy.ctx.socket(zmq::XSUB).unwrap();
    weird.set_linger(0).unwrap();
    weird.connect(&proxy.xpub).unwrap();
    for frames in [
        vec![b"".to_vec()],
        vec![b"\x01".to_vec()],
        vec![b"\x00never-subscribed".to_vec()],
        vec![b"\x02odd".to_vec(), b"more".to_vec()],
        vec![vec![0xff; 64]],
    ] {
        weird.send_multipart(frames, 0).unwrap();
    }
    // A publisher sending empty and topic-less messages.
    let publ = proxy.publisher();
    publ.send(&b""[..], 0).unwrap();
    publ.send_multipart([&b""[..], &b""[..]], 0).unwrap();

    let sub = proxy.subscriber(&[b"room"]);
    wait_live(&publ, &sub, b"room");
    publ.send_multipart([&b"room"[..], &b"still here"[..]], 0)
        .unwrap();
    assert_eq!(
        next_real(&sub, SOON).unwrap(),
        vec![b"room".to_vec(), b"still here".to_vec()]
    );
    proxy.stop();
}

#[test]
fn proxy_stops_promptly_on_shutdown() {
    let proxy = Harness::start();
    let started = Instant::now();
    proxy.stop();
    assert!(started.elapsed() < Duration::from_secs(1));
}
