//! Browser sessions: who is signed in, their SDK client, their live event streams.
//!
//! A session is created at sign-in and named by a random 256-bit token kept in an
//! `HttpOnly`, `SameSite=Strict` cookie. It owns one SDK [`Client`], so its subscriptions
//! (its own user topic, the channels it joined, `servers`) never mix with another
//! session's. A pump thread per session reads the client's events and hands each one, as
//! JSON, to every event stream of the session through a bounded queue; a queue that is full
//! means the browser is not reading, and that stream is closed instead of waiting for it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_core::{ChannelPost, DirectPost, Timestamp};
use chat_net::client::{Client, ClientEvent};
use crossbeam_channel::RecvTimeoutError;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

/// SDK calls one session may have running or waiting at once.
pub const CALLS_PER_SESSION: usize = 4;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "chat_web_session";

/// A fresh random session token (256 bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session token in a `Cookie` header value, if there is one that looks like a token.
pub fn token_from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.trim())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value that stores `token`.
pub fn set_cookie(token: &str) -> String {
    format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// One item of a conversation or of the event stream, as the page receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Item {
    /// A channel post.
    Post {
        /// Channel.
        channel: String,
        /// Author.
        user: String,
        /// Body.
        message: String,
        /// ISO-8601 time stamped by the server.
        timestamp: String,
        /// Lamport stamp.
        clock: u64,
        /// Event id, when known.
        id: Option<String>,
    },
    /// A private message.
    Direct {
        /// Sender.
        src: String,
        /// Recipient.
        dst: String,
        /// Body.
        message: String,
        /// ISO-8601 time stamped by the server (or by chat-web for the sender's own copy).
        timestamp: String,
        /// Lamport stamp.
        clock: u64,
        /// Event id, when known (absent on the sender's own copy).
        id: Option<String>,
    },
    /// A coordinator announcement from the `servers` topic.
    Coordinator {
        /// The coordinator.
        coordinator: String,
        /// Its term.
        term: u64,
        /// Its rank.
        rank: u64,
    },
}

impl From<&ChannelPost> for Item {
    fn from(p: &ChannelPost) -> Self {
        Item::Post {
            channel: p.channel.clone(),
            user: p.user.clone(),
            message: p.message.clone(),
            timestamp: p.timestamp.to_iso(),
            clock: p.clock,
            id: p.id.clone(),
        }
    }
}

impl From<&DirectPost> for Item {
    fn from(p: &DirectPost) -> Self {
        Item::Direct {
            src: p.src.clone(),
            dst: p.dst.clone(),
            message: p.message.clone(),
            timestamp: p.timestamp.to_iso(),
            clock: p.clock,
            id: p.id.clone(),
        }
    }
}

impl Item {
    /// The sender's own copy of a private message it just sent (not published to it).
    pub fn sent_direct(src: &str, dst: &str, message: &str, clock: u64) -> Item {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Item::Direct {
            src: src.to_string(),
            dst: dst.to_string(),
            message: message.to_string(),
            timestamp: Timestamp::from_millis(ms).to_iso(),
            clock,
            id: None,
        }
    }

    /// The item as one line of JSON.
    pub fn to_json(&self) -> Arc<str> {
        serde_json::to_string(self)
            .unwrap_or_else(|_| "{}".to_string())
            .into()
    }
}

/// One signed-in browser session.
pub struct Session {
    token: String,
    user: String,
    ip: IpAddr,
    client: Arc<Client>,
    joined: Mutex<BTreeSet<String>>,
    last_seen: Mutex<Instant>,
    streams: Mutex<Vec<mpsc::Sender<Arc<str>>>>,
    max_streams: usize,
    closed: AtomicBool,
    pump: Mutex<Option<JoinHandle<()>>>,
    calls: Arc<Semaphore>,
}

impl Session {
    /// A session of `user` from `ip` over `client` (already signed in and subscribed).
    pub fn new(
        token: String,
        user: String,
        ip: IpAddr,
        client: Arc<Client>,
        max_streams: usize,
    ) -> Arc<Session> {
        Arc::new(Session {
            token,
            user,
            ip,
            client,
            joined: Mutex::new(BTreeSet::new()),
            last_seen: Mutex::new(Instant::now()),
            streams: Mutex::new(Vec::new()),
            max_streams: max_streams.max(1),
            closed: AtomicBool::new(false),
            pump: Mutex::new(None),
            calls: Arc::new(Semaphore::new(CALLS_PER_SESSION)),
        })
    }

    /// The session token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The signed-in user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The IP address the session signed in from.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The session's SDK client.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The session's share of SDK calls (so one session cannot take every slot).
    pub fn calls(&self) -> &Arc<Semaphore> {
        &self.calls
    }

    /// Channels the session joined.
    pub fn joined(&self) -> Vec<String> {
        self.joined.lock().iter().cloned().collect()
    }

    /// Records that the session joined `channel`.
    pub fn add_joined(&self, channel: &str) {
        self.joined.lock().insert(channel.to_string());
    }

    /// Records that the session left `channel`; true if it had joined it.
    pub fn remove_joined(&self, channel: &str) -> bool {
        self.joined.lock().remove(channel)
    }

    /// Whether the session joined `channel`.
    pub fn has_joined(&self, channel: &str) -> bool {
        self.joined.lock().contains(channel)
    }

    /// Marks the session as used now.
    pub fn touch(&self) {
        *self.last_seen.lock() = Instant::now();
    }

    /// How long since the session was last used.
    pub fn idle(&self) -> Duration {
        self.last_seen.lock().elapsed()
    }

    /// Whether the session was closed (signed out, expired, or server stopping).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Opens a new event stream with room for `queue` events; the oldest stream is closed
    /// when the session already has the most it may have.
    pub fn open_stream(&self, queue: usize) -> mpsc::Receiver<Arc<str>> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        if self.is_closed() {
            return rx; // sender dropped: the stream ends at once
        }
        let mut streams = self.streams.lock();
        streams.retain(|s| !s.is_closed());
        while streams.len() >= self.max_streams {
            streams.remove(0);
        }
        streams.push(tx);
        rx
    }

    /// Number of open event streams.
    pub fn stream_count(&self) -> usize {
        let mut streams = self.streams.lock();
        streams.retain(|s| !s.is_closed());
        streams.len()
    }

    /// Hands `json` to every open stream without waiting; a stream whose queue is full is
    /// closed (its browser is not keeping up). Returns how many streams were closed so.
    pub fn deliver(&self, json: &Arc<str>) -> usize {
        let mut dropped = 0;
        self.streams
            .lock()
            .retain(|tx| match tx.try_send(json.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        if dropped > 0 {
            tracing::warn!(
                user = %self.user,
                dropped,
                "closed a slow event stream (the browser reconnects and reloads)"
            );
        }
        dropped
    }

    /// Closes the session: its streams end and its pump thread stops soon after.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.streams.lock().clear();
    }

    /// Starts the thread that forwards the SDK's events to the session's streams.
    pub fn start_pump(self: &Arc<Self>) -> std::io::Result<()> {
        let session = self.clone();
        let handle = std::thread::Builder::new()
            .name("chat-web-pump".into())
            .spawn(move || session.pump_loop())?;
        *self.pump.lock() = Some(handle);
        Ok(())
    }

    /// Waits for the pump thread to end (call after [`Session::close`], off the runtime).
    pub fn join_pump(&self) {
        let handle = self.pump.lock().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn pump_loop(&self) {
        let events = self.client.events();
        while !self.is_closed() {
            match events.recv_timeout(Duration::from_millis(200)) {
                Ok(event) => {
                    if let Some(item) = self.filter(&event) {
                        self.deliver(&item.to_json());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// What of an SDK event this session may see: posts of channels it joined, private
    /// messages addressed to it, and announcements. A user topic and a channel can share a
    /// name, so the subscription alone does not decide.
    pub fn filter(&self, event: &ClientEvent) -> Option<Item> {
        match event {
            ClientEvent::Post(p) if self.has_joined(&p.channel) => Some(Item::from(p)),
            ClientEvent::Direct(d) if d.dst == self.user => Some(Item::from(d)),
            ClientEvent::Coordinator(a) => Some(Item::Coordinator {
                coordinator: a.coordinator.clone(),
                term: a.term,
                rank: a.rank,
            }),
            ClientEvent::Malformed { topic, error } => {
                tracing::debug!(%topic, %error, "malformed publication ignored");
                None
            }
            _ => None,
        }
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds its most sessions.
    Full,
    /// This IP address holds its most sessions.
    TooManyFromAddress,
}

/// Every live session, by token.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    max: usize,
    max_per_ip: usize,
    idle_timeout: Duration,
}

impl Sessions {
    /// An empty registry with these bounds.
    pub fn new(max: usize, max_per_ip: usize, idle_timeout: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
            max_per_ip: max_per_ip.max(1),
            idle_timeout,
        }
    }

    /// The live session named by `token`, marked as used; expired sessions are not returned.
    pub fn get(&self, token: &str) -> Option<Arc<Session>> {
        let session = self.map.lock().get(token).cloned()?;
        if session.is_closed() || session.idle() > self.idle_timeout {
            return None;
        }
        session.touch();
        Some(session)
    }

    /// Whether one more session from `ip` would be accepted now.
    pub fn check_room(&self, ip: IpAddr) -> Result<(), Refusal> {
        let map = self.map.lock();
        Self::room(&map, self.max, self.max_per_ip, self.idle_timeout, ip)
    }

    fn room(
        map: &HashMap<String, Arc<Session>>,
        max: usize,
        max_per_ip: usize,
        idle_timeout: Duration,
        ip: IpAddr,
    ) -> Result<(), Refusal> {
        let live = || {
            map.values()
                .filter(move |s| !s.is_closed() && s.idle() <= idle_timeout)
        };
        if live().count() >= max {
            return Err(Refusal::Full);
        }
        if live().filter(|s| s.ip == ip).count() >= max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        Ok(())
    }

    /// Adds `session` if there is room.
    pub fn insert(&self, session: Arc<Session>) -> Result<(), Refusal> {
        let mut map = self.map.lock();
        Self::room(
            &map,
            self.max,
            self.max_per_ip,
            self.idle_timeout,
            session.ip,
        )?;
        map.insert(session.token.clone(), session);
        Ok(())
    }

    /// Removes and closes the session named by `token`.
    pub fn remove(&self, token: &str) -> Option<Arc<Session>> {
        let session = self.map.lock().remove(token)?;
        session.close();
        Some(session)
    }

    /// Removes and closes every expired or closed session; returns them.
    pub fn sweep(&self) -> Vec<Arc<Session>> {
        let mut map = self.map.lock();
        let expired: Vec<String> = map
            .iter()
            .filter(|(_, s)| s.is_closed() || s.idle() > self.idle_timeout)
            .map(|(k, _)| k.clone())
            .collect();
        expired
            .iter()
            .filter_map(|k| map.remove(k))
            .inspect(|s| s.close())
            .collect()
    }

    /// Removes and closes every session; returns them.
    pub fn close_all(&self) -> Vec<Arc<Session>> {
        let all: Vec<Arc<Session>> = self.map.lock().drain().map(|(_, s)| s).collect();
        for s in &all {
            s.close();
        }
        all
    }

    /// Number of sessions held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_net::client::ClientConfig;
    use std::net::Ipv4Addr;

    fn client() -> Arc<Client> {
        // ZeroMQ connects lazily: nothing needs to listen for this to work.
        let cfg = ClientConfig {
            broker: "tcp://127.0.0.1:9".into(),
            sub: "tcp://127.0.0.1:9".into(),
            ..ClientConfig::default()
        };
        Arc::new(Client::connect(cfg).expect("client"))
    }

    fn session(client: &Arc<Client>, ip: u8) -> Arc<Session> {
        Session::new(
            new_token(),
            "ana".into(),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip)),
            client.clone(),
            2,
        )
    }

    #[test]
    fn tokens_are_random_hex_and_parse_back_from_cookies() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let header = format!("theme=dark; {COOKIE_NAME}={a}; other=1");
        assert_eq!(token_from_cookie_header(&header), Some(a.as_str()));
        assert_eq!(token_from_cookie_header("chat_web_session=short"), None);
        assert_eq!(token_from_cookie_header(""), None);
        assert!(set_cookie(&a).contains("HttpOnly"));
        assert!(set_cookie(&a).contains("SameSite=Strict"));
    }

    #[test]
    fn a_full_stream_is_closed_not_waited_for() {
        let c = client();
        let s = session(&c, 1);
        let mut slow = s.open_stream(2);
        let mut fast = s.open_stream(100);
        let json: Arc<str> = "{}".into();
        let mut dropped = 0;
        for _ in 0..5 {
            dropped += s.deliver(&json);
            while fast.try_recv().is_ok() {}
        }
        assert_eq!(dropped, 1);
        assert_eq!(s.stream_count(), 1);
        // The slow stream got what fit, then ends.
        assert!(slow.try_recv().is_ok());
        assert!(slow.try_recv().is_ok());
        assert!(matches!(
            slow.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn streams_per_session_are_bounded() {
        let c = client();
        let s = session(&c, 1);
        let mut first = s.open_stream(4);
        let _second = s.open_stream(4);
        let _third = s.open_stream(4);
        assert_eq!(s.stream_count(), 2);
        assert!(matches!(
            first.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        s.close();
        assert_eq!(s.stream_count(), 0);
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let c = client();
        let sessions = Sessions::new(3, 2, Duration::from_millis(200));
        let a = session(&c, 1);
        sessions.insert(a.clone()).expect("first");
        sessions.insert(session(&c, 1)).expect("second");
        assert_eq!(
            sessions.insert(session(&c, 1)),
            Err(Refusal::TooManyFromAddress)
        );
        sessions.insert(session(&c, 2)).expect("third");
        assert_eq!(sessions.insert(session(&c, 3)), Err(Refusal::Full));
        assert!(sessions.get(a.token()).is_some());
        std::thread::sleep(Duration::from_millis(300));
        assert!(sessions.get(a.token()).is_none(), "expired");
        assert_eq!(sessions.sweep().len(), 3);
        assert!(sessions.is_empty());
        assert!(a.is_closed());
    }

    #[test]
    fn only_joined_channels_and_own_messages_pass() {
        let c = client();
        let s = session(&c, 1);
        s.add_joined("geral");
        let post = |channel: &str| {
            ClientEvent::Post(ChannelPost {
                channel: channel.into(),
                user: "bia".into(),
                message: "oi".into(),
                timestamp: Timestamp::from_millis(0),
                clock: 1,
                id: None,
                rid: None,
                prev: None,
            })
        };
        let direct = |dst: &str| {
            ClientEvent::Direct(DirectPost {
                src: "bia".into(),
                dst: dst.into(),
                message: "oi".into(),
                timestamp: Timestamp::from_millis(0),
                clock: 1,
                id: None,
                rid: None,
                prev: None,
            })
        };
        assert!(s.filter(&post("geral")).is_some());
        assert!(s.filter(&post("ana")).is_none());
        assert!(s.filter(&direct("ana")).is_some());
        assert!(s.filter(&direct("anabela")).is_none());
        let json = s.filter(&direct("ana")).map(|i| i.to_json());
        assert!(json.is_some_and(|j| j.contains("\"kind\":\"direct\"")));
    }
}
