//! [`Delivery`] driven by hand with a fake clock.

use super::*;
use chat_core::{ChannelPost, DirectPost, Timestamp};

const CH: &str = "geral";

fn post(origin: &str, seq: u64, clock: u64, rid: &str, prev: Option<u64>) -> Publication {
    Publication::Channel(ChannelPost {
        channel: CH.into(),
        user: "ana".into(),
        message: format!("{origin}/{seq}"),
        timestamp: Timestamp::from_millis(0),
        clock,
        id: Some(format!("{origin}/{seq}")),
        rid: Some(rid.into()),
        prev,
    })
}

/// The same event as a history item (no `prev`).
fn item(origin: &str, seq: u64, clock: u64, rid: &str) -> Publication {
    post(origin, seq, clock, rid, None)
}

fn page(mut items: Vec<Publication>, next: Option<&str>) -> HistoryPage {
    items.sort_by_key(|p| p.stamp());
    HistoryPage {
        items,
        next: next.map(str::to_string),
    }
}

fn ids(d: &mut Delivery) -> Vec<String> {
    std::iter::from_fn(|| d.poll_delivery())
        .map(|p| p.id().unwrap_or("").to_string())
        .collect()
}

struct H {
    d: Delivery,
    now: Instant,
}

impl H {
    fn new(cfg: DeliveryConfig) -> H {
        H {
            d: Delivery::new(cfg),
            now: Instant::now(),
        }
    }

    /// Subscribed to [`CH`], with the baseline answered by `baseline`.
    fn subscribed(cfg: DeliveryConfig, baseline: Vec<Publication>) -> H {
        let mut h = H::new(cfg);
        h.d.subscribe(h.now, CH);
        let f = h.fetch().expect("a baseline read");
        assert_eq!(f.target, HistoryTarget::Channel(CH.into()));
        assert_eq!(f.before, None);
        h.answer(&f, page(baseline, None));
        assert!(
            h.d.poll_delivery().is_none(),
            "the baseline is never delivered"
        );
        h
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.d.handle_timeout(self.now);
    }

    fn fetch(&mut self) -> Option<Fetch> {
        self.d.poll_fetch(self.now)
    }

    /// Advances to the next timeout (at most `max`) and returns the fetch then due.
    fn next_fetch(&mut self, max: Duration) -> Fetch {
        let end = self.now + max;
        loop {
            if let Some(f) = self.fetch() {
                return f;
            }
            let at = self.d.poll_timeout().expect("something scheduled");
            assert!(at <= end, "no read within {max:?}");
            self.now = self.now.max(at);
            self.d.handle_timeout(self.now);
        }
    }

    fn answer(&mut self, f: &Fetch, p: HistoryPage) {
        self.d.handle_history(self.now, f.id, Ok(p));
    }

    fn live(&mut self, p: Publication) {
        self.d.handle_publication(self.now, CH, p);
    }
}

fn cfg() -> DeliveryConfig {
    DeliveryConfig::default()
}

#[test]
fn repeats_are_dropped_by_event_id() {
    let mut h = H::subscribed(cfg(), vec![]);
    h.live(post("s1", 1, 10, "r1", Some(0)));
    h.live(post("s1", 1, 10, "r1", Some(0)));
    h.live(post("s1", 2, 11, "r2", Some(1)));
    h.live(post("s1", 2, 11, "r2", Some(1)));
    assert_eq!(ids(&mut h.d), ["s1/1", "s1/2"]);
    let s = h.d.stats();
    assert_eq!((s.delivered, s.duplicates, s.gaps), (2, 2, 0));
}

#[test]
fn a_loser_copy_of_the_same_request_is_dropped() {
    let mut h = H::subscribed(cfg(), vec![]);
    // Accepted twice: by s2 (published first) and by s1 (the winner in history).
    h.live(post("s2", 7, 20, "r-twice", Some(0)));
    h.live(post("s1", 3, 21, "r-twice", Some(0)));
    // The next publications of both origins chain through the copies: no gap.
    h.live(post("s1", 4, 22, "r-b", Some(3)));
    h.live(post("s2", 8, 23, "r-c", Some(7)));
    assert_eq!(ids(&mut h.d), ["s2/7", "s1/4", "s2/8"]);
    let s = h.d.stats();
    assert_eq!((s.losers, s.gaps), (1, 0));
    // A check that finds the winner in history does not deliver it either.
    h.advance(DEFAULT_CHECK_INTERVAL);
    let f = h.fetch().expect("a periodic check");
    h.answer(
        &f,
        page(
            vec![
                item("s1", 3, 21, "r-twice"),
                item("s1", 4, 22, "r-b"),
                item("s2", 8, 23, "r-c"),
            ],
            None,
        ),
    );
    assert!(ids(&mut h.d).is_empty());
}

#[test]
fn without_repair_it_only_drops_repeats() {
    let mut h = H::new(DeliveryConfig::dedup_only());
    h.d.subscribe(h.now, CH);
    assert!(h.fetch().is_none());
    h.live(post("s1", 1, 10, "r1", Some(0)));
    h.live(post("s1", 5, 11, "r5", Some(4)));
    h.live(post("s1", 5, 11, "r5", Some(4)));
    assert_eq!(ids(&mut h.d), ["s1/1", "s1/5"]);
    assert_eq!(h.d.stats().gaps, 1);
    h.advance(Duration::from_secs(60));
    assert!(h.fetch().is_none());
    assert_eq!(h.d.poll_timeout(), None);
}

#[test]
fn a_gap_is_repaired_from_history() {
    let mut h = H::subscribed(cfg(), vec![item("s1", 1, 5, "old")]);
    h.live(post("s1", 2, 10, "r2", Some(1)));
    // s1/4 (and maybe s1/3, on another topic) is lost; s1/5 reveals it.
    h.live(post("s1", 5, 13, "r5", Some(4)));
    assert_eq!(ids(&mut h.d), ["s1/2", "s1/5"]);
    assert_eq!(h.d.stats().gaps, 1);
    assert!(!h.d.is_settled());
    let gap_seen = h.now;
    let f = h.next_fetch(Duration::from_secs(1));
    assert!(h.now - gap_seen <= cfg().gap_delay);
    assert_eq!(f.before, None);
    h.answer(
        &f,
        page(
            vec![
                item("s1", 1, 5, "old"),
                item("s1", 2, 10, "r2"),
                item("s1", 4, 12, "r4"),
                item("s1", 5, 13, "r5"),
            ],
            Some("5.1.s1"),
        ),
    );
    assert_eq!(ids(&mut h.d), ["s1/4"]);
    // It read down to what it had seen from s1 before the gap: no second page.
    assert!(h.fetch().is_none());
    let s = h.d.stats();
    assert_eq!((s.repaired, s.delivered, s.unresolved), (1, 3, 0));
    assert!(h.d.is_settled());
}

#[test]
fn a_gap_pages_back_as_far_as_needed() {
    let mut h = H::subscribed(
        DeliveryConfig {
            page_limit: 2,
            ..cfg()
        },
        vec![],
    );
    h.live(post("s1", 1, 10, "r1", Some(0)));
    h.live(post("s1", 9, 30, "r9", Some(5)));
    // s2 posted a lot in between (all received), s1/5 is lost.
    for (i, c) in (11..20).enumerate() {
        h.live(post(
            "s2",
            i as u64 + 1,
            c,
            &format!("x{i}"),
            Some(i as u64),
        ));
    }
    assert_eq!(ids(&mut h.d).len(), 11);
    let mut f = h.next_fetch(Duration::from_secs(1));
    let mut history: Vec<Publication> = (11..20)
        .enumerate()
        .map(|(i, c)| item("s2", i as u64 + 1, c, &format!("x{i}")))
        .collect();
    history.extend([
        item("s1", 1, 10, "r1"),
        item("s1", 5, 20, "r5"),
        item("s1", 9, 30, "r9"),
    ]);
    history.sort_by_key(|p| p.stamp());
    let mut pages = 0;
    let mut end = history.len();
    loop {
        pages += 1;
        let start = end.saturating_sub(2);
        let next = (start > 0).then(|| history[start].stamp().unwrap().cursor());
        h.answer(&f, page(history[start..end].to_vec(), next.as_deref()));
        end = start;
        match h.fetch() {
            Some(n) => {
                assert_eq!(n.before, next);
                f = n;
            }
            None => break,
        }
    }
    assert_eq!(ids(&mut h.d), ["s1/5"]);
    // s1/5 is at clock 20: the reads stop once they pass s1/1 (clock 10), not before.
    assert_eq!(pages, 6);
}

#[test]
fn a_gap_history_does_not_show_yet_is_looked_for_again() {
    let mut h = H::subscribed(cfg(), vec![]);
    h.live(post("s1", 1, 10, "r1", Some(0)));
    h.live(post("s1", 3, 12, "r3", Some(2)));
    ids(&mut h.d);
    // The server that answers does not hold s1/2 yet.
    let f = h.next_fetch(Duration::from_secs(1));
    h.answer(
        &f,
        page(vec![item("s1", 1, 10, "r1"), item("s1", 3, 12, "r3")], None),
    );
    assert!(ids(&mut h.d).is_empty());
    assert!(!h.d.is_settled());
    let before = h.now;
    let f = h.next_fetch(Duration::from_secs(5));
    assert!(h.now - before >= cfg().gap_retry);
    h.answer(
        &f,
        page(
            vec![
                item("s1", 1, 10, "r1"),
                item("s1", 2, 11, "r2"),
                item("s1", 3, 12, "r3"),
            ],
            None,
        ),
    );
    assert_eq!(ids(&mut h.d), ["s1/2"]);
    assert!(h.d.is_settled());
    assert!(h.d.stats().slowest_gap_repair >= cfg().gap_retry);
}

#[test]
fn a_gap_that_never_shows_is_given_up() {
    let mut h = H::subscribed(cfg(), vec![]);
    h.live(post("s1", 1, 10, "r1", Some(0)));
    // s1/2 lost to an earlier copy of its request: history never holds it.
    h.live(post("s1", 3, 12, "r3", Some(2)));
    ids(&mut h.d);
    for _ in 0..cfg().gap_attempts {
        let f = h.next_fetch(Duration::from_secs(60));
        h.answer(
            &f,
            page(vec![item("s1", 1, 10, "r1"), item("s1", 3, 12, "r3")], None),
        );
    }
    assert!(h.d.is_settled());
    assert_eq!(h.d.stats().unresolved, 1);
    assert!(ids(&mut h.d).is_empty());
}

#[test]
fn a_lost_tail_is_repaired_by_the_periodic_check() {
    let mut h = H::subscribed(cfg(), vec![]);
    h.live(post("s1", 1, 10, "r1", Some(0)));
    h.live(post("s2", 1, 11, "q1", Some(0)));
    ids(&mut h.d);
    // s1/2 and s2/2 are lost and nothing follows them: only a check finds them.
    let lost_at = h.now;
    let f = h.next_fetch(DEFAULT_CHECK_INTERVAL);
    assert_eq!(h.now - lost_at, DEFAULT_CHECK_INTERVAL);
    h.answer(
        &f,
        page(
            vec![
                item("s1", 1, 10, "r1"),
                item("s2", 1, 11, "q1"),
                item("s1", 2, 12, "r2"),
                item("s2", 2, 13, "q2"),
            ],
            None,
        ),
    );
    assert_eq!(ids(&mut h.d), ["s1/2", "s2/2"]);
    assert_eq!(h.d.stats().repaired, 2);
    // Their late live copies are repeats.
    h.live(post("s1", 2, 12, "r2", Some(1)));
    h.live(post("s2", 2, 13, "q2", Some(1)));
    assert!(ids(&mut h.d).is_empty());
    assert_eq!(h.d.stats().duplicates, 2);
}

#[test]
fn history_from_before_the_subscription_is_never_delivered() {
    let old: Vec<Publication> = (1..=5)
        .map(|i| item("s1", i, i, &format!("o{i}")))
        .collect();
    let mut h = H::subscribed(cfg(), old.clone());
    // The first live post chains to the past: no gap (s1's head came with the baseline).
    h.live(post("s1", 7, 9, "n7", Some(5)));
    assert_eq!(ids(&mut h.d), ["s1/7"]);
    assert_eq!(h.d.stats().gaps, 0);
    let f = h.next_fetch(DEFAULT_CHECK_INTERVAL);
    let mut all = old;
    all.extend([item("s1", 6, 8, "n6"), item("s1", 7, 9, "n7")]);
    h.answer(&f, page(all, None));
    // s1/6 was committed after the baseline read and lost live: repaired; the rest is old.
    assert_eq!(ids(&mut h.d), ["s1/6"]);
}

#[test]
fn a_reconnect_triggers_a_check() {
    let mut h = H::subscribed(cfg(), vec![]);
    h.live(post("s1", 1, 10, "r1", Some(0)));
    ids(&mut h.d);
    h.advance(Duration::from_millis(500));
    h.d.handle_reconnect(h.now);
    let at = h.now;
    let f = h.next_fetch(Duration::from_secs(1));
    assert_eq!(h.now - at, cfg().reconnect_delay);
    h.answer(
        &f,
        page(vec![item("s1", 1, 10, "r1"), item("s1", 2, 11, "r2")], None),
    );
    assert_eq!(ids(&mut h.d), ["s1/2"]);
    assert_eq!(h.d.stats().reconnects, 1);
}

#[test]
fn periodic_checks_read_back_only_the_lookback() {
    let mut h = H::subscribed(
        DeliveryConfig {
            page_limit: 1,
            ..cfg()
        },
        vec![],
    );
    // Six checks 3 s apart, one new post before each; all delivered live.
    let mut history = Vec::new();
    let mut read = Vec::new();
    for i in 1..=6u64 {
        h.live(post("s1", i, i * 10, &format!("r{i}"), Some(i - 1)));
        history.push(item("s1", i, i * 10, &format!("r{i}")));
        let mut f = h.next_fetch(DEFAULT_CHECK_INTERVAL);
        let mut end = history.len();
        let mut pages = 0;
        loop {
            pages += 1;
            let start = end - 1;
            let next = (start > 0).then(|| history[start].stamp().unwrap().cursor());
            h.answer(&f, page(history[start..end].to_vec(), next.as_deref()));
            end = start;
            match h.fetch() {
                Some(n) => f = n,
                None => break,
            }
        }
        read.push(pages);
    }
    // With a 10 s lookback the checks read everything (down to the floor) until a check
    // from at least 10 s before exists: the fifth (at 15 s) stops at what the first (3 s)
    // saw, s1/1; the sixth (18 s) at what the second (6 s) saw, s1/2.
    assert_eq!(read, [1, 2, 3, 4, 5, 5]);
    assert_eq!(ids(&mut h.d).len(), 6);
    assert_eq!(h.d.stats().repaired, 0);
}

#[test]
fn a_failed_read_is_tried_again() {
    let mut h = H::new(cfg());
    h.d.subscribe(h.now, CH);
    let f = h.fetch().unwrap();
    h.d.handle_history(h.now, f.id, Err(ErrorCode::Timeout));
    assert!(h.fetch().is_none());
    let f2 = h.next_fetch(Duration::from_secs(1));
    assert_ne!(f2.id, f.id);
    // A read nobody answers is abandoned at its deadline.
    let f3 = {
        let at = h.now;
        let f = h.next_fetch(cfg().fetch_timeout + Duration::from_secs(1));
        assert!(h.now - at >= cfg().fetch_timeout);
        f
    };
    // The late answer to the abandoned read is ignored.
    h.answer(&f2, page(vec![item("s1", 1, 1, "x")], None));
    h.answer(&f3, page(vec![], None));
    assert!(h.d.is_settled());
    assert_eq!(h.d.stats().fetch_failures, 2);
}

#[test]
fn a_user_topic_is_found_and_only_messages_to_the_user_count() {
    let mut h = H::new(cfg());
    h.d.subscribe(h.now, "bia");
    let f = h.fetch().unwrap();
    assert_eq!(f.target, HistoryTarget::Channel("bia".into()));
    h.d.handle_history(h.now, f.id, Err(ErrorCode::UnknownChannel));
    let f = h.fetch().unwrap();
    assert_eq!(f.target, HistoryTarget::User("bia".into()));
    h.answer(&f, page(vec![], None));
    let dm = |seq: u64, src: &str, dst: &str, prev: Option<u64>| {
        Publication::Direct(DirectPost {
            src: src.into(),
            dst: dst.into(),
            message: "oi".into(),
            timestamp: Timestamp::from_millis(0),
            clock: seq,
            id: Some(format!("s1/{seq}")),
            rid: Some(format!("d{seq}")),
            prev,
        })
    };
    h.d.handle_publication(h.now, "bia", dm(1, "ana", "bia", Some(0)));
    let f = h.next_fetch(DEFAULT_CHECK_INTERVAL);
    assert_eq!(f.target, HistoryTarget::User("bia".into()));
    h.answer(
        &f,
        page(
            vec![
                dm(1, "ana", "bia", None),
                dm(2, "bia", "ana", None),
                dm(3, "caio", "bia", None),
            ],
            None,
        ),
    );
    // What bia sent is in her history but was never published on her topic.
    assert_eq!(ids(&mut h.d), ["s1/1", "s1/3"]);
}

#[test]
fn memory_is_bounded_and_forgotten_items_are_not_delivered_again() {
    let window = 100;
    let mut h = H::subscribed(DeliveryConfig { window, ..cfg() }, vec![]);
    let mut all = Vec::new();
    for i in 1..=1000u64 {
        h.live(post("s1", i, i, &format!("r{i}"), Some(i - 1)));
        all.push(item("s1", i, i, &format!("r{i}")));
        assert!(h.d.remembered(CH) <= window);
    }
    assert_eq!(ids(&mut h.d).len(), 1000);
    // A check that reads everything delivers nothing again, forgotten or not.
    let f = h.next_fetch(DEFAULT_CHECK_INTERVAL);
    h.answer(&f, page(all, None));
    assert!(ids(&mut h.d).is_empty());
    // Many origins and many gaps stay bounded too.
    for o in 0..(MAX_ORIGINS as u64 + 50) {
        h.live(post(
            &format!("x{o}"),
            10,
            2000 + o,
            &format!("g{o}"),
            Some(5),
        ));
    }
    let t = h.d.topics.get(CH).unwrap();
    assert!(t.heads.len() <= MAX_ORIGINS);
    assert!(t.wanted.len() <= MAX_WANTED);
    assert!(t.window.len() <= window);
    assert!(t.window.rids.len() <= window);
}

#[test]
fn a_check_stops_after_max_pages() {
    let mut h = H::subscribed(
        DeliveryConfig {
            page_limit: 1,
            max_pages: 3,
            ..cfg()
        },
        vec![],
    );
    h.live(post("s1", 1, 1, "r1", Some(0)));
    h.live(post("s1", 10, 10, "r10", Some(2)));
    let mut f = h.next_fetch(Duration::from_secs(1));
    for c in (7..10).rev() {
        h.answer(
            &f,
            page(vec![item("s2", c, c, &format!("y{c}"))], Some("x")),
        );
        if let Some(n) = h.fetch() {
            f = n;
        }
    }
    assert_eq!(h.d.stats().truncated, 1);
    assert_eq!(h.d.stats().pages, 4); // the baseline and three
}
