//! Property test: `SqliteStore` and `MemoryStore` give the same answers for random event
//! sets (with duplicates, gaps, clock ties and the odd invalid event), and both agree
//! with a naive model of `applied` and `channel_history`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chat_core::{Event, EventId, EventKind, Stamp, Timestamp};
use chat_store::{MemoryStore, SqliteStore, Store, StoreError};
use proptest::prelude::*;

const ORIGINS: [&str; 3] = ["a", "ab", "b"];
const CHANNELS: [&str; 3] = ["c1", "c2", "c3"];

fn kind() -> impl Strategy<Value = EventKind> {
    let name = prop::sample::select(vec!["ana", "bia", "c1"]);
    let channel = prop::sample::select(CHANNELS[..2].to_vec());
    prop_oneof![
        name.clone()
            .prop_map(|u| EventKind::UserLoggedIn { user: u.into() }),
        channel
            .clone()
            .prop_map(|c| EventKind::ChannelCreated { channel: c.into() }),
        (channel.clone(), name.clone(), "[a-zç ]{0,6}").prop_map(|(c, u, m)| {
            EventKind::ChannelMessage {
                channel: c.into(),
                user: u.into(),
                message: m,
            }
        }),
        (channel, name.clone(), "[a-z]{0,6}").prop_map(|(c, u, m)| {
            EventKind::ChannelMessage {
                channel: c.into(),
                user: u.into(),
                message: m,
            }
        }),
        (name.clone(), name, "[a-z]{0,6}").prop_map(|(s, d, m)| EventKind::DirectMessage {
            src: s.into(),
            dst: d.into(),
            message: m,
        }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        prop::sample::select(ORIGINS.to_vec()),
        // Mostly valid sequence numbers; 0 now and then, which both stores must refuse.
        prop_oneof![20 => 1u64..9, 1 => Just(0u64)],
        0u64..6,
        0i64..2_000_000_000_000,
        prop::option::of("[a-z0-9]{1,4}"),
        kind(),
    )
        .prop_map(|(origin, seq, clock, ms, request_id, kind)| Event {
            id: EventId {
                origin: origin.into(),
                seq,
            },
            clock,
            timestamp: Timestamp(ms),
            request_id,
            kind,
        })
}

fn cursor() -> impl Strategy<Value = Option<Stamp>> {
    let origin = prop::sample::select(vec!["", "a", "aa", "ab", "b", "c"]);
    let clock = prop_oneof![4 => 0u64..7, 1 => Just(u64::MAX)];
    let seq = prop_oneof![4 => 0u64..10, 1 => Just(u64::MAX)];
    prop::option::of((clock, origin, seq).prop_map(|(clock, origin, seq)| Stamp {
        clock,
        origin: origin.into(),
        seq,
    }))
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..6, Just(100), Just(usize::MAX)]
}

/// The outcome of an append, comparable across stores.
fn outcome(r: Result<usize, StoreError>) -> Result<usize, String> {
    r.map_err(|e| match e {
        StoreError::InvalidEvent(_) => "invalid".to_string(),
        other => panic!("unexpected error: {other}"),
    })
}

/// Naive model of `channel_history` over `load_all`.
fn model_history(all: &[Event], channel: &str, before: Option<&Stamp>, limit: usize) -> Vec<Event> {
    let mut posts: Vec<&Event> = all
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::ChannelMessage { channel: c, .. } if c == channel))
        .filter(|e| before.is_none_or(|b| e.stamp() < *b))
        .collect();
    posts.sort_by_key(|e| e.stamp());
    let skip = posts.len().saturating_sub(limit);
    posts[skip..].iter().map(|e| (*e).clone()).collect()
}

/// Naive model of `applied` over `load_all`.
fn model_applied(all: &[Event]) -> BTreeMap<String, u64> {
    let mut seqs: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for e in all {
        seqs.entry(e.id.origin.clone())
            .or_default()
            .insert(e.id.seq);
    }
    seqs.into_iter()
        .map(|(o, s)| {
            let mut n = 0;
            while s.contains(&(n + 1)) {
                n += 1;
            }
            (o, n)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sqlite_and_memory_agree(
        batches in prop::collection::vec(prop::collection::vec(event(), 0..8), 1..6),
        after in prop::collection::vec((prop::sample::select(vec!["a", "ab", "b", "zz"]), 0u64..10, limit()), 1..8),
        history in prop::collection::vec((prop::sample::select(CHANNELS.to_vec()), cursor(), limit()), 1..10),
        meta in prop::collection::vec((prop::sample::select(vec!["term", "lamport", "x"]), "[0-9]{0,3}"), 0..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut sqlite = SqliteStore::open(dir.path()).unwrap();
        let mut memory = MemoryStore::default();

        for batch in &batches {
            let s = outcome(sqlite.append(batch));
            let m = outcome(memory.append(batch));
            prop_assert_eq!(&s, &m);
            if batch.iter().any(|e| e.id.seq == 0) {
                prop_assert_eq!(s, Err("invalid".to_string()));
            }
        }
        for (k, v) in &meta {
            sqlite.set_meta(k, v).unwrap();
            memory.set_meta(k, v).unwrap();
        }

        let all = memory.load_all().unwrap();
        prop_assert_eq!(&sqlite.load_all().unwrap(), &all);
        let ids: BTreeSet<&EventId> = all.iter().map(|e| &e.id).collect();
        prop_assert_eq!(ids.len(), all.len(), "no duplicates");

        let applied = memory.applied().unwrap();
        prop_assert_eq!(&sqlite.applied().unwrap(), &applied);
        prop_assert_eq!(&applied, &model_applied(&all));

        for (origin, after_seq, limit) in &after {
            let m = memory.events_after(origin, *after_seq, *limit).unwrap();
            prop_assert_eq!(&sqlite.events_after(origin, *after_seq, *limit).unwrap(), &m);
            prop_assert!(m.len() <= *limit);
            prop_assert!(m.iter().all(|e| e.id.origin == *origin && e.id.seq > *after_seq));
            prop_assert!(m.windows(2).all(|w| w[0].id.seq < w[1].id.seq));
        }

        // Cursors at existing posts too, as paging uses them.
        let mut cursors: Vec<(&str, Option<Stamp>, usize)> = history
            .iter()
            .map(|(c, b, l)| (*c, b.clone(), *l))
            .collect();
        for e in all.iter().take(5) {
            cursors.push(("c1", Some(e.stamp()), 2));
            cursors.push(("c2", Some(e.stamp()), usize::MAX));
        }
        for (channel, before, limit) in &cursors {
            let m = memory.channel_history(channel, before.as_ref(), *limit).unwrap();
            prop_assert_eq!(&sqlite.channel_history(channel, before.as_ref(), *limit).unwrap(), &m);
            prop_assert_eq!(&m, &model_history(&all, channel, before.as_ref(), *limit));
        }

        for key in ["term", "lamport", "x", "y"] {
            prop_assert_eq!(sqlite.get_meta(key).unwrap(), memory.get_meta(key).unwrap());
        }

        // And the same after a reopen.
        drop(sqlite);
        let sqlite = SqliteStore::open(dir.path()).unwrap();
        prop_assert_eq!(&sqlite.load_all().unwrap(), &all);
        prop_assert_eq!(&sqlite.applied().unwrap(), &applied);
    }
}
