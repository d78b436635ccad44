//! Socket options applied everywhere, in one place so they are chosen on purpose.
//!
//! - linger: 0 on every socket, so dropping a context never blocks (no hang on Ctrl-C).
//! - high-water marks: see the constants; PUB sockets drop past their HWM instead of
//!   blocking the server loop (pub/sub is lossy by design; replication does not rely on it).

/// Send/receive HWM of request sockets (clients, broker, server backend).
pub const REQUEST_HWM: i32 = 10_000;
/// Send HWM of publishers and the proxy (messages per subscriber before dropping).
pub const PUB_HWM: i32 = 100_000;
/// Largest frame any component accepts (bytes); bigger frames close the connection.
pub const MAX_MSG_SIZE: i64 = 1 << 20;

/// Creates a socket with linger 0 and the given HWMs.
pub fn socket(ctx: &zmq::Context, kind: zmq::SocketType, hwm: i32) -> zmq::Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    s.set_linger(0)?;
    s.set_sndhwm(hwm)?;
    s.set_rcvhwm(hwm)?;
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
