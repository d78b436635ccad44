//! Shared scaffolding for chat-web tests: a whole cluster in one process (proxy, broker,
//! reference, servers with in-memory stores) on loopback ports chosen by the OS, chat-web
//! on its own thread, and a minimal HTTP/1.1 client. Everything stops on drop.

#![allow(dead_code)]

pub mod cdp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_net::broker::{run_broker, BrokerConfig};
use chat_net::client::{Client, ClientConfig};
use chat_net::proxy::{run_proxy, ProxyConfig};
use chat_net::reference::{run_reference, ReferenceConfig};
use chat_net::server::{run_server, ServerConfig};
use chat_net::Shutdown;
use chat_store::MemoryStore;
use chat_web::{run_web_with, WebConfig, WebLimits};

/// How long any test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until `f` returns `Some`, polling every 50 ms, for at most `deadline`.
pub fn wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Running {
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Proxy, broker, reference and servers running on threads.
pub struct TestCluster {
    pub ctx: zmq::Context,
    pub frontend: String,
    pub backend: String,
    pub xsub: String,
    pub xpub: String,
    pub reference: String,
    infra: Shutdown,
    infra_threads: Vec<JoinHandle<()>>,
    servers: Vec<Running>,
}

impl TestCluster {
    /// Starts proxy, broker and reference, then `n` servers with in-memory stores, and waits
    /// until the cluster answers requests.
    pub fn start(n: usize) -> TestCluster {
        let ctx = zmq::Context::new();
        let infra = Shutdown::new();
        let (ptx, prx) = crossbeam_channel::bounded(1);
        let (btx, brx) = crossbeam_channel::bounded(1);
        let (rtx, rrx) = crossbeam_channel::bounded(1);
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
        {
            let (ctx, sd) = (ctx.clone(), infra.clone());
            infra_threads.push(std::thread::spawn(move || {
                let cfg = ReferenceConfig {
                    bind: "tcp://127.0.0.1:*".into(),
                    ..ReferenceConfig::default()
                };
                run_reference(&ctx, &cfg, &sd, Some(rtx)).expect("reference");
            }));
        }
        let (xsub, xpub) = prx.recv_timeout(DEADLINE).expect("proxy endpoints");
        let (frontend, backend) = brx.recv_timeout(DEADLINE).expect("broker endpoints");
        let reference = rrx.recv_timeout(DEADLINE).expect("reference endpoint");
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
        };
        for i in 1..=n {
            cluster.start_server(&format!("server-{i}"));
        }
        let client = cluster.client();
        let up = wait_for(DEADLINE, || client.status().ok());
        assert!(up.is_some(), "the test cluster never answered `status`");
        cluster
    }

    /// Starts server `name` with an in-memory store.
    pub fn start_server(&mut self, name: &str) {
        let cfg = ServerConfig {
            broker: self.backend.clone(),
            publish: self.xsub.clone(),
            subscribe: self.xpub.clone(),
            reference: Some(self.reference.clone()),
            ..ServerConfig::new(name)
        };
        let shutdown = Shutdown::new();
        let (ctx, sd) = (self.ctx.clone(), shutdown.clone());
        let thread = std::thread::spawn(move || {
            run_server(&ctx, &cfg, Box::new(MemoryStore::default()), &sd).expect("server");
        });
        self.servers.push(Running {
            shutdown,
            thread: Some(thread),
        });
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

    /// chat-web's configuration for this cluster, on an OS-chosen port.
    pub fn web_config(&self) -> WebConfig {
        WebConfig {
            listen: "127.0.0.1:0".into(),
            broker: self.frontend.clone(),
            sub: self.xpub.clone(),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.stop();
        }
        self.infra.trigger();
        for t in self.infra_threads.drain(..) {
            let _ = t.join();
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
