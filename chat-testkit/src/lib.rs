//! Test scaffolding shared by the workspace's tests, in one place.
//!
//! # Layout
//! - [`wait_for`] and [`DEADLINE`]: every wait is a condition polled under a deadline.
//! - [`Running`]: a component on its own thread, stopped by its [`Shutdown`] flag, with
//!   its result collected (also on a failed assertion, through `Drop`).
//! - [`TestCluster`]: proxy, broker, (optionally) reference and servers on threads of the
//!   test process, on loopback ports chosen by the OS, stopped on drop (a thin wrapper of
//!   [`chat_net::cluster::Cluster`]).
//! - [`subscribe_live`], [`next_event`]: live subscriptions despite ZeroMQ's slow joiner.
//! - [`ask`], [`status_at`], [`history_at`]: read one server directly through its peer
//!   socket (the broker would pick a server for us).
//! - [`fake_peer`]: a registered peer that acknowledges nothing it is sent to replicate.
//! - [`http`]: a minimal HTTP/1.1 client for the web front end's tests.
//! - [`require`]: skip a test that needs a Docker engine or Chromium where there is none,
//!   saying why, unless CI demands it (`CHAT_REQUIRE_DOCKER`, `CHAT_REQUIRE_BROWSER`).
//! - [`docker`]: compose projects of `docker-compose.yml` on the local engine, removed
//!   with their volumes on drop.

pub mod docker;
pub mod http;
pub mod require;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_net::client::{Client, ClientConfig, ClientEvent};
use chat_net::cluster::{Cluster, ClusterError};
use chat_net::server::ServerConfig;
use chat_net::Shutdown;
use chat_store::{MemoryStore, Store};

/// How long any test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until `f` returns `Some`, polling every 20 ms, for at most `deadline`.
pub fn wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A component running on its own thread until its [`Shutdown`] flag is raised.
pub struct Running<T: Send + 'static> {
    shutdown: Shutdown,
    done: crossbeam_channel::Receiver<T>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Running<T> {
    /// Runs `body` on a new thread with a fresh shutdown flag.
    pub fn spawn(body: impl FnOnce(&Shutdown) -> T + Send + 'static) -> Running<T> {
        let shutdown = Shutdown::new();
        let (tx, done) = crossbeam_channel::bounded(1);
        let flag = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(body(&flag));
        });
        Running {
            shutdown,
            done,
            thread: Some(thread),
        }
    }

    /// The result, if the thread has already finished (e.g. it failed to start).
    pub fn try_result(&self) -> Option<T> {
        self.done.try_recv().ok()
    }

    /// Raises the flag and returns the thread's result; panics if it does not stop within
    /// `within` or if it panicked.
    pub fn stop(mut self, within: Duration) -> T {
        self.shutdown.trigger();
        let result = self
            .done
            .recv_timeout(within)
            .expect("the component did not stop in time");
        if let Some(t) = self.thread.take() {
            t.join().expect("the component's thread panicked");
        }
        result
    }
}

impl<T: Send + 'static> Drop for Running<T> {
    fn drop(&mut self) {
        // Also on a failed assertion: stop the thread before its context goes away.
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = self.done.recv_timeout(DEADLINE);
            let _ = t.join();
        }
    }
}

/// Broker, proxy and servers running on threads: a [`Cluster`] with one shared context and
/// SQLite stores in a temporary directory, under the names these tests use.
pub struct TestCluster {
    /// The context every component of the cluster uses.
    pub ctx: chat_net::Context,
    /// Broker endpoint for clients.
    pub frontend: String,
    /// Broker endpoint for servers.
    pub backend: String,
    /// Proxy endpoint for publishers.
    pub xsub: String,
    /// Proxy endpoint for subscribers.
    pub xpub: String,
    /// Reference endpoint, when the cluster has one (servers then know their peers).
    pub reference: Option<String>,
    // Declared before `dir`: the servers stop before their directories go.
    cluster: Cluster,
    /// Where the servers' SQLite directories live (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts broker and proxy, then `n` servers with SQLite stores in a temporary
    /// directory; no reference, so the servers replicate seed-style over the topic.
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, false)
    }

    /// Like [`TestCluster::start`], with a reference service when `reference` is set (the
    /// servers then find each other, elect, acknowledge through peers and catch up).
    pub fn start_with(n: usize, reference: bool) -> TestCluster {
        let ctx = chat_net::Context::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = Cluster::builder()
            .servers(n)
            .reference(reference)
            .shared_context(ctx.clone())
            .sqlite_stores(dir.path())
            .start()
            .expect("cluster");
        let e = cluster.endpoints().clone();
        TestCluster {
            ctx,
            frontend: e.frontend,
            backend: e.backend,
            xsub: e.xsub,
            xpub: e.xpub,
            reference: e.reference,
            cluster,
            dir,
        }
    }

    /// The cluster underneath (for restarts, liveness, statistics).
    pub fn cluster(&mut self) -> &mut Cluster {
        &mut self.cluster
    }

    /// The data directory of server `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration a server `name` of this cluster runs with.
    pub fn server_config(&self, name: &str) -> ServerConfig {
        self.cluster.server_config(name)
    }

    /// Starts server `name` on its SQLite directory (reusing it if it exists).
    pub fn start_server(&mut self, name: &str) {
        self.cluster.start_server(name).expect("server");
    }

    /// Starts server `name` with an in-memory store.
    pub fn start_memory_server(&mut self, name: &str) {
        self.start_server_with(name, Box::new(MemoryStore::default()));
    }

    /// Starts server `name` on a store of the caller's (e.g. one that fails or stalls).
    pub fn start_server_with(&mut self, name: &str, store: Box<dyn Store>) {
        let cfg = self.server_config(name);
        self.cluster.start_server_with(cfg, store).expect("server");
    }

    /// Stops server `name` (cleanly) and waits for it.
    pub fn stop_server(&mut self, name: &str) {
        match self.cluster.stop_server(name) {
            Ok(()) | Err(ClusterError::NoSuchServer(_)) => {}
            Err(e) => panic!("stopping {name}: {e}"),
        }
    }

    /// A client configuration pointing at this cluster.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            broker: self.frontend.clone(),
            sub: self.xpub.clone(),
            timeout: Duration::from_secs(3),
            attempts: 3,
            ..ClientConfig::default()
        }
    }

    /// A connected SDK client.
    pub fn client(&self) -> Client {
        Client::connect(self.client_config()).expect("client")
    }
}

/// Receives one multipart message on `sock` within `timeout`, or `None`.
pub fn recv_within(sock: &zmq::Socket, timeout: Duration) -> Option<Vec<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if sock.poll(zmq::POLLIN, left.as_millis() as i64).unwrap() > 0 {
            return Some(sock.recv_multipart(0).unwrap());
        }
        if left.is_zero() {
            return None;
        }
    }
}

/// Subscribes `listener` to `channel` and publishes probes from `publisher` until one
/// arrives, so the subscription is known to be live (slow joiner). Drains the probes.
pub fn subscribe_live(listener: &Client, publisher: &Client, user: &str, channel: &str) {
    listener.subscribe(channel).expect("subscribe");
    let got = wait_for(DEADLINE, || {
        publisher
            .publish(user, channel, "probe")
            .expect("probe publish");
        listener
            .events()
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|e| matches!(e, ClientEvent::Post(p) if p.channel == channel))
    });
    assert!(got.is_some(), "subscription to {channel} never became live");
    // Let the remaining probes in flight arrive, then drop them.
    while listener
        .events()
        .recv_timeout(Duration::from_millis(200))
        .is_ok()
    {}
}

/// Next event on `client` other than probes, within the deadline.
pub fn next_event(client: &Client) -> Option<ClientEvent> {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        match client.events().recv_timeout(Duration::from_millis(100)) {
            Ok(ClientEvent::Post(p)) if p.message == "probe" => continue,
            Ok(e) => return Some(e),
            Err(_) => continue,
        }
    }
    None
}

/// Sends one request to `endpoint` (a server's peer socket, or the reference) over a
/// fresh REQ socket; `None` if no reply within a second.
pub fn ask(endpoint: &str, request: chat_core::Request) -> Option<chat_core::ReplyEnvelope> {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::REQ).ok()?;
    s.set_linger(0).ok()?;
    s.connect(endpoint).ok()?;
    let env = chat_core::RequestEnvelope {
        request,
        meta: chat_core::Meta::default(),
    };
    let bytes = chat_core::protocol::encode_request(&env, chat_core::Encoding::MsgPack).ok()?;
    s.send(bytes, 0).ok()?;
    if s.poll(zmq::POLLIN, 1000).ok()? == 0 {
        return None;
    }
    let reply = s.recv_bytes(0).ok()?;
    chat_core::protocol::decode_reply(&reply)
        .ok()
        .map(|(r, _)| r)
}

/// The status of the server whose peer socket is `endpoint`.
pub fn status_at(endpoint: &str) -> Option<chat_core::ServerStatus> {
    match ask(endpoint, chat_core::Request::Status)?.reply {
        chat_core::Reply::Status(s) => Some(*s),
        _ => None,
    }
}

/// The full history of `channel` as stored by the server at `endpoint` (all pages).
pub fn history_at(endpoint: &str, channel: &str) -> Option<Vec<chat_core::ChannelPost>> {
    let mut out = Vec::new();
    let mut before = None;
    for _ in 0..10_000 {
        let req = chat_core::Request::History {
            target: chat_core::HistoryTarget::Channel(channel.to_string()),
            before: before.clone(),
            limit: 1000,
        };
        let page = match ask(endpoint, req)?.reply {
            chat_core::Reply::History(p) => p,
            _ => return None,
        };
        let mut items: Vec<chat_core::ChannelPost> = page
            .items
            .into_iter()
            .filter_map(|p| match p {
                chat_core::Publication::Channel(c) => Some(c),
                chat_core::Publication::Direct(_) => None,
            })
            .collect();
        items.append(&mut out);
        out = items;
        match page.next {
            Some(n) => before = Some(n),
            None => return Some(out),
        }
    }
    None
}

/// Every page of `target`'s history, `limit` items each, as the server at `endpoint` pages
/// it (newest page first: items, cursors and heads).
pub fn pages_at(
    endpoint: &str,
    target: &chat_core::HistoryTarget,
    limit: u32,
) -> Option<Vec<chat_core::HistoryPage>> {
    let mut pages = Vec::new();
    let mut before = None;
    for _ in 0..10_000 {
        let req = chat_core::Request::History {
            target: target.clone(),
            before: before.clone(),
            limit,
        };
        let page = match ask(endpoint, req)?.reply {
            chat_core::Reply::History(p) => p,
            _ => return None,
        };
        before = page.next.clone();
        pages.push(page);
        if before.is_none() {
            return Some(pages);
        }
    }
    None
}

/// A peer named `fake` that registers with the reference at `reference` (then heartbeats
/// every 300 ms) and answers everything on its own ROUTER socket (so a server sees it alive
/// and caught up) except `replicate`, which it swallows: a write pushed to it is never
/// durable anywhere but at its origin. Returns its thread, which counts the swallowed
/// `replicate` requests until `stop` is raised, and its peer endpoint.
pub fn fake_peer(reference: &str, stop: Arc<AtomicBool>) -> (JoinHandle<usize>, String) {
    use chat_core::protocol::{decode_request, encode_reply, encode_request};
    use chat_core::{Encoding, Meta, Reply, ReplyEnvelope, Request, RequestEnvelope};
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).expect("router");
    router.set_linger(0).expect("linger");
    router
        .bind("tcp://127.0.0.1:*")
        .expect("bind the fake peer");
    let endpoint = router
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8 endpoint");
    let reference = reference.to_string();
    let ep = endpoint.clone();
    let handle = std::thread::spawn(move || {
        let reg = ctx.socket(zmq::REQ).expect("req");
        reg.set_linger(0).expect("linger");
        reg.connect(&reference).expect("connect to the reference");
        let mut swallowed = 0;
        let mut next_hb = Instant::now();
        let mut first = true;
        for _ in 0..100_000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if Instant::now() >= next_hb {
                let request = if first {
                    Request::Rank {
                        name: "fake".into(),
                        endpoint: Some(ep.clone()),
                        rank: None,
                    }
                } else {
                    Request::Heartbeat {
                        user: Some("fake".into()),
                        rank: None,
                        endpoint: None,
                    }
                };
                first = false;
                let env = RequestEnvelope {
                    request,
                    meta: Meta::default(),
                };
                let bytes = encode_request(&env, Encoding::MsgPack).expect("encode");
                reg.send(bytes, 0).expect("send to the reference");
                if reg.poll(zmq::POLLIN, 1000).expect("poll") > 0 {
                    let _ = reg.recv_bytes(0);
                }
                next_hb = Instant::now() + Duration::from_millis(300);
            }
            if router.poll(zmq::POLLIN, 50).expect("poll") == 0 {
                continue;
            }
            let Ok(parts) = router.recv_multipart(0) else {
                continue;
            };
            let Some(body) = parts.last() else { continue };
            let Ok((req, _)) = decode_request(body) else {
                continue;
            };
            let reply = match &req.request {
                Request::Replicate { .. } => {
                    swallowed += 1;
                    continue;
                }
                Request::Sync { .. } => Reply::Events {
                    events: vec![],
                    more: false,
                },
                Request::Clock => Reply::Clock(chat_core::Timestamp::from_millis(0)),
                _ => Reply::Done,
            };
            let env = ReplyEnvelope {
                service: req.request.service().as_str().into(),
                reply,
                meta: Meta {
                    clock: 1,
                    timestamp: None,
                    id: req.meta.id.clone(),
                },
            };
            let mut frames = parts[..parts.len() - 1].to_vec();
            frames.push(encode_reply(&env, Encoding::MsgPack).expect("encode"));
            let _ = router.send_multipart(frames, 0);
        }
        swallowed
    });
    (handle, endpoint)
}
