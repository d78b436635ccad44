//! Process-level test scaffolding: start the real binaries on loopback with OS-chosen
//! ports, read the endpoints they report, and stop exactly the processes we started.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[allow(unused_imports)]
pub use chat_testkit::{ask, history_at, pages_at, status_at, wait_for};

/// How long any process test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A child process that is killed (SIGKILL, by its PID) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `bin` with `args`; stdout lines are captured, stderr is inherited (test logs).
    pub fn start(name: &str, bin: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines: rx,
        }
    }

    /// Waits for the `... listening k=v k=v` line and returns its fields.
    pub fn endpoints(&self) -> Vec<(String, String)> {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if let Some(rest) = line.split(" listening ").nth(1) {
                    return rest
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                }
            }
        }
        panic!("{} never reported its endpoints", self.name);
    }

    /// Kills the process with SIGKILL (as `kill -9`) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` to the process (by its PID).
    pub fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit; returns whether it exited.
    pub fn terminate(&mut self, within: Duration) -> bool {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// The value of `key` among the fields of a listening line.
pub fn field(fields: &[(String, String)], key: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

/// A cluster of real processes: proxy, broker, reference, servers.
pub struct ProcCluster {
    pub frontend: String,
    pub backend: String,
    pub xsub: String,
    pub xpub: String,
    pub reference_endpoint: String,
    pub proxy: Proc,
    pub broker: Proc,
    pub reference: Proc,
    pub servers: Vec<Proc>,
    /// Peer endpoint of each running server, by name (from its `listening` line).
    pub peer_endpoints: Vec<(String, String)>,
    /// Extra flags given to every server started from now on.
    pub server_flags: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl ProcCluster {
    /// Starts proxy and broker on OS-chosen ports, then `n` servers with SQLite stores.
    pub fn start(n: usize) -> ProcCluster {
        let proxy = Proc::start(
            "proxy",
            env!("CARGO_BIN_EXE_chat-proxy"),
            &["--xsub", "tcp://127.0.0.1:*", "--xpub", "tcp://127.0.0.1:*"],
        );
        let p = proxy.endpoints();
        let broker = Proc::start(
            "broker",
            env!("CARGO_BIN_EXE_chat-broker"),
            &[
                "--frontend",
                "tcp://127.0.0.1:*",
                "--backend",
                "tcp://127.0.0.1:*",
            ],
        );
        let b = broker.endpoints();
        let reference = Proc::start(
            "reference",
            env!("CARGO_BIN_EXE_chat-reference"),
            &["--bind", "tcp://127.0.0.1:*", "--timeout-ms", "2000"],
        );
        let r = reference.endpoints();
        let mut c = ProcCluster {
            frontend: field(&b, "frontend"),
            backend: field(&b, "backend"),
            xsub: field(&p, "xsub"),
            xpub: field(&p, "xpub"),
            reference_endpoint: field(&r, "bind"),
            proxy,
            broker,
            reference,
            servers: Vec::new(),
            peer_endpoints: Vec::new(),
            server_flags: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for i in 1..=n {
            c.start_server(&format!("server-{i}"));
        }
        c
    }

    /// Kills the proxy with SIGKILL and starts it again on the same endpoints (retrying
    /// while the ports are not free yet).
    pub fn restart_proxy(&mut self) {
        self.proxy.kill9();
        let end = Instant::now() + DEADLINE;
        loop {
            let mut proxy = Proc::start(
                "proxy",
                env!("CARGO_BIN_EXE_chat-proxy"),
                &["--xsub", &self.xsub, "--xpub", &self.xpub],
            );
            let up = wait_for(Duration::from_secs(2), || {
                if let Ok(line) = proxy.lines.try_recv() {
                    return line.contains(" listening ").then_some(true);
                }
                proxy.exited().then_some(false)
            });
            if up == Some(true) {
                self.proxy = proxy;
                return;
            }
            proxy.kill9();
            assert!(
                Instant::now() < end,
                "the proxy could not bind its ports again"
            );
        }
    }

    /// The data directory of server `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) server `name` on its data directory.
    pub fn start_server(&mut self, name: &str) {
        self.start_server_with(name, &[]);
    }

    /// Starts (or restarts) server `name` with extra flags (e.g. `--clock-skew-ms`).
    pub fn start_server_with(&mut self, name: &str, extra: &[&str]) {
        let data = self.data_dir(name).display().to_string();
        let mut args: Vec<&str> = vec![
            "--name",
            name,
            "--data",
            &data,
            "--broker",
            &self.backend,
            "--pub",
            &self.xsub,
            "--sub",
            &self.xpub,
            "--reference",
            &self.reference_endpoint,
            "--peer",
            "tcp://127.0.0.1:*",
        ];
        let flags = self.server_flags.clone();
        args.extend(flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let proc = Proc::start(name, env!("CARGO_BIN_EXE_chat-server"), &args);
        let peer = field(&proc.endpoints(), "peer");
        self.servers.retain(|s| s.name != name);
        self.servers.push(proc);
        self.peer_endpoints.retain(|(n, _)| n != name);
        self.peer_endpoints.push((name.to_string(), peer));
    }

    /// The peer endpoint of server `name` (reads and `status` can be asked there directly).
    pub fn peer_endpoint(&self, name: &str) -> String {
        self.peer_endpoints
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("no peer endpoint for {name}"))
    }

    /// The running server process `name`.
    pub fn server(&mut self, name: &str) -> &mut Proc {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .expect("server")
    }

    /// An SDK client configuration for this cluster.
    pub fn client_config(&self) -> chat_net::client::ClientConfig {
        chat_net::client::ClientConfig {
            broker: self.frontend.clone(),
            sub: self.xpub.clone(),
            timeout: Duration::from_secs(3),
            attempts: 3,
            ..chat_net::client::ClientConfig::default()
        }
    }
}

/// Waits until every named server reports the same coordinator, which is the highest
/// rank among them; returns (coordinator, term).
pub fn agreed(cluster: &ProcCluster, names: &[&str], deadline: Duration) -> Option<(String, u64)> {
    wait_for(deadline, || {
        let statuses: Vec<_> = names
            .iter()
            .map(|n| status_at(&cluster.peer_endpoint(n)))
            .collect::<Option<Vec<_>>>()?;
        let highest = statuses.iter().max_by_key(|s| s.rank)?;
        let first = statuses.first()?;
        let same = statuses
            .iter()
            .all(|s| s.coordinator == first.coordinator && s.term == first.term);
        (same && first.coordinator.as_deref() == Some(highest.name.as_str()))
            .then(|| (highest.name.clone(), first.term))
    })
}

/// What a command that ran to its end did.
pub struct Ran {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Runs `bin` with `args` to its end; kills it and panics if it takes longer than `within`.
pub fn run_to_end(bin: &str, args: &[&str], within: Duration) -> Ran {
    use std::io::Read;
    let mut child = Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_for(within, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{bin} {args:?} did not finish within {within:?}");
    };
    Ran {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// SDK writers (one client each) writing until stopped; each keeps what `write` returned
/// for the writes that were acknowledged.
pub struct Load<T: Send + 'static> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    workers: Vec<std::thread::JoinHandle<Vec<T>>>,
}

impl<T: Send + 'static> Load<T> {
    /// Starts `n` writers; writer `w`'s `i`-th write is `write(&client, w, i)`, which
    /// returns what to keep when the write was acknowledged (at most `max` writes each).
    pub fn start<F>(cfg: &chat_net::client::ClientConfig, n: usize, max: usize, write: F) -> Self
    where
        F: Fn(&chat_net::client::Client, usize, usize) -> Option<T> + Send + Sync + 'static,
    {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let write = Arc::new(write);
        let workers = (0..n)
            .map(|w| {
                let (cfg, stop, acks, write) =
                    (cfg.clone(), stop.clone(), acks.clone(), write.clone());
                std::thread::spawn(move || {
                    let c = chat_net::client::Client::connect(cfg).expect("writer");
                    let mut acked = Vec::new();
                    for i in 0..max {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Some(kept) = write(&c, w, i) {
                            acked.push(kept);
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    acked
                })
            })
            .collect();
        Load {
            stop,
            acks,
            workers,
        }
    }

    /// Waits (within [`DEADLINE`]) until `more` further writes are acknowledged.
    pub fn wait_acks(&self, more: usize) {
        use std::sync::atomic::Ordering;
        let target = self.acks.load(Ordering::SeqCst) + more;
        let ok = wait_for(DEADLINE, || {
            (self.acks.load(Ordering::SeqCst) >= target).then_some(())
        });
        assert!(ok.is_some(), "load stalled below {target} acks");
    }

    /// Stops the writers; what every writer kept.
    pub fn stop(self) -> Vec<T> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.workers
            .into_iter()
            .flat_map(|w| w.join().expect("writer thread"))
            .collect()
    }
}
