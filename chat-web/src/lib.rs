//! `chat-web`: a browser client and cluster view of the chat service, served over HTTP.
//!
//! # Layout
//! - this file: [`WebConfig`], [`WebLimits`], [`BoundWeb`] (bind, then serve until a shutdown
//!   future resolves), [`serve`], and the blocking entry points [`run_web`] / [`run_web_with`]
//!   that the binary and `chat up` use.
//! - [`api`]: the HTTP routes (`/`, `/app.js`, `/app.css`, `/api/...`), the JSON shapes, the
//!   session extractor and the security headers; `POST /api/check` runs the cluster
//!   self-check ([`chat_net::check`]) here, for the page's "Check the cluster" button.
//! - [`session`]: browser sessions: random token cookie, one SDK [`chat_net::client::Client`]
//!   per session (its own subscriptions), a pump thread per session that forwards the SDK's
//!   events into bounded per-stream queues for Server-Sent Events, expiry and limits.
//! - [`cluster`]: one background thread that polls `status` and listens to `servers`
//!   announcements, keeping a table of every server that answered.
//! - [`errors`]: error codes turned into sentences for people.
//! - [`assets`]: the page (HTML, CSS, JavaScript) embedded in the binary.
//!
//! The SDK is blocking (ZeroMQ), so every SDK call runs on tokio's blocking pool, bounded by
//! a semaphore; the async runtime never waits on the network. A browser that reads its
//! event stream too slowly has that stream closed (the page reconnects and reloads), so it
//! cannot stall anyone else.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod assets;
pub mod cluster;
pub mod errors;
pub mod session;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chat_net::client::ClientConfig;
use chat_net::Shutdown;

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where chat-web listens and which cluster it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// HTTP listen address, `host:port` (port 0: chosen by the OS).
    pub listen: String,
    /// Broker frontend endpoint (requests).
    pub broker: String,
    /// Proxy XPUB endpoint (subscriptions).
    pub sub: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: DEFAULT_LISTEN.to_string(),
            broker: chat_core::DEFAULT_BROKER_FRONTEND.to_string(),
            sub: chat_core::DEFAULT_PROXY_XPUB.to_string(),
        }
    }
}

/// Limits and timings of the web server; the defaults suit a LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebLimits {
    /// Most signed-in browser sessions at once.
    pub max_sessions: usize,
    /// Most sessions from one IP address.
    pub max_sessions_per_ip: usize,
    /// A session unused for this long is closed.
    pub idle_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Events queued per event stream before the stream is judged too slow and closed.
    pub stream_queue: usize,
    /// Event streams one session may hold open at once (tabs); the oldest is closed.
    pub max_streams_per_session: usize,
    /// SDK calls running at once (each holds a blocking thread).
    pub max_concurrent_calls: usize,
    /// How long one SDK request waits for a reply before retrying.
    pub sdk_timeout: Duration,
    /// How many times an SDK request is sent in all.
    pub sdk_attempts: u32,
    /// How often the cluster table is refreshed with `status`.
    pub status_interval: Duration,
}

impl Default for WebLimits {
    fn default() -> Self {
        WebLimits {
            max_sessions: 128,
            max_sessions_per_ip: 16,
            idle_timeout: Duration::from_secs(15 * 60),
            max_body_bytes: 128 * 1024,
            stream_queue: 256,
            max_streams_per_session: 4,
            max_concurrent_calls: 64,
            sdk_timeout: Duration::from_secs(3),
            sdk_attempts: 2,
            status_interval: Duration::from_secs(2),
        }
    }
}

impl WebLimits {
    /// The SDK configuration used for `cfg`'s cluster with these limits.
    pub fn client_config(&self, cfg: &WebConfig) -> ClientConfig {
        ClientConfig {
            broker: cfg.broker.clone(),
            sub: cfg.sub.clone(),
            timeout: self.sdk_timeout,
            attempts: self.sdk_attempts,
            ..ClientConfig::default()
        }
    }
}

/// A web server bound to its port, not yet serving.
pub struct BoundWeb {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: Arc<api::AppState>,
}

impl BoundWeb {
    /// Binds `cfg.listen` and prepares the shared state (nothing is served yet).
    pub async fn bind(cfg: &WebConfig, limits: WebLimits) -> anyhow::Result<BoundWeb> {
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let state = api::AppState::new(cfg, limits);
        Ok(BoundWeb {
            listener,
            addr,
            state,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL, `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until `shutdown` resolves, then closes every session and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let BoundWeb {
            listener, state, ..
        } = self;
        let poller = cluster::start_poller(
            state.client_config.clone(),
            state.limits.status_interval,
            state.cluster.clone(),
            state.stop.clone(),
        );
        let sweeper = tokio::spawn(api::sweep_sessions(state.clone()));
        let app = api::router(state.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
        });
        shutdown.await;
        tracing::info!("chat-web stopping");
        state.stop.trigger();
        // Event streams never end by themselves: close every session so they do, then let
        // the HTTP server finish what is in flight (bounded).
        let closed = state.sessions.close_all();
        let _ = stop_tx.send(());
        sweeper.abort();
        let served = match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(r)) => r.context("HTTP server failed"),
            Ok(Err(e)) => Err(anyhow::anyhow!("HTTP server task failed: {e}")),
            Err(_) => {
                tracing::warn!("HTTP connections did not close within 5 s; dropping them");
                Ok(())
            }
        };
        // Join the pump threads (they drop the SDK clients), off the runtime. The poller may
        // be inside a `status` call that waits for a dead cluster: give it a moment, then
        // leave it to finish on its own rather than hold the stop.
        let _ = tokio::task::spawn_blocking(move || {
            for s in closed {
                s.join_pump();
            }
        })
        .await;
        let end = tokio::time::Instant::now() + Duration::from_secs(1);
        while !poller.is_finished() && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if poller.is_finished() {
            let _ = poller.join();
        }
        served
    }
}

/// Binds `cfg.listen`, prints `chat-web listening url=...` on stdout, and serves until
/// `shutdown` resolves.
pub async fn serve(
    cfg: WebConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let web = BoundWeb::bind(&cfg, WebLimits::default()).await?;
    announce(&web);
    web.run(shutdown).await
}

fn announce(web: &BoundWeb) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "chat-web listening url={}", web.url());
    let _ = out.flush();
    tracing::info!(url = %web.url(), "chat-web listening");
}

/// Runs chat-web on its own tokio runtime until `shutdown` is raised (blocking).
pub fn run_web(cfg: &WebConfig, shutdown: &Shutdown) -> anyhow::Result<()> {
    run_web_with(cfg, WebLimits::default(), shutdown, None)
}

/// Like [`run_web`] with explicit limits; sends the bound address on `bound` once listening.
pub fn run_web_with(
    cfg: &WebConfig,
    limits: WebLimits,
    shutdown: &Shutdown,
    bound: Option<crossbeam_channel::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(limits.max_concurrent_calls.max(1) + 16)
        .thread_name("chat-web")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let flag = shutdown.clone();
    let result = runtime.block_on(async move {
        let web = BoundWeb::bind(cfg, limits).await?;
        announce(&web);
        if let Some(tx) = bound {
            let _ = tx.send(web.local_addr());
        }
        web.run(async move {
            while !flag.is_triggered() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
