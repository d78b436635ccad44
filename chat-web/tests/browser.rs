//! End to end in a real headless Chromium: two people chat through chat-web, on an
//! in-process cluster (proxy, broker, reference, two servers, then a third), and check the
//! cluster with the page's button (all pass; then, with a server stopped, that step fails).
//!
//! Needs Chromium (`/usr/bin/chromium`, or `$CHROMIUM`); without it the test is skipped
//! with instructions, unless `CHAT_REQUIRE_BROWSER=1` (set by `.ci/run`) makes that a failure.
//! Saves a screenshot to `target/chat-web.png`, and also to `$CHAT_WEB_SCREENSHOT` when set
//! (a relative path is taken from the workspace root, e.g. `docs/img/chat-web.png`).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chat_core::HistoryTarget;
use chat_web::WebLimits;
use support::cdp::{js, Browser};
use support::{publish_patiently, wait_for, TestCluster, TestWeb, DEADLINE};

const IMG_ATTACK: &str = "<img src=x onerror=\"window.__pwned=1;alert(1)\">";
const SCRIPT_ATTACK: &str = "<script>window.__pwned=2;alert(2)</script>";
const HOSTILE: &str = "<script>x";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sign_in(b: &mut Browser, user: &str) {
    b.type_into("#login-user", user);
    b.click("#login-button");
    b.wait_text("#me", user);
    b.wait_js(
        "the live stream",
        "document.getElementById('conn').textContent === 'live'",
    );
}

fn say(b: &mut Browser, text: &str) {
    b.type_into("#compose-text", text);
    b.click("#send-button");
    b.wait_js(
        "the message box to clear",
        "document.getElementById('compose-text').value === ''",
    );
}

fn message_count(b: &mut Browser) -> u64 {
    b.eval("document.querySelectorAll('#messages .msg').length")
        .as_u64()
        .unwrap_or(0)
}

/// Checks that nothing from the chat became markup or ran as script in `b`'s page.
fn assert_inert(b: &mut Browser) {
    let injected =
        b.eval("document.querySelectorAll('img, iframe, b, script:not([src=\"/app.js\"])').length");
    assert_eq!(injected, 0, "{}: chat text became elements", "page");
    assert_eq!(
        b.eval("typeof window.__pwned"),
        "undefined",
        "a script from a message ran"
    );
    assert!(b.dialogs.is_empty(), "dialogs opened: {:?}", b.dialogs);
}

#[test]
fn two_people_chat_in_real_headless_chromium() {
    if chat_testkit::require::available_or_skip(
        "two_people_chat_in_real_headless_chromium",
        "Chromium",
        chat_testkit::require::REQUIRE_BROWSER,
        support::cdp::find_chromium(),
    )
    .is_none()
    {
        return;
    }
    let t0 = Instant::now();
    let mut cluster = TestCluster::start(2);
    let mut web = TestWeb::start(cluster.web_config(), WebLimits::default());
    let url = web.url();
    let t_cluster = t0.elapsed();

    let mut ana = Browser::launch("ana");
    let mut bia = Browser::launch("bia");
    assert_ne!(ana.pid(), bia.pid());
    assert_ne!(ana.profile_dir(), bia.profile_dir());
    ana.open(&url);
    bia.open(&url);
    let t_browsers = t0.elapsed();

    // Two people sign in, each in their own browser profile.
    sign_in(&mut ana, "ana");
    sign_in(&mut bia, "bia");

    // An error from the server is shown in words.
    bia.type_into("#new-channel", "servers");
    bia.click("#create-button");
    bia.wait_js(
        "the reserved-name error",
        "!document.getElementById('error').hidden && \
         document.getElementById('error-text').textContent.includes('reserved')",
    );
    bia.click("#error-close");
    bia.wait_js("the error to go", "document.getElementById('error').hidden");
    bia.eval("document.getElementById('new-channel').value = ''");

    // ana creates a channel (and is in it); bia sees it and joins.
    ana.type_into("#new-channel", "sala");
    ana.click("#create-button");
    ana.wait_text("#conv-title", "# sala");
    bia.click_item("#channel-list", "# sala");
    bia.wait_text("#conv-title", "# sala");

    // Live channel posts, both ways.
    say(&mut ana, "Oi bia, bem-vinda à sala!");
    bia.wait_text("#messages .text", "Oi bia, bem-vinda à sala!");
    say(&mut bia, "Oi ana! Tudo certo por aqui.");
    ana.wait_text("#messages .text", "Oi bia, bem-vinda à sala!");
    ana.wait_text("#messages .text", "Oi ana! Tudo certo por aqui.");
    say(
        &mut ana,
        "O cluster elegeu um coordenador; dá para ver no painel à direita.",
    );
    bia.wait_text(
        "#messages .text",
        "O cluster elegeu um coordenador; dá para ver no painel à direita.",
    );

    // A hostile client on the cluster: its name and messages must stay text.
    let hostile = cluster.client();
    hostile.login(HOSTILE).expect("hostile login");
    hostile
        .publish(HOSTILE, "sala", IMG_ATTACK)
        .expect("publish img");
    hostile
        .publish(HOSTILE, "sala", SCRIPT_ATTACK)
        .expect("publish script");
    bia.wait_text("#messages .text", IMG_ATTACK);
    bia.wait_text("#messages .text", SCRIPT_ATTACK);
    bia.wait_text("#messages .author", HOSTILE);
    ana.wait_text("#messages .text", SCRIPT_ATTACK);

    // ana sends bia a private message; bia gets it live (notification), then opens it.
    ana.click_item("#user-list", "bia");
    ana.wait_text("#conv-title", "Private: bia");
    let secret = "Segredo: <b>só</b> entre nós";
    say(&mut ana, secret);
    ana.wait_text("#messages .text", secret);
    bia.wait_text("#toasts .toast-text", secret);
    bia.wait_js(
        "an unread badge on ana",
        "[...document.querySelectorAll('#user-list button')].some(b => \
         b.querySelector('.name').textContent === 'ana' && !!b.querySelector('.badge'))",
    );
    hostile
        .send_message(HOSTILE, "bia", IMG_ATTACK)
        .expect("hostile message");
    bia.wait_text("#toasts .toast-text", IMG_ATTACK);
    bia.wait_text(
        "#toasts .toast-from",
        &format!("Private message from {HOSTILE}:"),
    );
    bia.click_item("#user-list", "ana");
    bia.wait_text("#conv-title", "Private: ana");
    bia.wait_text("#messages .text", secret);
    say(&mut bia, "Recebido, obrigada!");
    ana.wait_text("#messages .text", "Recebido, obrigada!");
    bia.click_item("#user-list", HOSTILE);
    bia.wait_text("#conv-title", &format!("Private: {HOSTILE}"));
    bia.wait_text("#messages .text", IMG_ATTACK);
    assert_inert(&mut bia);
    assert_inert(&mut ana);

    // A third server joins: it has the highest rank, wins an election and announces it on
    // `servers`; both pages hear the announcement live.
    cluster.start_server("server-3");
    for b in [&mut ana, &mut bia] {
        b.wait_js(
            "the announcement of server-3",
            "[...document.querySelectorAll('#announcements li')]\
             .some(e => e.textContent.includes('server-3 is coordinator'))",
        );
    }

    // History with paging: 70 old posts, pages of 50.
    hostile.create_channel("arquivo").expect("create arquivo");
    for i in 0..70 {
        publish_patiently(&hostile, HOSTILE, "arquivo", &format!("arquivo {i:02}"));
    }
    // Every server holds all 70 before the browser asks (bia's client may be served by any).
    let converged = wait_for(DEADLINE, || {
        let me = hostile.status().ok()?;
        let mut clients = vec![cluster.client()];
        for p in &me.peers {
            let endpoint = p.endpoint.clone()?;
            let cfg = chat_net::client::ClientConfig {
                broker: endpoint,
                attempts: 1,
                timeout: Duration::from_secs(1),
                ..cluster.client_config()
            };
            clients.push(chat_net::client::Client::connect(cfg).ok()?);
        }
        let all = clients.iter().all(|c| {
            c.history(HistoryTarget::Channel("arquivo".into()), None, 1000)
                .is_ok_and(|p| p.items.len() == 70)
        });
        (all && me.peers.len() == 2).then_some(())
    });
    assert!(converged.is_some(), "the servers never agreed on arquivo");
    bia.click_item("#channel-list", "# arquivo");
    bia.wait_text("#conv-title", "# arquivo");
    bia.wait_text("#messages .text", "arquivo 69");
    assert_eq!(message_count(&mut bia), 50, "first page");
    bia.click("#load-older");
    bia.wait_js(
        "the older page",
        "document.querySelectorAll('#messages .msg').length === 70",
    );
    assert_eq!(
        bia.texts("#messages .text").first().map(String::as_str),
        Some("arquivo 00")
    );
    bia.wait_js(
        "no more older pages",
        "document.getElementById('load-older').hidden",
    );

    // The cluster panel: both servers, ranks, a coordinator and its term.
    for b in [&mut ana, &mut bia] {
        b.wait_js(
            "three answering servers",
            "[...document.querySelectorAll('#servers tbody tr .role')]\
             .filter(e => e.textContent !== 'not answering').length === 3",
        );
        b.wait_js(
            "a coordinator",
            "document.getElementById('cluster-summary').textContent.startsWith('Coordinator server-3')",
        );
    }
    let names = bia.texts("#servers .server-name");
    assert_eq!(names, ["server-1", "server-2", "server-3"]);

    // The self-check: bia clicks "Check the cluster"; every step passes, each with its time.
    bia.click("#check-button");
    bia.wait_js(
        "the check's results",
        "document.getElementById('check-summary').textContent.startsWith('All 7 steps passed')",
    );
    let titles = bia.texts("#check-steps .step-title");
    assert_eq!(titles.len(), 7, "{titles:?}");
    assert_eq!(titles[0], "Log in the probe user");
    assert!(bia
        .texts("#check-steps .step-ms")
        .iter()
        .all(|t| t.ends_with(" ms")));
    assert_eq!(
        bia.texts("#check-steps .step.pass .step-mark").len(),
        7,
        "seven green marks"
    );
    // The probe's user and channel exist, but people's lists leave them out.
    let probes = bia.eval(
        "Promise.all([fetch('/api/channels').then(r => r.json()), fetch('/api/users').then(r => r.json())])\
         .then(([c, u]) => [...c.channels, ...u.users].filter(n => n.startsWith('_check-')).length)",
    );
    assert_eq!(probes, 0, "probe names listed");
    assert!(hostile
        .channels()
        .expect("channels")
        .contains(&"_check-channel".to_string()));

    // Back to the channel for the picture.
    bia.click_item("#channel-list", "# sala");
    bia.wait_text("#messages .text", SCRIPT_ATTACK);
    bia.wait_js(
        "the panel to show the replicas converged (equal message counts)",
        "(() => { const n = [...document.querySelectorAll('#servers tbody tr')]\
         .map(r => r.lastElementChild.textContent); \
         return n.length === 3 && n.every(x => x !== '' && x === n[0]); })()",
    );
    bia.eval("document.getElementById('scroller').scrollTop = 1e9");
    std::thread::sleep(Duration::from_millis(300));
    let shot = workspace_root().join("target/chat-web.png");
    bia.screenshot(&shot);
    if let Some(p) = std::env::var_os("CHAT_WEB_SCREENSHOT").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        let p = if p.is_absolute() {
            p
        } else {
            workspace_root().join(p)
        };
        bia.screenshot(&p);
        println!("screenshot saved to {}", p.display());
    }
    assert_inert(&mut bia);

    // A server stops: the check fails the per-server step, says which server and why, and
    // still shows the other steps.
    cluster.stop_server("server-1");
    bia.click("#check-button");
    bia.wait_js(
        "the failed check",
        "document.getElementById('check-summary').textContent.includes('steps failed')",
    );
    let failed = bia.texts("#check-steps .step.fail .step-detail");
    assert!(
        failed.iter().any(|d| d.contains("server-1:")),
        "the failing step names server-1: {failed:?}"
    );
    assert!(
        bia.texts("#check-steps .step.pass .step-title")
            .contains(&"Publish a post and receive it".to_string()),
        "the rest still works"
    );
    assert_inert(&mut bia);

    // Sign out returns to the sign-in form; the old cookie no longer works.
    ana.click("#logout");
    ana.wait_js(
        "the sign-in form",
        "!document.getElementById('login-view').hidden",
    );
    let status = ana.eval("fetch('/api/session').then(r => r.status)");
    assert_eq!(status, 401);
    let probe = ana.eval(&format!(
        "fetch('/api/login', {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, \
         body: JSON.stringify({{user: {}}})}}).then(r => r.json()).then(j => j.message)",
        js("a b")
    ));
    assert!(
        probe.as_str().is_some_and(|m| m.contains("without spaces")),
        "invalid name explained: {probe}"
    );

    assert!(ana.dialogs.is_empty() && bia.dialogs.is_empty());
    let t_flow = t0.elapsed();
    drop(ana);
    drop(bia);
    let stop = web.stop();
    assert!(
        stop < Duration::from_secs(6),
        "chat-web took {stop:?} to stop"
    );
    println!(
        "timing: cluster+web {t_cluster:?}, browsers {:?}, flow {:?}, web stop {stop:?}, total {:?}",
        t_browsers - t_cluster,
        t_flow - t_browsers,
        t0.elapsed()
    );
}
