//! Health probes: one short exchange with a component on its own endpoint, for container
//! health checks (`chat health ...`) and operators. Every probe is bounded by a timeout
//! and reports why it failed in words.

use std::time::{Duration, Instant};

use chat_core::protocol::{decode_reply, encode_request};
use chat_core::{Encoding, Meta, Reply, ReplyEnvelope, Request, RequestEnvelope};
use chat_core::{ServerInfo, ServerStatus};

use crate::{sockets, Context};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A socket could not be created, connected or used.
    #[error("socket error on {endpoint}: {source}")]
    Socket {
        /// The endpoint involved.
        endpoint: String,
        /// ZeroMQ's error.
        source: zmq::Error,
    },
    /// Nothing answered in time.
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout {
        /// The endpoint asked.
        endpoint: String,
        /// How long the probe waited.
        timeout: Duration,
    },
    /// An answer came that is not what the probe asked for.
    #[error("unexpected answer from {endpoint}: {what}")]
    Unexpected {
        /// The endpoint asked.
        endpoint: String,
        /// What was wrong with it.
        what: String,
    },
}

fn socket_error(endpoint: &str) -> impl FnOnce(zmq::Error) -> ProbeError + '_ {
    move |source| ProbeError::Socket {
        endpoint: endpoint.to_string(),
        source,
    }
}

/// Sends `request` on a fresh REQ socket to `endpoint` and waits up to `timeout` for the
/// reply (a broker frontend, a server's peer socket or the reference all answer REQ).
pub fn ask(
    ctx: &Context,
    endpoint: &str,
    request: Request,
    timeout: Duration,
) -> Result<ReplyEnvelope, ProbeError> {
    let s = sockets::socket(ctx.zmq(), zmq::REQ, 16).map_err(socket_error(endpoint))?;
    s.connect(endpoint).map_err(socket_error(endpoint))?;
    let env = RequestEnvelope {
        request,
        meta: Meta::default(),
    };
    let bytes = encode_request(&env, Encoding::MsgPack).map_err(|e| ProbeError::Unexpected {
        endpoint: endpoint.to_string(),
        what: format!("cannot encode the request: {e}"),
    })?;
    s.send(bytes, 0).map_err(socket_error(endpoint))?;
    let deadline = Instant::now() + timeout;
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = match s.poll(zmq::POLLIN, left.as_millis().max(1) as i64) {
            Ok(n) => n,
            Err(zmq::Error::EINTR) => 0,
            Err(e) => return Err(socket_error(endpoint)(e)),
        };
        if ready > 0 {
            break s.recv_bytes(0).map_err(socket_error(endpoint))?;
        }
        if Instant::now() >= deadline {
            return Err(ProbeError::Timeout {
                endpoint: endpoint.to_string(),
                timeout,
            });
        }
    };
    decode_reply(&reply)
        .map(|(r, _)| r)
        .map_err(|e| ProbeError::Unexpected {
            endpoint: endpoint.to_string(),
            what: e.to_string(),
        })
}

/// The status of the one server whose peer socket is `endpoint` (not through the broker).
pub fn server_status(
    ctx: &Context,
    endpoint: &str,
    timeout: Duration,
) -> Result<ServerStatus, ProbeError> {
    match ask(ctx, endpoint, Request::Status, timeout)?.reply {
        Reply::Status(s) => Ok(*s),
        other => Err(ProbeError::Unexpected {
            endpoint: endpoint.to_string(),
            what: format!("not a status: {other:?}"),
        }),
    }
}

/// The live servers the reference at `endpoint` lists.
pub fn reference_list(
    ctx: &Context,
    endpoint: &str,
    timeout: Duration,
) -> Result<Vec<ServerInfo>, ProbeError> {
    match ask(ctx, endpoint, Request::List, timeout)?.reply {
        Reply::List(list) => Ok(list),
        other => Err(ProbeError::Unexpected {
            endpoint: endpoint.to_string(),
            what: format!("not a list: {other:?}"),
        }),
    }
}

/// Publishes probes on the proxy's XSUB side until one comes back on its XPUB side (the
/// forwarder works end to end), on a `$`-prefixed topic no user or channel can have.
/// Returns how long the round trip took, slow joiner included.
pub fn proxy_round_trip(
    ctx: &Context,
    xsub: &str,
    xpub: &str,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let topic = format!("$health.{}.{}", std::process::id(), nanos_now());
    let sub = sockets::socket(ctx.zmq(), zmq::SUB, 16).map_err(socket_error(xpub))?;
    sub.set_subscribe(topic.as_bytes())
        .map_err(socket_error(xpub))?;
    sub.connect(xpub).map_err(socket_error(xpub))?;
    let publisher = sockets::socket(ctx.zmq(), zmq::PUB, 16).map_err(socket_error(xsub))?;
    publisher.connect(xsub).map_err(socket_error(xsub))?;
    // Bounded: one probe every 50 ms until the deadline.
    let rounds = (timeout.as_millis() / 50).max(1);
    for _ in 0..rounds {
        publisher
            .send_multipart([topic.as_bytes(), b"probe"], 0)
            .map_err(socket_error(xsub))?;
        let ready = match sub.poll(zmq::POLLIN, 50) {
            Ok(n) => n,
            Err(zmq::Error::EINTR) => 0,
            Err(e) => return Err(socket_error(xpub)(e)),
        };
        if ready > 0 {
            let frames = sub.recv_multipart(0).map_err(socket_error(xpub))?;
            if frames.first().map(Vec::as_slice) == Some(topic.as_bytes()) {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() >= timeout {
            break;
        }
    }
    Err(ProbeError::Timeout {
        endpoint: format!("{xsub} -> {xpub}"),
        timeout,
    })
}

/// Nanoseconds of the wall clock: enough to tell two probes of one process apart.
fn nanos_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
