//! `chat-bench` as a library: a short run at small scale whose report must be consistent.
//! No timing thresholds: the machine is shared.

use std::time::Duration;

use bins::bench::{run, BenchArgs, Mix, StoreKind};
use chat_net::Shutdown;

#[test]
fn short_bench_run_delivers_every_acknowledged_publication_and_counts_add_up() {
    let args = BenchArgs {
        servers: 1,
        clients: 2,
        subscribers: 1,
        store: StoreKind::Memory,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        mix: Mix::parse("publish=80,history=10,users=10").expect("mix"),
        quiet: true,
        ..BenchArgs::default()
    };
    let report = run(&args, &Shutdown::new()).expect("bench run");
    let text = report.render();

    // Chat load: requests were made, none failed, the histogram holds exactly the successes.
    let chat = &report.chat;
    assert!(chat.ok > 0, "{text}");
    assert!(chat.errors.is_empty(), "errors: {:?}\n{text}", chat.errors);
    assert_eq!(chat.requests, chat.ok, "{text}");
    assert_eq!(chat.latency.count, chat.ok, "{text}");
    let per_op: u64 = chat.operations.iter().map(|o| o.latency.count).sum();
    assert_eq!(per_op, chat.ok, "{text}");
    assert!(chat.operations.iter().any(|o| o.op == "publish"), "{text}");
    assert!(chat.throughput > 0.0 && chat.elapsed_s > 0.0, "{text}");

    // Delivery: every acknowledged publish reached the subscriber, exactly once.
    assert_eq!(report.delivery.len(), 1, "{text}");
    for d in &report.delivery {
        assert!(d.acknowledged > 0, "{text}");
        assert_eq!(d.acknowledged, d.delivered, "{text}");
        assert_eq!(
            (d.lost, d.duplicates, d.unacknowledged),
            (0, 0, 0),
            "{text}"
        );
    }
    assert!(report.no_loss());

    // The server's summary: its writes were committed in batches (never more batches than
    // events, at least one), and the report says how many.
    assert_eq!(report.replicas.len(), 1, "{text}");
    let server = &report.replicas[0];
    assert!(server.events >= report.delivery[0].acknowledged, "{text}");
    assert!(
        server.commits > 0 && server.commits <= server.events,
        "{} commits for {} events\n{text}",
        server.commits,
        server.events
    );
    assert!(text.contains(" commits ("), "{text}");

    // Baseline: ran with one worker, without errors, and the ratio is computed.
    let base = report.baseline.as_ref().expect("baseline ran");
    assert!(base.ok > 0, "{text}");
    assert!(base.errors.is_empty(), "errors: {:?}\n{text}", base.errors);
    assert_eq!(base.latency.count, base.ok, "{text}");
    let ratio = report.ratio.as_ref().expect("ratio");
    assert!(ratio.throughput > 0.0 && ratio.p99 > 0.0, "{text}");

    // The JSON form carries the same figures.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["chat"]["ok"].as_u64(), Some(chat.ok));
    assert_eq!(
        json["delivery"][0]["delivered"].as_u64(),
        Some(report.delivery[0].delivered)
    );
    assert!(!report.interrupted);
}
