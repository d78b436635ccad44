//! The rules a run must keep, checked once the faults are healed and the cluster settled.
//! (Rules that hold at every step are checked as the run goes: no reply before its write is
//! durable, one coordinator per term, the broker's invariants.)

use std::collections::{BTreeMap, BTreeSet};

use chat_core::{EventKind, HistoryTarget};
use chat_node::server::{ServerCore, Time};
use chat_store::export::seed_files;
use chat_store::StoreRead;

use crate::client::{Acked, Write};
use crate::disk::SharedDisk;
use crate::world::CLOCK_BOUND_MS;

/// What the checkers see of one server.
pub struct ServerView<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its core (state in memory).
    pub core: &'a ServerCore,
    /// Its time now.
    pub time: Time,
    /// Its disk.
    pub disk: SharedDisk,
}

/// Every rule broken, as (rule, detail).
pub fn final_checks(
    servers: &[ServerView<'_>],
    acked: &BTreeMap<String, Acked>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if servers.is_empty() {
        return out;
    }
    // Identical history everywhere: same events, same visible content.
    let first = &servers[0];
    let digest = first.core.node().state().digest();
    let vector = first.core.status(first.time).vector;
    for s in &servers[1..] {
        let st = s.core.status(s.time);
        if st.digest != digest || st.vector != vector {
            out.push((
                "identical history",
                format!(
                    "{} has digest {} and vector {:?}; {} has {} and {:?}",
                    first.name, digest, vector, s.name, st.digest, st.vector
                ),
            ));
        }
    }
    for s in servers {
        if !s.core.is_caught_up() || !s.core.is_serving() {
            out.push((
                "all serve after heal",
                format!(
                    "{} caught up: {}, serving: {}",
                    s.name,
                    s.core.is_caught_up(),
                    s.core.is_serving()
                ),
            ));
        }
    }
    for s in servers {
        out.extend(check_server(s, acked));
    }
    // Clocks converge: the physical clocks (OS clock plus offset) of all servers.
    let clocks: Vec<i64> = servers
        .iter()
        .map(|s| s.time.wall_ms + s.core.clock_offset_ms())
        .collect();
    let (lo, hi) = (
        clocks.iter().min().copied().unwrap_or(0),
        clocks.iter().max().copied().unwrap_or(0),
    );
    if hi - lo > CLOCK_BOUND_MS {
        out.push((
            "clocks converge",
            format!(
                "physical clocks spread over {} ms (bound {CLOCK_BOUND_MS} ms): {:?}",
                hi - lo,
                servers
                    .iter()
                    .zip(&clocks)
                    .map(|(s, c)| (s.name, c - lo))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    out
}

/// The rules one server keeps on its own: every acknowledged write present exactly once,
/// in memory and in what an export of its disk would write.
fn check_server(
    s: &ServerView<'_>,
    acked: &BTreeMap<String, Acked>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let state = s.core.node().state();
    let disk = s.disk.borrow();
    let files = match seed_files(disk.store()) {
        Ok(f) => f,
        Err(e) => {
            out.push(("export", format!("{}: {e}", s.name)));
            return out;
        }
    };
    // Exactly once in the export: texts are unique per run, so a text seen twice is a
    // write shown twice.
    let mut posts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &files.publications {
        *posts.entry(p.message.as_str()).or_default() += 1;
    }
    let mut messages: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &files.messages {
        *messages.entry(m.message.as_str()).or_default() += 1;
    }
    for (text, n) in posts.iter().chain(messages.iter()) {
        if *n > 1 {
            out.push((
                "exactly once",
                format!("{}: `{text}` is exported {n} times", s.name),
            ));
        }
    }
    // History pages (from the store's index) and export show the same posts.
    let store = disk.store();
    let mut channels_seen: BTreeSet<&str> = state
        .summary()
        .channels
        .keys()
        .map(String::as_str)
        .collect();
    channels_seen.extend(files.publications.iter().map(|p| p.channel.as_str()));
    let mut in_history: BTreeSet<String> = BTreeSet::new();
    for c in channels_seen {
        match store.history(&HistoryTarget::Channel(c.to_string()), None, usize::MAX) {
            Ok(rows) => {
                in_history.extend(rows.newest_first.into_iter().filter_map(|e| match e.kind {
                    EventKind::ChannelMessage { message, .. } => Some(message),
                    _ => None,
                }))
            }
            Err(e) => out.push(("history equals export", format!("{}: {e}", s.name))),
        }
    }
    let exported: BTreeSet<String> = posts.keys().map(|t| t.to_string()).collect();
    if in_history != exported {
        out.push((
            "history equals export",
            format!(
                "{}: {} posts in history, {} exported; first difference {:?}",
                s.name,
                in_history.len(),
                exported.len(),
                in_history.symmetric_difference(&exported).next()
            ),
        ));
    }
    // The small state in memory is what the store's indexes say (what a restart recovers).
    match store.summary() {
        Ok(on_disk) if on_disk == *state.summary() => {}
        Ok(on_disk) => out.push((
            "memory equals the store's summary",
            format!(
                "{}: memory has {} events, digest {}; the store {} events, digest {:016x}",
                s.name,
                state.event_count(),
                state.digest(),
                on_disk.events,
                on_disk.digest
            ),
        )),
        Err(e) => out.push((
            "memory equals the store's summary",
            format!("{}: {e}", s.name),
        )),
    }
    let users: BTreeSet<&str> = files.users.keys().map(String::as_str).collect();
    let channels: BTreeSet<&str> = files.channels.iter().map(String::as_str).collect();
    for (rid, a) in acked {
        if !matches!(store.request_winner(rid), Ok(Some(_))) {
            out.push((
                "acknowledged writes kept",
                format!("{}: acknowledged {rid} ({:?}) is missing", s.name, a.write),
            ));
            continue;
        }
        let present = match &a.write {
            Write::Login(u) => users.contains(u.as_str()),
            Write::Channel(c) => channels.contains(c.as_str()),
            Write::Publish { text, .. } => posts.get(text.as_str()) == Some(&1),
            Write::Message { text, .. } => messages.get(text.as_str()) == Some(&1),
        };
        if !present {
            out.push((
                "acknowledged writes kept",
                format!(
                    "{}: acknowledged {rid} ({:?}) is not exported exactly once",
                    s.name, a.write
                ),
            ));
        }
    }
    out
}

/// Live delivery through the SDK's core: nothing delivered twice; every acknowledged post
/// whose request was first sent after the subscriber's baseline of its channel answered
/// delivered (exactly once) to that subscriber (a post sent before may or may not be); and
/// more precisely, every acknowledged post whose event (the visible copy, in `store`) is
/// above what the baseline showed of its origin (its `heads`).
pub fn check_subscribers(
    subs: &[crate::subscriber::SimSubscriber],
    acked: &BTreeMap<String, Acked>,
    store: &chat_store::MemoryStore,
) -> Vec<(&'static str, String)> {
    use chat_store::StoreRead;
    let visible = |rid: &str| store.request_winner(rid).ok().flatten().map(|e| e.id);
    let mut out = Vec::new();
    for (k, sub) in subs.iter().enumerate() {
        let delivered = sub.delivered();
        for (key, n) in delivered {
            if *n > 1 {
                out.push((
                    "live delivery exactly once",
                    format!("subscriber-{k} got {key} {n} times"),
                ));
            }
        }
        for (rid, a) in acked {
            if let Write::Publish { channel, text } = &a.write {
                if !sub.topics().iter().any(|t| t == channel) {
                    continue;
                }
                let Some(base) = sub.baselined_at(channel) else {
                    out.push((
                        "live delivery gap-free",
                        format!("subscriber-{k} never read its baseline of {channel}"),
                    ));
                    continue;
                };
                if delivered.contains_key(rid) {
                    continue;
                }
                let above = visible(rid).is_some_and(|id| {
                    sub.baseline_heads(channel)
                        .and_then(|h| h.get(&id.origin))
                        .is_none_or(|h| id.seq > *h)
                });
                if above && a.started <= base {
                    out.push((
                        "live delivery gap-free above the baseline",
                        format!(
                            "subscriber-{k} never got acknowledged {rid} (`{text}` on {channel}, \
                             event {:?} above the baseline's heads {:?}); settled: {}, {:?}",
                            visible(rid),
                            sub.baseline_heads(channel),
                            sub.is_settled(),
                            sub.stats()
                        ),
                    ));
                }
                if a.started > base {
                    out.push((
                        "live delivery gap-free",
                        format!(
                            "subscriber-{k} never got acknowledged {rid} (`{text}` on {channel}, \
                             sent at {:.3} s, baseline at {:.3} s); settled: {}, {:?}",
                            a.started.as_secs_f64(),
                            base.as_secs_f64(),
                            sub.is_settled(),
                            sub.stats()
                        ),
                    ));
                }
            }
        }
    }
    out
}
