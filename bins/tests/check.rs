//! `chat check` against real processes on loopback: every step passes on a healthy cluster
//! (and the probe stays out of `chat-client`'s lists); with a server killed, the per-server
//! step fails and names it, and the exit code says so.

mod support;

use std::time::Duration;

use support::{agreed, run_to_end, ProcCluster, Ran};

const NAMES: [&str; 3] = ["server-1", "server-2", "server-3"];
/// `chat check` ends within its own timeouts; this only guards the test.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);
const STEPS: [&str; 7] = [
    "login",
    "channel",
    "publish",
    "message",
    "servers",
    "coordinator",
    "clocks",
];

fn chat_check(cluster: &ProcCluster, extra: &[&str]) -> Ran {
    let mut args = vec![
        "check",
        "--broker",
        &cluster.frontend,
        "--sub",
        &cluster.xpub,
        "--servers",
        "server-1,server-2,server-3",
    ];
    args.extend_from_slice(extra);
    let ran = run_to_end(env!("CARGO_BIN_EXE_chat"), &args, CHECK_DEADLINE);
    eprintln!("chat check {extra:?} ->\n{}{}", ran.stdout, ran.stderr);
    ran
}

/// The line of step `name` (`PASS name ...`).
fn step_line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no line for step {name} in:\n{out}"))
}

fn client_list(cluster: &ProcCluster, what: &str) -> Vec<String> {
    let ran = run_to_end(
        env!("CARGO_BIN_EXE_chat-client"),
        &["--broker", &cluster.frontend, "--sub", &cluster.xpub, what],
        CHECK_DEADLINE,
    );
    assert_eq!(ran.code, Some(0), "chat-client {what}: {}", ran.stderr);
    ran.stdout.lines().map(str::to_string).collect()
}

#[test]
fn chat_check_passes_every_step_on_a_healthy_cluster() {
    let cluster = ProcCluster::start(3);
    agreed(&cluster, &NAMES, Duration::from_secs(20)).expect("a coordinator");
    let ran = chat_check(&cluster, &[]);
    assert_eq!(ran.code, Some(0), "exit code of a healthy check");
    for step in STEPS {
        assert!(
            step_line(&ran.stdout, step).starts_with("PASS"),
            "step {step} did not pass"
        );
    }
    assert!(step_line(&ran.stdout, "servers").contains("3 server(s) answered"));
    assert!(ran.stdout.contains("all 7 steps passed"));

    // Again as JSON (the probe user and channel exist now: still all pass).
    let json = chat_check(&cluster, &["--json"]);
    assert_eq!(json.code, Some(0));
    let report: serde_json::Value =
        serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(report["ok"], true);
    assert_eq!(report["steps"].as_array().map(Vec::len), Some(7));
    assert_eq!(report["servers"].as_array().map(Vec::len), Some(3));
    assert!(report["steps"][1]["detail"]
        .as_str()
        .is_some_and(|d| d.contains("an earlier check created it")));

    // The probe is there, but people's lists leave it out.
    let sdk = chat_net::client::Client::connect(cluster.client_config()).expect("client");
    assert!(sdk
        .channels()
        .expect("channels")
        .iter()
        .any(|c| c == "_check-channel"));
    assert!(sdk
        .users()
        .expect("users")
        .iter()
        .any(|u| u == "_check-probe"));
    assert!(!client_list(&cluster, "channels")
        .iter()
        .any(|c| c.starts_with("_check-")));
    assert!(!client_list(&cluster, "users")
        .iter()
        .any(|u| u.starts_with("_check-")));
}

#[test]
fn chat_check_fails_the_server_step_naming_a_killed_server() {
    let mut cluster = ProcCluster::start(3);
    let (coordinator, _) =
        agreed(&cluster, &NAMES, Duration::from_secs(20)).expect("a coordinator");
    // Kill a server that does not coordinate, so the rest of the cluster stays as it was.
    let victim = NAMES
        .iter()
        .copied()
        .find(|n| *n != coordinator)
        .expect("a follower");
    cluster.server(victim).kill9();
    let ran = chat_check(&cluster, &[]);
    assert_eq!(ran.code, Some(1), "exit code with a server down");
    let servers = step_line(&ran.stdout, "servers");
    assert!(servers.starts_with("FAIL"), "{servers}");
    assert!(
        servers.contains(&format!("{victim}:")),
        "the failing step names {victim}: {servers}"
    );
    assert!(
        servers.contains("1 of 3 servers did not answer"),
        "{servers}"
    );
    // The rest of the cluster still works end to end.
    for step in ["login", "publish", "message", "coordinator"] {
        assert!(
            step_line(&ran.stdout, step).starts_with("PASS"),
            "step {step} should still pass"
        );
    }
    assert!(ran.stdout.contains("of 7 steps failed"));
}
