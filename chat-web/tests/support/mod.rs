//! Scaffolding for chat-web tests: the shared in-process cluster of `chat-testkit` (with a
//! reference and in-memory servers), chat-web on its own thread, and the minimal HTTP/1.1
//! client of `chat_testkit::http`. Everything stops on drop.

#![allow(dead_code)]

pub mod cdp;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_net::client::Client;
use chat_net::Shutdown;
use chat_web::{run_web_with, WebConfig, WebLimits};

/// How long any test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[allow(unused_imports)] // each test crate uses its own part
pub use chat_testkit::http::{http, post_json, sign_in, HttpReply};
pub use chat_testkit::wait_for;

/// The shared in-process cluster (`chat-testkit`) with a reference and in-memory servers,
/// plus chat-web's configuration for it.
pub struct TestCluster(chat_testkit::TestCluster);

impl std::ops::Deref for TestCluster {
    type Target = chat_testkit::TestCluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl TestCluster {
    /// Starts proxy, broker and reference, then `n` servers with in-memory stores, and waits
    /// until the cluster answers requests.
    pub fn start(n: usize) -> TestCluster {
        let mut cluster = chat_testkit::TestCluster::start_with(0, true);
        for i in 1..=n {
            cluster.start_memory_server(&format!("server-{i}"));
        }
        let client = cluster.client();
        let up = wait_for(DEADLINE, || client.status().ok());
        assert!(up.is_some(), "the test cluster never answered `status`");
        TestCluster(cluster)
    }

    /// Starts server `name` with an in-memory store.
    pub fn start_server(&mut self, name: &str) {
        self.0.start_memory_server(name);
    }

    /// chat-web's configuration for this cluster, on an OS-chosen port.
    pub fn web_config(&self) -> WebConfig {
        WebConfig {
            listen: "127.0.0.1:0".into(),
            broker: self.frontend.clone(),
            sub: self.xpub.clone(),
        }
    }
}

/// Publishes through the SDK, waiting out the servers' per-user rate limit.
pub fn publish_patiently(client: &Client, user: &str, channel: &str, message: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        match client.publish(user, channel, message) {
            Ok(()) => return,
            Err(e) if e.code() == chat_core::ErrorCode::RateLimited && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("publish {message:?} to {channel}: {e}"),
        }
    }
}

/// POSTs JSON through chat-web, waiting out the servers' per-user rate limit (HTTP 429).
pub fn post_patiently(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: &serde_json::Value,
) -> HttpReply {
    let end = Instant::now() + DEADLINE;
    loop {
        let r = post_json(addr, path, cookie, body);
        if r.status != 429 || Instant::now() >= end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// chat-web running on a thread of the test process.
pub struct TestWeb {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWeb {
    /// Starts chat-web for `cfg` with `limits` and waits until it listens.
    pub fn start(cfg: WebConfig, limits: WebLimits) -> TestWeb {
        let shutdown = Shutdown::new();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sd = shutdown.clone();
        let thread = std::thread::spawn(move || run_web_with(&cfg, limits, &sd, Some(tx)));
        let addr = rx.recv_timeout(DEADLINE).expect("chat-web listening");
        TestWeb {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops chat-web and returns how long it took; panics if it failed.
    pub fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            t.join().expect("chat-web thread").expect("chat-web result");
        }
        t0.elapsed()
    }
}

impl Drop for TestWeb {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
