//! Measures replication lag: the time from a publish being acknowledged to the post being
//! visible on every server, and the publish latency itself.
//!
//! Start a cluster (`cargo run --release --bin chat -- up`), then:
//! `cargo run --release --example replication_lag -- 200`
//!
//! Each server's peer socket answers `history` like the broker does, so one SDK client per
//! server (pointed at that server's peer endpoint) reads each server directly.

use std::time::{Duration, Instant};

use chat_core::{HistoryTarget, Publication};
use chat_net::client::{Client, ClientConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let samples: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let base: u16 = args.next().map_or(Ok(5555), |s| s.parse())?;
    let servers: u16 = args.next().map_or(Ok(3), |s| s.parse())?;
    let cfg = ClientConfig {
        broker: format!("tcp://127.0.0.1:{base}"),
        sub: format!("tcp://127.0.0.1:{}", base + 3),
        ..ClientConfig::default()
    };
    let client = Client::connect(cfg.clone())?;
    client.login("lagprobe")?;
    let _ = client.create_channel("lagchan");
    let readers: Vec<Client> = (1..=servers)
        .map(|i| {
            Client::connect(ClientConfig {
                broker: format!("tcp://127.0.0.1:{}", base + 45 + i),
                ..cfg.clone()
            })
        })
        .collect::<Result<_, _>>()?;
    let (mut acks, mut lags) = (Vec::new(), Vec::new());
    for n in 0..samples {
        let body = format!("probe-{n}-{}", std::process::id());
        let t0 = Instant::now();
        client.publish("lagprobe", "lagchan", &body)?;
        let acked = t0.elapsed();
        let mut pending: Vec<&Client> = readers.iter().collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|r| {
                let page = r.history(HistoryTarget::Channel("lagchan".into()), None, 5);
                !page.is_ok_and(|p| {
                    p.items
                        .iter()
                        .any(|i| matches!(i, Publication::Channel(c) if c.message == body))
                })
            });
        }
        anyhow::ensure!(
            pending.is_empty(),
            "post {n} not visible everywhere within 5 s"
        );
        acks.push(acked);
        lags.push(t0.elapsed() - acked);
    }
    acks.sort();
    lags.sort();
    println!(
        "publish ack latency: p50 {:?} p99 {:?}; ack -> visible on all {} servers: p50 {:?} p99 {:?} ({} samples)",
        percentile(&acks, 0.5),
        percentile(&acks, 0.99),
        servers,
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        samples
    );
    Ok(())
}
