//! The in-process cluster of a run: `chat_net::cluster` with the bench's settings
//! (thread names `bench-*`, one context per component, stores and server flags from the
//! command line), and its temporary SQLite directory.

use anyhow::Context as _;
use chat_core::ratelimit::RateLimit;
use chat_net::cluster::Cluster;
use chat_store::{HookedStore, MemoryStore, SqliteStore, Store};

use super::flags::{BenchArgs, StoreKind};

/// The in-process cluster of a run and its SQLite directory, removed once the cluster has
/// stopped (fields drop in order).
pub(super) struct InProcess {
    pub(super) cluster: Cluster,
    _dir: Option<tempfile::TempDir>,
}

/// Starts proxy, broker, reference and `--servers` servers on threads of this process.
pub(super) fn start_cluster(args: &BenchArgs) -> anyhow::Result<InProcess> {
    let dir = match args.store {
        StoreKind::Memory => None,
        StoreKind::Sqlite => Some(
            match &args.data_dir {
                Some(parent) => tempfile::Builder::new()
                    .prefix("chat-bench-")
                    .tempdir_in(parent),
                None => tempfile::Builder::new().prefix("chat-bench-").tempdir(),
            }
            .context("creating the temporary data directory")?,
        ),
    };
    let path = dir.as_ref().map(|d| d.path().to_path_buf());
    let delay = args.commit_delay;
    let (rate_limit, inline_commit) = (args.rate_limit, args.inline_commit);
    let (ack_replicas, window) = (args.ack_replicas, args.replicate_window);
    let cluster = Cluster::builder()
        .servers(args.servers)
        .reference(true)
        .thread_prefix("bench")
        .stores(move |name| {
            let mut store: Box<dyn Store> = match &path {
                None => Box::new(MemoryStore::default()),
                Some(d) => Box::new(SqliteStore::open(&d.join(name))?),
            };
            if !delay.is_zero() {
                // A slower disk: every commit takes that much longer.
                store = Box::new(HookedStore::new(
                    store,
                    Box::new(move |_| std::thread::sleep(delay)),
                ));
            }
            Ok(store)
        })
        .configure(move |cfg| {
            cfg.rate_limit = match rate_limit {
                0 => RateLimit::disabled(),
                n => RateLimit::new(n, n.saturating_mul(2)),
            };
            cfg.inline_commit = inline_commit;
            cfg.replication = chat_sync::ReplicationConfig {
                ack_replicas,
                window,
                ..chat_sync::ReplicationConfig::default()
            };
        })
        .start()?;
    Ok(InProcess { cluster, _dir: dir })
}
