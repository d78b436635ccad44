//! Socket options applied everywhere, in one place so they are chosen on purpose.
//!
//! - linger: 0 on every socket, so dropping a context never blocks (no hang on Ctrl-C).
//! - high-water marks: see the constants; PUB sockets drop past their HWM instead of
//!   blocking the server loop (pub/sub is lossy by design; replication does not rely on it).
//! - TCP keepalive: a connection that carries nothing (a SUB socket only listens) to a peer
//!   that vanished without closing it (a host that lost power, a container cut off its
//!   network) is closed by the kernel within about [`KEEPALIVE_IDLE_S`] +
//!   [`KEEPALIVE_CNT`] × [`KEEPALIVE_INTVL_S`] seconds instead of never; a connecting
//!   socket then reconnects, resolving the host name again. Not ZMTP heartbeats
//!   (`ZMQ_HEARTBEAT_IVL`): in the vendored libzmq 4.3.4 a heartbeat timer that fires on a
//!   connection whose input is stopped by a full high-water mark aborts the process
//!   (`Assertion failed: !_io_error`, stream_engine_base.cpp:331; seen in
//!   `chat-net/tests/flood.rs`).

/// Send/receive HWM of request sockets (clients, broker, server backend).
pub const REQUEST_HWM: i32 = 10_000;
/// Send HWM of publishers and the proxy (messages per subscriber before dropping).
pub const PUB_HWM: i32 = 100_000;
/// Largest frame any component accepts (bytes); bigger frames close the connection.
pub const MAX_MSG_SIZE: i64 = 1 << 20;

/// Seconds a TCP connection may be idle before the kernel probes it.
pub const KEEPALIVE_IDLE_S: i32 = 10;
/// Seconds between two keepalive probes.
pub const KEEPALIVE_INTVL_S: i32 = 2;
/// Unanswered probes after which the kernel closes the connection.
pub const KEEPALIVE_CNT: i32 = 3;

/// Creates a socket with linger 0, the given HWMs and TCP keepalive.
pub fn socket(ctx: &zmq::Context, kind: zmq::SocketType, hwm: i32) -> zmq::Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    s.set_linger(0)?;
    s.set_sndhwm(hwm)?;
    s.set_rcvhwm(hwm)?;
    s.set_tcp_keepalive(1)?;
    s.set_tcp_keepalive_idle(KEEPALIVE_IDLE_S)?;
    s.set_tcp_keepalive_intvl(KEEPALIVE_INTVL_S)?;
    s.set_tcp_keepalive_cnt(KEEPALIVE_CNT)?;
    Ok(s)
}

/// Binds `endpoint` and returns the endpoint actually bound (resolves `:*` / `:0` ports).
pub fn bind(s: &zmq::Socket, endpoint: &str) -> zmq::Result<String> {
    let ep = match endpoint.strip_suffix(":0") {
        Some(host) => format!("{host}:*"),
        None => endpoint.to_string(),
    };
    s.bind(&ep)?;
    match s.get_last_endpoint()? {
        Ok(real) => Ok(real.replace("0.0.0.0", "127.0.0.1")),
        Err(_) => Ok(ep),
    }
}
