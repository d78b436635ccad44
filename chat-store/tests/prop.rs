//! Property test: `SqliteStore` and `MemoryStore` give the same answers for random event
//! sets (with duplicates, gaps, clock ties, copies of one request and the odd invalid
//! event), and both agree with a naive model of `applied`, history pages and their heads,
//! the visible copy of each request, and the summary a server recovers from.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chat_core::{ChatState, Event, EventId, EventKind, HistoryTarget, Stamp, Timestamp};
use chat_store::{MemoryStore, SqliteStore, Store, StoreError, StoreRead, VisibleKind};
use common::chan_hist;
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
        prop::option::of("[a-c0-9]{1,2}"),
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

/// Whether `e` is the visible copy of its request among `all`.
fn visible(all: &[Event], e: &Event) -> bool {
    e.request_id.as_deref().is_none_or(|rid| {
        all.iter()
            .filter(|x| x.request_id.as_deref() == Some(rid))
            .map(|x| &x.id)
            .min()
            == Some(&e.id)
    })
}

/// Whether `e` is in `target`'s history, and whether it counts for its heads.
fn in_history(e: &Event, target: &HistoryTarget) -> Option<bool> {
    match (&e.kind, target) {
        (EventKind::ChannelMessage { channel, .. }, HistoryTarget::Channel(c)) if channel == c => {
            Some(true)
        }
        (EventKind::DirectMessage { dst, .. }, HistoryTarget::User(u)) if dst == u => Some(true),
        (EventKind::DirectMessage { src, .. }, HistoryTarget::User(u)) if src == u => Some(false),
        _ => None,
    }
}

/// Naive model of history over `load_all`: the page oldest first, and the heads.
fn model_history(
    all: &[Event],
    target: &HistoryTarget,
    before: Option<&Stamp>,
    limit: usize,
) -> (Vec<Event>, BTreeMap<String, u64>) {
    let items: Vec<(&Event, bool)> = all
        .iter()
        .filter(|e| visible(all, e))
        .filter_map(|e| in_history(e, target).map(|head| (e, head)))
        .collect();
    let applied = model_applied(all);
    let mut heads = BTreeMap::new();
    for (e, head) in &items {
        if *head && e.id.seq <= applied.get(&e.id.origin).copied().unwrap_or(0) {
            let h = heads.entry(e.id.origin.clone()).or_insert(0);
            *h = (*h).max(e.id.seq);
        }
    }
    let mut page: Vec<&Event> = items
        .iter()
        .map(|(e, _)| *e)
        .filter(|e| before.is_none_or(|b| e.stamp() < *b))
        .collect();
    page.sort_by_key(|e| e.stamp());
    let skip = page.len().saturating_sub(limit);
    (page[skip..].iter().map(|e| (*e).clone()).collect(), heads)
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
            let m = chan_hist(&memory, channel, before.as_ref(), *limit);
            prop_assert_eq!(&chan_hist(&sqlite, channel, before.as_ref(), *limit), &m);
            let target = HistoryTarget::Channel(channel.to_string());
            prop_assert_eq!(&m, &model_history(&all, &target, before.as_ref(), *limit).0);
        }
        // Every target's whole history and heads; users' too (sent and received).
        let targets = CHANNELS
            .iter()
            .map(|c| HistoryTarget::Channel(c.to_string()))
            .chain(["ana", "bia", "c1"].iter().map(|u| HistoryTarget::User(u.to_string())));
        for target in targets {
            let m = memory.history(&target, None, usize::MAX).unwrap();
            prop_assert_eq!(&sqlite.history(&target, None, usize::MAX).unwrap(), &m);
            let (items, heads) = model_history(&all, &target, None, usize::MAX);
            let mut newest_first = items.clone();
            newest_first.reverse();
            prop_assert_eq!(&m.newest_first, &newest_first);
            prop_assert_eq!(&m.heads, &heads);
            for origin in ORIGINS {
                for below in [1, 3, u64::MAX] {
                    let expect = items
                        .iter()
                        .filter(|e| e.id.origin == origin && e.id.seq < below)
                        .filter(|e| in_history(e, &target) == Some(true))
                        .map(|e| e.id.seq)
                        .max();
                    prop_assert_eq!(memory.last_published(&target, origin, below).unwrap(), expect);
                    prop_assert_eq!(sqlite.last_published(&target, origin, below).unwrap(), expect);
                }
            }
        }
        // The visible copy of each request, and what a server recovers: the state that
        // applying every event gives.
        for rid in all.iter().filter_map(|e| e.request_id.as_deref()) {
            let w = memory.request_winner(rid).unwrap();
            prop_assert_eq!(&sqlite.request_winner(rid).unwrap(), &w);
            prop_assert!(w.is_some_and(|w| visible(&all, &w)));
        }
        let mut state = ChatState::new();
        for e in &all {
            state.apply(e);
        }
        prop_assert_eq!(&memory.summary().unwrap(), state.summary());
        prop_assert_eq!(&sqlite.summary().unwrap(), state.summary());
        for kind in [VisibleKind::Logins, VisibleKind::Messages, VisibleKind::Posts] {
            let mut m = Vec::new();
            memory.visible_in_order(kind, &mut |e| { m.push(e); Ok(()) }).unwrap();
            let mut q = Vec::new();
            sqlite.visible_in_order(kind, &mut |e| { q.push(e); Ok(()) }).unwrap();
            prop_assert_eq!(&m, &q);
            prop_assert!(m.windows(2).all(|w| w[0].stamp() < w[1].stamp()));
            prop_assert!(m.iter().all(|e| visible(&all, e)));
        }

        for key in ["term", "lamport", "x", "y"] {
            prop_assert_eq!(sqlite.get_meta(key).unwrap(), memory.get_meta(key).unwrap());
        }

        // And the same after a reopen.
        drop(sqlite);
        let sqlite = SqliteStore::open(dir.path()).unwrap();
        prop_assert_eq!(&sqlite.load_all().unwrap(), &all);
        prop_assert_eq!(&sqlite.applied().unwrap(), &applied);
        prop_assert_eq!(&sqlite.summary().unwrap(), state.summary());
    }
}
