//! `chat health`: the health probe of each component, run inside its container (an image
//! without a shell has no curl): one bounded exchange on the component's own endpoint,
//! one line on stdout and exit code 0 when it answered, the reason on stderr and 1 when not.
//!
//! The endpoints default to the component's own ports on loopback; flags have no `CHAT_*`
//! fallbacks on purpose, since a container's environment names the *other* components.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context as _};
use chat_core::Reply;
use chat_net::probe;
use clap::{Args, Subcommand};

/// `chat health`: is this component answering?
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// How long to wait for the answer, in milliseconds.
    #[arg(long = "timeout-ms", default_value_t = 4000, global = true)]
    pub timeout_ms: u64,
    /// The component to probe.
    #[command(subcommand)]
    pub component: HealthCheck,
}

/// The component a health probe asks.
#[derive(Debug, Clone, Subcommand)]
pub enum HealthCheck {
    /// The broker answers a `status` request (an `unavailable` answer, with no server up
    /// yet, still proves the broker alive).
    Broker {
        /// Broker frontend endpoint.
        #[arg(long, default_value = "tcp://127.0.0.1:5555")]
        endpoint: String,
    },
    /// A publication sent to the proxy's XSUB side comes back on its XPUB side.
    Proxy {
        /// XSUB endpoint (publishers).
        #[arg(long, default_value = "tcp://127.0.0.1:5557")]
        xsub: String,
        /// XPUB endpoint (subscribers).
        #[arg(long, default_value = "tcp://127.0.0.1:5558")]
        xpub: String,
    },
    /// The reference answers `list`.
    Reference {
        /// Reference endpoint.
        #[arg(long, default_value = "tcp://127.0.0.1:5559")]
        endpoint: String,
    },
    /// The server answers `status` on its own peer socket (not through the broker).
    Server {
        /// The server's peer endpoint.
        #[arg(long, default_value = "tcp://127.0.0.1:5601")]
        endpoint: String,
        /// Print the whole status as JSON (name, rank, coordinator, term, digest, ...).
        #[arg(long)]
        json: bool,
        /// Unhealthy until the server has caught up with its peers.
        #[arg(long)]
        caught_up: bool,
    },
    /// The web client answers `GET /` with 200.
    Web {
        /// HTTP address (`host:port`).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
    },
}

/// Runs the probe; `Ok` with the line to print when the component is healthy.
pub fn check(args: &HealthArgs) -> anyhow::Result<String> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let ctx = chat_net::Context::new();
    match &args.component {
        HealthCheck::Broker { endpoint } => {
            let reply = probe::ask(&ctx, endpoint, chat_core::Request::Status, timeout)?;
            Ok(match reply.reply {
                Reply::Status(s) => format!("broker ok: server {} answered", s.name),
                Reply::Error(e) => format!("broker ok: answered {:?} ({})", e.code, e.description),
                other => format!("broker ok: answered {other:?}"),
            })
        }
        HealthCheck::Proxy { xsub, xpub } => {
            let took = probe::proxy_round_trip(&ctx, xsub, xpub, timeout)?;
            Ok(format!(
                "proxy ok: a probe went {xsub} -> {xpub} in {took:?}"
            ))
        }
        HealthCheck::Reference { endpoint } => {
            let list = probe::reference_list(&ctx, endpoint, timeout)?;
            let names: Vec<String> = list
                .iter()
                .map(|s| format!("{}#{}", s.name, s.rank))
                .collect();
            Ok(format!("reference ok: live servers [{}]", names.join(", ")))
        }
        HealthCheck::Server {
            endpoint,
            json,
            caught_up,
        } => {
            let s = probe::server_status(&ctx, endpoint, timeout)?;
            if *caught_up && !s.caught_up {
                bail!("server {} answers but has not caught up yet", s.name);
            }
            if *json {
                return serde_json::to_string(&s).context("status as JSON");
            }
            Ok(format!(
                "server ok: {} rank {} coordinator {} term {} caught_up {} events {} digest {}",
                s.name,
                s.rank.map_or("-".to_string(), |r| r.to_string()),
                s.coordinator.as_deref().unwrap_or("-"),
                s.term,
                s.caught_up,
                s.events,
                s.digest
            ))
        }
        HealthCheck::Web { addr } => http_ok(addr, timeout).map(|line| format!("web ok: {line}")),
    }
}

/// `GET /` on `addr`; the status line when it is 200.
fn http_ok(addr: &str, timeout: Duration) -> anyhow::Result<String> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all we need; read at most 4 KiB.
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        let n = stream
            .read(&mut buf[len..])
            .with_context(|| format!("reading the answer of {addr}"))?;
        if n == 0 || buf[..len + n].contains(&b'\n') {
            len += n;
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let status = head.lines().next().unwrap_or("").trim().to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(status)
    } else {
        bail!("{addr} answered {status:?}, not 200")
    }
}

/// Runs the probe and prints its outcome; the process exit code to use.
pub fn run(args: &HealthArgs) -> std::process::ExitCode {
    match check(args) {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
