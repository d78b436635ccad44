//! The `chat-web` binary against a cluster of real processes: it prints its URL, serves the
//! page and the API, and stops cleanly on SIGTERM.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use chat_testkit::http::{http, sign_in};
use support::{field, Proc, ProcCluster};

#[test]
fn web_binary_prints_its_url_serves_and_stops_on_sigterm() {
    let cluster = ProcCluster::start(1);
    let mut web = Proc::start(
        "chat-web",
        env!("CARGO_BIN_EXE_chat-web"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--broker",
            &cluster.frontend,
            "--sub",
            &cluster.xpub,
        ],
    );
    let url = field(&web.endpoints(), "url");
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("url is http://127.0.0.1:PORT, got {url}"));
    assert!(addr.ip().is_loopback(), "{addr}");

    let page = http(addr, "GET", "/", None, None);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<title>chat-zmq</title>"),
        "{}",
        page.body
    );
    // Signing in goes through the cluster: the session's SDK client logs in for real.
    let cookie = sign_in(addr, "hana");
    let session = http(addr, "GET", "/api/session", Some(&cookie), None);
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(session.json()["user"], "hana", "{}", session.body);

    assert!(
        web.terminate(Duration::from_secs(10)),
        "chat-web did not stop within 10 s of SIGTERM"
    );
    let status = web.child.try_wait().ok().flatten().expect("exited");
    assert!(status.success(), "exit status {status}");
}
