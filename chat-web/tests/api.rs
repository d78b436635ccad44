//! The HTTP API without a browser: sessions, limits, errors in words, history paging and
//! the event stream. (The `chat-web` binary's own test is in `bins/tests/web.rs`.)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chat_web::WebLimits;
use serde_json::json;
use support::{http, post_json, post_patiently, sign_in, wait_for, TestCluster, TestWeb, DEADLINE};

#[test]
fn api_sessions_limits_errors_and_paging() {
    let cluster = TestCluster::start(1);
    let limits = WebLimits {
        max_sessions: 3,
        ..WebLimits::default()
    };
    let web = TestWeb::start(cluster.web_config(), limits);
    let addr = web.addr;

    // The page and its assets, with a strict policy.
    let page = http(addr, "GET", "/", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>chat-zmq</title>"));
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(http(addr, "GET", "/app.js", None, None).status, 200);
    assert_eq!(http(addr, "GET", "/app.css", None, None).status, 200);

    // Nothing without a session; errors are sentences.
    let r = http(addr, "GET", "/api/users", None, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "not_signed_in");
    let forged = "chat_web_session=".to_string() + &"ab".repeat(32);
    assert_eq!(
        http(addr, "GET", "/api/users", Some(&forged), None).status,
        401
    );
    let r = post_json(addr, "/api/login", None, &json!({ "user": "a b" }));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_name");
    assert!(r.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("without spaces")));
    let r = http(addr, "POST", "/api/login", None, Some(b"not json"));
    assert_eq!(r.status, 400);

    // Sign in: an HttpOnly, SameSite=Strict cookie.
    let r = post_json(addr, "/api/login", None, &json!({ "user": "carla" }));
    assert_eq!(r.status, 200, "{}", r.body);
    let set = r.header("set-cookie").expect("cookie").to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let carla = r.session_cookie().expect("cookie");
    let me = http(addr, "GET", "/api/session", Some(&carla), None);
    assert_eq!(me.json()["user"], "carla");

    // Bodies are limited (128 KiB).
    let big = json!({ "channel": "x", "message": "a".repeat(200 * 1024) });
    let r = post_json(addr, "/api/publish", Some(&carla), &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"], "too_large");

    // Writes from another site are refused.
    let mut s = TcpStream::connect(addr).expect("connect");
    let body = br#"{"channel":"x","message":"y"}"#;
    write!(
        s,
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
         Cookie: {carla}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .expect("write");
    s.write_all(body).expect("body");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");

    // Server errors in words.
    let r = post_json(
        addr,
        "/api/publish",
        Some(&carla),
        &json!({ "channel": "nowhere", "message": "hi" }),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"], "unknown_channel");
    assert_eq!(
        r.json()["message"],
        "That channel does not exist yet; create it first."
    );
    let r = post_json(
        addr,
        "/api/message",
        Some(&carla),
        &json!({ "to": "ghost", "message": "hi" }),
    );
    assert_eq!(r.json()["error"], "unknown_user", "{}", r.body);

    // Create (and join), publish, then page through history.
    let r = post_json(
        addr,
        "/api/channels",
        Some(&carla),
        &json!({ "channel": "geral" }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["created"], true);
    let r = post_json(
        addr,
        "/api/channels",
        Some(&carla),
        &json!({ "channel": "geral" }),
    );
    assert_eq!(r.json()["created"], false, "existing channel: joined");
    for i in 0..120 {
        let r = post_patiently(
            addr,
            "/api/publish",
            Some(&carla),
            &json!({ "channel": "geral", "message": format!("m{i:03}") }),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &before {
            Some(c) => format!("/api/history/channel?name=geral&limit=50&before={c}"),
            None => "/api/history/channel?name=geral&limit=50".to_string(),
        };
        let page = http(addr, "GET", &path, Some(&carla), None).json();
        let items = page["items"].as_array().expect("items").clone();
        assert!(items.len() <= 50);
        let mut texts: Vec<String> = items
            .iter()
            .map(|i| i["message"].as_str().unwrap_or("").to_string())
            .collect();
        texts.extend(seen);
        seen = texts;
        pages += 1;
        match page["next"].as_str() {
            Some(c) => before = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..120).map(|i| format!("m{i:03}")).collect();
    assert_eq!(seen, expected);
    let channels = http(addr, "GET", "/api/channels", Some(&carla), None).json();
    assert_eq!(channels["joined"], json!(["geral"]));

    // The event stream: a post on a joined channel, a private message, nothing else.
    let mut sse = TcpStream::connect(addr).expect("connect");
    sse.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    write!(
        sse,
        "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {carla}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("write");
    let dan = sign_in(addr, "dan");
    let got = wait_for(DEADLINE, || {
        // Keep publishing until the subscription is live at the proxy (slow joiner).
        post_json(
            addr,
            "/api/publish",
            Some(&dan),
            &json!({ "channel": "geral", "message": "<b>live</b>" }),
        );
        post_json(
            addr,
            "/api/message",
            Some(&dan),
            &json!({ "to": "carla", "message": "psst" }),
        );
        let mut buf = [0u8; 65536];
        let mut text = String::new();
        let end = Instant::now() + Duration::from_millis(400);
        while Instant::now() < end {
            if let Ok(n) = sse.read(&mut buf) {
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        (text.contains("\"kind\":\"post\"") && text.contains("\"kind\":\"direct\"")).then_some(text)
    })
    .expect("live events on the stream");
    assert!(got.contains("text/event-stream"), "{got}");
    assert!(got.contains("\"message\":\"<b>live</b>\""), "{got}");
    assert!(got.contains("\"src\":\"dan\""), "{got}");

    // The session bound: carla and dan hold 2 of 3.
    let _eve = sign_in(addr, "eve");
    let r = post_json(addr, "/api/login", None, &json!({ "user": "fred" }));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "too_many_sessions");
    // Signing out frees a place.
    let r = http(addr, "POST", "/api/logout", Some(&dan), None);
    assert_eq!(r.status, 200);
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(
        http(addr, "GET", "/api/session", Some(&dan), None).status,
        401
    );
    let _fred = sign_in(addr, "fred");

    // The cluster table.
    let c = wait_for(DEADLINE, || {
        let c = http(addr, "GET", "/api/cluster", Some(&carla), None).json();
        (c["servers"].as_array().map_or(0, Vec::len) == 1).then_some(c)
    })
    .expect("cluster table");
    assert_eq!(c["servers"][0]["name"], "server-1");
    drop(sse);
}

#[test]
fn idle_sessions_expire() {
    let cluster = TestCluster::start(1);
    let limits = WebLimits {
        idle_timeout: Duration::from_millis(500),
        ..WebLimits::default()
    };
    let web = TestWeb::start(cluster.web_config(), limits);
    let cookie = sign_in(web.addr, "gil");
    assert_eq!(
        http(web.addr, "GET", "/api/session", Some(&cookie), None).status,
        200
    );
    std::thread::sleep(Duration::from_millis(900));
    let r = http(web.addr, "GET", "/api/session", Some(&cookie), None);
    assert_eq!(r.status, 401);
}

#[test]
fn the_cluster_check_runs_from_the_api_and_its_probe_stays_out_of_the_lists() {
    let cluster = TestCluster::start(2);
    let web = TestWeb::start(cluster.web_config(), WebLimits::default());
    let addr = web.addr;
    assert_eq!(
        post_json(addr, "/api/check", None, &json!({})).status,
        401,
        "not without a session"
    );
    let cookie = sign_in(addr, "dora");
    // Until the two servers agree on a coordinator the check says so; then all pass.
    let mut last = serde_json::Value::Null;
    let passed = wait_for(DEADLINE, || {
        let r = post_json(addr, "/api/check", Some(&cookie), &json!({}));
        assert_eq!(r.status, 200, "{}", r.body);
        last = r.json();
        (last["ok"] == true).then(|| last.clone())
    });
    let report = passed.unwrap_or_else(|| panic!("the check never passed: {last:#}"));
    let steps = report["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "login",
            "channel",
            "publish",
            "message",
            "servers",
            "coordinator",
            "clocks"
        ]
    );
    for s in steps {
        assert_eq!(s["outcome"], "pass", "{s}");
        assert!(s["ms"].is_u64() && s["title"].is_string() && s["detail"].is_string());
    }
    let servers = report["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 2);
    assert!(servers.iter().all(|s| s["answered"] == true));

    // The probe exists in the cluster, but the page's lists leave it out.
    let sdk = cluster.client();
    assert!(sdk
        .channels()
        .expect("channels")
        .contains(&"_check-channel".to_string()));
    assert!(sdk
        .users()
        .expect("users")
        .contains(&"_check-probe".to_string()));
    let channels = http(addr, "GET", "/api/channels", Some(&cookie), None).json();
    let users = http(addr, "GET", "/api/users", Some(&cookie), None).json();
    for name in channels["channels"]
        .as_array()
        .into_iter()
        .chain(users["users"].as_array())
        .flatten()
    {
        assert!(
            !name.as_str().is_some_and(|n| n.starts_with("_check-")),
            "{name} listed"
        );
    }
    assert!(users["users"]
        .as_array()
        .is_some_and(|u| u.iter().any(|n| n == "dora")));
}
