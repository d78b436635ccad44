//! The SDK's live delivery over real sockets on loopback, against a scripted proxy (a PUB
//! socket the test publishes on, or drops and binds again) and a scripted broker (a ROUTER
//! that answers `history` from the test's list): repeats and loser copies are dropped, a
//! gap is filled from history, a reconnection of the SUB socket and a lost tail are
//! repaired (also from a broker whose history replies carry no `heads`, as older servers
//! answer), and the guarantee starts when the baseline answered. Every wait has a deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_core::protocol::{decode_request, encode_publication, encode_reply};
use chat_core::{
    ChannelPost, Encoding, HistoryPage, Meta, Publication, Reply, ReplyEnvelope, Request, Stamp,
    Timestamp,
};
use chat_net::client::{Client, ClientConfig, ClientEvent, DeliveryConfig, Subscriber};

const SOON: Duration = Duration::from_secs(10);
const CH: &str = "geral";

fn post(seq: u64, rid: &str, prev: Option<u64>) -> Publication {
    Publication::Channel(ChannelPost {
        channel: CH.into(),
        user: "ana".into(),
        message: format!("m{seq}"),
        timestamp: Timestamp::from_millis(0),
        clock: seq,
        id: Some(format!("server-1/{seq}")),
        rid: Some(rid.into()),
        prev,
    })
}

/// A scripted proxy and broker.
struct Fake {
    ctx: zmq::Context,
    publisher: zmq::Socket,
    pub_endpoint: String,
    router: zmq::Socket,
    router_endpoint: String,
    /// What `history` answers from (the "store").
    history: Vec<Publication>,
    /// `history` requests answered.
    reads: usize,
    /// Answer with `heads` (false: like an older server).
    heads: bool,
}

impl Fake {
    fn start() -> Fake {
        let ctx = zmq::Context::new();
        let publisher = ctx.socket(zmq::PUB).unwrap();
        publisher.set_linger(0).unwrap();
        publisher.bind("tcp://127.0.0.1:*").unwrap();
        let pub_endpoint = publisher.get_last_endpoint().unwrap().unwrap();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let router_endpoint = router.get_last_endpoint().unwrap().unwrap();
        Fake {
            ctx,
            publisher,
            pub_endpoint,
            router,
            router_endpoint,
            history: Vec::new(),
            reads: 0,
            heads: true,
        }
    }

    fn config(&self, delivery: DeliveryConfig) -> ClientConfig {
        ClientConfig {
            broker: self.router_endpoint.clone(),
            sub: self.pub_endpoint.clone(),
            timeout: Duration::from_secs(2),
            delivery,
            ..ClientConfig::default()
        }
    }

    /// Publishes live (and keeps it in history when `store`).
    fn publish(&mut self, p: &Publication, store: bool) {
        let payload = encode_publication(p, Encoding::MsgPack).unwrap();
        self.publisher
            .send_multipart([CH.as_bytes(), &payload[..]], 0)
            .unwrap();
        if store {
            self.store(p);
        }
    }

    /// Commits without publishing (a lost publication).
    fn store(&mut self, p: &Publication) {
        let mut item = p.clone();
        item.set_prev(None);
        if !self.history.contains(&item) {
            self.history.push(item);
            self.history.sort_by_key(|p| p.stamp());
        }
    }

    /// The proxy restarts: its socket goes away and comes back on the same port.
    fn restart_proxy(&mut self) {
        // Replacing the socket closes the old one, which frees the port.
        self.publisher = self.ctx.socket(zmq::PUB).unwrap();
        self.publisher.set_linger(0).unwrap();
        let end = Instant::now() + SOON;
        while self.publisher.bind(&self.pub_endpoint).is_err() {
            assert!(
                Instant::now() < end,
                "cannot bind {} again",
                self.pub_endpoint
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Answers the `history` requests waiting, like a server would (newest page first).
    fn serve(&mut self) {
        while let Ok(frames) = self.router.recv_multipart(zmq::DONTWAIT) {
            let Some(body) = frames.last() else { continue };
            let Ok((env, enc)) = decode_request(body) else {
                continue;
            };
            let Request::History { before, limit, .. } = env.request else {
                continue;
            };
            self.reads += 1;
            let before = before.map(|c| Stamp::parse_cursor(&c).unwrap());
            let older: Vec<&Publication> = self
                .history
                .iter()
                .filter(|p| before.as_ref().is_none_or(|b| p.stamp().unwrap() < *b))
                .collect();
            let start = older.len().saturating_sub(limit as usize);
            let items: Vec<Publication> = older[start..].iter().map(|p| (*p).clone()).collect();
            let next = (start > 0).then(|| items[0].stamp().unwrap().cursor());
            let mut heads = BTreeMap::new();
            for id in self.history.iter().filter_map(Publication::event_id) {
                let h = heads.entry(id.origin).or_insert(0);
                *h = id.seq.max(*h);
            }
            let reply = ReplyEnvelope {
                service: "history".into(),
                reply: Reply::History(HistoryPage {
                    items,
                    next,
                    heads: self.heads.then_some(heads),
                }),
                meta: Meta::default(),
            };
            let mut out = frames[..frames.len() - 1].to_vec();
            out.push(encode_reply(&reply, enc).unwrap());
            self.router.send_multipart(out, 0).unwrap();
        }
    }

    /// Serves history until `f` returns something, or panics at the deadline.
    fn until<T>(&mut self, what: &str, mut f: impl FnMut(&mut Fake) -> Option<T>) -> T {
        let end = Instant::now() + SOON;
        loop {
            self.serve();
            if let Some(v) = f(self) {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn ids(events: &[ClientEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Post(p) => p.id.clone(),
            _ => None,
        })
        .collect()
}

/// Subscribes `client` and waits until live publications arrive (probing with s1/1, whose
/// repeats are dropped).
fn live_client(fake: &mut Fake, delivery: DeliveryConfig) -> (Client, Vec<ClientEvent>) {
    let client = Client::connect(fake.config(delivery)).unwrap();
    client.subscribe(CH).unwrap();
    let probe = post(1, "r1", Some(0));
    let mut got = Vec::new();
    fake.until("the subscription to be live", |fake| {
        fake.publish(&probe, true);
        got.extend(client.events().try_iter());
        (!got.is_empty()).then_some(())
    });
    (client, got)
}

#[test]
fn client_drops_repeats_and_loser_copies_and_fills_a_gap_from_history() {
    let mut fake = Fake::start();
    let delivery = DeliveryConfig {
        check_interval: Duration::from_secs(60),
        ..DeliveryConfig::default()
    };
    let (client, mut got) = live_client(&mut fake, delivery);
    // The probe was sent many times and delivered once.
    fake.publish(&post(2, "r2", Some(1)), true);
    fake.publish(&post(2, "r2", Some(1)), true);
    // Another copy of request r2 accepted by another server: dropped.
    let mut loser = post(2, "r2", Some(0));
    if let Publication::Channel(p) = &mut loser {
        p.id = Some("server-2/40".into());
    }
    fake.publish(&loser, false);
    // 3 is committed but its publication is lost; 4 reveals the gap.
    fake.store(&post(3, "r3", None));
    let lost_at = Instant::now();
    fake.publish(&post(4, "r4", Some(3)), true);
    let repaired = fake.until("the gap to be filled", |_| {
        got.extend(client.events().try_iter());
        ids(&got)
            .contains(&"server-1/3".to_string())
            .then(Instant::now)
    });
    println!(
        "SDK gap repair (scripted broker): {:?} from the publication that revealed it",
        repaired - lost_at
    );
    std::thread::sleep(Duration::from_millis(100)); // nothing else may arrive
    got.extend(client.events().try_iter());
    assert_eq!(
        ids(&got),
        ["server-1/1", "server-1/2", "server-1/4", "server-1/3"]
    );
    let s = client.delivery_stats();
    assert_eq!((s.gaps, s.repaired, s.losers), (1, 1, 1));
    assert!(s.duplicates >= 1, "{s:?}");
}

#[test]
fn client_repairs_what_was_lost_while_the_proxy_restarted() {
    let mut fake = Fake::start();
    let delivery = DeliveryConfig {
        check_interval: Duration::from_secs(60),
        ..DeliveryConfig::default()
    };
    let (client, mut got) = live_client(&mut fake, delivery);
    let reads = fake.reads;
    fake.restart_proxy();
    // Published while the subscriber was away: lost live, and nothing follows it.
    fake.store(&post(2, "r2", None));
    fake.until("the reconnection check", |_| {
        got.extend(client.events().try_iter());
        ids(&got).contains(&"server-1/2".to_string()).then_some(())
    });
    assert!(fake.reads > reads);
    let s = client.delivery_stats();
    assert_eq!((s.reconnects, s.repaired), (1, 1), "{s:?}");
}

#[test]
fn subscriber_repairs_a_lost_tail_with_its_periodic_check() {
    let mut fake = Fake::start();
    // An older broker's servers: no `heads` in history replies (a tail on the first page of
    // a check is still found).
    fake.heads = false;
    let cfg = fake.config(DeliveryConfig {
        check_interval: Duration::from_millis(300),
        ..DeliveryConfig::default()
    });
    let mut sub = Subscriber::with_config(&cfg).unwrap();
    sub.subscribe(CH).unwrap();
    let mut got = Vec::new();
    let probe = post(1, "r1", Some(0));
    // Live, and its baseline answered: a post stored before the baseline answered would be
    // part of the baseline (before the guarantee starts), not a lost tail.
    fake.until("the subscription to be live", |fake| {
        fake.publish(&probe, true);
        while let Some(e) = sub.recv(Duration::from_millis(5)).unwrap() {
            got.push(e);
        }
        (!got.is_empty() && sub.baselined_at(CH).is_some()).then_some(())
    });
    fake.store(&post(2, "r2", None));
    fake.until("the periodic check", |_| {
        while let Some(e) = sub.recv(Duration::from_millis(5)).unwrap() {
            got.push(e);
        }
        (ids(&got).len() == 2).then_some(())
    });
    assert_eq!(ids(&got), ["server-1/1", "server-1/2"]);
    assert_eq!(sub.delivery_stats().repaired, 1);
}

#[test]
fn a_subscriber_without_a_broker_drops_repeats_only() {
    let mut fake = Fake::start();
    let mut sub = Subscriber::connect(&fake.pub_endpoint).unwrap();
    sub.subscribe(CH).unwrap();
    let mut got = Vec::new();
    let probe = post(1, "r1", Some(0));
    fake.until("the subscription to be live", |fake| {
        fake.publish(&probe, true);
        while let Some(e) = sub.recv(Duration::from_millis(5)).unwrap() {
            got.push(e);
        }
        (!got.is_empty()).then_some(())
    });
    fake.publish(&post(3, "r3", Some(2)), true);
    fake.until("the next post", |_| {
        while let Some(e) = sub.recv(Duration::from_millis(5)).unwrap() {
            got.push(e);
        }
        (ids(&got).len() == 2).then_some(())
    });
    assert_eq!(ids(&got), ["server-1/1", "server-1/3"]);
    let s = sub.delivery_stats();
    assert_eq!((s.gaps, s.repaired, s.pages), (1, 0, 0));
    assert_eq!(fake.reads, 0);
}

#[test]
fn the_guarantee_starts_when_the_baseline_answered() {
    let mut fake = Fake::start();
    // Committed before the subscription: the past, never delivered.
    fake.store(&post(1, "r1", None));
    let client = Client::connect(fake.config(DeliveryConfig {
        check_interval: Duration::from_secs(60),
        ..DeliveryConfig::default()
    }))
    .unwrap();
    client.subscribe(CH).unwrap();
    // Nobody answers history yet: no baseline.
    assert!(matches!(
        client.wait_for_baseline(CH, Duration::from_millis(50)),
        Err(chat_net::client::ClientError::Timeout { .. })
    ));
    assert_eq!(client.baselined_at(CH), None);
    let at = fake.until("the baseline", |_| client.baselined_at(CH));
    assert_eq!(client.wait_for_baseline(CH, Duration::ZERO).unwrap(), at);
    assert!(client
        .subscribe_with_baseline(CH, Duration::from_secs(1))
        .is_ok_and(|t| t == at));
    // After it: s2 committed and lost live; s3 names it (sent until the SUB socket is live).
    fake.store(&post(2, "r2", None));
    let mut got = Vec::new();
    fake.until("the gap to be filled", |fake| {
        fake.publish(&post(3, "r3", Some(2)), true);
        got.extend(client.events().try_iter());
        (ids(&got).len() == 2).then_some(())
    });
    assert_eq!(ids(&got), ["server-1/3", "server-1/2"]);
    let s = client.delivery_stats();
    assert_eq!((s.baselines, s.repaired), (1, 1), "{s:?}");
    // A Subscriber tells the same on its own thread.
    let mut sub = Subscriber::with_config(&fake.config(DeliveryConfig::default())).unwrap();
    sub.subscribe(CH).unwrap();
    assert_eq!(sub.baselined_at(CH), None);
    let at = fake.until("the subscriber's baseline", |_| {
        sub.wait_for_baseline(CH, Duration::from_millis(5)).unwrap()
    });
    assert_eq!(sub.baselined_at(CH), Some(at));
}
