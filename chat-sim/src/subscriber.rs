//! Simulated SDK subscribers: the real live-delivery core ([`Delivery`]) fed by the proxy,
//! with its history reads sent through the broker like the SDK's (its own REQ socket,
//! Lazy Pirate retries). What it delivers is counted by request id, and so is what a raw
//! seed-style subscriber on the same topics would have seen.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_core::protocol::{decode_reply, encode_request};
use chat_core::{Encoding, ErrorCode, Meta, Publication, Reply, Request, RequestEnvelope};
use chat_node::delivery::{Delivery, DeliveryConfig, Fetch};

/// How long a history read waits before it is sent again on a new socket.
pub const READ_TIMEOUT: Duration = Duration::from_millis(1500);
/// Tries per history read.
pub const READ_ATTEMPTS: u32 = 3;

#[derive(Debug)]
struct Read {
    id: u64,
    topic: String,
    bytes: Vec<u8>,
    attempts: u32,
    deadline: Duration,
}

/// One subscriber.
#[derive(Debug)]
pub struct SimSubscriber {
    delivery: Delivery,
    gen: u32,
    read: Option<Read>,
    /// Deliveries by request id (or event id when there is none).
    delivered: BTreeMap<String, u32>,
    /// What a seed-style subscriber would have seen, by request id.
    raw: BTreeMap<String, u32>,
    topics: Vec<String>,
    /// Per topic, when its baseline read answered (virtual time), and the heads it showed
    /// (per origin, what the answering server held of the topic: the past).
    baselined: BTreeMap<String, (Duration, BTreeMap<String, u64>)>,
}

impl SimSubscriber {
    /// A subscriber of `topics`.
    pub fn new(topics: &[&str]) -> Self {
        SimSubscriber {
            delivery: Delivery::new(DeliveryConfig::default()),
            gen: 0,
            read: None,
            delivered: BTreeMap::new(),
            raw: BTreeMap::new(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            baselined: BTreeMap::new(),
        }
    }

    /// The topics it subscribes to.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The socket generation replies must be addressed to.
    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// Starts the subscriptions.
    pub fn subscribe(&mut self, now: Instant) {
        for t in &self.topics {
            self.delivery.subscribe(now, t);
        }
    }

    /// A publication from the proxy.
    pub fn on_publication(&mut self, now: Instant, topic: &str, p: Publication) {
        *self.raw.entry(key(&p)).or_default() += 1;
        self.delivery.handle_publication(now, topic, p);
    }

    /// The proxy connection came back.
    pub fn on_reconnect(&mut self, now: Instant) {
        self.delivery.handle_reconnect(now);
    }

    /// A reply on socket `gen`, at `now` (virtual time `at`).
    pub fn on_reply(&mut self, now: Instant, at: Duration, gen: u32, body: &[u8]) {
        if gen != self.gen {
            return;
        }
        let Some(read) = self.read.take() else {
            return;
        };
        let result = match decode_reply(body) {
            Ok((env, _)) => match env.reply {
                Reply::History(page) => Ok(page),
                Reply::Error(e) => Err(e.code),
                _ => Err(ErrorCode::BadRequest),
            },
            Err(_) => Err(ErrorCode::BadRequest),
        };
        // What the reply showed of the topic, in case it is the baseline.
        let heads = match &result {
            Ok(page) => page.heads.clone().unwrap_or_else(|| {
                let mut h = BTreeMap::new();
                for id in page.items.iter().filter_map(Publication::event_id) {
                    let e = h.entry(id.origin).or_insert(0);
                    *e = id.seq.max(*e);
                }
                h
            }),
            Err(_) => BTreeMap::new(),
        };
        self.delivery.handle_history(now, read.id, result);
        self.note_baseline(at, &read.topic, heads);
    }

    /// Records `topic`'s baseline if it answered just now (virtual time `at`).
    fn note_baseline(&mut self, at: Duration, topic: &str, heads: BTreeMap<String, u64>) {
        if !self.baselined.contains_key(topic) && self.delivery.baselined_at(topic).is_some() {
            self.baselined.insert(topic.to_string(), (at, heads));
        }
    }

    /// When `topic`'s baseline read answered (virtual time): from then on, every write whose
    /// request is sent later must be delivered exactly once.
    pub fn baselined_at(&self, topic: &str) -> Option<Duration> {
        self.baselined.get(topic).map(|(at, _)| *at)
    }

    /// The heads `topic`'s baseline showed: per origin, everything of it on the topic up to
    /// there was the past; everything above must be delivered exactly once.
    pub fn baseline_heads(&self, topic: &str) -> Option<&BTreeMap<String, u64>> {
        self.baselined.get(topic).map(|(_, h)| h)
    }

    /// Runs what is due; returns a history read to send (on socket [`SimSubscriber::gen`]).
    pub fn step(&mut self, now: Instant, at: Duration, wall_ms: i64) -> Option<Vec<u8>> {
        self.delivery.handle_timeout(now);
        while let Some(p) = self.delivery.poll_delivery() {
            *self.delivered.entry(key(&p)).or_default() += 1;
        }
        if let Some(read) = self.read.as_mut() {
            if at < read.deadline {
                return None;
            }
            if read.attempts < READ_ATTEMPTS {
                read.attempts += 1;
                read.deadline = at + READ_TIMEOUT;
                self.gen += 1;
                return Some(read.bytes.clone());
            }
            let (id, topic) = (read.id, read.topic.clone());
            self.read = None;
            self.delivery
                .handle_history(now, id, Err(ErrorCode::Timeout));
            self.note_baseline(at, &topic, BTreeMap::new());
            while let Some(p) = self.delivery.poll_delivery() {
                *self.delivered.entry(key(&p)).or_default() += 1;
            }
        }
        let fetch = self.delivery.poll_fetch(now)?;
        let bytes = history_request(&fetch, wall_ms)?;
        self.read = Some(Read {
            id: fetch.id,
            topic: fetch.topic.clone(),
            bytes: bytes.clone(),
            attempts: 1,
            deadline: at + READ_TIMEOUT,
        });
        self.gen += 1;
        Some(bytes)
    }

    /// When [`SimSubscriber::step`] is due next (relative to `now` at `at`).
    pub fn due(&self, now: Instant, at: Duration) -> Option<Duration> {
        let core = self
            .delivery
            .poll_timeout()
            .map(|t| at + t.saturating_duration_since(now));
        match (core, self.read.as_ref().map(|r| r.deadline)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Deliveries by request id.
    pub fn delivered(&self) -> &BTreeMap<String, u32> {
        &self.delivered
    }

    /// What a raw subscriber saw, by request id.
    pub fn raw(&self) -> &BTreeMap<String, u32> {
        &self.raw
    }

    /// Whether the delivery core has nothing left to repair.
    pub fn is_settled(&self) -> bool {
        self.delivery.is_settled()
    }

    /// The delivery core's counters.
    pub fn stats(&self) -> chat_node::delivery::DeliveryStats {
        self.delivery.stats()
    }
}

fn key(p: &Publication) -> String {
    p.rid()
        .map(str::to_string)
        .or_else(|| p.id().map(str::to_string))
        .unwrap_or_default()
}

fn history_request(f: &Fetch, wall_ms: i64) -> Option<Vec<u8>> {
    let env = RequestEnvelope {
        request: Request::History {
            target: f.target.clone(),
            before: f.before.clone(),
            limit: f.limit,
        },
        meta: Meta {
            clock: 0,
            timestamp: Some(chat_core::Timestamp::from_millis(wall_ms)),
            id: None,
        },
    };
    encode_request(&env, Encoding::MsgPack).ok()
}
