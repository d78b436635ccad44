//! End-to-end behaviour of broker + proxy + servers + SDK, in one process, on loopback.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chat_core::{ErrorCode, HistoryTarget, Publication};
use chat_net::client::ClientEvent;
use support::{next_event, subscribe_live, wait_for, TestCluster, DEADLINE};

#[test]
fn one_client_publishes_the_other_receives_on_the_channel_topic() {
    let cluster = TestCluster::start(1);
    let ana = cluster.client();
    let bia = cluster.client();
    ana.login("ana").unwrap();
    bia.login("bia").unwrap();
    ana.create_channel("geral").unwrap();
    subscribe_live(&bia, &ana, "ana", "geral");

    ana.publish("ana", "geral", "Olá!").unwrap();
    match next_event(&bia) {
        Some(ClientEvent::Post(p)) => {
            assert_eq!(
                (p.channel.as_str(), p.user.as_str(), p.message.as_str()),
                ("geral", "ana", "Olá!")
            );
            assert!(p.clock > 0);
        }
        other => panic!("expected the post, got {other:?}"),
    }
    // The receiver's Lamport clock moved past the publication's stamp.
    assert!(bia.clock() > 0);
}

#[test]
fn private_message_reaches_only_its_user_and_not_prefix_names() {
    let cluster = TestCluster::start(1);
    let ana = cluster.client();
    let anabela = cluster.client();
    let caio = cluster.client();
    for (c, u) in [(&ana, "ana"), (&anabela, "anabela"), (&caio, "caio")] {
        c.login(u).unwrap();
        c.subscribe(u).unwrap();
    }
    // Make sure both subscriptions are live: send to each until it arrives.
    for (c, u) in [(&ana, "ana"), (&anabela, "anabela")] {
        let got = wait_for(DEADLINE, || {
            caio.send_message("caio", u, "probe").unwrap();
            c.events().recv_timeout(Duration::from_millis(100)).ok()
        });
        assert!(got.is_some(), "subscription of {u} never became live");
        while c.events().recv_timeout(Duration::from_millis(200)).is_ok() {}
    }
    caio.send_message("caio", "anabela", "só para anabela")
        .unwrap();
    match next_event(&anabela) {
        Some(ClientEvent::Direct(d)) => {
            assert_eq!(
                (d.src.as_str(), d.dst.as_str(), d.message.as_str()),
                ("caio", "anabela", "só para anabela")
            )
        }
        other => panic!("expected the private message, got {other:?}"),
    }
    // `ana` is a prefix of `anabela`: ZeroMQ delivers the frame, the SDK must not.
    assert!(
        ana.events()
            .recv_timeout(Duration::from_millis(500))
            .is_err(),
        "prefix leak to ana"
    );
    // Messages to an unknown user are refused.
    let err = caio.send_message("caio", "ninguem", "x").unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownUser);
}

#[test]
fn every_seed_service_works_through_the_broker_with_three_servers() {
    let cluster = TestCluster::start(3);
    let c = cluster.client();
    c.login("ana").unwrap();
    c.login("bia").unwrap();
    c.create_channel("geral").unwrap();
    c.create_channel("tech").unwrap();
    // Reads may land on any server; replication makes them all converge.
    let users = wait_for(DEADLINE, || c.users().ok().filter(|u| u.len() == 2)).expect("users");
    assert_eq!(users, ["ana", "bia"]);
    let channels =
        wait_for(DEADLINE, || c.channels().ok().filter(|ch| ch.len() == 2)).expect("channels");
    assert_eq!(channels, ["geral", "tech"]);
    wait_for(DEADLINE, || {
        (0..6)
            .all(|_| {
                cluster
                    .client()
                    .channels()
                    .map(|ch| ch.len() == 2)
                    .unwrap_or(false)
            })
            .then_some(())
    })
    .expect("all servers have both channels");
    for i in 0..10 {
        c.publish("ana", "geral", &format!("m{i}")).unwrap();
    }
    c.send_message("ana", "bia", "oi bia").unwrap();
    assert_eq!(
        c.create_channel("geral").unwrap_err().code(),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        c.publish("ana", "nope", "x").unwrap_err().code(),
        ErrorCode::UnknownChannel
    );
    assert_eq!(
        c.login("servers").unwrap_err().code(),
        ErrorCode::ReservedName
    );
    assert_eq!(c.login("a b").unwrap_err().code(), ErrorCode::InvalidName);

    // History converges on every server, in the same order. A client sticks to one server
    // (session affinity) and new clients are spread round-robin, so ask through fresh ones.
    let history = wait_for(DEADLINE, || {
        let mut seen = BTreeMap::new();
        for _ in 0..9 {
            let c = cluster.client();
            let s = c.status().ok()?;
            let page = c
                .history(HistoryTarget::Channel("geral".into()), None, 100)
                .ok()?;
            if page.items.len() != 10 {
                return None;
            }
            seen.insert(s.name.clone(), page.items);
        }
        (seen.len() == 3).then_some(seen)
    })
    .expect("every server answered with the full history");
    let mut pages = history.values();
    let first = pages.next().unwrap();
    assert!(
        pages.all(|p| p == first),
        "servers disagree on history order"
    );
    let bodies: Vec<_> = first
        .iter()
        .map(|p| match p {
            Publication::Channel(p) => p.message.clone(),
            Publication::Direct(_) => unreachable!(),
        })
        .collect();
    assert_eq!(bodies, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let dms = wait_for(DEADLINE, || {
        c.history(HistoryTarget::User("bia".into()), None, 10)
            .ok()
            .filter(|p| p.items.len() == 1)
    });
    assert!(dms.is_some());
}

#[test]
fn a_restarted_server_keeps_users_channels_and_history() {
    let mut cluster = TestCluster::start(1);
    let c = cluster.client();
    c.login("ana").unwrap();
    c.create_channel("geral").unwrap();
    for i in 0..5 {
        c.publish("ana", "geral", &format!("m{i}")).unwrap();
    }
    cluster.stop_server("server-1");
    cluster.start_server("server-1");
    assert_eq!(c.users().unwrap(), ["ana"]);
    assert_eq!(c.channels().unwrap(), ["geral"]);
    let page = c
        .history(HistoryTarget::Channel("geral".into()), None, 50)
        .unwrap();
    assert_eq!(page.items.len(), 5);
    // New writes continue the sequence without clashing with stored ones.
    c.publish("ana", "geral", "after restart").unwrap();
    let page = c
        .history(HistoryTarget::Channel("geral".into()), None, 50)
        .unwrap();
    assert_eq!(page.items.len(), 6);
    let s = c.status().unwrap();
    assert_eq!(s.events, 8);
}

#[test]
fn retried_write_with_the_same_request_id_is_applied_once() {
    let cluster = TestCluster::start(1);
    let c = cluster.client();
    c.login("ana").unwrap();
    c.create_channel("geral").unwrap();
    let req = chat_core::Request::Publish {
        user: "ana".into(),
        channel: "geral".into(),
        message: "once".into(),
    };
    for _ in 0..3 {
        let r = c
            .request_with_id(req.clone(), Some("fixed-id-1".into()))
            .unwrap();
        assert_eq!(r.reply, chat_core::Reply::Done);
    }
    let page = c
        .history(HistoryTarget::Channel("geral".into()), None, 50)
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

#[test]
fn threadless_subscriber_gets_its_topics_exactly_and_observes_the_clock() {
    let cluster = TestCluster::start(1);
    let caio = cluster.client();
    caio.login("caio").unwrap();
    caio.login("anabela").unwrap();
    caio.login("ana").unwrap();
    let mut sub = chat_net::client::Subscriber::connect(&cluster.xpub).unwrap();
    sub.subscribe("ana").unwrap();
    // Live once a probe arrives (slow joiner); then drain the probes.
    let live = wait_for(DEADLINE, || {
        caio.send_message("caio", "ana", "probe").unwrap();
        sub.recv(Duration::from_millis(100)).unwrap()
    });
    assert!(live.is_some(), "the subscription never became live");
    while sub.recv(Duration::from_millis(200)).unwrap().is_some() {}

    // `ana` is a prefix of `anabela`: the frame reaches the socket, not the caller.
    caio.send_message("caio", "anabela", "só para anabela")
        .unwrap();
    caio.send_message("caio", "ana", "para ana").unwrap();
    match sub.recv(DEADLINE).unwrap() {
        Some(ClientEvent::Direct(d)) => {
            assert_eq!((d.dst.as_str(), d.message.as_str()), ("ana", "para ana"));
            assert!(sub.clock() >= d.clock, "the clock observed the event");
        }
        other => panic!("expected the message to ana, got {other:?}"),
    }
    sub.unsubscribe("ana").unwrap();
    assert!(sub.recv(Duration::from_millis(0)).unwrap().is_none());
}

#[test]
fn a_request_written_as_an_array_is_refused_and_not_applied() {
    // `["login", {"user": ...}]` is the positional form of a login, which serde alone would
    // read field by field: every request is a map, so it gets `bad_request` and no login.
    let cluster = TestCluster::start(1);
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::REQ).expect("socket");
    req.set_linger(0).expect("linger");
    req.connect(&cluster.frontend).expect("connect");
    let positional = serde_json::json!(["login", {"user": "by-position", "clock": 1}]);
    let frames = [
        rmp_serde::to_vec_named(&positional).expect("pack"),
        serde_json::to_vec(&positional).expect("json"),
    ];
    for frame in frames {
        req.send(&frame[..], 0).expect("send");
        assert!(req.poll(zmq::POLLIN, 10_000).expect("poll") > 0, "no reply");
        let reply = req.recv_bytes(0).expect("recv");
        let (env, _) = chat_core::protocol::decode_reply(&reply).expect("a reply");
        match env.reply {
            chat_core::Reply::Error(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
                assert!(
                    e.description
                        .contains("expected a request: a map with `service` and `data`"),
                    "{e:?}"
                );
            }
            other => panic!("a positional request was served: {other:?}"),
        }
    }
    let c = cluster.client();
    c.login("ana").expect("login");
    assert_eq!(c.users().expect("users"), ["ana"]);
}
