//! Scaffolding for chat-web tests: the shared in-process cluster of `chat-testkit` (with a
//! reference and in-memory servers), chat-web on its own thread, and a minimal HTTP/1.1
//! client. Everything stops on drop.

#![allow(dead_code)]

pub mod cdp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_net::client::Client;
use chat_net::Shutdown;
use chat_web::{run_web_with, WebConfig, WebLimits};

/// How long any test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

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

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The session token set by this answer, if any.
    pub fn session_cookie(&self) -> Option<String> {
        let v = self.header("set-cookie")?;
        let (kv, _) = v.split_once(';')?;
        Some(kv.to_string())
    }
}

/// One HTTP/1.1 request with `Connection: close`; `cookie` is `name=value`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&[u8]>,
) -> HttpReply {
    let mut s = TcpStream::connect(addr).expect("connect to chat-web");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    if let Some(b) = body {
        // The server may answer (413) and close before reading everything.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// POSTs JSON.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: &serde_json::Value,
) -> HttpReply {
    let bytes = serde_json::to_vec(body).expect("json");
    http(addr, "POST", path, cookie, Some(&bytes))
}

/// Signs `user` in through the API and returns the session cookie (`name=value`).
pub fn sign_in(addr: SocketAddr, user: &str) -> String {
    let r = post_json(
        addr,
        "/api/login",
        None,
        &serde_json::json!({ "user": user }),
    );
    assert_eq!(r.status, 200, "login {user}: {}", r.body);
    r.session_cookie().expect("session cookie")
}
