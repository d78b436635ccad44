//! Requests typed by who may send them: each role's decoder accepts exactly its services,
//! and refuses the others with the `unknown_service` error its component has always given
//! (same code, same sentence), after the frame was checked like any request.

use chat_core::protocol::{
    decode_client_request, decode_peer_request, decode_reference_request, decode_request,
    encode_request, RequestFailure,
};
use chat_core::{
    ClientRequest, Encoding, ErrorCode, Meta, PeerRequest, ReferenceRequest, Request,
    RequestEnvelope, Service, Timestamp,
};
use serde_json::{json, Value};

fn mp(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("pack")
}

fn js(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// A well-formed request of `service` (every field any service needs is there).
fn frame(service: Service) -> Value {
    json!({"service": service.as_str(), "data": {
        "user": "server-2", "channel": "geral", "src": "ana", "dst": "bia", "message": "oi",
        "rank": 3, "term": 4, "coordinator": "server-3", "adjust_ms": -5, "events": [],
        "vector": {"server-1": 2}, "limit": 10, "endpoint": "tcp://127.0.0.1:5601",
        "clock": 41, "id": "r-7", "timestamp": "2025-11-12T10:00:00Z",
    }})
}

const CLIENT: &[Service] = &[
    Service::Login,
    Service::Users,
    Service::Channel,
    Service::Channels,
    Service::Publish,
    Service::Message,
    Service::History,
    Service::Status,
    Service::Subscribe,
    Service::Unsubscribe,
    Service::Heartbeat,
];

const PEER: &[Service] = &[
    Service::Users,
    Service::Channels,
    Service::History,
    Service::Status,
    Service::Heartbeat,
    Service::Election,
    Service::Coordinator,
    Service::Clock,
    Service::Adjust,
    Service::Replicate,
    Service::Sync,
];

const REFERENCE: &[Service] = &[Service::Rank, Service::List, Service::Heartbeat];

fn check_refusal(f: &RequestFailure, service: Service, enc: Encoding, description: &str) {
    assert_eq!(f.error.code(), ErrorCode::UnknownService, "{service}");
    assert_eq!(f.error.to_string(), description, "{service}");
    assert!(f.not_offered(), "{service}");
    assert_eq!(f.service.as_deref(), Some(service.as_str()));
    assert_eq!(f.clock, 41);
    assert_eq!(f.id.as_deref(), Some("r-7"));
    assert_eq!(f.encoding, enc);
}

#[test]
fn each_role_takes_its_services_and_refuses_the_others_as_before() {
    for service in Service::ALL {
        for (bytes, enc) in [
            (mp(&frame(service)), Encoding::MsgPack),
            (js(&frame(service)), Encoding::Json),
        ] {
            let (any, _) = decode_request(&bytes).expect("a well-formed request");
            assert_eq!(any.request.service(), service);

            match decode_client_request(&bytes) {
                Ok((env, got)) => {
                    assert!(CLIENT.contains(&service), "{service} taken from a client");
                    assert_eq!(env.request.service(), service);
                    assert_eq!((env.meta.clock, got), (41, enc));
                }
                Err(f) => {
                    assert!(!CLIENT.contains(&service), "{service} refused to a client");
                    check_refusal(&f, service, enc, &format!(
                        "service `{service}` is not offered here: chat servers answer chat services; \
                         ranks and lists are the reference's, the rest is server-to-server"
                    ));
                }
            }
            match decode_peer_request(&bytes) {
                Ok((env, _)) => {
                    assert!(PEER.contains(&service), "{service} taken from a peer");
                    assert_eq!(env.request.service(), service);
                }
                Err(f) => {
                    assert!(!PEER.contains(&service), "{service} refused to a peer");
                    check_refusal(
                        &f,
                        service,
                        enc,
                        &format!(
                            "service `{service}` is not offered here: the peer socket takes \
                         server-to-server requests and reads; writes go through the broker"
                        ),
                    );
                }
            }
            match decode_reference_request(&bytes) {
                Ok((env, _)) => {
                    assert!(
                        REFERENCE.contains(&service),
                        "{service} taken by the reference"
                    );
                    assert_eq!(env.request.service(), service);
                }
                Err(f) => {
                    assert!(
                        !REFERENCE.contains(&service),
                        "{service} refused by the reference"
                    );
                    check_refusal(
                        &f,
                        service,
                        enc,
                        &format!(
                            "service `{service}` is not offered by the reference service \
                         (it offers rank, list, heartbeat)"
                        ),
                    );
                }
            }
        }
    }
}

#[test]
fn a_malformed_request_is_bad_request_whichever_role_reads_it() {
    // `election` without `rank` is a client's wrong service *and* malformed: malformed wins,
    // as it always did (the frame is read as a request before its role is checked).
    let frame = js(&json!({"service": "election", "data": {"user": "x", "clock": 3}}));
    for f in [
        decode_client_request(&frame).map(|_| ()).unwrap_err(),
        decode_peer_request(&frame).map(|_| ()).unwrap_err(),
        decode_reference_request(&frame).map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(f.error.code(), ErrorCode::BadRequest);
        assert!(!f.not_offered());
        assert_eq!(f.service.as_deref(), Some("election"));
        assert_eq!(f.clock, 3);
    }
    let f = decode_client_request(b"\xc1").map(|_| ()).unwrap_err();
    assert_eq!(f.error.code(), ErrorCode::BadRequest);
    assert_eq!((f.service, f.clock, f.id), (None, 0, None));
}

#[test]
fn role_requests_convert_to_the_union_and_back() {
    for service in Service::ALL {
        let (any, _) = decode_request(&js(&frame(service))).expect("decode");
        let request = any.request;
        if let Ok(c) = ClientRequest::try_from(request.clone()) {
            let back = ClientRequest::try_from(Request::from(c.clone())).expect("client again");
            assert_eq!(back, c);
        }
        if let Ok(p) = PeerRequest::try_from(request.clone()) {
            let back = PeerRequest::try_from(Request::from(p.clone())).expect("peer again");
            assert_eq!(back, p);
        }
        if let Ok(r) = ReferenceRequest::try_from(request.clone()) {
            assert_eq!(
                Request::from(r.clone()),
                request,
                "nothing of it is dropped"
            );
        }
    }
}

#[test]
fn the_reference_reads_the_rank_and_endpoint_a_server_sends() {
    let env = RequestEnvelope {
        request: Request::Heartbeat {
            user: Some("server-1".into()),
            rank: Some(2),
            endpoint: Some("tcp://127.0.0.1:5601".into()),
        },
        meta: Meta::new(9, Timestamp::from_millis(1_762_941_600_000)),
    };
    for enc in [Encoding::MsgPack, Encoding::Json] {
        let bytes = encode_request(&env, enc).expect("encode");
        let (got, _) = decode_reference_request(&bytes).expect("decode");
        assert_eq!(
            got.request,
            ReferenceRequest::Heartbeat {
                user: Some("server-1".into()),
                rank: Some(2),
                endpoint: Some("tcp://127.0.0.1:5601".into()),
            }
        );
        let (got, _) = decode_peer_request(&bytes).expect("decode");
        assert_eq!(
            got.request,
            PeerRequest::Heartbeat {
                user: Some("server-1".into())
            }
        );
    }
}
