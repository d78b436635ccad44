//! Test scaffolding shared by the workspace's tests, in one place.
//!
//! # Layout
//! - [`wait_for`] and [`DEADLINE`]: every wait is a condition polled under a deadline.
//! - [`Running`]: a component on its own thread, stopped by its [`Shutdown`] flag, with
//!   its result collected (also on a failed assertion, through `Drop`).
//! - [`TestCluster`]: proxy, broker, (optionally) reference and servers on threads of the
//!   test process, on loopback ports chosen by the OS, stopped on drop.
//! - [`subscribe_live`], [`next_event`]: live subscriptions despite ZeroMQ's slow joiner.
//! - [`ask`], [`status_at`], [`history_at`]: read one server directly through its peer
//!   socket (the broker would pick a server for us).
//! - [`http`]: a minimal HTTP/1.1 client for the web front end's tests.

pub mod http;

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_net::broker::{run_broker, BrokerConfig};
use chat_net::client::{Client, ClientConfig, ClientEvent};
use chat_net::proxy::{run_proxy, ProxyConfig};
use chat_net::reference::{run_reference, ReferenceConfig};
use chat_net::server::{run_server, ServerConfig};
use chat_net::Shutdown;
use chat_store::{MemoryStore, SqliteStore, Store};

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

struct RunningServer {
    name: String,
    running: Running<()>,
}

/// Broker, proxy and servers running on threads.
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
    infra: Shutdown,
    infra_threads: Vec<JoinHandle<()>>,
    servers: Vec<RunningServer>,
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
        let infra = Shutdown::new();
        let (ptx, prx) = crossbeam_channel::bounded(1);
        let (btx, brx) = crossbeam_channel::bounded(1);
        let mut infra_threads = Vec::new();
        {
            let (ctx, sd) = (ctx.clone(), infra.clone());
            infra_threads.push(std::thread::spawn(move || {
                let cfg = ProxyConfig {
                    xsub: "tcp://127.0.0.1:*".into(),
                    xpub: "tcp://127.0.0.1:*".into(),
                };
                run_proxy(&ctx, &cfg, &sd, Some(ptx)).expect("proxy");
            }));
        }
        {
            let (ctx, sd) = (ctx.clone(), infra.clone());
            infra_threads.push(std::thread::spawn(move || {
                let cfg = BrokerConfig {
                    frontend: "tcp://127.0.0.1:*".into(),
                    backend: "tcp://127.0.0.1:*".into(),
                    ..BrokerConfig::default()
                };
                run_broker(&ctx, &cfg, &sd, Some(btx)).expect("broker");
            }));
        }
        let reference = reference.then(|| {
            let (rtx, rrx) = crossbeam_channel::bounded(1);
            let (ctx, sd) = (ctx.clone(), infra.clone());
            infra_threads.push(std::thread::spawn(move || {
                let cfg = ReferenceConfig {
                    bind: "tcp://127.0.0.1:*".into(),
                    ..ReferenceConfig::default()
                };
                run_reference(&ctx, &cfg, &sd, Some(rtx)).expect("reference");
            }));
            rrx.recv_timeout(DEADLINE).expect("reference endpoint")
        });
        let (xsub, xpub) = prx.recv_timeout(DEADLINE).expect("proxy endpoints");
        let (frontend, backend) = brx.recv_timeout(DEADLINE).expect("broker endpoints");
        let mut cluster = TestCluster {
            ctx,
            frontend,
            backend,
            xsub,
            xpub,
            reference,
            infra,
            infra_threads,
            servers: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for i in 1..=n {
            cluster.start_server(&format!("server-{i}"));
        }
        cluster
    }

    /// The data directory of server `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration a server `name` of this cluster runs with.
    pub fn server_config(&self, name: &str) -> ServerConfig {
        ServerConfig {
            broker: self.backend.clone(),
            publish: self.xsub.clone(),
            subscribe: self.xpub.clone(),
            reference: self.reference.clone(),
            ..ServerConfig::new(name)
        }
    }

    /// Starts server `name` on its SQLite directory (reusing it if it exists).
    pub fn start_server(&mut self, name: &str) {
        let store = SqliteStore::open(&self.data_dir(name)).expect("open store");
        self.start_server_with(name, Box::new(store));
    }

    /// Starts server `name` with an in-memory store.
    pub fn start_memory_server(&mut self, name: &str) {
        self.start_server_with(name, Box::new(MemoryStore::default()));
    }

    /// Starts server `name` on a store of the caller's (e.g. one that fails or stalls).
    pub fn start_server_with(&mut self, name: &str, store: Box<dyn Store>) {
        let cfg = self.server_config(name);
        let ctx = self.ctx.clone();
        let running = Running::spawn(move |sd| run_server(&ctx, &cfg, store, sd).expect("server"));
        self.servers.push(RunningServer {
            name: name.to_string(),
            running,
        });
    }

    /// Stops server `name` (cleanly) and waits for it.
    pub fn stop_server(&mut self, name: &str) {
        if let Some(pos) = self.servers.iter().position(|s| s.name == name) {
            let s = self.servers.remove(pos);
            s.running.stop(DEADLINE);
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

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Servers first (their `Running` stops them on drop), then broker and proxy.
        self.servers.clear();
        self.infra.trigger();
        for t in self.infra_threads.drain(..) {
            let _ = t.join();
        }
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
