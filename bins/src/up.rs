//! `chat up`: the whole cluster on loopback in one command.
//!
//! Starts child processes of the current executable (the multi-call `chat` binary):
//! proxy, broker, reference, N servers, M bots and the web UI.
//! Every child's output is forwarded line by line, prefixed with its name. Ctrl-C (or
//! SIGTERM) sends SIGTERM to every child, waits for them (they stop within a few hundred
//! milliseconds), and kills any straggler after [`STOP_GRACE`].

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chat_net::Shutdown;
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long children get to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_millis(1500);
/// How long to wait for a component to report that it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// `chat up` flags.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of chat servers.
    #[arg(long, env = "CHAT_SERVERS", default_value_t = 3)]
    pub servers: usize,
    /// Number of bots.
    #[arg(long, env = "CHAT_BOTS", default_value_t = 2)]
    pub bots: usize,
    /// Data directory; server N keeps its database in `<data>/server-N`, the reference its
    /// rank assignments in `<data>/reference`.
    #[arg(long, env = "CHAT_DATA", default_value = "data")]
    pub data: PathBuf,
    /// First port: broker frontend = base, backend = base+1, proxy XSUB = base+2,
    /// XPUB = base+3, reference = base+4, server N peer = base+45+N.
    #[arg(long, env = "CHAT_BASE_PORT", default_value_t = 5555)]
    pub base_port: u16,
    /// Keep server state in memory only.
    #[arg(long)]
    pub memory: bool,
    /// Clock synchronisation of every server: `berkeley` (the coordinator averages the
    /// clocks) or `cristian` (every server follows the coordinator's clock).
    #[arg(long, env = "CHAT_CLOCK_SYNC", default_value = "berkeley",
          value_parser = crate::daemons::parse_clock_sync)]
    pub clock_sync: chat_sync::ClockSync,
    /// Address of the web UI (`none` to skip it).
    #[arg(long, env = "CHAT_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    pub web: String,
}

/// The loopback endpoints of a cluster started with `base` as its first port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    /// Broker frontend (clients).
    pub frontend: u16,
    /// Broker backend (servers).
    pub backend: u16,
    /// Proxy XSUB (publishers).
    pub xsub: u16,
    /// Proxy XPUB (subscribers).
    pub xpub: u16,
    /// Reference service.
    pub reference: u16,
    /// Port before server 1's peer port.
    pub peer_base: u16,
}

impl Ports {
    /// The port plan for `base`.
    pub fn from_base(base: u16) -> anyhow::Result<Ports> {
        if base > u16::MAX - 200 {
            bail!("--base-port {base} is too high: the cluster needs base .. base+200");
        }
        Ok(Ports {
            frontend: base,
            backend: base + 1,
            xsub: base + 2,
            xpub: base + 3,
            reference: base + 4,
            peer_base: base + 45,
        })
    }
}

fn tcp(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

struct Proc {
    name: String,
    child: Child,
}

/// Spawns `exe args...` with its output forwarded, prefixed by `name`; returns the child
/// and a receiver of its stdout lines (for readiness lines).
fn spawn(
    exe: &Path,
    name: &str,
    args: &[String],
) -> anyhow::Result<(Proc, mpsc::Receiver<String>)> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name} ({})", exe.display()))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        forward(name, out, Some(tx));
    }
    if let Some(err) = child.stderr.take() {
        forward(name, err, None);
    }
    Ok((
        Proc {
            name: name.to_string(),
            child,
        },
        rx,
    ))
}

fn forward(name: &str, stream: impl Read + Send + 'static, lines: Option<mpsc::Sender<String>>) {
    let prefix = format!("{name:>9} | ");
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{prefix}{line}");
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
}

fn wait_listening(proc: &mut Proc, rx: &mpsc::Receiver<String>) -> anyhow::Result<()> {
    let end = Instant::now() + START_TIMEOUT;
    while Instant::now() < end {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            if line.contains("listening") {
                return Ok(());
            }
        }
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "{} exited during start-up ({status}); is the port in use?",
                proc.name
            );
        }
    }
    bail!(
        "{} did not start listening within {START_TIMEOUT:?}",
        proc.name
    )
}

fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter_mut().rev() {
        if let Ok(None) = p.child.try_wait() {
            if let Ok(pid) = i32::try_from(p.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }
    let end = Instant::now() + STOP_GRACE;
    for p in procs.iter_mut().rev() {
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= end => {
                    eprintln!("       up | {} did not stop in time; killing it", p.name);
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Runs the cluster until `shutdown`; `exe` is the multi-call `chat` binary.
pub fn run_up(args: &UpArgs, exe: &Path, shutdown: &Shutdown) -> anyhow::Result<()> {
    let ports = Ports::from_base(args.base_port)?;
    let mut procs: Vec<Proc> = Vec::new();
    let result = start(args, exe, &ports, &mut procs, shutdown);
    if let Err(e) = &result {
        eprintln!("       up | {e:#}");
    }
    if result.is_ok() {
        supervise(&mut procs, shutdown);
    }
    eprintln!("       up | stopping {} processes", procs.len());
    stop_all(&mut procs);
    eprintln!("       up | stopped");
    result
}

fn start(
    args: &UpArgs,
    exe: &Path,
    ports: &Ports,
    procs: &mut Vec<Proc>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let (mut proxy, rx) = spawn(
        exe,
        "proxy",
        &[
            "proxy".into(),
            "--xsub".into(),
            tcp(ports.xsub),
            "--xpub".into(),
            tcp(ports.xpub),
        ],
    )?;
    let ready = wait_listening(&mut proxy, &rx);
    procs.push(proxy);
    ready?;
    let (mut broker, rx) = spawn(
        exe,
        "broker",
        &[
            "broker".into(),
            "--frontend".into(),
            tcp(ports.frontend),
            "--backend".into(),
            tcp(ports.backend),
        ],
    )?;
    let ready = wait_listening(&mut broker, &rx);
    procs.push(broker);
    ready?;
    let (mut reference, rx) = spawn(
        exe,
        "reference",
        &[
            "reference".into(),
            "--bind".into(),
            tcp(ports.reference),
            "--data".into(),
            args.data.join("reference").display().to_string(),
        ],
    )?;
    let ready = wait_listening(&mut reference, &rx);
    procs.push(reference);
    ready?;
    for i in 1..=args.servers {
        if shutdown.is_triggered() {
            return Ok(());
        }
        let name = format!("server-{i}");
        let mut a = vec![
            "server".into(),
            "--name".into(),
            name.clone(),
            "--broker".into(),
            tcp(ports.backend),
            "--pub".into(),
            tcp(ports.xsub),
            "--sub".into(),
            tcp(ports.xpub),
            "--reference".into(),
            tcp(ports.reference),
            "--peer".into(),
            tcp(ports.peer_base + i as u16),
            "--clock-sync".into(),
            args.clock_sync.to_string(),
        ];
        if args.memory {
            a.push("--memory".into());
        } else {
            a.push("--data".into());
            a.push(args.data.join(&name).display().to_string());
        }
        let (p, _) = spawn(exe, &name, &a)?;
        procs.push(p);
    }
    for i in 1..=args.bots {
        let (p, _) = spawn(
            exe,
            &format!("bot-{i}"),
            &[
                "bot".into(),
                "--broker".into(),
                tcp(ports.frontend),
                "--sub".into(),
                tcp(ports.xpub),
            ],
        )?;
        procs.push(p);
    }
    let mut web_url = None;
    if args.web != "none" {
        let (mut web, rx) = spawn(
            exe,
            "web",
            &[
                "web".into(),
                "--listen".into(),
                args.web.clone(),
                "--broker".into(),
                tcp(ports.frontend),
                "--sub".into(),
                tcp(ports.xpub),
            ],
        )?;
        let end = Instant::now() + START_TIMEOUT;
        while Instant::now() < end && web_url.is_none() {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                web_url = line.split("url=").nth(1).map(|u| u.trim().to_string());
            }
            if web.child.try_wait()?.is_some() {
                eprintln!(
                    "       up | the web UI did not start (is {} in use?); the rest runs",
                    args.web
                );
                break;
            }
        }
        procs.push(web);
    }
    if let Some(url) = &web_url {
        eprintln!("       up | web UI: {url}");
    }
    eprintln!(
        "       up | cluster up: {} servers ({} clock sync), {} bots; broker {}, subscriptions {}",
        args.servers,
        args.clock_sync,
        args.bots,
        tcp(ports.frontend),
        tcp(ports.xpub)
    );
    eprintln!(
        "       up | attach a client: cargo run --release --bin chat-client -- --user ana --broker {} --sub {}",
        tcp(ports.frontend),
        tcp(ports.xpub)
    );
    let names: Vec<String> = (1..=args.servers).map(|i| format!("server-{i}")).collect();
    eprintln!(
        "       up | check it end to end: cargo run --release --bin chat -- check --servers {} --broker {} --sub {}",
        names.join(","),
        tcp(ports.frontend),
        tcp(ports.xpub)
    );
    eprintln!("       up | Ctrl-C stops everything");
    Ok(())
}

fn supervise(procs: &mut [Proc], shutdown: &Shutdown) {
    let mut reported = vec![false; procs.len()];
    while !shutdown.is_triggered() {
        for (p, done) in procs.iter_mut().zip(reported.iter_mut()) {
            if !*done {
                if let Ok(Some(status)) = p.child.try_wait() {
                    eprintln!(
                        "       up | {} exited ({status}); the rest keep running",
                        p.name
                    );
                    *done = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
