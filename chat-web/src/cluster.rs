//! The cluster panel's data: one thread polls `status` and listens to `servers`.
//!
//! Each round asks `status` through the broker (whichever server it picks answers; the
//! broker keeps a client on the same server), which also names the server's peers and their
//! peer endpoints; then asks each of those servers directly, with an SDK client connected to
//! its peer endpoint (servers answer `status` there too). The latest answer of each server
//! is kept by name. Announcements on the `servers` topic are kept too. The page reads the
//! table with `GET /api/cluster`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_core::{Announcement, ServerStatus, TOPIC_SERVERS};
use chat_net::client::{Client, ClientConfig, ClientEvent};
use chat_net::Shutdown;
use parking_lot::Mutex;
use serde::Serialize;

use crate::errors::sentence;

/// A server not heard from for this long is dropped from the table.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Longest wait for one server asked directly (a dead one must not hold the round long).
const DIRECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// What the poller knows about the cluster.
#[derive(Debug, Default)]
pub struct ClusterView {
    servers: BTreeMap<String, (ServerStatus, Instant)>,
    announcement: Option<(Announcement, Instant)>,
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// One row of the cluster table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerRow {
    /// Server name.
    pub name: String,
    /// Its rank, once known.
    pub rank: Option<u64>,
    /// The coordinator it believes in.
    pub coordinator: Option<String>,
    /// Term of that coordinator.
    pub term: u64,
    /// Its Lamport clock.
    pub lamport: u64,
    /// Correction applied to its physical clock, in milliseconds.
    pub clock_offset_ms: i64,
    /// Its clock synchronisation (`berkeley`, `cristian`), once known.
    pub clock_sync: Option<String>,
    /// Users it knows.
    pub users: u64,
    /// Channels it knows.
    pub channels: u64,
    /// Messages it stores.
    pub messages: u64,
    /// Events it applied.
    pub events: u64,
    /// Digest of its state.
    pub digest: String,
    /// Milliseconds since it last answered (absent: only known as a peer of another).
    pub age_ms: Option<u64>,
    /// Whether it answered recently.
    pub answering: bool,
}

/// The latest coordinator announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnnouncementView {
    /// The coordinator.
    pub coordinator: String,
    /// Its term.
    pub term: u64,
    /// Its rank.
    pub rank: u64,
    /// Milliseconds since it was heard.
    pub age_ms: u64,
}

/// The body of `GET /api/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSnapshot {
    /// Servers, by name.
    pub servers: Vec<ServerRow>,
    /// The coordinator of the highest term any server reports.
    pub coordinator: Option<String>,
    /// That term.
    pub term: u64,
    /// The latest announcement heard on `servers`.
    pub announcement: Option<AnnouncementView>,
    /// Why the last poll failed, as a sentence, if it did.
    pub error: Option<String>,
    /// Milliseconds since a server last answered.
    pub polled_age_ms: Option<u64>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ClusterView {
    /// Records a `status` answer.
    pub fn record_status(&mut self, status: ServerStatus, now: Instant) {
        self.last_ok = Some(now);
        self.last_error = None;
        self.servers.insert(status.name.clone(), (status, now));
    }

    /// Records a failed poll.
    pub fn record_error(&mut self, message: String) {
        self.last_error = Some(message);
    }

    /// Records an announcement.
    pub fn record_announcement(&mut self, a: Announcement, now: Instant) {
        let newer = self
            .announcement
            .as_ref()
            .is_none_or(|(old, _)| a.term >= old.term);
        if newer {
            self.announcement = Some((a, now));
        }
    }

    /// Drops servers not heard from for a long time.
    pub fn forget_old(&mut self, now: Instant) {
        self.servers
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_AFTER);
    }

    /// Every server the table knows by name: those that answered within the last
    /// minute and those they name as peers (the cluster check expects them all to answer).
    pub fn known_servers(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> = self.servers.keys().cloned().collect();
        for (s, _) in self.servers.values() {
            names.extend(s.peers.iter().map(|p| p.name.clone()));
        }
        names.into_iter().collect()
    }

    /// Peer endpoints of the servers known (named as peers by a recent answer), by name.
    pub fn endpoints(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut answers: Vec<&(ServerStatus, Instant)> = self.servers.values().collect();
        answers.sort_by_key(|(_, at)| *at); // the newest answer wins
        for (s, _) in answers {
            for p in &s.peers {
                if let Some(e) = &p.endpoint {
                    out.insert(p.name.clone(), e.clone());
                }
            }
        }
        out
    }

    /// The table as the page sees it; servers silent for `stale_after` are not answering.
    pub fn snapshot(&self, now: Instant, stale_after: Duration) -> ClusterSnapshot {
        let mut rows: BTreeMap<String, ServerRow> = BTreeMap::new();
        for (name, (s, at)) in &self.servers {
            let age = now.saturating_duration_since(*at);
            rows.insert(
                name.clone(),
                ServerRow {
                    name: name.clone(),
                    rank: s.rank,
                    coordinator: s.coordinator.clone(),
                    term: s.term,
                    lamport: s.lamport,
                    clock_offset_ms: s.clock_offset_ms,
                    clock_sync: s.clock_sync.clone(),
                    users: s.users,
                    channels: s.channels,
                    messages: s.messages,
                    events: s.events,
                    digest: s.digest.clone(),
                    age_ms: Some(ms(age)),
                    answering: age <= stale_after,
                },
            );
        }
        for (s, _) in self.servers.values() {
            for p in &s.peers {
                rows.entry(p.name.clone()).or_insert_with(|| ServerRow {
                    name: p.name.clone(),
                    rank: Some(p.rank),
                    coordinator: None,
                    term: 0,
                    lamport: 0,
                    clock_offset_ms: 0,
                    clock_sync: None,
                    users: 0,
                    channels: 0,
                    messages: 0,
                    events: 0,
                    digest: String::new(),
                    age_ms: None,
                    answering: false,
                });
            }
        }
        let (coordinator, term) = self
            .servers
            .values()
            .filter(|(s, _)| s.coordinator.is_some())
            .max_by_key(|(s, at)| (s.term, *at))
            .map_or((None, 0), |(s, _)| (s.coordinator.clone(), s.term));
        ClusterSnapshot {
            servers: rows.into_values().collect(),
            coordinator,
            term,
            announcement: self.announcement.as_ref().map(|(a, at)| AnnouncementView {
                coordinator: a.coordinator.clone(),
                term: a.term,
                rank: a.rank,
                age_ms: ms(now.saturating_duration_since(*at)),
            }),
            error: self.last_error.clone(),
            polled_age_ms: self.last_ok.map(|t| ms(now.saturating_duration_since(t))),
        }
    }
}

/// Starts the poller thread; it stops when `stop` is raised.
pub fn start_poller(
    cfg: ClientConfig,
    interval: Duration,
    view: Arc<Mutex<ClusterView>>,
    stop: Shutdown,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("chat-web-status".into())
        .spawn(move || poll_loop(cfg, interval, view, stop))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot start the status poller; the cluster panel stays empty");
            std::thread::spawn(|| {})
        })
}

fn sleep_until(deadline: Instant, stop: &Shutdown) {
    while !stop.is_triggered() {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

fn poll_loop(cfg: ClientConfig, interval: Duration, view: Arc<Mutex<ClusterView>>, stop: Shutdown) {
    let client = match Client::connect(cfg.clone()) {
        Ok(c) => c,
        Err(e) => {
            view.lock()
                .record_error(format!("{} ({e})", sentence(&e.code())));
            return;
        }
    };
    if let Err(e) = client.subscribe(TOPIC_SERVERS) {
        tracing::warn!(error = %e, "cannot subscribe to announcements");
    }
    // One SDK client per server, connected to its peer endpoint.
    let mut direct: HashMap<String, (String, Client)> = HashMap::new();
    while !stop.is_triggered() {
        let round_end = Instant::now() + interval;
        match client.status() {
            Ok(s) => view.lock().record_status(s, Instant::now()),
            Err(e) => view.lock().record_error(sentence(&e.code()).to_string()),
        }
        let endpoints = view.lock().endpoints();
        direct.retain(|name, (endpoint, _)| endpoints.get(name) == Some(endpoint));
        for (name, endpoint) in endpoints {
            if stop.is_triggered() {
                return;
            }
            if !direct.contains_key(&name) {
                let cfg = ClientConfig {
                    broker: endpoint.clone(),
                    timeout: DIRECT_TIMEOUT.min(cfg.timeout),
                    attempts: 1,
                    ..cfg.clone()
                };
                match Client::connect(cfg) {
                    Ok(c) => {
                        direct.insert(name.clone(), (endpoint, c));
                    }
                    Err(e) => {
                        tracing::debug!(server = %name, error = %e, "cannot reach a server directly");
                        continue;
                    }
                }
            }
            if let Some((_, c)) = direct.get(&name) {
                match c.status() {
                    Ok(s) => view.lock().record_status(s, Instant::now()),
                    Err(e) => tracing::debug!(server = %name, error = %e, "no status"),
                }
            }
        }
        while let Ok(event) = client.events().try_recv() {
            if let ClientEvent::Coordinator(a) = event {
                view.lock().record_announcement(a, Instant::now());
            }
        }
        view.lock().forget_old(Instant::now());
        sleep_until(round_end, &stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::ServerInfo;

    fn status(name: &str, term: u64, coordinator: &str, peers: &[&str]) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            rank: Some(1),
            coordinator: Some(coordinator.into()),
            term,
            peers: peers
                .iter()
                .map(|p| ServerInfo {
                    name: (*p).into(),
                    rank: 2,
                    endpoint: Some(format!("tcp://{p}")),
                })
                .collect(),
            ..ServerStatus::default()
        }
    }

    #[test]
    fn table_merges_answers_and_peers() {
        let t0 = Instant::now();
        let mut v = ClusterView::default();
        v.record_status(status("s1", 1, "s1", &["s2", "s3"]), t0);
        v.record_status(status("s2", 2, "s2", &["s1"]), t0);
        let endpoints = v.endpoints();
        assert_eq!(endpoints.keys().collect::<Vec<_>>(), ["s1", "s2", "s3"]);
        assert_eq!(v.known_servers(), ["s1", "s2", "s3"]);
        assert_eq!(endpoints["s3"], "tcp://s3");
        let snap = v.snapshot(t0 + Duration::from_secs(1), Duration::from_secs(6));
        let names: Vec<&str> = snap.servers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["s1", "s2", "s3"]);
        assert_eq!(snap.coordinator.as_deref(), Some("s2"));
        assert_eq!(snap.term, 2);
        assert!(snap.servers[0].answering);
        assert!(!snap.servers[2].answering);
        let later = v.snapshot(t0 + Duration::from_secs(10), Duration::from_secs(6));
        assert!(!later.servers[0].answering);
        v.forget_old(t0 + FORGET_AFTER);
        assert!(v.servers.is_empty());
    }

    #[test]
    fn announcements_never_go_back_in_term() {
        let t0 = Instant::now();
        let mut v = ClusterView::default();
        let a = |c: &str, term| Announcement {
            coordinator: c.into(),
            term,
            rank: 1,
        };
        v.record_announcement(a("s2", 3), t0);
        v.record_announcement(a("s1", 2), t0);
        let snap = v.snapshot(t0, Duration::from_secs(6));
        assert_eq!(snap.announcement.map(|a| a.coordinator), Some("s2".into()));
    }
}
