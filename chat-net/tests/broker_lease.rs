//! The lease echo over real sockets: a hand-driven server sends stamps on `READY`/`HB`, and
//! the broker echoes the latest one on its `HB` (the first one at registration, before any
//! request) and on every `REQ`. Every wait has a deadline.

use std::time::Duration;

use chat_net::backend::{self, FromBroker};
use chat_net::broker::{Broker, BrokerConfig, BrokerStats};
use chat_testkit::{recv_within, Running};

const SOON: Duration = Duration::from_secs(5);

/// What the hand-driven server reads next from the broker.
fn next_from_broker(server: &zmq::Socket) -> Vec<Vec<u8>> {
    recv_within(server, SOON).expect("nothing from the broker in time")
}

#[test]
fn broker_echoes_the_latest_stamp_on_heartbeats_and_requests() {
    let ctx = zmq::Context::new();
    let cfg = BrokerConfig {
        frontend: "tcp://127.0.0.1:*".to_string(),
        backend: "tcp://127.0.0.1:*".to_string(),
        ..BrokerConfig::default()
    };
    let broker = Broker::bind(&chat_net::Context::new(), &cfg).expect("bind broker");
    let (front, back) = (
        broker.frontend_endpoint().to_string(),
        broker.backend_endpoint().to_string(),
    );
    let running: Running<zmq::Result<BrokerStats>> = Running::spawn(move |flag| broker.run(flag));

    let server = ctx.socket(zmq::DEALER).unwrap();
    server.set_linger(0).unwrap();
    server.connect(&back).unwrap();
    server
        .send_multipart(backend::ready_frames(2, Some(41)), 0)
        .unwrap();
    // Registration: an HB with the echo comes at once, before anything else.
    let first = next_from_broker(&server);
    assert_eq!(
        backend::parse_from_broker(&first),
        Some(FromBroker::Heartbeat { echo: Some(41) })
    );

    let client = ctx.socket(zmq::REQ).unwrap();
    client.set_linger(0).unwrap();
    client.connect(&front).unwrap();
    client.send(&b"first"[..], 0).unwrap();
    let req = loop {
        let frames = next_from_broker(&server);
        if frames[0] == backend::REQUEST {
            break frames;
        }
    };
    assert_eq!(req.len(), 4, "{req:?}");
    let Some(FromBroker::Request {
        token,
        request,
        echo,
    }) = backend::parse_from_broker(&req)
    else {
        panic!("not a request: {req:?}")
    };
    assert_eq!((request, echo), (&b"first"[..], Some(41)));
    server
        .send_multipart(
            [backend::REPLY, &backend::token_bytes(token)[..], b"one"],
            0,
        )
        .unwrap();
    assert_eq!(recv_within(&client, SOON).unwrap(), vec![b"one".to_vec()]);

    // A newer stamp on a heartbeat: the broker's next HB and REQ echo it.
    server
        .send_multipart(backend::server_heartbeat_frames(2, Some(42)), 0)
        .unwrap();
    loop {
        match backend::parse_from_broker(&next_from_broker(&server)) {
            Some(FromBroker::Heartbeat { echo: Some(42) }) => break,
            Some(FromBroker::Heartbeat { echo: Some(41) }) => continue,
            other => panic!("unexpected: {other:?}"),
        }
    }
    client.send(&b"second"[..], 0).unwrap();
    let req = loop {
        let frames = next_from_broker(&server);
        if frames[0] == backend::REQUEST {
            break frames;
        }
    };
    let Some(FromBroker::Request { token, echo, .. }) = backend::parse_from_broker(&req) else {
        panic!("not a request: {req:?}")
    };
    assert_eq!(echo, Some(42));
    server
        .send_multipart(
            [backend::REPLY, &backend::token_bytes(token)[..], b"two"],
            0,
        )
        .unwrap();
    assert_eq!(recv_within(&client, SOON).unwrap(), vec![b"two".to_vec()]);

    let stats = running.stop(SOON).expect("broker returned an error");
    assert_eq!(stats.replies, 2);
    assert_eq!(stats.servers_joined, 1);
    assert_eq!(stats.garbage, 0);
}
