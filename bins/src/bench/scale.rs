//! `chat-bench history-scale`: what a long history costs a server (issue "history on
//! disk"). One server's store is filled with `--posts` posts (100 bytes by default) from
//! three origins, most of them on one long channel; then the real `chat-server` binary is
//! started on it (alone, behind an in-process broker and proxy) and measured as an
//! operator would: time from spawn to the first answered `status`, resident memory after
//! start, after `--pages` history pages of 50 from the middle of the long channel, and
//! after `--publish-secs` of publishes; and the latency of those pages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chat_core::{Event, EventId, EventKind, HistoryTarget, Stamp, Timestamp};
use chat_net::client::{Client, ClientConfig};
use chat_net::cluster::Cluster;
use chat_store::{SqliteStore, Store, StoreRead};
use clap::Args;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

/// Flags of `chat-bench history-scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Posts in the store (filled once; a store that has them already is reused).
    #[arg(long, default_value_t = 1_000_000)]
    pub posts: u64,
    /// Body size of each post, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Data directory of the server (default: a temporary one, removed at the end).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// History pages of 50 read from the middle of the long channel.
    #[arg(long, default_value_t = 2_000)]
    pub pages: u32,
    /// Seconds of publishes (8 clients) after the pages, to watch memory under writes.
    #[arg(long, default_value_t = 10)]
    pub publish_secs: u64,
}

/// The long channel of the filled store.
const LONG: &str = "long";
/// Origins of the filled events.
const ORIGINS: [&str; 3] = ["fill-a", "fill-b", "fill-c"];

/// Runs the measurement and prints its report.
pub fn history_scale(args: &ScaleArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data
        .clone()
        .unwrap_or_else(|| tmp.path().join("server-1"));
    let filled = fill(&dir, args.posts, args.size)?;
    let db_bytes = std::fs::metadata(dir.join(chat_store::sqlite::DB_FILE))?.len();
    println!(
        "store: {} events, {:.0} MB on disk{}",
        filled.events,
        db_bytes as f64 / 1e6,
        filled
            .rate
            .map(|r| format!(", filled at {r:.0} events/s"))
            .unwrap_or_default()
    );

    let cluster = Cluster::builder().servers(0).start()?;
    let e = cluster.endpoints().clone();
    let exe = std::env::current_exe()?;
    let server_bin = exe
        .parent()
        .map(|p| p.join("chat-server"))
        .filter(|p| p.is_file())
        .context(
            "chat-server is not beside chat-bench: build it (cargo build --release -p bins)",
        )?;
    let started = Instant::now();
    let child = Command::new(&server_bin)
        .args(["--name", "server-1", "--reference", "none"])
        .args(["--data".as_ref(), dir.as_os_str()])
        .args(["--broker", &e.backend, "--pub", &e.xsub, "--sub", &e.xpub])
        .args([
            "--peer",
            "tcp://127.0.0.1:*",
            "--rate-limit-per-sec",
            "0",
            "--ack-replicas",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting chat-server")?;
    let mut child = KillOnDrop(child);
    let client = Client::connect(ClientConfig {
        broker: e.frontend.clone(),
        sub: e.xpub.clone(),
        timeout: Duration::from_millis(200),
        attempts: 1,
        ..ClientConfig::default()
    })?;
    let deadline = started + Duration::from_secs(120);
    loop {
        if client.status().is_ok() {
            break;
        }
        if let Some(status) = child.0.try_wait()? {
            bail!("chat-server exited before serving: {status}");
        }
        if Instant::now() > deadline {
            bail!("chat-server did not serve within 120 s");
        }
    }
    let to_serving = started.elapsed();
    let pid = child.0.id();
    let rss_start = rss_mb(pid)?;
    println!(
        "restart to serving: {:.3} s; server RSS {rss_start:.1} MB",
        to_serving.as_secs_f64()
    );

    // History pages of 50 from the middle of the long channel (cursors between the first
    // and the last quarter of its posts).
    let client = Client::connect(ClientConfig {
        broker: e.frontend.clone(),
        sub: e.xpub.clone(),
        ..ClientConfig::default()
    })?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let long_posts = filled.long_clocks;
    for _ in 0..args.pages {
        let clock = rng.gen_range(long_posts / 4..long_posts * 3 / 4).max(1);
        let cursor = Stamp {
            clock,
            origin: ORIGINS[0].to_string(),
            seq: 0,
        }
        .cursor();
        let t = Instant::now();
        let page = client.history(HistoryTarget::Channel(LONG.into()), Some(cursor), 50)?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        if page.items.len() != 50 {
            bail!("a page from the middle held {} posts", page.items.len());
        }
    }
    let rss_pages = rss_mb(pid)?;
    println!(
        "history page of 50 from the middle: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} pages); RSS {rss_pages:.1} MB",
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.max() as f64 / 1e3,
        args.pages
    );

    // Publishes, to see memory stay flat while history grows.
    let until = Instant::now() + Duration::from_secs(args.publish_secs);
    let body = "x".repeat(args.size);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let cfg = ClientConfig {
                broker: e.frontend.clone(),
                sub: e.xpub.clone(),
                ..ClientConfig::default()
            };
            let body = body.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let c = Client::connect(cfg)?;
                let user = format!("scale-{i}");
                c.login(&user)?;
                let mut n = 0;
                while Instant::now() < until {
                    c.publish(&user, LONG, &body)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut published = 0;
    let mut peak = rss_pages;
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss_mb(pid)?);
    }
    for t in threads {
        published += t
            .join()
            .map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
    }
    let rss_end = rss_mb(pid)?;
    println!(
        "{published} publishes in {} s ({:.0}/s, one server, fsync): RSS peak {peak:.1} MB, end {rss_end:.1} MB",
        args.publish_secs,
        published as f64 / args.publish_secs.max(1) as f64
    );
    drop(child);
    cluster.stop()?;
    Ok(())
}

/// What filling the store gave.
struct Filled {
    events: u64,
    /// Lamport clocks of the long channel's posts run from 1 to about this.
    long_clocks: u64,
    /// Events per second, if the store was filled now.
    rate: Option<f64>,
}

/// Fills `dir`'s store with `posts` posts (unless it holds them already).
fn fill(dir: &Path, posts: u64, size: usize) -> anyhow::Result<Filled> {
    let mut store = SqliteStore::open(dir)?;
    let have = store.summary()?.events;
    if have >= posts {
        return Ok(Filled {
            events: have,
            long_clocks: have,
            rate: None,
        });
    }
    if have > 0 {
        bail!(
            "{} holds {have} events, fewer than --posts {posts}: use an empty directory",
            dir.display()
        );
    }
    let started = Instant::now();
    let body = "y".repeat(size);
    let mut seqs = [0u64; 3];
    let mut batch = Vec::with_capacity(2_000);
    let mut event = |i: u64, kind: EventKind| {
        let o = (i % 3) as usize;
        seqs[o] += 1;
        Event {
            id: EventId {
                origin: ORIGINS[o].to_string(),
                seq: seqs[o],
            },
            clock: i + 1,
            timestamp: Timestamp::from_millis(1_764_000_000_000 + i as i64),
            request_id: Some(format!("fill-{i}")),
            kind,
        }
    };
    batch.push(event(0, EventKind::UserLoggedIn { user: "ana".into() }));
    for (k, channel) in [LONG, "side-1", "side-2"].iter().enumerate() {
        batch.push(event(
            k as u64 + 1,
            EventKind::ChannelCreated {
                channel: channel.to_string(),
            },
        ));
    }
    for i in 4..posts {
        // Nine in ten on the long channel.
        let channel = match i % 10 {
            3 => "side-1",
            7 => "side-2",
            _ => LONG,
        };
        batch.push(event(
            i,
            EventKind::ChannelMessage {
                channel: channel.into(),
                user: "ana".into(),
                message: body.clone(),
            },
        ));
        if batch.len() == 2_000 {
            store.append(&batch)?;
            batch.clear();
        }
    }
    store.append(&batch)?;
    let events = store.summary()?.events;
    Ok(Filled {
        events,
        long_clocks: posts,
        rate: Some(events as f64 / started.elapsed().as_secs_f64()),
    })
}

/// Resident memory of process `pid`, in MB (Linux `/proc`).
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the server's /proc status (Linux only)")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc status")?;
    Ok(kb / 1024.0)
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
