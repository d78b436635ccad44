//! Replication without loss, with real processes: acknowledged writes survive `kill -9`,
//! every server ends with the same history, a new server catches up by itself, and a
//! write held only by a server that dies was never acknowledged.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_core::{HistoryPage, HistoryTarget};
use chat_net::client::{Client, ClientConfig};
use chat_testkit::fake_peer;
use support::{history_at, pages_at, status_at, wait_for, Load, ProcCluster, DEADLINE};

/// Publishers that keep posting to `channel` until stopped; what was acknowledged.
fn publishers(cfg: &ClientConfig, channel: &str, n: usize) -> Load<String> {
    let channel = channel.to_string();
    Load::start(cfg, n, 20_000, move |c, w, i| {
        let body = format!("w{w}-{i}");
        c.publish(&format!("user{w}"), &channel, &body)
            .is_ok()
            .then_some(body)
    })
}

fn setup(cluster: &ProcCluster, names: &[&str]) -> Client {
    let c = Client::connect(cluster.client_config()).unwrap();
    c.login("ana").unwrap();
    c.create_channel("geral").unwrap();
    // Every server is registered, knows its peers and has the channel.
    let ready = wait_for(DEADLINE, || {
        names
            .iter()
            .all(|n| {
                status_at(&cluster.peer_endpoint(n)).is_some_and(|s| {
                    s.channels == 1 && s.peers.len() == names.len() - 1 && s.caught_up
                })
            })
            .then_some(())
    });
    assert!(ready.is_some(), "cluster not ready");
    c
}

/// Every server holds every acked post exactly once, in the same order, with the same digest.
fn assert_converged(cluster: &ProcCluster, names: &[&str], acked: &BTreeSet<String>) {
    let converged = wait_for(Duration::from_secs(20), || {
        let digests: BTreeSet<String> = names
            .iter()
            .map(|n| status_at(&cluster.peer_endpoint(n)).map(|s| s.digest))
            .collect::<Option<_>>()?;
        (digests.len() == 1).then_some(())
    });
    assert!(converged.is_some(), "servers report different digests");
    let mut histories = BTreeMap::new();
    for n in names {
        let h = history_at(&cluster.peer_endpoint(n), "geral").expect("history");
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &h {
            *counts.entry(p.message.as_str()).or_default() += 1;
        }
        let missing: Vec<_> = acked
            .iter()
            .filter(|m| !counts.contains_key(m.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{n} lacks acknowledged posts: {missing:?}"
        );
        let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
        assert!(doubled.is_empty(), "{n} has duplicates: {doubled:?}");
        let order: Vec<String> = h.iter().map(|p| p.message.clone()).collect();
        histories.insert(n.to_string(), order);
    }
    let first = histories.values().next().unwrap();
    assert!(
        histories.values().all(|h| h == first),
        "servers disagree on the order"
    );
}

fn kill_restart_and_check(victim_is_coordinator: bool) {
    let mut cluster = ProcCluster::start(3);
    let names = ["server-1", "server-2", "server-3"];
    let _c = setup(&cluster, &names);
    let coordinator = wait_for(DEADLINE, || {
        status_at(&cluster.peer_endpoint("server-1"))?.coordinator
    })
    .expect("a coordinator");
    let victim = if victim_is_coordinator {
        coordinator
    } else {
        names
            .iter()
            .find(|n| **n != coordinator)
            .unwrap()
            .to_string()
    };

    let load = publishers(&cluster.client_config(), "geral", 4);
    load.wait_acks(200);
    cluster.server(&victim).kill9();
    load.wait_acks(300);
    cluster.start_server(&victim);
    load.wait_acks(200);
    let acked: BTreeSet<String> = load.stop().into_iter().collect();
    assert!(acked.len() >= 700);
    assert_converged(&cluster, &names, &acked);
    // The restarted server caught up by itself.
    let caught_up = wait_for(DEADLINE, || {
        status_at(&cluster.peer_endpoint(&victim)).filter(|s| s.caught_up)
    });
    assert!(caught_up.is_some(), "{victim} never reported caught up");
}

#[test]
fn acked_writes_survive_kill9_of_a_server_and_all_servers_converge() {
    kill_restart_and_check(false);
}

#[test]
fn acked_writes_survive_kill9_of_the_coordinator_and_all_servers_converge() {
    kill_restart_and_check(true);
}

#[test]
fn a_new_server_with_an_empty_directory_catches_up() {
    let mut cluster = ProcCluster::start(3);
    let names = ["server-1", "server-2", "server-3"];
    let _c = setup(&cluster, &names);
    let load = publishers(&cluster.client_config(), "geral", 2);
    load.wait_acks(600);
    let acked: BTreeSet<String> = load.stop().into_iter().collect();
    cluster.start_server("server-4");
    let all = ["server-1", "server-2", "server-3", "server-4"];
    let caught_up = wait_for(DEADLINE, || {
        status_at(&cluster.peer_endpoint("server-4"))
            .filter(|s| s.caught_up && s.messages as usize >= acked.len())
    });
    assert!(caught_up.is_some(), "server-4 did not catch up");
    assert_converged(&cluster, &all, &acked);
}

#[test]
fn retried_writes_with_the_same_id_appear_once_on_every_server() {
    let cluster = ProcCluster::start(2);
    let names = ["server-1", "server-2"];
    let _c = setup(&cluster, &names);
    // Two clients on different servers (the broker keeps a client on one server and
    // spreads new clients round-robin): each retry lands on the other server, often
    // before the first copy was replicated to it.
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..20 {
        let c = Client::connect(cluster.client_config()).unwrap();
        let name = c.status().unwrap().name;
        if clients.iter().all(|o| o.status().unwrap().name != name) {
            clients.push(c);
        }
        if clients.len() == 2 {
            break;
        }
    }
    assert_eq!(clients.len(), 2, "could not get clients on two servers");
    let mut acked = BTreeSet::new();
    for i in 0..100 {
        let body = format!("once-{i}");
        let req = chat_core::Request::Publish {
            user: "ana".into(),
            channel: "geral".into(),
            message: body.clone(),
        };
        let id = Some(format!("req-{i}"));
        for k in 0..3 {
            let r = clients[(i + k) % 2]
                .request_with_id(req.clone(), id.clone())
                .unwrap();
            assert_eq!(r.reply, chat_core::Reply::Done);
        }
        acked.insert(body);
    }
    assert_converged(&cluster, &names, &acked);
}

#[test]
fn a_write_only_its_dying_server_held_was_never_acknowledged() {
    let mut cluster = ProcCluster::start(0);
    let stop = Arc::new(AtomicBool::new(false));
    let (fake, _) = fake_peer(&cluster.reference_endpoint, stop.clone());
    cluster.start_server("server-1");
    let ready = wait_for(DEADLINE, || {
        status_at(&cluster.peer_endpoint("server-1"))
            .filter(|s| s.caught_up && s.peers.iter().any(|p| p.name == "fake"))
    });
    assert!(ready.is_some(), "server-1 never saw the fake peer");

    let cfg = ClientConfig {
        attempts: 1,
        timeout: Duration::from_secs(8),
        ..cluster.client_config()
    };
    let c = Client::connect(cfg).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let r = c.create_channel("geral");
        let _ = tx.send(r.is_ok());
    });
    // The write reached server-1's disk and was pushed to the fake peer, which never acks.
    let pushed = wait_for(DEADLINE, || {
        status_at(&cluster.peer_endpoint("server-1")).filter(|s| s.channels == 1)
    });
    assert!(pushed.is_some(), "the write never reached server-1");
    assert!(
        rx.try_recv().is_err(),
        "the client was answered before any peer held the write"
    );
    cluster.server("server-1").kill9();
    let acked = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the client call returns");
    assert!(
        !acked,
        "the client was told OK for a write no surviving server holds"
    );
    client.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(
        fake.join().unwrap() > 0,
        "the fake peer never received the write"
    );
}

/// Every page (7 items each) of the channel's and two users' histories, as `name` pages them.
fn all_pages(cluster: &ProcCluster, name: &str) -> Vec<Vec<HistoryPage>> {
    [
        HistoryTarget::Channel("geral".into()),
        HistoryTarget::User("ana".into()),
        HistoryTarget::User("bia".into()),
    ]
    .iter()
    .map(|t| pages_at(&cluster.peer_endpoint(name), t, 7).expect("history pages"))
    .collect()
}

#[test]
fn history_pages_are_the_same_on_every_server_and_after_a_restart_of_all() {
    let mut cluster = ProcCluster::start(3);
    let names = ["server-1", "server-2", "server-3"];
    let c = setup(&cluster, &names);
    c.login("bia").unwrap();
    let load = publishers(&cluster.client_config(), "geral", 3);
    for i in 0..40 {
        let (src, dst) = if i % 2 == 0 {
            ("ana", "bia")
        } else {
            ("bia", "ana")
        };
        c.send_message(src, dst, &format!("dm-{i}")).unwrap();
    }
    load.wait_acks(300);
    let acked: BTreeSet<String> = load.stop().into_iter().collect();
    assert_converged(&cluster, &names, &acked);
    let before = all_pages(&cluster, "server-1");
    assert!(
        before[0].len() > 40,
        "the channel pages back over many pages"
    );
    assert_eq!(before[1].iter().map(|p| p.items.len()).sum::<usize>(), 40);
    for n in &names[1..] {
        assert_eq!(all_pages(&cluster, n), before, "{n} pages differently");
    }
    // Every server killed, then restarted from its store: the same pages, cursors and heads.
    for n in names {
        cluster.server(n).kill9();
    }
    for n in names {
        cluster.start_server(n);
    }
    let back = wait_for(DEADLINE, || {
        names
            .iter()
            .all(|n| status_at(&cluster.peer_endpoint(n)).is_some_and(|s| s.caught_up))
            .then_some(())
    });
    assert!(back.is_some(), "servers did not come back");
    for n in names {
        assert_eq!(
            all_pages(&cluster, n),
            before,
            "{n} pages differently after restart"
        );
    }
}
