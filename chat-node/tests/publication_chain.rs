//! Live publications carry the request id of the write (`rid`) and chain the publications
//! of one origin on one topic (`prev`), across a restart of the server.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use chat_core::protocol::{decode_publication, decode_reply, encode_request};
use chat_core::{Encoding, Meta, Publication, Reply, Request, RequestEnvelope, RequestWindow};
use chat_node::server::{Recovered, ServerConfig, ServerCore, Time, ToBroker, Transmit};
use chat_store::{MemoryStore, Store, StoreRead};

type Disk = Rc<RefCell<MemoryStore>>;

/// A server without a reference (no peers: it serves at once), its disk, a clock.
struct Harness {
    core: ServerCore,
    stored: Disk,
    t0: Instant,
    token: u64,
    replies: Vec<Reply>,
}

impl Harness {
    fn start(stored: Disk) -> Harness {
        Harness::with_window(stored, RequestWindow::default())
    }

    fn with_window(stored: Disk, window: RequestWindow) -> Harness {
        let t0 = Instant::now();
        let recovered = Recovered::from_store(&*stored.borrow()).expect("recover");
        let mut cfg = ServerConfig::new("server-1");
        cfg.request_window = window;
        let core = ServerCore::new(
            cfg,
            t0,
            recovered,
            "tcp://127.0.0.1:1".into(),
            Box::new(stored.clone()),
        );
        Harness {
            core,
            stored,
            t0,
            token: 0,
            replies: Vec::new(),
        }
    }

    fn time(&self) -> Time {
        Time::new(self.t0, 1_762_941_600_000)
    }

    /// Sends `request` (with request id `id`), commits what it produced, and returns the
    /// publications that went out.
    fn write(&mut self, request: Request, id: &str) -> Vec<(String, Publication)> {
        self.write_uncommitted(request, id);
        self.commit()
    }

    fn write_uncommitted(&mut self, request: Request, id: &str) {
        let env = RequestEnvelope {
            request,
            meta: Meta {
                id: Some(id.into()),
                ..Meta::default()
            },
        };
        let body = encode_request(&env, Encoding::MsgPack).expect("encode");
        self.token += 1;
        let t = self.time();
        self.core.handle_client_request(t, self.token, &body, None);
    }

    fn commit(&mut self) -> Vec<(String, Publication)> {
        let t = self.time();
        let mut out = Vec::new();
        while let Some(batch) = self.core.poll_batch(t) {
            let appended = self
                .stored
                .borrow_mut()
                .append_counting(&batch.events)
                .expect("append");
            self.core.handle_persisted(batch.epoch, appended.hidden);
        }
        while let Some(tx) = self.core.poll_transmit(t) {
            match tx {
                Transmit::Publish { topic, payload }
                    if topic != "replication" && topic != "servers" =>
                {
                    let p = decode_publication(&topic, &payload).expect("publication");
                    out.push((topic, p));
                }
                Transmit::Broker(ToBroker::Reply { body, .. }) => {
                    self.replies
                        .push(decode_reply(&body).expect("reply").0.reply);
                }
                _ => {}
            }
        }
        out
    }
}

fn publish(channel: &str, message: &str) -> Request {
    Request::Publish {
        user: "ana".into(),
        channel: channel.into(),
        message: message.into(),
    }
}

fn chain(pubs: &[(String, Publication)]) -> Vec<(String, Option<String>, Option<u64>)> {
    pubs.iter()
        .map(|(topic, p)| (topic.clone(), p.id().map(str::to_string), p.prev()))
        .collect()
}

#[test]
fn publications_chain_per_topic_and_carry_the_request_id() {
    let mut h = Harness::start(Disk::default());
    h.write(Request::Login { user: "ana".into() }, "r-login"); // seq 1
    h.write(Request::Login { user: "bia".into() }, "r-login2"); // seq 2
    h.write(
        Request::Channel {
            channel: "geral".into(),
        },
        "r-ch1",
    ); // seq 3
    h.write(
        Request::Channel {
            channel: "tech".into(),
        },
        "r-ch2",
    ); // seq 4
    let a = h.write(publish("geral", "1"), "r-5");
    let b = h.write(publish("tech", "2"), "r-6");
    let c = h.write(publish("geral", "3"), "r-7");
    let d = h.write(
        Request::Message {
            src: "ana".into(),
            dst: "bia".into(),
            message: "oi".into(),
        },
        "r-8",
    );
    let all: Vec<_> = [a, b, c, d].concat();
    assert_eq!(
        chain(&all),
        vec![
            ("geral".into(), Some("server-1/5".into()), Some(0)),
            ("tech".into(), Some("server-1/6".into()), Some(0)),
            ("geral".into(), Some("server-1/7".into()), Some(5)),
            ("bia".into(), Some("server-1/8".into()), Some(0)),
        ]
    );
    let rids: Vec<_> = all
        .iter()
        .map(|(_, p)| p.rid().map(str::to_string))
        .collect();
    assert_eq!(
        rids,
        ["r-5", "r-6", "r-7", "r-8"].map(|r| Some(r.to_string()))
    );
    // A retry of a write already applied publishes nothing again.
    assert!(h.write(publish("geral", "3"), "r-7").is_empty());
}

#[test]
fn after_a_restart_the_chain_continues_from_the_stored_events() {
    let mut h = Harness::start(Disk::default());
    h.write(Request::Login { user: "ana".into() }, "r1");
    h.write(
        Request::Channel {
            channel: "geral".into(),
        },
        "r2",
    );
    h.write(publish("geral", "a"), "r3"); // seq 3, published
                                          // Seq 4 is committed, and the server dies before publishing it: its publication is
                                          // lost, but the next one after the restart points at it.
    h.write_uncommitted(publish("geral", "b"), "r4");
    let t = h.time();
    let batch = h.core.poll_batch(t).expect("a batch");
    h.stored.borrow_mut().append(&batch.events).expect("append");
    let stored = h.stored.clone();
    drop(h);

    let mut h = Harness::start(stored);
    let after = h.write(publish("geral", "c"), "r5");
    assert_eq!(
        chain(&after),
        vec![("geral".into(), Some("server-1/5".into()), Some(4))]
    );
}

#[test]
fn a_retry_older_than_the_window_is_answered_from_the_store_without_a_new_event() {
    // A window of no request ids at all: every retry is answered by the store's index.
    let none = RequestWindow {
        max_count: 0,
        max_age_ms: 0,
    };
    let mut h = Harness::with_window(Disk::default(), none);
    h.write(Request::Login { user: "ana".into() }, "r1");
    h.write(
        Request::Channel {
            channel: "geral".into(),
        },
        "r2",
    );
    assert_eq!(h.write(publish("geral", "once"), "r3").len(), 1);
    assert_eq!(
        h.core.node().state().window_len(),
        0,
        "nothing kept in memory"
    );
    let events = h.stored.borrow().summary().expect("summary").events;
    assert_eq!(events, 3);
    // The retry: the same answer, no new event, nothing published again.
    h.replies.clear();
    assert!(h.write(publish("geral", "once"), "r3").is_empty());
    assert_eq!(h.replies, [Reply::Done]);
    assert_eq!(h.stored.borrow().summary().expect("summary").events, events);
    // Inside the window (the default one), the retry never reaches the store.
    let mut w = Harness::start(Disk::default());
    w.write(Request::Login { user: "bia".into() }, "q1");
    assert_eq!(w.core.node().state().window_len(), 1);
    w.replies.clear();
    w.write(Request::Login { user: "bia".into() }, "q1");
    assert_eq!(w.replies, [Reply::Done]);
    assert_eq!(w.stored.borrow().summary().expect("summary").events, 1);
    // After a restart the window is empty: the store still answers.
    let stored = h.stored.clone();
    drop(h);
    let mut h = Harness::start(stored);
    h.replies.clear();
    assert!(h.write(publish("geral", "once"), "r3").is_empty());
    assert_eq!(h.replies, [Reply::Done]);
    assert_eq!(h.stored.borrow().summary().expect("summary").events, events);
    let page = h
        .stored
        .borrow()
        .history(&chat_core::HistoryTarget::Channel("geral".into()), None, 10)
        .expect("history");
    assert_eq!(page.newest_first.len(), 1, "shown once");
}
