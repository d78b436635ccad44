//! Fault tests with real processes: `kill -9` a server while requests flow.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_core::HistoryTarget;
use chat_net::client::Client;
use support::{wait_for, ProcCluster, DEADLINE};

#[test]
fn server_killed_while_requests_flow_clients_still_get_answers() {
    let mut cluster = ProcCluster::start(3);
    let setup = Client::connect(cluster.client_config()).unwrap();
    setup.login("ana").unwrap();
    setup.create_channel("geral").unwrap();
    // Every server has the channel before the load starts.
    wait_for(DEADLINE, || {
        ["server-1", "server-2", "server-3"]
            .iter()
            .all(|n| support::status_at(&cluster.peer_endpoint(n)).is_some_and(|s| s.channels == 1))
            .then_some(())
    })
    .expect("channel replicated");

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let cfg = cluster.client_config();
        let stop = stop.clone();
        let acks = acks.clone();
        workers.push(std::thread::spawn(move || {
            let c = Client::connect(cfg).unwrap();
            let (mut acked, mut failed) = (Vec::new(), 0u32);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 5_000 {
                let body = format!("w{w}-{i}");
                match c.publish(&format!("user{w}"), "geral", &body) {
                    Ok(()) => {
                        acked.push(body);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("publish {body} failed: {e}");
                    }
                }
                i += 1;
            }
            (acked, failed)
        }));
    }
    // Let traffic flow, then kill -9 one server in the middle of it.
    let progressed = wait_for(DEADLINE, || {
        (acks.load(Ordering::SeqCst) >= 100).then_some(())
    });
    assert!(progressed.is_some(), "load did not start");
    cluster.server("server-2").kill9();
    // Keep the load running well past the failure (and past the broker's liveness window).
    let after = acks.load(Ordering::SeqCst) + 400;
    let continued = wait_for(DEADLINE, || {
        (acks.load(Ordering::SeqCst) >= after).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    assert!(continued.is_some(), "the load stalled after the kill");

    let mut acked = BTreeSet::new();
    let mut failed = 0;
    for w in workers {
        let (a, f) = w.join().unwrap();
        acked.extend(a);
        failed += f;
    }
    // Every request was answered: retries and re-dispatch hide the dead server.
    assert_eq!(failed, 0, "some publishes failed");
    assert!(acked.len() >= 500);

    // The survivors answer.
    let status = setup.status().unwrap();
    assert_ne!(status.name, "server-2");

    // Nothing acknowledged was lost: every acked post is on the disk of some server, the
    // killed one included (it acknowledged only what it had committed). Lossless
    // replication to *every* server is the replication issue's guarantee.
    for s in &mut cluster.servers {
        s.kill9();
    }
    let mut on_disk = BTreeSet::new();
    for name in ["server-1", "server-2", "server-3"] {
        let store = chat_store::SqliteStore::open(&cluster.data_dir(name)).unwrap();
        for e in chat_store::Store::load_all(&store).unwrap() {
            if let chat_core::EventKind::ChannelMessage { message, .. } = e.kind {
                on_disk.insert(message);
            }
        }
    }
    let lost: Vec<_> = acked.difference(&on_disk).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[test]
fn a_restarted_server_process_keeps_its_data() {
    let mut cluster = ProcCluster::start(1);
    let c = Client::connect(cluster.client_config()).unwrap();
    c.login("ana").unwrap();
    c.create_channel("geral").unwrap();
    for i in 0..20 {
        c.publish("ana", "geral", &format!("m{i}")).unwrap();
    }
    cluster.server("server-1").kill9();
    cluster.start_server("server-1");
    let page = c
        .history(HistoryTarget::Channel("geral".into()), None, 100)
        .unwrap();
    assert_eq!(page.items.len(), 20);
    assert_eq!(c.users().unwrap(), ["ana"]);
}

#[test]
fn processes_stop_cleanly_on_sigterm() {
    let mut cluster = ProcCluster::start(1);
    let c = Client::connect(cluster.client_config()).unwrap();
    c.login("ana").unwrap();
    for p in cluster
        .servers
        .iter_mut()
        .chain([&mut cluster.broker, &mut cluster.proxy])
    {
        assert!(
            p.terminate(Duration::from_secs(1)),
            "{} did not stop within 1 s",
            p.name
        );
    }
}
