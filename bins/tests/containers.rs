//! The cluster in containers, on the local Docker engine: `docker-compose.yml` with the
//! image `chat-zmq:latest` (docker/build-offline.sh), one compose project per test with
//! the client ports on ephemeral host ports, removed with its volumes when the test ends.
//!
//! Skipped, saying why, where no engine answers or the image is missing; `.ci/run` sets
//! `CHAT_REQUIRE_DOCKER=1` where an engine answers, and then a skip is a failure.
//!
//! A server's own view (status, digest, coordinator) is read inside its container with
//! `chat health server --json`, on its peer socket: equal digests mean equal replicated
//! state, so equal histories; the histories themselves are read through the broker.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_core::{HistoryTarget, Publication, ServerStatus};
use chat_net::client::{Client, ClientConfig, ClientEvent};
use chat_testkit::docker::{docker, Engine, Project};
use serde_json::{json, Value};
use support::{wait_for, Load};

const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];
const CORE: [&str; 6] = [
    "broker",
    "proxy",
    "reference",
    "server-1",
    "server-2",
    "server-3",
];
/// How long a project may take to become healthy (first start on a busy 2-core machine).
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);
/// How long servers may take to agree again after a fault.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// How long a partition is held.
const PARTITION: Duration = Duration::from_secs(10);

fn compose_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}

/// A new project for `test`, or `None` when the test is skipped.
fn project(test: &str) -> Option<Project> {
    let t0 = Instant::now();
    let engine = Engine::for_test(test)?;
    let p = Project::new(engine, &compose_file());
    report(test, "engine ready (and our turn)", t0.elapsed());
    Some(p)
}

/// One timing line on stderr, past the test harness's capture.
fn report(test: &str, what: &str, took: Duration) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[{test}] {what}: {took:.1?}");
}

/// The SDK configuration for the project's published ports.
fn client_config(p: &Project) -> ClientConfig {
    ClientConfig {
        broker: format!("tcp://127.0.0.1:{}", p.port("broker", 5555)),
        sub: format!("tcp://127.0.0.1:{}", p.port("proxy", 5558)),
        timeout: Duration::from_secs(3),
        attempts: 3,
        ..ClientConfig::default()
    }
}

/// Server `service`'s status, asked inside its container on its own peer socket.
fn status_of(p: &Project, service: &str) -> Option<ServerStatus> {
    let out = p.exec(
        service,
        &["chat", "health", "server", "--json", "--timeout-ms", "2000"],
    );
    if !out.ok {
        return None;
    }
    serde_json::from_str(out.stdout.trim()).ok()
}

/// The statuses of `servers`, all of them or `None`.
fn statuses(p: &Project, servers: &[&str]) -> Option<Vec<ServerStatus>> {
    servers.iter().map(|s| status_of(p, s)).collect()
}

/// Waits until the core services are healthy and every server is caught up and knows
/// the other two; how long the health part took.
fn wait_ready(p: &Project) -> Duration {
    let healthy = p.wait_healthy(&CORE, HEALTHY_WITHIN);
    let ready = wait_for(HEALTHY_WITHIN, || {
        let all = statuses(p, &SERVERS)?;
        all.iter()
            .all(|s| s.caught_up && s.peers.len() == 2 && s.coordinator.is_some())
            .then_some(())
    });
    assert!(
        ready.is_some(),
        "servers never caught up and saw their peers: {:?}\n{}",
        statuses(p, &SERVERS),
        p.logs(20)
    );
    healthy
}

/// Waits until every server reports the same digest, the same coordinator and term, and
/// is caught up; their statuses.
fn wait_converged(p: &Project) -> Vec<ServerStatus> {
    let mut last = None;
    let done = wait_for(CONVERGE_WITHIN, || {
        let all = statuses(p, &SERVERS)?;
        let digests: BTreeSet<&str> = all.iter().map(|s| s.digest.as_str()).collect();
        let leaders: BTreeSet<(Option<&str>, u64)> = all
            .iter()
            .map(|s| (s.coordinator.as_deref(), s.term))
            .collect();
        let ok = digests.len() == 1 && leaders.len() == 1 && all.iter().all(|s| s.caught_up);
        if ok {
            return Some(all);
        }
        last = Some(all);
        None
    });
    done.unwrap_or_else(|| {
        panic!(
            "servers did not converge within {CONVERGE_WITHIN:?}: {last:#?}\n{}",
            p.logs(30)
        )
    })
}

/// Publishers that keep posting to `channel` until stopped (bodies `<tag>-w<writer>-<i>`,
/// unique per tag); what was acknowledged.
fn publishers(cfg: &ClientConfig, channel: &str, n: usize, tag: &str) -> Load<String> {
    let (channel, tag) = (channel.to_string(), tag.to_string());
    Load::start(cfg, n, 100_000, move |c, w, i| {
        let body = format!("{tag}-w{w}-{i}");
        c.publish(&format!("user{w}"), &channel, &body)
            .is_ok()
            .then_some(body)
    })
}

/// Every post of `channel`, oldest first, read through the broker (all pages).
fn full_history(client: &Client, channel: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut before = None;
    for _ in 0..10_000 {
        let page = client
            .history(HistoryTarget::Channel(channel.into()), before.clone(), 1000)
            .expect("history page");
        let mut items: Vec<String> = page
            .items
            .into_iter()
            .filter_map(|p| match p {
                Publication::Channel(c) => Some(c.message),
                Publication::Direct(_) => None,
            })
            .collect();
        items.append(&mut out);
        out = items;
        match page.next {
            Some(n) => before = Some(n),
            None => return out,
        }
    }
    panic!("history of {channel} has more than 10 000 pages");
}

/// Every acknowledged post is in the history exactly once.
fn assert_kept(history: &[String], acked: &[String]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in history {
        *counts.entry(m.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|m| !counts.contains_key(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged posts lost, among them {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} posts shown more than once, among them {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(20)]
    );
}

/// Logs `ana` in, creates `geral` and waits until every server holds the channel.
fn setup(p: &Project) -> (Client, ClientConfig) {
    let cfg = client_config(p);
    let client = Client::connect(cfg.clone()).expect("client");
    let ok = wait_for(Duration::from_secs(30), || client.login("ana").ok());
    assert!(
        ok.is_some(),
        "login through the published broker port failed"
    );
    client.create_channel("geral").expect("channel geral");
    let held = wait_for(Duration::from_secs(30), || {
        statuses(p, &SERVERS)?
            .iter()
            .all(|s| s.channels >= 1)
            .then_some(())
    });
    assert!(held.is_some(), "the channel did not reach every server");
    (client, cfg)
}

// ----- a seed-style client: plain REQ and SUB sockets, MessagePack maps -----

fn seed_call(req: &zmq::Socket, service: &str, data: Value) -> Value {
    let body = rmp_serde::to_vec_named(&json!({ "service": service, "data": data })).unwrap();
    req.send(body, 0).expect("send");
    assert!(
        req.poll(zmq::POLLIN, 10_000).expect("poll") > 0,
        "no reply to {service} within 10 s"
    );
    let reply = req.recv_bytes(0).expect("recv");
    rmp_serde::from_slice(&reply).expect("a MessagePack reply")
}

/// Receives one publication on `sub` with topic `topic` within `ms`, or `None`.
fn seed_receive(sub: &zmq::Socket, topic: &str, ms: i64) -> Option<Value> {
    if sub.poll(zmq::POLLIN, ms).expect("poll") == 0 {
        return None;
    }
    let frames = sub.recv_multipart(0).expect("recv");
    (frames.len() == 2 && frames[0] == topic.as_bytes())
        .then(|| rmp_serde::from_slice(&frames[1]).expect("a MessagePack publication"))
}

#[test]
fn compose_up_serves_a_seed_client_through_the_published_ports() {
    let test = "compose_up_serves_a_seed_client_through_the_published_ports";
    let Some(p) = project(test) else { return };
    let t0 = Instant::now();
    p.up(&[]);
    report(test, "compose up", t0.elapsed());
    let healthy = wait_ready(&p);
    report(test, "compose up to healthy", t0.elapsed());
    report(test, "  of which waiting for health", healthy);
    p.wait_healthy(&["web"], HEALTHY_WITHIN);

    // Two bots, and only the client-facing ports published.
    assert_eq!(p.containers("bot").len(), 2, "the file runs 2 bots");
    let mut published = BTreeSet::new();
    for service in CORE.iter().chain(["bot", "web"].iter()) {
        for id in p.containers(service) {
            let info = p.inspect(&id);
            if let Some(ports) = info["HostConfig"]["PortBindings"].as_object() {
                published.extend(ports.keys().cloned());
            }
        }
    }
    let expected: BTreeSet<String> = ["5555/tcp", "5558/tcp", "8080/tcp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(published, expected, "published ports");

    // The seed's client: REQ to the broker, SUB to the proxy, MessagePack.
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::REQ).unwrap();
    req.set_linger(0).unwrap();
    req.connect(&format!("tcp://127.0.0.1:{}", p.port("broker", 5555)))
        .unwrap();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.connect(&format!("tcp://127.0.0.1:{}", p.port("proxy", 5558)))
        .unwrap();
    sub.set_subscribe(b"sala").unwrap();
    sub.set_subscribe(b"bia").unwrap();

    let mut clock = 0u64;
    let mut data = |fields: Value| {
        clock += 1;
        let mut d = fields;
        d["clock"] = json!(clock);
        d["timestamp"] = json!("2026-01-01T00:00:00Z");
        d
    };
    let t_client = Instant::now();
    for user in ["ana", "bia"] {
        let r = seed_call(&req, "login", data(json!({ "user": user })));
        assert_eq!(r["data"]["status"], "sucesso", "login {user}: {r}");
    }
    let r = seed_call(&req, "channel", data(json!({ "channel": "sala" })));
    assert_eq!(r["data"]["status"], "sucesso", "channel: {r}");

    // Publish until one arrives (the subscription goes live a little after connecting).
    let mut post = None;
    for i in 0..100 {
        let r = seed_call(
            &req,
            "publish",
            data(json!({ "user": "ana", "channel": "sala", "message": format!("oi {i}") })),
        );
        assert_eq!(r["data"]["status"], "OK", "publish: {r}");
        if let Some(v) = seed_receive(&sub, "sala", 200) {
            post = Some(v);
            break;
        }
    }
    let post = post.expect("no publication arrived on the SUB socket");
    assert_eq!(post["user"], "ana");
    assert!(post["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("oi ")));
    assert!(
        post["clock"].as_u64().is_some(),
        "publication without clock: {post}"
    );
    assert!(
        post["timestamp"].is_string(),
        "publication without timestamp: {post}"
    );

    let mut direct = None;
    for _ in 0..20 {
        let r = seed_call(
            &req,
            "message",
            data(json!({ "src": "ana", "dst": "bia", "message": "oi bia" })),
        );
        assert_eq!(r["data"]["status"], "OK", "message: {r}");
        direct = (0..10).find_map(|_| match seed_receive(&sub, "bia", 200) {
            Some(v) if v["message"] == "oi bia" => Some(v),
            _ => None,
        });
        if direct.is_some() {
            break;
        }
    }
    let direct = direct.expect("the private message never arrived on topic bia");
    assert_eq!(direct["src"], "ana");
    report(
        test,
        "seed client: login, channel, publish, message",
        t_client.elapsed(),
    );

    // The web client answers on its published port.
    let web = chat_testkit::http::http(
        format!("127.0.0.1:{}", p.port("web", 8080))
            .parse()
            .unwrap(),
        "GET",
        "/",
        None,
        None,
    );
    assert_eq!(web.status, 200, "web client");

    // --scale bot=5 works: no fixed names, no fixed host ports on bots.
    let t_scale = Instant::now();
    p.up(&["--scale", "bot=5"]);
    let five = wait_for(Duration::from_secs(30), || {
        let ids = p.containers("bot");
        (ids.len() == 5
            && ids
                .iter()
                .all(|id| p.inspect(id)["State"]["Running"] == json!(true)))
        .then_some(())
    });
    assert!(five.is_some(), "--scale bot=5 did not give 5 running bots");
    report(test, "scale to 5 bots", t_scale.elapsed());
}

#[test]
fn docker_kill_of_a_server_under_load_loses_no_acknowledged_write() {
    let test = "docker_kill_of_a_server_under_load_loses_no_acknowledged_write";
    let Some(p) = project(test) else { return };
    let t0 = Instant::now();
    p.up(&["--scale", "bot=0"]);
    wait_ready(&p);
    report(test, "compose up to ready", t0.elapsed());
    let (client, cfg) = setup(&p);

    let load = publishers(&cfg, "geral", 3, "kill");
    load.wait_acks(30);
    let victim = p.container("server-2");
    let t_kill = Instant::now();
    docker(&["kill", &victim]);
    // The others keep acknowledging writes while it is down (a few seconds' worth, so it
    // has much to catch up).
    for _ in 0..3 {
        load.wait_acks(300);
    }
    docker(&["start", &victim]);
    let back = wait_for(CONVERGE_WITHIN, || {
        status_of(&p, "server-2").and_then(|s| s.caught_up.then_some(()))
    });
    assert!(back.is_some(), "server-2 did not come back\n{}", p.logs(30));
    report(test, "kill to caught up again", t_kill.elapsed());
    load.wait_acks(30);
    let acked = load.stop();

    let t_conv = Instant::now();
    let all = wait_converged(&p);
    report(test, "convergence after the load", t_conv.elapsed());
    let history = full_history(&client, "geral");
    assert_kept(&history, &acked);
    assert!(
        all.iter().all(|s| s.messages as usize >= acked.len()),
        "a server holds fewer posts than were acknowledged: {all:?}"
    );
    report(
        test,
        &format!("{} acknowledged posts, all kept", acked.len()),
        t0.elapsed(),
    );
}

/// Collects every coordinator announcement seen on `servers` until dropped.
struct Announcements {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u64, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Announcements {
    fn start(cfg: &ClientConfig) -> Announcements {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client = Client::connect(cfg.clone()).expect("watcher");
        client.subscribe("servers").expect("subscribe servers");
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                if let Ok(ClientEvent::Coordinator(a)) =
                    client.events().recv_timeout(Duration::from_millis(100))
                {
                    seen2.lock().unwrap().push((a.term, a.coordinator));
                }
            }
        });
        Announcements {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<(u64, String)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("watcher thread");
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Announcements {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Cuts `victim` off the network for [`PARTITION`] under load: the others keep
/// acknowledging writes; when `expect_new_leader`, they also elect a coordinator other
/// than `victim` with a higher term. Heals it and returns what the others reported.
fn partition(
    p: &Project,
    load: &Load<String>,
    victim: &str,
    expect_new_leader: bool,
    old_term: u64,
) -> Vec<ServerStatus> {
    let rest: Vec<&str> = SERVERS.iter().copied().filter(|s| *s != victim).collect();
    let aliases = p.disconnect(victim);
    let cut = Instant::now();
    load.wait_acks(20);
    let mut seen = Vec::new();
    if expect_new_leader {
        let elected = wait_for(PARTITION, || {
            let all = statuses(p, &rest)?;
            seen.extend(all.iter().cloned());
            let leaders: BTreeSet<(Option<String>, u64)> = all
                .iter()
                .map(|s| (s.coordinator.clone(), s.term))
                .collect();
            let (leader, term) = leaders.iter().next()?.clone();
            (leaders.len() == 1 && leader.as_deref() != Some(victim) && term > old_term)
                .then_some(())
        });
        assert!(
            elected.is_some(),
            "the others did not elect a new coordinator while {victim} was cut off: {:?}",
            statuses(p, &rest)
        );
    }
    load.wait_acks(20);
    // The one bare sleep: the partition is held for its full length.
    std::thread::sleep(PARTITION.saturating_sub(cut.elapsed()));
    p.reconnect(victim, &aliases);
    seen
}

#[test]
fn partitioned_server_and_coordinator_rejoin_with_equal_histories() {
    let test = "partitioned_server_and_coordinator_rejoin_with_equal_histories";
    let Some(p) = project(test) else { return };
    let t0 = Instant::now();
    p.up(&["--scale", "bot=0"]);
    wait_ready(&p);
    report(test, "compose up to ready", t0.elapsed());
    let (client, cfg) = setup(&p);
    let watcher = Announcements::start(&cfg);
    let mut observed: Vec<ServerStatus> = wait_converged(&p);

    // A server that is not the coordinator, under load; then the load stops, so the
    // servers can be seen to agree.
    let load = publishers(&cfg, "geral", 3, "follower");
    load.wait_acks(20);
    let leader = observed[0].coordinator.clone().expect("a coordinator");
    let follower = SERVERS
        .iter()
        .copied()
        .find(|s| *s != leader)
        .expect("a follower");
    let t_cut = Instant::now();
    observed.extend(partition(&p, &load, follower, false, observed[0].term));
    load.wait_acks(20);
    let mut acked = load.stop();
    observed.extend(wait_converged(&p));
    report(
        test,
        &format!("{follower} cut off 10 s, healed, converged"),
        t_cut.elapsed(),
    );

    // The coordinator, under load.
    let load = publishers(&cfg, "geral", 3, "leader");
    load.wait_acks(20);
    let last = observed.last().cloned().expect("statuses");
    let leader = last.coordinator.clone().expect("a coordinator");
    let t_cut = Instant::now();
    observed.extend(partition(&p, &load, &leader, true, last.term));
    load.wait_acks(20);
    acked.extend(load.stop());
    let after = wait_converged(&p);
    report(
        test,
        &format!("coordinator {leader} cut off 10 s, healed, converged"),
        t_cut.elapsed(),
    );
    observed.extend(after.iter().cloned());

    // One coordinator per term, in every status and announcement seen.
    let mut by_term: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for s in &observed {
        if let Some(c) = &s.coordinator {
            by_term.entry(s.term).or_default().insert(c.clone());
        }
    }
    for (term, c) in watcher.stop() {
        by_term.entry(term).or_default().insert(c);
    }
    let split: Vec<_> = by_term.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(split.is_empty(), "two coordinators in one term: {split:?}");
    assert!(by_term.len() >= 2, "no new term was elected: {by_term:?}");

    let history = full_history(&client, "geral");
    assert_kept(&history, &acked);
    report(
        test,
        &format!("{} acknowledged posts, all kept", acked.len()),
        t0.elapsed(),
    );
}

#[test]
fn compose_down_then_up_keeps_the_data_in_the_volumes() {
    let test = "compose_down_then_up_keeps_the_data_in_the_volumes";
    let Some(p) = project(test) else { return };
    let t0 = Instant::now();
    p.up(&["--scale", "bot=0"]);
    wait_ready(&p);
    report(test, "compose up to ready", t0.elapsed());
    let (client, _) = setup(&p);
    let posts: Vec<String> = (0..20).map(|i| format!("antes {i}")).collect();
    for m in &posts {
        client.publish("ana", "geral", m).expect("publish");
    }
    let before = wait_converged(&p);
    let ranks: BTreeMap<String, Option<u64>> =
        before.iter().map(|s| (s.name.clone(), s.rank)).collect();
    drop(client);

    let t_cycle = Instant::now();
    p.compose(&["down", "-t", "10"]);
    assert!(p.containers("server-1").is_empty(), "down left containers");
    p.up(&["--scale", "bot=0"]);
    wait_ready(&p);
    report(test, "down, up again, ready", t_cycle.elapsed());

    let after = wait_converged(&p);
    assert_eq!(
        after[0].digest, before[0].digest,
        "the state changed across down/up"
    );
    let ranks_after: BTreeMap<String, Option<u64>> =
        after.iter().map(|s| (s.name.clone(), s.rank)).collect();
    assert_eq!(ranks_after, ranks, "the reference forgot the ranks");
    let client = Client::connect(client_config(&p)).expect("client");
    let users = client.users().expect("users");
    assert!(users.iter().any(|u| u == "ana"), "ana is gone: {users:?}");
    assert_kept(&full_history(&client, "geral"), &posts);
}
