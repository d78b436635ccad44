//! Micro-benchmarks of chat-core: the codec, the Lamport clock and the domain.
//!
//! Run with `cargo bench -p chat-benches` (about a minute); results are recorded in
//! `docs/performance.md`. Short measurement times keep the run cheap on a shared machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chat_core::protocol::{decode_publication, decode_request, encode_publication, encode_request};
use chat_core::{
    ApplyOutcome, ChannelPost, ChatState, Encoding, Event, EventId, EventKind, LamportClock, Meta,
    Publication, Request, RequestEnvelope, Timestamp,
};
use criterion::{criterion_group, criterion_main, Criterion};

/// `2025-11-12T10:00:00.000Z`
const T0: i64 = 1_762_941_600_000;
/// Posts in the state that `apply` benchmarks start from.
const BASE_POSTS: u64 = 10_000;
/// New posts applied to one copy of the base state before starting again from a fresh copy.
const CHUNK: u64 = 2_000;

fn encodings() -> [(Encoding, &'static str); 2] {
    [(Encoding::MsgPack, "msgpack"), (Encoding::Json, "json")]
}

/// A seed-shaped publish request with a request id.
fn publish_request() -> RequestEnvelope {
    RequestEnvelope {
        request: Request::Publish {
            user: "user1".into(),
            channel: "geral".into(),
            message: "Olá, sou um bot! Mensagem de teste número 42".into(),
        },
        meta: Meta {
            clock: 18,
            timestamp: Some(Timestamp::from_millis(T0)),
            id: Some("bot_12345-42".into()),
        },
    }
}

/// The publication a server sends for that request.
fn channel_publication() -> Publication {
    Publication::Channel(ChannelPost {
        channel: "geral".into(),
        user: "user1".into(),
        message: "Olá, sou um bot! Mensagem de teste número 42".into(),
        timestamp: Timestamp::from_millis(T0 + 1),
        clock: 19,
        id: Some("server-1/4242".into()),
        rid: Some("5f0c6a1e2d3b4c5d6e7f8091a2b3c4d5".into()),
        prev: Some(4241),
    })
}

fn post(origin: &str, seq: u64, clock: u64, channel: &str) -> Event {
    Event {
        id: EventId {
            origin: origin.into(),
            seq,
        },
        clock,
        timestamp: Timestamp::from_millis(T0 + clock as i64),
        request_id: Some(format!("{origin}-{seq}")),
        kind: EventKind::ChannelMessage {
            channel: channel.into(),
            user: format!("bot_{:05}", seq % 50),
            message: "Mensagem gerada automaticamente".into(),
        },
    }
}

/// Five channels and `BASE_POSTS` posts spread over them, from one origin.
fn base_state() -> ChatState {
    let mut s = ChatState::new();
    let channels = ["geral", "tech", "random", "jogos", "musica"];
    for (i, c) in channels.iter().enumerate() {
        s.apply(&Event {
            id: EventId {
                origin: "server-0".into(),
                seq: i as u64 + 1,
            },
            clock: i as u64 + 1,
            timestamp: Timestamp::from_millis(T0),
            request_id: None,
            kind: EventKind::ChannelCreated {
                channel: (*c).into(),
            },
        });
    }
    let first = channels.len() as u64 + 1;
    for seq in first..first + BASE_POSTS {
        s.apply(&post("server-0", seq, seq, channels[(seq % 5) as usize]));
    }
    s
}

fn codec(c: &mut Criterion) {
    let req = publish_request();
    let publication = channel_publication();
    let mut g = c.benchmark_group("codec");
    for (enc, name) in encodings() {
        g.bench_function(format!("encode_publish_request/{name}"), |b| {
            b.iter(|| encode_request(black_box(&req), enc).expect("encode"))
        });
        let bytes = encode_request(&req, enc).expect("encode");
        g.bench_function(format!("decode_publish_request/{name}"), |b| {
            b.iter(|| decode_request(black_box(&bytes)).expect("decode"))
        });
        g.bench_function(format!("encode_channel_publication/{name}"), |b| {
            b.iter(|| encode_publication(black_box(&publication), enc).expect("encode"))
        });
        let bytes = encode_publication(&publication, enc).expect("encode");
        g.bench_function(format!("decode_channel_publication/{name}"), |b| {
            b.iter(|| decode_publication("geral", black_box(&bytes)).expect("decode"))
        });
    }
    g.finish();
}

fn clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("tick", |b| {
        let mut clock = LamportClock::starting_at(1_000);
        b.iter(|| black_box(&mut clock).tick())
    });
    g.bench_function("observe", |b| {
        let mut clock = LamportClock::starting_at(1_000);
        let mut received = 500u64;
        b.iter(|| {
            // Alternate between stamps behind and ahead of the local clock.
            received = received.wrapping_add(3);
            black_box(&mut clock).observe(black_box(received))
        })
    });
    g.finish();
}

fn domain(c: &mut Criterion) {
    let base = base_state();
    assert_eq!(base.message_count(), BASE_POSTS);
    let mut g = c.benchmark_group("domain");
    // A new post from another origin, stamped after everything in the state. Each chunk of
    // `CHUNK` applies starts from a fresh copy of the 10k-post state (copy and event
    // construction are not timed), so the state holds 10,000 to 12,000 posts.
    g.bench_function("apply_new_post_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = CHUNK.min(iters - done);
                let mut state = base.clone();
                let events: Vec<Event> = (1..=n)
                    .map(|seq| post("server-1", seq, 2 * BASE_POSTS + seq, "geral"))
                    .collect();
                let start = Instant::now();
                for e in &events {
                    black_box(state.apply(black_box(e)));
                }
                total += start.elapsed();
                debug_assert_eq!(state.message_count(), BASE_POSTS + n);
                drop(black_box(state));
                done += n;
            }
            total
        })
    });
    // An event the state already holds.
    let mut state = base.clone();
    let dup = post("server-0", 100, 100, "geral");
    assert_eq!(state.apply(&dup), ApplyOutcome::Duplicate);
    g.bench_function("apply_duplicate_10k", |b| {
        b.iter(|| state.apply(black_box(&dup)))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = codec, clock, domain
}
criterion_main!(benches);
