//! A whole cluster in one process: proxy, broker, (optionally) reference and servers, each
//! on its own thread, on loopback ports chosen by the OS. For benchmarks, examples and tests.
//!
//! ```no_run
//! # fn main() -> Result<(), chat_net::cluster::ClusterError> {
//! use chat_net::cluster::Cluster;
//! let mut cluster = Cluster::builder()
//!     .servers(3)
//!     .reference(true)
//!     .memory_stores()
//!     .configure(|cfg| cfg.replication.ack_replicas = 2)
//!     .start()?;
//! let client = chat_net::client::Client::connect(cluster.client_config());
//! cluster.restart_server("server-2")?;
//! # Ok(()) }
//! ```
//!
//! Each component binds on its own thread (named `<prefix>-proxy`, `<prefix>-broker`,
//! `<prefix>-reference`, `<prefix>-<server name>`), so libzmq's I/O threads are started by,
//! and named after, that thread; its endpoints come back before the next one starts. By
//! default each component has its own [`Context`] (as separate processes would);
//! [`ClusterBuilder::shared_context`] puts them all in one. Servers are named `server-1` ..
//! `server-N`; their stores come from the builder ([`ClusterBuilder::sqlite_stores`]: one
//! SQLite directory per server name under a directory of the caller's, so a restarted
//! server finds its events again; [`ClusterBuilder::memory_stores`]; or any factory). Every
//! component stops on its [`Shutdown`] flag: servers first, then reference, broker and
//! proxy, on [`Cluster::stop`] or on drop. Waits are bounded by [`BIND_DEADLINE`] and
//! [`STOP_DEADLINE`].

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_store::{MemoryStore, SqliteStore, Store, StoreError};

use crate::broker::{Broker, BrokerConfig, BrokerStats};
use crate::client::ClientConfig;
use crate::proxy::{Proxy, ProxyConfig, ProxyStats};
use crate::reference::{Reference, ReferenceConfig, ReferenceError, ReferenceStats};
use crate::server::{run_server, ServerConfig, ServerError};
use crate::{Context, Shutdown};

/// Longest a component may take to bind and report its endpoints.
pub const BIND_DEADLINE: Duration = Duration::from_secs(15);
/// Longest a component may take to stop once its flag is raised.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// The endpoint every component binds: loopback, port chosen by the OS.
pub const LOOPBACK: &str = "tcp://127.0.0.1:*";

/// Why a cluster (or one of its servers) could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A thread could not be started.
    #[error("starting thread {name}: {source}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A component could not bind its sockets.
    #[error("binding {name}: {source}")]
    Bind {
        /// The component's thread name.
        name: String,
        /// What ZeroMQ said.
        source: zmq::Error,
    },
    /// A component did not report its endpoints within [`BIND_DEADLINE`].
    #[error("{0} did not bind within {BIND_DEADLINE:?}")]
    BindTimeout(String),
    /// A server's store could not be opened.
    #[error("opening the store of {name}: {source}")]
    Store {
        /// The server.
        name: String,
        /// What the store said.
        source: StoreError,
    },
    /// No server of that name is running.
    #[error("no server named {0} is running")]
    NoSuchServer(String),
    /// A server of that name is already running.
    #[error("server {0} is already running")]
    AlreadyRunning(String),
    /// A component did not stop within [`STOP_DEADLINE`] (its thread is left behind).
    #[error("{0} did not stop within {STOP_DEADLINE:?}")]
    StopTimeout(String),
    /// A component's thread panicked.
    #[error("{0} panicked")]
    Panicked(String),
    /// A server stopped with an error.
    #[error("server {name} failed: {source}")]
    Server {
        /// The server.
        name: String,
        /// Why it stopped.
        source: ServerError,
    },
    /// The broker, proxy or reference stopped with an error.
    #[error("{name} failed: {source}")]
    Component {
        /// The component's thread name.
        name: String,
        /// What ZeroMQ said.
        source: zmq::Error,
    },
}

/// Opens the store of a server, by name.
pub type StoreFactory = Box<dyn FnMut(&str) -> Result<Box<dyn Store>, StoreError> + Send + Sync>;
/// Adjusts the configuration of every server the cluster starts by name.
pub type Configure = Box<dyn Fn(&mut ServerConfig) + Send + Sync>;

/// Endpoints of a running cluster, with their real ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Broker endpoint for clients (ROUTER).
    pub frontend: String,
    /// Broker endpoint for servers (ROUTER).
    pub backend: String,
    /// Proxy endpoint publishers connect to (XSUB).
    pub xsub: String,
    /// Proxy endpoint subscribers connect to (XPUB).
    pub xpub: String,
    /// Reference endpoint, when the cluster has one.
    pub reference: Option<String>,
}

/// What the broker, proxy and reference counted, returned by [`Cluster::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStats {
    /// The broker's counters.
    pub broker: BrokerStats,
    /// The proxy's counters.
    pub proxy: ProxyStats,
    /// The reference's counters, when the cluster has one.
    pub reference: Option<ReferenceStats>,
}

/// How to start a [`Cluster`]; see the [module documentation](self).
pub struct ClusterBuilder {
    servers: usize,
    reference: bool,
    prefix: String,
    context: Option<Context>,
    stores: StoreFactory,
    configure: Configure,
    broker: BrokerConfig,
}

impl Default for ClusterBuilder {
    /// One server with an in-memory store, no reference, default configurations.
    fn default() -> Self {
        ClusterBuilder {
            servers: 1,
            reference: false,
            prefix: "cluster".to_string(),
            context: None,
            stores: Box::new(|_| Ok(Box::new(MemoryStore::default()))),
            configure: Box::new(|_| {}),
            broker: BrokerConfig::default(),
        }
    }
}

impl ClusterBuilder {
    /// Servers started with the cluster (`server-1` .. `server-n`; 0 for none yet).
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = n;
        self
    }

    /// Whether to run a reference service (the servers then find each other, elect,
    /// acknowledge through peers and catch up); without one they replicate seed-style.
    pub fn reference(mut self, on: bool) -> Self {
        self.reference = on;
        self
    }

    /// Prefix of the components' thread names (default `cluster`).
    pub fn thread_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Runs every component in `ctx` instead of a context of its own.
    pub fn shared_context(mut self, ctx: Context) -> Self {
        self.context = Some(ctx);
        self
    }

    /// Servers keep their events in memory (the default).
    pub fn memory_stores(self) -> Self {
        self.stores(|_| Ok(Box::new(MemoryStore::default())))
    }

    /// Servers keep their events in SQLite, server `name` in `dir/name` (reused on restart).
    pub fn sqlite_stores(self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.stores(move |name| Ok(Box::new(SqliteStore::open(&dir.join(name))?)))
    }

    /// Servers get their stores from `open`, called with the server's name at each start.
    pub fn stores(
        mut self,
        open: impl FnMut(&str) -> Result<Box<dyn Store>, StoreError> + Send + Sync + 'static,
    ) -> Self {
        self.stores = Box::new(open);
        self
    }

    /// Adjusts each server's configuration after the cluster's endpoints are filled in.
    pub fn configure(mut self, f: impl Fn(&mut ServerConfig) + Send + Sync + 'static) -> Self {
        self.configure = Box::new(f);
        self
    }

    /// The broker's configuration (its endpoints are replaced by loopback ones).
    pub fn broker_config(mut self, cfg: BrokerConfig) -> Self {
        self.broker = cfg;
        self
    }

    /// Starts proxy, broker, reference (if asked for) and the servers.
    pub fn start(self) -> Result<Cluster, ClusterError> {
        let ClusterBuilder {
            servers,
            reference,
            prefix,
            context,
            stores,
            configure,
            broker,
        } = self;
        let infra = Shutdown::new();
        let ctx_for = || context.clone().unwrap_or_default();
        let mut cluster = Cluster {
            endpoints: Endpoints {
                frontend: String::new(),
                backend: String::new(),
                xsub: String::new(),
                xpub: String::new(),
                reference: None,
            },
            prefix,
            context: context.clone(),
            stores,
            configure,
            infra: infra.clone(),
            proxy: None,
            broker: None,
            reference: None,
            servers: Vec::new(),
        };

        let name = format!("{}-proxy", cluster.prefix);
        let sd = infra.clone();
        let ((xsub, xpub), thread) = spawn_bound(
            &name,
            ctx_for(),
            |ctx| {
                let cfg = ProxyConfig {
                    xsub: LOOPBACK.to_string(),
                    xpub: LOOPBACK.to_string(),
                };
                let p = Proxy::bind(ctx, &cfg)?;
                Ok((
                    (p.xsub_endpoint().to_string(), p.xpub_endpoint().to_string()),
                    p,
                ))
            },
            move |p: Proxy| log_failure("proxy", p.run(&sd)),
        )?;
        cluster.proxy = Some(Thread::new(name, thread));

        let name = format!("{}-broker", cluster.prefix);
        let sd = infra.clone();
        let ((frontend, backend), thread) = spawn_bound(
            &name,
            ctx_for(),
            move |ctx| {
                let cfg = BrokerConfig {
                    frontend: LOOPBACK.to_string(),
                    backend: LOOPBACK.to_string(),
                    ..broker
                };
                let b = Broker::bind(ctx, &cfg)?;
                let endpoints = (
                    b.frontend_endpoint().to_string(),
                    b.backend_endpoint().to_string(),
                );
                Ok((endpoints, b))
            },
            move |b: Broker| log_failure("broker", b.run(&sd)),
        )?;
        cluster.broker = Some(Thread::new(name, thread));

        if reference {
            let name = format!("{}-reference", cluster.prefix);
            let sd = infra.clone();
            let (endpoint, thread) = spawn_bound(
                &name,
                ctx_for(),
                |ctx| {
                    let cfg = ReferenceConfig {
                        bind: LOOPBACK.to_string(),
                        ..ReferenceConfig::default()
                    };
                    let r = Reference::bind(ctx, &cfg)?;
                    Ok((r.endpoint().to_string(), r))
                },
                move |r: Reference| {
                    // The in-process reference keeps its ranks in memory (no data
                    // directory), so only transport errors can end it.
                    log_failure("reference", r.run(&sd)).map_err(|e| match e {
                        ReferenceError::Zmq(z) => z,
                        ReferenceError::Ranks { .. } => zmq::Error::EINVAL,
                    })
                },
            )?;
            cluster.reference = Some(Thread::new(name, thread));
            cluster.endpoints.reference = Some(endpoint);
        }
        cluster.endpoints.frontend = frontend;
        cluster.endpoints.backend = backend;
        cluster.endpoints.xsub = xsub;
        cluster.endpoints.xpub = xpub;

        for i in 1..=servers {
            cluster.start_server(&format!("server-{i}"))?;
        }
        Ok(cluster)
    }
}

/// A server running on its thread.
struct RunningServer {
    name: String,
    shutdown: Shutdown,
    thread: Thread<Result<(), ServerError>>,
}

/// Proxy, broker, (optionally) reference and servers on threads of this process; stopped
/// on [`Cluster::stop`] or on drop.
pub struct Cluster {
    endpoints: Endpoints,
    prefix: String,
    context: Option<Context>,
    stores: StoreFactory,
    configure: Configure,
    infra: Shutdown,
    proxy: Option<Thread<zmq::Result<ProxyStats>>>,
    broker: Option<Thread<zmq::Result<BrokerStats>>>,
    reference: Option<Thread<zmq::Result<ReferenceStats>>>,
    servers: Vec<RunningServer>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints)
            .field("servers", &self.server_names())
            .finish()
    }
}

impl Cluster {
    /// A builder with one in-memory server and no reference.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The endpoints of broker, proxy and reference.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The context shared by every component, when the builder was given one.
    pub fn shared_context(&self) -> Option<&Context> {
        self.context.as_ref()
    }

    /// Names of the running servers, in start order.
    pub fn server_names(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.name.clone()).collect()
    }

    /// A client configuration for this cluster (SDK defaults otherwise).
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            broker: self.endpoints.frontend.clone(),
            sub: self.endpoints.xpub.clone(),
            ..ClientConfig::default()
        }
    }

    /// The configuration server `name` of this cluster runs with: its endpoints, then the
    /// builder's adjustments.
    pub fn server_config(&self, name: &str) -> ServerConfig {
        let mut cfg = ServerConfig {
            broker: self.endpoints.backend.clone(),
            publish: self.endpoints.xsub.clone(),
            subscribe: self.endpoints.xpub.clone(),
            reference: self.endpoints.reference.clone(),
            ..ServerConfig::new(name)
        };
        (self.configure)(&mut cfg);
        cfg
    }

    /// Starts server `name` with [`Cluster::server_config`] and a store from the builder.
    pub fn start_server(&mut self, name: &str) -> Result<(), ClusterError> {
        if self.servers.iter().any(|s| s.name == name) {
            return Err(ClusterError::AlreadyRunning(name.to_string()));
        }
        let store = (self.stores)(name).map_err(|source| ClusterError::Store {
            name: name.to_string(),
            source,
        })?;
        self.start_server_with(self.server_config(name), store)
    }

    /// Starts a server with a configuration and a store of the caller's (e.g. one that
    /// stalls or fails); its name is `cfg.name`.
    pub fn start_server_with(
        &mut self,
        cfg: ServerConfig,
        store: Box<dyn Store>,
    ) -> Result<(), ClusterError> {
        if self.servers.iter().any(|s| s.name == cfg.name) {
            return Err(ClusterError::AlreadyRunning(cfg.name));
        }
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let ctx = self.context.clone();
        let thread_name = format!("{}-{}", self.prefix, cfg.name);
        let name = cfg.name.clone();
        let thread = spawn(&thread_name, move || {
            let ctx = ctx.unwrap_or_default();
            let result = run_server(&ctx, &cfg, store, &sd);
            if let Err(e) = &result {
                tracing::error!(server = %cfg.name, error = %e, "server failed");
            }
            result
        })?;
        self.servers.push(RunningServer {
            name,
            shutdown,
            thread: Thread::new(thread_name, thread),
        });
        Ok(())
    }

    /// Stops server `name` cleanly and waits for it (at most [`STOP_DEADLINE`]).
    pub fn stop_server(&mut self, name: &str) -> Result<(), ClusterError> {
        let pos = self
            .servers
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ClusterError::NoSuchServer(name.to_string()))?;
        let server = self.servers.remove(pos);
        server.shutdown.trigger();
        server
            .thread
            .finish()?
            .map_err(|source| ClusterError::Server {
                name: server.name,
                source,
            })
    }

    /// Stops server `name` and starts it again with a store from the builder (with SQLite
    /// stores, the same directory).
    pub fn restart_server(&mut self, name: &str) -> Result<(), ClusterError> {
        self.stop_server(name)?;
        self.start_server(name)
    }

    /// Whether each component's thread is still running: `proxy`, `broker`, `reference`
    /// (when there is one), then the servers by name.
    pub fn running(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for (name, t) in [
            ("proxy", self.proxy.as_ref().map(Thread::is_running)),
            ("broker", self.broker.as_ref().map(Thread::is_running)),
            ("reference", self.reference.as_ref().map(Thread::is_running)),
        ] {
            if let Some(up) = t {
                out.push((name.to_string(), up));
            }
        }
        for s in &self.servers {
            out.push((s.name.clone(), s.thread.is_running()));
        }
        out
    }

    /// Stops the servers, then reference, broker and proxy; returns their counters, or the
    /// first failure (every component is stopped either way).
    pub fn stop(mut self) -> Result<ClusterStats, ClusterError> {
        let mut first_error = None;
        for name in self.server_names() {
            if let Err(e) = self.stop_server(&name) {
                first_error.get_or_insert(e);
            }
        }
        self.infra.trigger();
        let reference = self.reference.take().map(|t| t.finish_component());
        let broker = self.broker.take().map(|t| t.finish_component());
        let proxy = self.proxy.take().map(|t| t.finish_component());
        let (reference, broker, proxy) = (
            keep_first(reference, &mut first_error),
            keep_first(broker, &mut first_error),
            keep_first(proxy, &mut first_error),
        );
        if let Some(e) = first_error {
            return Err(e);
        }
        match (broker, proxy) {
            (Some(broker), Some(proxy)) => Ok(ClusterStats {
                broker,
                proxy,
                reference,
            }),
            // Both exist from `start` until here.
            _ => Err(ClusterError::NoSuchServer("broker and proxy".to_string())),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Servers first, then reference, broker and proxy.
        for s in &self.servers {
            s.shutdown.trigger();
        }
        for s in self.servers.drain(..) {
            let _ = s.thread.finish();
        }
        self.infra.trigger();
        if let Some(t) = self.reference.take() {
            let _ = t.finish();
        }
        if let Some(t) = self.broker.take() {
            let _ = t.finish();
        }
        if let Some(t) = self.proxy.take() {
            let _ = t.finish();
        }
    }
}

/// A named thread whose result is collected with a bounded wait.
struct Thread<T> {
    name: String,
    handle: JoinHandle<T>,
}

impl<T> Thread<T> {
    fn new(name: String, handle: JoinHandle<T>) -> Self {
        Thread { name, handle }
    }

    fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Waits (at most [`STOP_DEADLINE`]) for the thread to end, and returns its result.
    fn finish(self) -> Result<T, ClusterError> {
        let end = Instant::now() + STOP_DEADLINE;
        while !self.handle.is_finished() {
            if Instant::now() >= end {
                tracing::warn!(thread = %self.name, "did not stop in time; left running");
                return Err(ClusterError::StopTimeout(self.name));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.handle
            .join()
            .map_err(|_| ClusterError::Panicked(self.name))
    }
}

impl<S> Thread<zmq::Result<S>> {
    /// [`Thread::finish`] for broker, proxy and reference.
    fn finish_component(self) -> Result<S, ClusterError> {
        let name = self.name.clone();
        self.finish()?
            .map_err(|source| ClusterError::Component { name, source })
    }
}

/// The value of `r`, or `None` with its error kept in `first` (unless one is there).
fn keep_first<S>(
    r: Option<Result<S, ClusterError>>,
    first: &mut Option<ClusterError>,
) -> Option<S> {
    match r? {
        Ok(stats) => Some(stats),
        Err(e) => {
            first.get_or_insert(e);
            None
        }
    }
}

/// Logs why a component stopped with an error, and returns its result.
fn log_failure<S, E: std::fmt::Display>(what: &str, result: Result<S, E>) -> Result<S, E> {
    if let Err(e) = &result {
        tracing::error!(component = what, error = %e, "failed");
    }
    result
}

/// Starts a thread named `name`.
pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, ClusterError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| ClusterError::Spawn {
            name: name.to_string(),
            source,
        })
}

/// Starts a component on a thread `name` with `ctx` (a context without sockets yet, or a
/// shared one): `bind` runs there, so libzmq's I/O threads are started by, and named after,
/// that thread; its endpoints come back here (within [`BIND_DEADLINE`]), then `serve` runs
/// until the component stops.
pub(crate) fn spawn_bound<X, E, C, S>(
    name: &str,
    ctx: X,
    bind: impl FnOnce(&X) -> zmq::Result<(E, C)> + Send + 'static,
    serve: impl FnOnce(C) -> zmq::Result<S> + Send + 'static,
) -> Result<(E, JoinHandle<zmq::Result<S>>), ClusterError>
where
    X: Send + 'static,
    E: Send + 'static,
    S: Send + 'static,
{
    let (tx, rx) = crossbeam_channel::bounded(1);
    let thread = spawn(name, move || match bind(&ctx) {
        Ok((endpoints, component)) => {
            let _ = tx.send(Ok(endpoints));
            serve(component)
        }
        Err(e) => {
            let _ = tx.send(Err(e));
            Err(e)
        }
    })?;
    match rx.recv_timeout(BIND_DEADLINE) {
        Ok(Ok(endpoints)) => Ok((endpoints, thread)),
        Ok(Err(source)) => {
            let _ = thread.join();
            Err(ClusterError::Bind {
                name: name.to_string(),
                source,
            })
        }
        Err(_) => Err(ClusterError::BindTimeout(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn a_cluster_can_be_shared_between_threads() {
        assert_send_sync::<Cluster>();
    }

    #[test]
    fn starts_restarts_one_server_and_stops_with_counters() {
        let mut cluster = Cluster::builder()
            .servers(2)
            .thread_prefix("test")
            .configure(|cfg| cfg.max_batch = 64)
            .start()
            .expect("cluster");
        assert_eq!(cluster.server_names(), ["server-1", "server-2"]);
        assert_eq!(cluster.server_config("server-1").max_batch, 64);
        assert!(cluster.endpoints().reference.is_none());
        let client = Client::connect(cluster.client_config()).expect("client");
        client.login("ana").expect("login");
        cluster.restart_server("server-2").expect("restart");
        assert!(matches!(
            cluster.start_server("server-2"),
            Err(ClusterError::AlreadyRunning(_))
        ));
        assert!(matches!(
            cluster.stop_server("server-9"),
            Err(ClusterError::NoSuchServer(_))
        ));
        assert!(cluster.running().iter().all(|(_, up)| *up));
        drop(client);
        let stats = cluster.stop().expect("stop");
        assert!(stats.broker.requests >= 1, "{stats:?}");
        assert!(stats.reference.is_none());
    }
}
