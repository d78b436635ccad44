//! A minimal HTTP/1.1 client for tests of the web front end: one request per connection
//! (`Connection: close`), chunked bodies decoded, JSON helpers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a request waits for the whole answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Headers in the order received.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked, as text.
    pub body: String,
}

impl HttpReply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The session token set by this answer, if any.
    pub fn session_cookie(&self) -> Option<String> {
        let v = self.header("set-cookie")?;
        let (kv, _) = v.split_once(';')?;
        Some(kv.to_string())
    }
}

/// One HTTP/1.1 request with `Connection: close`; `cookie` is `name=value`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&[u8]>,
) -> HttpReply {
    let mut s = TcpStream::connect(addr).expect("connect to chat-web");
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    if let Some(b) = body {
        // The server may answer (413) and close before reading everything.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// POSTs JSON.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: &serde_json::Value,
) -> HttpReply {
    let bytes = serde_json::to_vec(body).expect("json");
    http(addr, "POST", path, cookie, Some(&bytes))
}

/// Signs `user` in through the API and returns the session cookie (`name=value`).
pub fn sign_in(addr: SocketAddr, user: &str) -> String {
    let r = post_json(
        addr,
        "/api/login",
        None,
        &serde_json::json!({ "user": user }),
    );
    assert_eq!(r.status, 200, "login {user}: {}", r.body);
    r.session_cookie().expect("session cookie")
}
