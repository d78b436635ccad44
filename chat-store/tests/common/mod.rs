//! Event builders and the conformance suite every `Store` must pass.
#![allow(dead_code)]

use std::collections::BTreeMap;

use chat_core::{Event, EventId, EventKind, Stamp, Timestamp};
use chat_store::{Store, StoreError};

/// 2025-11-12T10:00:00Z.
pub const T0: i64 = 1_762_941_600_000;

/// An event with a given id, clock and kind; the timestamp follows the clock.
pub fn ev(origin: &str, seq: u64, clock: u64, kind: EventKind) -> Event {
    Event {
        id: EventId {
            origin: origin.into(),
            seq,
        },
        clock,
        timestamp: Timestamp(T0 + 1_000 * (clock % 1_000_000) as i64 + (seq % 1_000) as i64),
        request_id: None,
        kind,
    }
}

/// A login.
pub fn login(user: &str) -> EventKind {
    EventKind::UserLoggedIn { user: user.into() }
}

/// A channel creation.
pub fn create(channel: &str) -> EventKind {
    EventKind::ChannelCreated {
        channel: channel.into(),
    }
}

/// A channel post.
pub fn post(channel: &str, user: &str, message: &str) -> EventKind {
    EventKind::ChannelMessage {
        channel: channel.into(),
        user: user.into(),
        message: message.into(),
    }
}

/// A private message.
pub fn dm(src: &str, dst: &str, message: &str) -> EventKind {
    EventKind::DirectMessage {
        src: src.into(),
        dst: dst.into(),
        message: message.into(),
    }
}

/// A history position.
pub fn stamp(clock: u64, origin: &str, seq: u64) -> Stamp {
    Stamp {
        clock,
        origin: origin.into(),
        seq,
    }
}

/// `origin/seq` of each event, for readable assertions.
pub fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

/// Runs every check of the `Store` contract against an empty store.
pub fn conformance(store: &mut dyn Store) {
    empty_store(store);
    append_dedup_and_load_order(store);
    events_after(store);
    applied_with_gaps(store);
    channel_history(store);
    meta(store);
    invalid_events_leave_store_untouched(store);
}

fn empty_store(store: &mut dyn Store) {
    assert!(store.load_all().unwrap().is_empty());
    assert!(store.applied().unwrap().is_empty());
    assert!(store.events_after("a", 0, 10).unwrap().is_empty());
    assert!(chan_hist(&*store, "c", None, 10).is_empty());
    assert_eq!(store.get_meta("term").unwrap(), None);
    assert_eq!(store.append(&[]).unwrap(), 0);
    assert!(store.load_all().unwrap().is_empty());
}

/// Leaves: a/1..=3, b/5, b/2 (in this append order).
fn append_dedup_and_load_order(store: &mut dyn Store) {
    let mut a1 = ev("a", 1, 1, login("ana"));
    a1.request_id = Some("req-1".into());
    let a2 = ev("a", 2, 2, create("geral"));
    let b5 = ev("b", 5, 9, dm("bia", "ana", "olá, ção ✓"));
    assert_eq!(store.append(&[b5.clone(), a1.clone()]).unwrap(), 2);
    // Same batch again: nothing new.
    assert_eq!(store.append(&[a1.clone(), b5.clone()]).unwrap(), 0);
    // A duplicate with different content is still a duplicate: the first write wins.
    let mut a1_other = a1.clone();
    a1_other.kind = login("someone-else");
    assert_eq!(store.append(&[a1_other, a2.clone()]).unwrap(), 1);
    // Duplicates inside one batch count once.
    let a3 = ev("a", 3, 3, post("geral", "ana", "oi"));
    let b2 = ev("b", 2, 4, login("bia"));
    assert_eq!(
        store
            .append(&[a3.clone(), a3.clone(), b2.clone(), a2.clone()])
            .unwrap(),
        2
    );
    let all = store.load_all().unwrap();
    assert_eq!(ids(&all), ["b/5", "a/1", "a/2", "a/3", "b/2"]);
    // Events come back exactly as given (request id, unicode, timestamp).
    assert_eq!(all, vec![b5, a1, a2, a3, b2]);
}

fn events_after(store: &mut dyn Store) {
    assert_eq!(
        ids(&store.events_after("a", 0, 100).unwrap()),
        ["a/1", "a/2", "a/3"]
    );
    assert_eq!(
        ids(&store.events_after("a", 1, 100).unwrap()),
        ["a/2", "a/3"]
    );
    assert_eq!(ids(&store.events_after("a", 1, 1).unwrap()), ["a/2"]);
    assert!(store.events_after("a", 1, 0).unwrap().is_empty());
    assert!(store.events_after("a", 3, 10).unwrap().is_empty());
    assert!(store.events_after("a", u64::MAX, 10).unwrap().is_empty());
    // Ascending by seq even though b/5 was appended first.
    assert_eq!(
        ids(&store.events_after("b", 0, usize::MAX).unwrap()),
        ["b/2", "b/5"]
    );
    assert_eq!(ids(&store.events_after("b", 2, 10).unwrap()), ["b/5"]);
    assert!(store.events_after("nobody", 0, 10).unwrap().is_empty());
    // Origin match is exact: no prefix or case folding.
    assert!(store.events_after("A", 0, 10).unwrap().is_empty());
}

fn applied_with_gaps(store: &mut dyn Store) {
    // So far a: 1,2,3 -> 3; b: 2,5 -> 0 (event 1 missing).
    let want: BTreeMap<String, u64> = [("a".to_string(), 3), ("b".to_string(), 0)].into();
    assert_eq!(store.applied().unwrap(), want);
    // a: gap at 4 and 6.
    store
        .append(&[ev("a", 5, 5, login("caio")), ev("a", 7, 7, login("caio"))])
        .unwrap();
    assert_eq!(store.applied().unwrap()["a"], 3);
    store.append(&[ev("a", 4, 4, login("caio"))]).unwrap();
    assert_eq!(store.applied().unwrap()["a"], 5);
    // b: filling 1 and 3 and 4 makes 1..=5 contiguous.
    store
        .append(&[
            ev("b", 4, 10, login("bia")),
            ev("b", 1, 2, login("bia")),
            ev("b", 3, 8, login("bia")),
        ])
        .unwrap();
    store.append(&[ev("c", 1, 1, login("caio"))]).unwrap();
    let want: BTreeMap<String, u64> = [
        ("a".to_string(), 5),
        ("b".to_string(), 5),
        ("c".to_string(), 1),
    ]
    .into();
    assert_eq!(store.applied().unwrap(), want);
    store.append(&[ev("a", 6, 6, login("caio"))]).unwrap();
    assert_eq!(store.applied().unwrap()["a"], 7);
}

fn channel_history(store: &mut dyn Store) {
    // Posts on "hist", appended out of history order, with clock ties across origins
    // (broken by origin) and within an origin (broken by seq).
    let posts = [
        ev("y", 1, 20, post("hist", "u", "20y1")),
        ev("x", 1, 20, post("hist", "u", "20x1")),
        ev("x", 2, 10, post("hist", "u", "10x2")),
        ev("z", 1, 30, post("hist", "u", "30z1")),
        ev("x", 3, 20, post("hist", "u", "20x3")),
        ev("w", 1, 40, post("other", "u", "other")),
        ev("w", 2, 5, create("hist")), // not a post: never in history
        ev("w", 3, 6, dm("u", "hist", "not a post")),
    ];
    store.append(&posts).unwrap();
    let body = |e: &Event| match &e.kind {
        EventKind::ChannelMessage { message, .. } => message.clone(),
        other => panic!("not a post: {other:?}"),
    };
    let bodies = |v: Vec<Event>| v.iter().map(body).collect::<Vec<_>>();
    let order = ["10x2", "20x1", "20x3", "20y1", "30z1"];
    assert_eq!(bodies(chan_hist(&*store, "hist", None, 100)), order);
    assert_eq!(bodies(chan_hist(&*store, "hist", None, usize::MAX)), order);
    assert!(chan_hist(&*store, "hist", None, 0).is_empty());
    assert_eq!(bodies(chan_hist(&*store, "other", None, 10)), ["other"]);
    assert!(chan_hist(&*store, "geral-x", None, 10).is_empty());

    // Page backwards two at a time, each page oldest first.
    let p1 = chan_hist(&*store, "hist", None, 2);
    assert_eq!(bodies(p1.clone()), ["20y1", "30z1"]);
    let p2 = chan_hist(&*store, "hist", Some(&p1[0].stamp()), 2);
    assert_eq!(bodies(p2.clone()), ["20x1", "20x3"]);
    let p3 = chan_hist(&*store, "hist", Some(&p2[0].stamp()), 2);
    assert_eq!(bodies(p3.clone()), ["10x2"]);
    assert!(chan_hist(&*store, "hist", Some(&p3[0].stamp()), 2).is_empty());

    // Strictly before positions that are not events.
    let before = |s: Stamp, n| bodies(chan_hist(&*store, "hist", Some(&s), n));
    assert_eq!(before(stamp(20, "x", 2), 10), ["10x2", "20x1"]);
    assert_eq!(before(stamp(20, "x", 3), 10), ["10x2", "20x1"]);
    assert_eq!(before(stamp(20, "x", 4), 10), ["10x2", "20x1", "20x3"]);
    assert_eq!(before(stamp(20, "xa", 0), 10), ["10x2", "20x1", "20x3"]);
    assert_eq!(before(stamp(20, "", u64::MAX), 10), ["10x2"]);
    assert_eq!(
        before(stamp(20, "x", u64::MAX), 10),
        ["10x2", "20x1", "20x3"]
    );
    assert_eq!(before(stamp(20, "x", 0), 10), ["10x2"]);
    assert_eq!(before(stamp(10, "x", 2), 10), Vec::<String>::new());
    assert_eq!(before(stamp(0, "", 0), 10), Vec::<String>::new());
    assert_eq!(before(stamp(u64::MAX, "", 0), 10), order);
    assert_eq!(before(stamp(u64::MAX, "", 0), 1), ["30z1"]);
}

fn meta(store: &mut dyn Store) {
    assert_eq!(store.get_meta("term").unwrap(), None);
    store.set_meta("term", "3").unwrap();
    store.set_meta("lamport", "42").unwrap();
    assert_eq!(store.get_meta("term").unwrap().as_deref(), Some("3"));
    store.set_meta("term", "4").unwrap();
    assert_eq!(store.get_meta("term").unwrap().as_deref(), Some("4"));
    assert_eq!(store.get_meta("lamport").unwrap().as_deref(), Some("42"));
    store.set_meta("empty", "").unwrap();
    assert_eq!(store.get_meta("empty").unwrap().as_deref(), Some(""));
    store.set_meta("ção", "✓ {\"json\": true}").unwrap();
    assert_eq!(
        store.get_meta("ção").unwrap().as_deref(),
        Some("✓ {\"json\": true}")
    );
    assert_eq!(store.get_meta("Term").unwrap(), None);
}

fn invalid_events_leave_store_untouched(store: &mut dyn Store) {
    let before = store.load_all().unwrap();
    let new = ev("fresh", 1, 1, login("ana"));
    let bad = [
        ev("fresh", 0, 1, login("ana")),        // sequence numbers start at 1
        ev("fresh", 2, 1 << 60, login("ana")),  // beyond MAX_ACCEPTED_CLOCK
        ev("fresh", u64::MAX, 1, login("ana")), // beyond SQLite integers
        Event {
            timestamp: Timestamp(i64::MAX), // no ISO-8601 form
            ..ev("fresh", 3, 1, login("ana"))
        },
    ];
    for b in bad {
        let err = store.append(&[new.clone(), b.clone()]).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidEvent(_)),
            "{:?}: {err:?}",
            b.id
        );
    }
    assert_eq!(store.load_all().unwrap(), before);
    assert!(!store.applied().unwrap().contains_key("fresh"));
}

/// A channel's visible posts before `before`, the newest `limit` of them, oldest first.
pub fn chan_hist(
    store: &dyn chat_store::Store,
    channel: &str,
    before: Option<&Stamp>,
    limit: usize,
) -> Vec<Event> {
    let mut page = store
        .history(
            &chat_core::HistoryTarget::Channel(channel.to_string()),
            before,
            limit,
        )
        .unwrap()
        .newest_first;
    page.reverse();
    page
}
