//! Live delivery through the SDK is exactly once and gap-free, with real processes on
//! loopback: SDK subscribers count every post they receive by request id while SDK writers
//! publish, and a server is `kill -9`ed and restarted, a server is paused (`SIGSTOP`) for
//! 3 s, or the proxy is killed and restarted. Once the load stops and the SDK settled, every
//! acknowledged write was delivered exactly once to every subscriber, and no write twice.
//!
//! Each test prints its figures (`--nocapture`): acknowledged writes, deliveries,
//! duplicates, missing, what the SDK repaired from history, and how late the repaired posts
//! arrived (from the acknowledgement of the write, which leaves after its publication, to
//! the delivery).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_core::{Reply, Request};
use chat_net::client::{Client, ClientConfig, ClientEvent, DeliveryStats};
use nix::sys::signal::Signal;
use support::{history_at, status_at, wait_for, Load, ProcCluster, DEADLINE};

const CHANNEL: &str = "geral";
const NAMES: [&str; 3] = ["server-1", "server-2", "server-3"];
const WRITERS: usize = 4;
const SUBSCRIBERS: usize = 3;
/// A live delivery later than this after the acknowledgement is reported as late (live
/// ones arrive before the acknowledgement: a server publishes before it replies).
const LATE: Duration = Duration::from_millis(100);

/// Deliveries of one subscriber: request id → (when, whether it came from history).
type Seen = Arc<Mutex<HashMap<String, Vec<(Instant, bool)>>>>;

/// An SDK client subscribed to the channel, counting what it receives.
struct Sub {
    seen: Seen,
    stats: Arc<Mutex<DeliveryStats>>,
    thread: JoinHandle<()>,
}

/// SDK writers posting to the channel with known request ids until stopped; when each
/// acknowledged write was acknowledged.
fn writers(cfg: &ClientConfig, n: usize) -> Load<(String, Instant)> {
    Load::start(cfg, n, 100_000, |c, w, i| {
        let rid = format!("w{w}-{i}");
        let req = Request::Publish {
            user: format!("user{w}"),
            channel: CHANNEL.into(),
            message: rid.clone(),
        };
        match c.request_with_id(req, Some(rid.clone())) {
            Ok(r) if r.reply == Reply::Done => Some((rid, Instant::now())),
            _ => None,
        }
    })
}

/// The cluster, its channel, and subscribers whose subscriptions are live.
struct Setup {
    cluster: ProcCluster,
    subs: Vec<Sub>,
    stop: Arc<AtomicBool>,
    started: Instant,
}

fn setup() -> Setup {
    let started = Instant::now();
    let cluster = ProcCluster::start(3);
    let admin = Client::connect(cluster.client_config()).expect("client");
    admin.login("ana").expect("login");
    admin.create_channel(CHANNEL).expect("channel");
    let ready = wait_for(DEADLINE, || {
        NAMES
            .iter()
            .all(|n| {
                status_at(&cluster.peer_endpoint(n))
                    .is_some_and(|s| s.channels == 1 && s.peers.len() == 2 && s.caught_up)
            })
            .then_some(())
    });
    assert!(ready.is_some(), "cluster not ready");
    let stop = Arc::new(AtomicBool::new(false));
    let subs: Vec<Sub> = (0..SUBSCRIBERS)
        .map(|_| {
            let client = Client::connect(cluster.client_config()).expect("subscriber");
            client.subscribe(CHANNEL).expect("subscribe");
            let seen: Seen = Arc::default();
            let stats: Arc<Mutex<DeliveryStats>> = Arc::default();
            let (seen2, stats2, stop2) = (seen.clone(), stats.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    if let Ok(ClientEvent::Post(p)) =
                        client.events().recv_timeout(Duration::from_millis(50))
                    {
                        let key = p.rid.clone().unwrap_or(p.message.clone());
                        // Live publications carry `prev`; history items (repairs) do not.
                        let repaired = p.prev.is_none();
                        seen2
                            .lock()
                            .unwrap()
                            .entry(key)
                            .or_default()
                            .push((Instant::now(), repaired));
                    }
                    *stats2.lock().unwrap() = client.delivery_stats();
                }
            });
            Sub {
                seen,
                stats,
                thread,
            }
        })
        .collect();
    // Each subscription has its history baseline and hears live posts.
    for i in 0.. {
        let probe = format!("probe-{i}");
        admin.publish("ana", CHANNEL, &probe).expect("probe");
        let live = wait_for(Duration::from_millis(500), || {
            subs.iter()
                .all(|s| {
                    s.stats.lock().unwrap().baselines == 1
                        && s.seen.lock().unwrap().values().any(|v| !v.is_empty())
                })
                .then_some(())
        });
        if live.is_some() {
            break;
        }
        assert!(i < 40, "subscriptions never became live");
    }
    Setup {
        cluster,
        subs,
        stop,
        started,
    }
}

/// What the subscribers got, once every acknowledged write reached every one of them (or
/// the deadline passed), plus one more periodic check for late repeats.
struct Outcome {
    acked: usize,
    deliveries: usize,
    duplicates: usize,
    missing: usize,
    repaired: u64,
    gaps: u64,
    losers: u64,
    dropped_repeats: u64,
    reconnects: u64,
    /// Ack → delivery of the posts delivered from history.
    repair_delays: Vec<Duration>,
    /// Live deliveries later than [`LATE`] after the ack.
    late_live: usize,
    slowest_gap: Duration,
    settle: Duration,
}

fn settle(setup: Setup, acked: &BTreeMap<String, Instant>, name: &str) -> (Outcome, ProcCluster) {
    let load_end = Instant::now();
    let all_in = wait_for(Duration::from_secs(20), || {
        setup
            .subs
            .iter()
            .all(|s| {
                let seen = s.seen.lock().unwrap();
                acked.keys().all(|rid| seen.contains_key(rid))
            })
            .then_some(())
    });
    let settled = load_end.elapsed();
    if all_in.is_some() {
        // Anything still to come (a late repeat) would arrive within a check or two.
        std::thread::sleep(
            chat_net::client::DeliveryConfig::default().check_interval + Duration::from_secs(1),
        );
    }
    setup.stop.store(true, Ordering::SeqCst);
    let mut out = Outcome {
        acked: acked.len(),
        deliveries: 0,
        duplicates: 0,
        missing: 0,
        repaired: 0,
        gaps: 0,
        losers: 0,
        dropped_repeats: 0,
        reconnects: 0,
        repair_delays: Vec::new(),
        late_live: 0,
        slowest_gap: Duration::ZERO,
        settle: settled,
    };
    for (i, s) in setup.subs.into_iter().enumerate() {
        s.thread.join().expect("subscriber thread");
        let seen = s.seen.lock().unwrap();
        let stats = *s.stats.lock().unwrap();
        for (rid, at) in seen.iter() {
            if rid.starts_with("probe-") {
                continue;
            }
            out.deliveries += at.len();
            out.duplicates += at.len().saturating_sub(1);
            if let (Some(acked_at), Some((first, repaired))) = (acked.get(rid), at.first()) {
                let d = first.saturating_duration_since(*acked_at);
                if *repaired {
                    out.repair_delays.push(d);
                } else if d > LATE {
                    out.late_live += 1;
                }
            }
        }
        let missing: Vec<&String> = acked.keys().filter(|r| !seen.contains_key(*r)).collect();
        if !missing.is_empty() {
            println!(
                "[{name}] subscriber {i} misses {} acked writes, e.g. {:?}; stats {stats:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
        out.missing += missing.len();
        out.repaired += stats.repaired;
        out.gaps += stats.gaps;
        out.losers += stats.losers;
        out.dropped_repeats += stats.duplicates;
        out.reconnects += stats.reconnects;
        out.slowest_gap = out.slowest_gap.max(stats.slowest_gap_repair);
    }
    out.repair_delays.sort();
    let pct = |q: f64| {
        out.repair_delays
            .get(((out.repair_delays.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "[{name}] {} subscribers, {} acked writes, {} deliveries (probes excluded), {} duplicates, \
         {} missing; SDK: {} repaired from history ({} of acked writes: ack -> delivery p50 {:?}, \
         p90 {:?}, max {:?}), {} gaps noticed (slowest noticed -> filled {:?}), {} repeats and \
         {} loser copies dropped, {} reconnects; {} live deliveries later than {LATE:?} after \
         the ack; all delivered {:?} after the load stopped; test {:?}",
        SUBSCRIBERS,
        out.acked,
        out.deliveries,
        out.duplicates,
        out.missing,
        out.repaired,
        out.repair_delays.len(),
        pct(0.5),
        pct(0.9),
        pct(1.0),
        out.gaps,
        out.slowest_gap,
        out.dropped_repeats,
        out.losers,
        out.reconnects,
        out.late_live,
        out.settle,
        setup.started.elapsed(),
    );
    (out, setup.cluster)
}

fn assert_exactly_once(out: &Outcome) {
    assert_eq!(out.duplicates, 0, "a subscriber got a post twice");
    assert_eq!(out.missing, 0, "a subscriber missed an acknowledged post");
    assert!(out.deliveries >= out.acked * SUBSCRIBERS);
}

#[test]
fn sdk_delivery_is_exactly_once_when_a_server_is_killed_and_restarted() {
    let mut setup = setup();
    let load = writers(&setup.cluster.client_config(), WRITERS);
    load.wait_acks(150);
    setup.cluster.server("server-2").kill9();
    load.wait_acks(200);
    setup.cluster.start_server("server-2");
    let back = wait_for(DEADLINE, || {
        status_at(&setup.cluster.peer_endpoint("server-2")).filter(|s| s.caught_up)
    });
    assert!(back.is_some(), "server-2 did not come back");
    load.wait_acks(150);
    let acked: BTreeMap<String, Instant> = load.stop().into_iter().collect();
    let (out, _cluster) = settle(setup, &acked, "kill -9");
    assert_exactly_once(&out);
}

#[test]
fn sdk_delivery_is_exactly_once_when_a_server_is_paused_and_every_write_is_stored_once() {
    let mut setup = setup();
    let load = writers(&setup.cluster.client_config(), WRITERS);
    load.wait_acks(150);
    setup.cluster.server("server-2").signal(Signal::SIGSTOP);
    let paused = Instant::now();
    load.wait_acks(50);
    let left = Duration::from_secs(3).saturating_sub(paused.elapsed());
    std::thread::sleep(left); // the pause itself: 3 s of SIGSTOP
    setup.cluster.server("server-2").signal(Signal::SIGCONT);
    load.wait_acks(200);
    let acked: BTreeMap<String, Instant> = load.stop().into_iter().collect();
    let (out, mut cluster) = settle(setup, &acked, "SIGSTOP 3 s");
    assert_exactly_once(&out);

    // Every acknowledged write is stored once on every server: in `history`...
    let bodies: BTreeSet<&str> = acked.keys().map(String::as_str).collect();
    let converged = wait_for(Duration::from_secs(15), || {
        let digests: BTreeSet<String> = NAMES
            .iter()
            .map(|n| status_at(&cluster.peer_endpoint(n)).map(|s| s.digest))
            .collect::<Option<_>>()?;
        (digests.len() == 1).then_some(())
    });
    assert!(converged.is_some(), "servers report different digests");
    for n in NAMES {
        let h = history_at(&cluster.peer_endpoint(n), CHANNEL).expect("history");
        check_once(n, "history", h.iter().map(|p| p.message.as_str()), &bodies);
    }
    // ... and in `chat-server export` (the seeds' files), read once the servers stopped.
    for n in NAMES {
        assert!(
            cluster.server(n).terminate(Duration::from_secs(10)),
            "{n} did not stop"
        );
        let out_dir = cluster.dir.path().join(format!("export-{n}"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["export", "--data"])
            .arg(cluster.data_dir(n))
            .arg("--out")
            .arg(&out_dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("chat-server export");
        assert!(status.success(), "export of {n} failed");
        let text = std::fs::read_to_string(out_dir.join("publications.json")).expect("export");
        let records: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
        let messages: Vec<&str> = records
            .iter()
            .filter(|r| r["channel"] == CHANNEL)
            .filter_map(|r| r["message"].as_str())
            .collect();
        check_once(n, "export", messages.into_iter(), &bodies);
    }
}

/// Every acknowledged body appears exactly once among `messages`, and no body twice.
fn check_once<'a>(
    server: &str,
    what: &str,
    messages: impl Iterator<Item = &'a str>,
    acked: &BTreeSet<&str>,
) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in messages {
        *counts.entry(m).or_default() += 1;
    }
    let missing: Vec<_> = acked.iter().filter(|m| !counts.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "{server} {what} lacks acknowledged posts: {missing:?}"
    );
    let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        doubled.is_empty(),
        "{server} {what} has duplicates: {doubled:?}"
    );
}

#[test]
fn sdk_delivery_is_exactly_once_when_the_proxy_restarts_under_load() {
    let mut setup = setup();
    let load = writers(&setup.cluster.client_config(), WRITERS);
    load.wait_acks(150);
    setup.cluster.restart_proxy();
    load.wait_acks(150);
    setup.cluster.restart_proxy();
    load.wait_acks(150);
    let acked: BTreeMap<String, Instant> = load.stop().into_iter().collect();
    let (out, _cluster) = settle(setup, &acked, "proxy restart");
    assert_exactly_once(&out);
    assert!(
        out.reconnects >= SUBSCRIBERS as u64,
        "the SDK never saw a reconnection"
    );
}
