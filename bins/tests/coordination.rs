//! Coordination with real processes: ranks from the reference, Bully election announced on
//! `servers`, re-election after `kill -9`, Berkeley and Cristian clock sync of skewed servers.

mod support;

use std::time::{Duration, Instant};

use chat_net::client::{Client, ClientEvent};
use support::{agreed, status_at, wait_for, ProcCluster};

#[test]
fn coordinator_killed_survivors_elect_highest_rank_and_it_takes_over_again() {
    let mut cluster = ProcCluster::start(3);
    let all = ["server-1", "server-2", "server-3"];
    let (first, term1) =
        agreed(&cluster, &all, Duration::from_secs(20)).expect("initial agreement");

    let watcher = Client::connect(cluster.client_config()).unwrap();
    watcher.subscribe("servers").unwrap();

    let survivors: Vec<&str> = all.iter().copied().filter(|n| *n != first).collect();
    let killed_at = Instant::now();
    cluster.server(&first).kill9();

    // The survivors announce a new coordinator on `servers`.
    let announced = wait_for(Duration::from_secs(10), || {
        match watcher.events().recv_timeout(Duration::from_millis(50)) {
            Ok(ClientEvent::Coordinator(a)) if a.coordinator != first => {
                Some((a, killed_at.elapsed()))
            }
            _ => None,
        }
    });
    let (announcement, took) = announced.expect("no new coordinator announced on `servers`");
    eprintln!(
        "re-election: kill -9 to announcement in {} ms",
        took.as_millis()
    );
    assert!(announcement.term > term1, "terms only grow");

    let (second, term2) =
        agreed(&cluster, &survivors, Duration::from_secs(10)).expect("survivors agree");
    assert_eq!(second, announcement.coordinator);
    assert!(term2 > term1);

    // The killed server (the highest rank) comes back and takes over in a higher term.
    cluster.start_server(&first);
    let (third, term3) =
        agreed(&cluster, &all, Duration::from_secs(20)).expect("agreement after restart");
    assert_eq!(third, first);
    assert!(term3 > term2);
}

#[test]
fn skewed_clocks_converge_within_10_ms() {
    let mut cluster = ProcCluster::start(0);
    cluster.start_server_with("server-1", &["--clock-skew-ms=-1000"]);
    cluster.start_server_with("server-2", &["--clock-skew-ms=0"]);
    cluster.start_server_with("server-3", &["--clock-skew-ms=800"]);
    let names = ["server-1", "server-2", "server-3"];
    agreed(&cluster, &names, Duration::from_secs(20)).expect("a coordinator");
    // Offsets are relative to the same OS clock, so equal offsets mean equal timestamps.
    let spread = wait_for(Duration::from_secs(20), || {
        let offsets: Vec<i64> = names
            .iter()
            .map(|n| status_at(&cluster.peer_endpoint(n)).map(|s| s.clock_offset_ms))
            .collect::<Option<Vec<_>>>()?;
        let spread = offsets.iter().max()? - offsets.iter().min()?;
        (spread <= 10).then_some((spread, offsets))
    });
    let (spread, offsets) = spread.expect("clocks did not converge to within 10 ms");
    eprintln!("clock offsets after sync: {offsets:?} (spread {spread} ms)");
    // And timestamps stamped by the servers agree: read them from `status` replies.
    let stamps: Vec<i64> = names
        .iter()
        .map(|n| {
            let t0 = Instant::now();
            let r = support::ask(&cluster.peer_endpoint(n), chat_core::Request::Status).unwrap();
            let ts = r.meta.timestamp.unwrap().millis();
            // Bring each reading back to a common instant.
            ts - t0.elapsed().as_millis() as i64
        })
        .collect();
    let base = stamps[0];
    assert!(
        stamps.iter().all(|s| (s - base).abs() <= 10 + 5),
        "server timestamps disagree: {stamps:?}"
    );
}

/// The physical clock of the server at `endpoint` minus ours (ms), from the timestamp of a
/// `status` reply read at the middle of the round trip; and the status itself.
fn clock_of(endpoint: &str) -> Option<(f64, chat_core::ServerStatus)> {
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64()
        * 1000.0;
    let t0 = Instant::now();
    let reply = support::ask(endpoint, chat_core::Request::Status)?;
    let rtt = t0.elapsed().as_secs_f64() * 1000.0;
    let stamp = reply.meta.timestamp?.millis() as f64;
    match reply.reply {
        chat_core::Reply::Status(s) => Some((stamp - (sent + rtt / 2.0), *s)),
        _ => None,
    }
}

#[test]
fn cristian_followers_converge_to_the_coordinators_clock_within_10_ms() {
    let mut cluster = ProcCluster::start(0);
    cluster.server_flags = vec!["--clock-sync=cristian".into()];
    let skews = [("server-1", -1000i64), ("server-2", 0), ("server-3", 800)];
    for (name, skew) in skews {
        cluster.start_server_with(name, &[&format!("--clock-skew-ms={skew}")]);
    }
    let started = Instant::now();
    let names = skews.map(|(n, _)| n);
    let (coordinator, _) =
        agreed(&cluster, &names, Duration::from_secs(20)).expect("a coordinator");
    let own_skew = skews
        .iter()
        .find(|(n, _)| *n == coordinator)
        .map(|(_, s)| *s)
        .expect("the coordinator is one of ours");
    // Every follower's timestamps land on the coordinator's clock (offsets share one OS
    // clock here, so equal offsets mean equal clocks; the timestamps confirm it).
    let converged = wait_for(Duration::from_secs(20), || {
        let readings: Vec<(f64, chat_core::ServerStatus)> = names
            .iter()
            .map(|n| clock_of(&cluster.peer_endpoint(n)))
            .collect::<Option<Vec<_>>>()?;
        let (coord_clock, _) = readings.iter().find(|(_, s)| s.name == coordinator)?;
        let gaps: Vec<(String, f64, i64)> = readings
            .iter()
            .map(|(c, s)| {
                (
                    s.name.clone(),
                    c - coord_clock,
                    s.clock_offset_ms - own_skew,
                )
            })
            .collect();
        gaps.iter()
            .all(|(_, stamp_gap, offset_gap)| stamp_gap.abs() <= 10.0 && offset_gap.abs() <= 10)
            .then_some((gaps, readings))
    });
    let (gaps, readings) = converged.expect("the followers did not reach the coordinator's clock");
    eprintln!(
        "cristian: coordinator {coordinator} (skew {own_skew:+} ms); within 10 ms {} ms after \
         the last start; follower - coordinator (timestamps, offsets): {gaps:?}",
        started.elapsed().as_millis()
    );
    for (_, s) in &readings {
        assert_eq!(
            s.clock_sync.as_deref(),
            Some("cristian"),
            "{} says its mode",
            s.name
        );
        if s.name == coordinator {
            // Cristian never moves the coordinator's clock: everyone comes to it.
            assert_eq!(s.clock_offset_ms, own_skew, "the coordinator's clock moved");
        }
    }
}

#[test]
fn servers_register_again_by_themselves_after_a_reference_restart() {
    let mut cluster = ProcCluster::start(2);
    let names = ["server-1", "server-2"];
    agreed(&cluster, &names, Duration::from_secs(20)).expect("a coordinator");
    let ranks: Vec<Option<u64>> = names
        .iter()
        .map(|n| status_at(&cluster.peer_endpoint(n)).and_then(|s| s.rank))
        .collect();
    let endpoint = cluster.reference_endpoint.clone();
    cluster.reference.kill9();

    // While the reference is down the servers keep serving and keep their peers.
    let c = Client::connect(cluster.client_config()).unwrap();
    c.login("ana").unwrap();
    let s = status_at(&cluster.peer_endpoint("server-1")).unwrap();
    assert_eq!(
        s.peers.len(),
        1,
        "server-1 forgot its peer while the reference is down"
    );

    // A fresh reference (empty registry) on the same endpoint: the servers register again,
    // with the ranks they had.
    cluster.reference = support::Proc::start(
        "reference",
        env!("CARGO_BIN_EXE_chat-reference"),
        &["--bind", &endpoint, "--timeout-ms", "2000"],
    );
    let listed = wait_for(Duration::from_secs(10), || {
        match support::ask(&endpoint, chat_core::Request::List)?.reply {
            chat_core::Reply::List(l) if l.len() == 2 => Some(l),
            _ => None,
        }
    })
    .expect("servers did not register again");
    for (n, r) in names.iter().zip(&ranks) {
        let entry = listed.iter().find(|s| s.name == *n).expect("listed");
        assert_eq!(
            Some(entry.rank),
            *r,
            "{n} changed rank across the reference restart"
        );
    }
}
