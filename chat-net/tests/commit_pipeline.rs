//! The commit pipeline: a server keeps taking requests while a batch is being committed,
//! and no reply (acknowledgement or read) leaves before what it reveals is durable.
//!
//! The server runs on a store whose commits stall until the test opens a gate, so "while
//! the commit is in progress" is a state the test controls instead of a race it hopes for.

mod support;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chat_core::{Event, EventKind, HistoryTarget, Publication};
use chat_net::client::ClientConfig;
use chat_store::{HookedStore, MemoryStore};
use support::{wait_for, TestCluster, DEADLINE};

/// Shared between the test and its store: whether commits may proceed, and what reached
/// `append` so far (one entry per batch, its messages' texts).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    batches: Vec<Vec<String>>,
    committed: usize,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        self.state.lock().unwrap().closed = closed;
        self.changed.notify_all();
    }

    fn batches(&self) -> Vec<Vec<String>> {
        self.state.lock().unwrap().batches.clone()
    }

    fn committed(&self) -> usize {
        self.state.lock().unwrap().committed
    }
}

/// Opens the gate when the test ends, pass or fail, so the server can stop.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set_closed(false);
    }
}

/// A memory store that counts as a disk (so the server commits on its writer thread) and
/// whose commits wait while the gate is closed.
fn gated_store(gate: Arc<Gate>) -> HookedStore {
    HookedStore::new(
        Box::new(MemoryStore::default()),
        Box::new(move |events| {
            let mut st = gate.state.lock().unwrap();
            st.batches.push(texts(events));
            gate.changed.notify_all();
            while st.closed {
                st = gate.changed.wait(st).unwrap();
            }
            st.committed += 1;
        }),
    )
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ChannelMessage { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn replies_wait_for_their_batch_and_the_loop_keeps_taking_writes_meanwhile() {
    let mut cluster = TestCluster::start(0);
    let gate = Arc::new(Gate::default());
    cluster.start_server_with("server-1", Box::new(gated_store(gate.clone())));
    let _open = OpenOnDrop(gate.clone());
    let setup = cluster.client();
    setup.login("ana").unwrap();
    setup.create_channel("geral").unwrap();
    let before = gate.committed();

    // Stall the next commit, then publish: the write is applied and handed to the writer,
    // which blocks.
    gate.set_closed(true);
    let cfg = ClientConfig {
        timeout: Duration::from_secs(10),
        attempts: 1,
        ..cluster.client_config()
    };
    let ana = chat_net::client::Client::connect(cfg.clone()).unwrap();
    let first = std::thread::spawn(move || ana.publish("ana", "geral", "m1"));
    wait_for(DEADLINE, || {
        gate.batches()
            .iter()
            .any(|b| b.contains(&"m1".to_string()))
            .then_some(())
    })
    .expect("the batch with m1 reaches the store");

    // While it is stuck: a second write is taken (it forms the next batch), and a read that
    // would show m1 is answered only once m1 is durable.
    let bia = chat_net::client::Client::connect(cfg.clone()).unwrap();
    let second = std::thread::spawn(move || bia.publish("ana", "geral", "m2"));
    let reader = chat_net::client::Client::connect(cfg).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let read = std::thread::spawn(move || {
        let h = reader.history(HistoryTarget::Channel("geral".into()), None, 10);
        let _ = tx.send(());
        h
    });
    // Negative check, bounded: nothing may come back while the commit stalls.
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a read revealed a write that is not durable yet"
    );
    assert!(
        !first.is_finished() && !second.is_finished(),
        "a write was acknowledged before its commit"
    );
    assert_eq!(
        gate.committed(),
        before,
        "nothing committed while the gate is closed"
    );

    gate.set_closed(false);
    first.join().unwrap().expect("m1 acknowledged once durable");
    second
        .join()
        .unwrap()
        .expect("m2 acknowledged once durable");
    let history = read.join().unwrap().expect("the read is answered");
    assert!(
        history
            .items
            .iter()
            .any(|p| matches!(p, Publication::Channel(c) if c.message == "m1")),
        "the read shows m1"
    );

    // m1 and m2 were committed in different batches: m2 was accepted while m1's commit
    // was in progress, not after it.
    let batches = gate.batches();
    let with = |m: &str| batches.iter().position(|b| b.contains(&m.to_string()));
    let (b1, b2) = (with("m1").unwrap(), with("m2").expect("m2 committed"));
    assert!(b2 > b1, "m2 in a later batch than m1: {batches:?}");

    // `status.commits` counts exactly the batches the store committed.
    let status = setup.status().expect("status");
    assert_eq!(status.commits as usize, gate.committed(), "{status:?}");
}
