//! The chat load: set-up (cluster formed, bench channel known everywhere, subscriptions
//! live, clients logged in), closed-loop SDK clients drawing from the mix, subscribers
//! counting tagged publications, and the delivery and replica summaries after the load.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chat_core::{ErrorCode, HistoryTarget};
use chat_net::client::{Client, ClientConfig, ClientError, ClientEvent, Subscriber};
use chat_net::Shutdown;
use hdrhistogram::Histogram;
use rand::Rng;

use super::cluster::start_cluster;
use super::flags::{BenchArgs, Op, HISTORY_LIMIT};
use super::load::{drive, join, merge, spawn, Control, OnDrop, Progress, STOP};
use super::report::{DeliveryReport, LoadReport, ReplicaReport};

/// Length of the tag that starts every bench publication: phase (1), run id (8 hex),
/// client (4 hex), sequence number (8 hex). `--size` must be at least this.
pub const TAG_LEN: usize = 21;
/// Longest any setup step (channel known everywhere, logins, live subscriptions) may take.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(15);
/// Consecutive successful probe publishes, per server, that show every server knows the
/// bench channel (the broker hands requests to servers in turn).
pub const SETUP_STREAK: usize = 3;
/// Longest wait after the load for the subscribers' counts to settle.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Counts that have not grown for this long are settled.
pub const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// How often subscriber loops look at their stop flags.
const POLL: Duration = Duration::from_millis(50);
/// Interval between two probe publishes while waiting for subscriptions.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// The tag of a bench publication: phase, run, client, sequence number.
fn write_body(body: &mut String, phase: char, run: u32, client: u16, seq: u32, size: usize) {
    body.clear();
    let _ = write!(body, "{phase}{run:08x}{client:04x}{seq:08x}");
    while body.len() < size {
        body.push('.');
    }
}

/// Reads the tag of a publication of run `run`: `(phase, client, seq)`.
fn parse_tag(message: &str, run: u32) -> Option<(u8, u16, u32)> {
    let tag = message.get(..TAG_LEN)?;
    let phase = tag.as_bytes()[0];
    let their_run = u32::from_str_radix(tag.get(1..9)?, 16).ok()?;
    if their_run != run {
        return None;
    }
    let client = u16::from_str_radix(tag.get(9..13)?, 16).ok()?;
    let seq = u32::from_str_radix(tag.get(13..21)?, 16).ok()?;
    Some((phase, client, seq))
}

fn key(client: u16, seq: u32) -> u64 {
    (u64::from(client) << 32) | u64::from(seq)
}

/// Counters a subscriber thread shares while running.
#[derive(Default)]
struct SubShared {
    live: AtomicBool,
    received: AtomicU64,
}

/// What a subscriber thread kept.
#[derive(Default)]
struct SubStats {
    seen: HashSet<u64>,
    received: u64,
}

fn subscriber_loop(
    mut sub: Subscriber,
    channel: String,
    run: u32,
    shared: Arc<SubShared>,
    stop: Arc<AtomicBool>,
) -> SubStats {
    let mut stats = SubStats {
        seen: HashSet::new(),
        received: 0,
    };
    while !stop.load(Ordering::Acquire) {
        match sub.recv(POLL) {
            Ok(Some(ClientEvent::Post(p))) if p.channel == channel => {
                match parse_tag(&p.message, run) {
                    Some((b'P', _, _)) => shared.live.store(true, Ordering::Release),
                    Some((b'M', client, seq)) => {
                        stats.received += 1;
                        stats.seen.insert(key(client, seq));
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bench subscriber stopped");
                break;
            }
        }
    }
    stats
}

/// What the chat load measured.
pub(super) struct ChatOutcome {
    pub(super) load: LoadReport,
    pub(super) delivery: Vec<DeliveryReport>,
    pub(super) replicas: Vec<ReplicaReport>,
    pub(super) interrupted: bool,
}

/// Retries `f` on failure (every [`PROBE_INTERVAL`]) until [`SETUP_DEADLINE`].
fn with_retry<T>(what: &str, mut f: impl FnMut() -> Result<T, ClientError>) -> anyhow::Result<T> {
    let end = Instant::now() + SETUP_DEADLINE;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= end => {
                return Err(anyhow::Error::new(e).context(format!("{what} (setup)")))
            }
            Err(_) => std::thread::sleep(PROBE_INTERVAL),
        }
    }
}

/// Runs the chat load (starting the in-process cluster unless `--broker`/`--sub` name one).
pub(super) fn run_chat(
    args: &BenchArgs,
    run: u32,
    stop: &Shutdown,
    template: &Histogram<u64>,
    progress: &Progress,
) -> anyhow::Result<ChatOutcome> {
    let cluster = match (&args.broker, &args.sub) {
        (Some(_), Some(_)) => None,
        _ => {
            progress.say(&format!(
                "starting {} servers ({} store), broker, proxy and reference on loopback",
                args.servers,
                args.store.as_str()
            ));
            Some(start_cluster(args)?)
        }
    };
    let (broker, sub) = match (&cluster, &args.broker, &args.sub) {
        (Some(c), _, _) => {
            let endpoints = c.cluster.endpoints();
            (endpoints.frontend.clone(), endpoints.xpub.clone())
        }
        (None, Some(b), Some(s)) => (b.clone(), s.clone()),
        _ => bail!("--broker and --sub go together"),
    };
    let config = ClientConfig {
        broker,
        sub,
        ..ClientConfig::default()
    };
    let channel = format!("bench-{run:08x}");
    let setup_user = format!("bench-{run:08x}-setup");
    let mut probe = String::new();
    let mut probe_seq = 0u32;
    let mut publish_probe = |client: &Client| {
        write_body(&mut probe, 'P', run, 0, probe_seq, args.size);
        probe_seq = probe_seq.wrapping_add(1);
        client.publish(&setup_user, &channel, &probe)
    };

    // The cluster, formed; the channel, known to every server.
    let setup = Client::connect(config.clone()).context("connecting the setup client")?;
    if cluster.is_some() {
        wait_formed(&config, args.servers)?;
    }
    with_retry("creating the bench channel", || {
        match setup.create_channel(&channel) {
            Err(e) if e.code() == ErrorCode::AlreadyExists => Ok(()), // a retry applied twice
            other => other,
        }
    })?;
    let need = SETUP_STREAK * args.servers;
    let mut streak = 0;
    let end = Instant::now() + SETUP_DEADLINE;
    while streak < need {
        if Instant::now() >= end {
            bail!(
                "the bench channel {channel} did not reach every server within {SETUP_DEADLINE:?}"
            );
        }
        match on_fresh(&config, &mut publish_probe) {
            Ok(()) => streak += 1,
            Err(_) => {
                streak = 0;
                std::thread::sleep(PROBE_INTERVAL);
            }
        }
    }

    // Subscribers, live; clients, logged in. Each connects on its own thread, so that the
    // I/O threads of its ZeroMQ context are named after it (CPU by thread group).
    let sub_stop = Arc::new(AtomicBool::new(false));
    let flag = sub_stop.clone();
    let _stop_subscribers = OnDrop(move || flag.store(true, Ordering::Release));
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), String>>();
    let mut subs = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let shared = Arc::new(SubShared::default());
        let (sh, st, ch) = (shared.clone(), sub_stop.clone(), channel.clone());
        let (config, ready) = (config.clone(), ready_tx.clone());
        let thread = spawn(format!("bench-sub-{i}"), move || {
            // The SDK's thread-less subscriber: events are read here, one wake-up each.
            let connected =
                Subscriber::connect(&config.sub).and_then(|mut s| s.subscribe(&ch).map(|()| s));
            match connected {
                Ok(client) => {
                    let _ = ready.send(Ok(()));
                    subscriber_loop(client, ch, run, sh, st)
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("subscribing to the bench channel: {e}")));
                    SubStats::default()
                }
            }
        })?;
        subs.push((shared, thread));
    }
    wait_ready(&ready_rx, args.subscribers)?;
    let end = Instant::now() + SETUP_DEADLINE;
    while !subs.iter().all(|(s, _)| s.live.load(Ordering::Acquire)) {
        if Instant::now() >= end {
            bail!("a subscription to {channel} never became live within {SETUP_DEADLINE:?}");
        }
        let _ = publish_probe(&setup);
        std::thread::sleep(PROBE_INTERVAL);
    }

    let ctl = Arc::new(Control::default());
    let c = ctl.clone();
    let _stop_workers = OnDrop(move || c.phase.store(STOP, Ordering::Release));
    let mut workers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (ctl, template, mix, channel) = (
            ctl.clone(),
            template.clone(),
            args.mix.clone(),
            channel.clone(),
        );
        let (config, ready) = (config.clone(), ready_tx.clone());
        let size = args.size;
        let id = u16::try_from(i).unwrap_or(u16::MAX);
        workers.push(spawn(format!("bench-client-{i}"), move || {
            let user = format!("bench-{run:08x}-c{i}");
            let connected = Client::connect(config)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    with_retry("logging a bench client in", || c.login(&user)).map(|()| c)
                });
            let client = match connected {
                Ok(client) => {
                    let _ = ready.send(Ok(()));
                    client
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("{e:#}")));
                    return None;
                }
            };
            let mut rng = rand::thread_rng();
            let total = mix.total();
            let mut body = String::with_capacity(size);
            let mut acked: Vec<u32> = Vec::new();
            let stats = drive(&ctl, &template, |measured, seq| {
                let op = mix.pick(rng.gen_range(0..total));
                let result = match op {
                    Op::Publish => {
                        let seq = seq as u32; // the tag holds 32 bits
                        let phase = if measured { 'M' } else { 'W' };
                        write_body(&mut body, phase, run, id, seq, size);
                        let r = client.publish(&user, &channel, &body);
                        if r.is_ok() && measured {
                            acked.push(seq);
                        }
                        r
                    }
                    Op::History => client
                        .history(HistoryTarget::Channel(channel.clone()), None, HISTORY_LIMIT)
                        .map(drop),
                    Op::Users => client.users().map(drop),
                    Op::Channels => client.channels().map(drop),
                    Op::Status => client.status().map(drop),
                };
                (
                    op.as_str(),
                    result.map_err(|e| e.code().as_str().to_string()),
                )
            });
            Some((stats, id, acked))
        })?);
    }
    wait_ready(&ready_rx, args.clients)?;

    // The load.
    progress.say(&format!(
        "chat: {} clients, {} B, mix {}, {} subscribers",
        args.clients, args.size, args.mix, args.subscribers
    ));
    let timing = progress.pace("chat", &ctl, args, stop);
    let results: Vec<_> = join(workers, "bench client")?
        .into_iter()
        .flatten()
        .collect();

    // Let the subscribers catch up, then compare.
    let acked_total: u64 = results.iter().map(|(_, _, a)| a.len() as u64).sum();
    settle(&subs, acked_total, progress);
    sub_stop.store(true, Ordering::Release);
    let (shared, threads): (Vec<_>, Vec<_>) = subs.into_iter().unzip();
    drop(shared);
    let seen = join(threads, "subscriber")?;
    let replicas = replicas(&config, args.servers);
    let acked: HashSet<u64> = results
        .iter()
        .flat_map(|(_, id, a)| a.iter().map(move |s| key(*id, *s)))
        .collect();
    let delivery = seen
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let delivered_acked = s.seen.iter().filter(|k| acked.contains(k)).count() as u64;
            DeliveryReport {
                subscriber: i + 1,
                acknowledged: acked.len() as u64,
                delivered: s.seen.len() as u64,
                lost: acked.len() as u64 - delivered_acked,
                duplicates: s.received - s.seen.len() as u64,
                unacknowledged: s.seen.len() as u64 - delivered_acked,
            }
        })
        .collect();
    let load = merge(
        results.into_iter().map(|(s, _, _)| s).collect(),
        &timing,
        template,
    )?;
    drop(setup);
    drop(cluster);
    Ok(ChatOutcome {
        load,
        delivery,
        replicas,
        interrupted: timing.interrupted,
    })
}

/// Waits for `n` threads to report that they are connected (or why they are not).
fn wait_ready(
    ready: &crossbeam_channel::Receiver<Result<(), String>>,
    n: usize,
) -> anyhow::Result<()> {
    let end = Instant::now() + SETUP_DEADLINE * 2;
    for _ in 0..n {
        match ready.recv_deadline(end) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!(
                "bench threads did not connect within {:?}",
                SETUP_DEADLINE * 2
            ),
        }
    }
    Ok(())
}

/// Runs `f` on a client of its own: a new connection, which the broker hands to the next
/// server in turn (it keeps a connection on the server that served it last).
fn on_fresh<T>(
    config: &ClientConfig,
    f: impl FnOnce(&Client) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let client = Client::connect(config.clone())?;
    f(&client)
}

/// Waits until `servers` distinct servers have answered `status` knowing the
/// `servers - 1` others and caught up, and the last [`SETUP_STREAK`] × `servers` replies
/// (each on a new connection) all did.
fn wait_formed(config: &ClientConfig, servers: usize) -> anyhow::Result<()> {
    let need = SETUP_STREAK * servers;
    let end = Instant::now() + SETUP_DEADLINE;
    let mut streak = 0;
    let mut formed: HashSet<String> = HashSet::new();
    let mut last = String::from("no reply");
    while streak < need || formed.len() < servers {
        if Instant::now() >= end {
            bail!("the cluster did not form within {SETUP_DEADLINE:?}; last status: {last}");
        }
        match on_fresh(config, Client::status) {
            Ok(st)
                if st.caught_up
                    && st.peers.iter().filter(|p| p.name != st.name).count() + 1 >= servers =>
            {
                formed.insert(st.name);
                streak += 1;
            }
            other => {
                last = match other {
                    Ok(st) => format!(
                        "{} knows {} peers, caught up: {}",
                        st.name,
                        st.peers.len(),
                        st.caught_up
                    ),
                    Err(e) => e.to_string(),
                };
                streak = 0;
                std::thread::sleep(PROBE_INTERVAL);
            }
        }
    }
    Ok(())
}

/// Reads `status` on new connections until `servers` servers answered (bounded), by name.
fn replicas(config: &ClientConfig, servers: usize) -> Vec<ReplicaReport> {
    let mut found: BTreeMap<String, ReplicaReport> = BTreeMap::new();
    for _ in 0..servers * 8 {
        if found.len() >= servers {
            break;
        }
        if let Ok(st) = on_fresh(config, Client::status) {
            found.insert(
                st.name.clone(),
                ReplicaReport {
                    name: st.name,
                    events: st.events,
                    local_only_acks: st.local_only_acks,
                    commits: st.commits,
                    digest: st.digest,
                },
            );
        }
    }
    found.into_values().collect()
}

/// Waits (at most [`DRAIN_MAX`]) until the subscribers' counts stop growing.
fn settle(subs: &[(Arc<SubShared>, JoinHandle<SubStats>)], acked: u64, progress: &Progress) {
    if subs.is_empty() {
        return;
    }
    let counts = || -> Vec<u64> {
        subs.iter()
            .map(|(s, _)| s.received.load(Ordering::Relaxed))
            .collect()
    };
    let start = Instant::now();
    let mut last = counts();
    let mut changed = start;
    loop {
        std::thread::sleep(POLL);
        let now = Instant::now();
        let current = counts();
        if current != last {
            (last, changed) = (current, now);
        }
        if now.duration_since(changed) >= DRAIN_QUIET || now.duration_since(start) >= DRAIN_MAX {
            break;
        }
    }
    if last.iter().any(|n| *n < acked) {
        progress.say(&format!(
            "subscribers settled after {:.1} s with {last:?} of {acked} publications",
            start.elapsed().as_secs_f64()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_pad_to_size() {
        let mut body = String::new();
        write_body(&mut body, 'M', 0xdead_beef, 7, 42, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(parse_tag(&body, 0xdead_beef), Some((b'M', 7, 42)));
        assert_eq!(parse_tag(&body, 1), None);
        assert_eq!(parse_tag("short", 0xdead_beef), None);
    }
}
