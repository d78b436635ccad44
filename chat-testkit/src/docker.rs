//! Compose projects of the workspace's `docker-compose.yml` on the local Docker engine, for
//! the container tests: one project per test (`chat-test-<pid>-<n>`), client ports
//! published on ephemeral host ports, every command bounded by a timeout, and the project
//! removed with its volumes when the guard drops (also on a failed assertion).
//!
//! Only containers, networks and volumes of the guard's own project are ever touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::require::{available_or_skip, REQUIRE_DOCKER};

/// The image the compose file runs (built by `docker/build-offline.sh`).
pub const IMAGE: &str = "chat-zmq:latest";

/// How long one docker or compose command may take before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// One project at a time per test process: the machine has two cores, and a cluster of
/// nine containers per test is enough load.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static PROJECTS: AtomicUsize = AtomicUsize::new(0);

/// The output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Whether it exited with status 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `program args` with `env`, killing it after `timeout`.
pub fn run(program: &str, args: &[&str], env: &[(&str, String)], timeout: Duration) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let failed = |stderr: String| Output {
        ok: false,
        stdout: String::new(),
        stderr,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run {program}: {e}")),
    };
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return failed(format!(
                    "{program} {args:?} did not finish within {timeout:?}"
                ));
            }
            Err(e) => return failed(format!("{program}: {e}")),
        }
    };
    Output {
        ok: status.success(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads a child's pipe to the end on a thread of its own.
fn reader<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// A Docker engine that answers, the compose tool, and the image.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The compose command: `docker-compose`, or `docker compose` (the plugin).
    compose: Vec<String>,
}

impl Engine {
    /// The engine, or why the container tests cannot run here.
    pub fn probe() -> Result<Engine, String> {
        let info = run(
            "docker",
            &["version", "--format", "{{.Server.Version}}"],
            &[],
            Duration::from_secs(20),
        );
        if !info.ok {
            return Err(format!(
                "no Docker engine answers (`docker version`: {})",
                info.stderr.trim()
            ));
        }
        let compose = if run("docker-compose", &["version"], &[], Duration::from_secs(20)).ok {
            vec!["docker-compose".to_string()]
        } else if run(
            "docker",
            &["compose", "version"],
            &[],
            Duration::from_secs(20),
        )
        .ok
        {
            vec!["docker".to_string(), "compose".to_string()]
        } else {
            return Err("neither `docker-compose` nor `docker compose` is installed".into());
        };
        let image = run(
            "docker",
            &["image", "inspect", "--format", "{{.Id}}", IMAGE],
            &[],
            Duration::from_secs(20),
        );
        if !image.ok {
            return Err(format!(
                "the engine has no image {IMAGE}: build it with docker/build-offline.sh"
            ));
        }
        Ok(Engine { compose })
    }

    /// The engine for test `test`, or `None` when the test is skipped (see [`crate::require`]).
    pub fn for_test(test: &str) -> Option<Engine> {
        available_or_skip(
            test,
            &format!("a Docker engine with the image {IMAGE}"),
            REQUIRE_DOCKER,
            Engine::probe(),
        )
    }
}

/// A compose project of the workspace's `docker-compose.yml`, taken down with its volumes
/// (`down -v`) on drop.
pub struct Project {
    engine: Engine,
    /// The project name (`chat-test-<pid>-<n>`).
    pub name: String,
    file: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Project {
    /// A new project of `file` (not started yet), waiting for any other project of this
    /// process to finish first.
    pub fn new(engine: Engine, file: &Path) -> Project {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!(
            "chat-test-{}-{}",
            std::process::id(),
            PROJECTS.fetch_add(1, Ordering::SeqCst)
        );
        Project {
            engine,
            name,
            file: file.to_path_buf(),
            _turn: turn,
        }
    }

    /// Runs the compose tool on this project with `args`; its output, whatever the outcome.
    pub fn compose_output(&self, args: &[&str]) -> Output {
        let file = self.file.to_string_lossy().into_owned();
        let mut full: Vec<&str> = self.engine.compose[1..]
            .iter()
            .map(String::as_str)
            .collect();
        full.extend(["-p", &self.name, "-f", &file]);
        full.extend_from_slice(args);
        // Client ports on ephemeral host ports, so projects never clash.
        let env = [
            ("CHAT_BROKER_PORT", "0".to_string()),
            ("CHAT_SUB_PORT", "0".to_string()),
            ("CHAT_WEB_PORT", "0".to_string()),
        ];
        run(&self.engine.compose[0], &full, &env, COMMAND_TIMEOUT)
    }

    /// Runs the compose tool on this project with `args`; panics with its output on failure.
    pub fn compose(&self, args: &[&str]) -> String {
        let out = self.compose_output(args);
        assert!(
            out.ok,
            "compose {args:?} failed for {}:\n{}\n{}",
            self.name, out.stdout, out.stderr
        );
        out.stdout
    }

    /// `up -d` with extra arguments (e.g. `--scale bot=0`); never builds.
    pub fn up(&self, extra: &[&str]) {
        let mut args = vec!["up", "-d", "--no-build"];
        args.extend_from_slice(extra);
        self.compose(&args);
    }

    /// The ids of the containers of `service` (running or stopped).
    pub fn containers(&self, service: &str) -> Vec<String> {
        self.compose(&["ps", "-q", service])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The id of the (one) container of `service`.
    pub fn container(&self, service: &str) -> String {
        let ids = self.containers(service);
        assert!(!ids.is_empty(), "{}: no container for {service}", self.name);
        ids[0].clone()
    }

    /// The host port that `container_port` of `service` is published on.
    pub fn port(&self, service: &str, container_port: u16) -> u16 {
        let out = self.compose(&["port", service, &container_port.to_string()]);
        let port = out
            .lines()
            .next()
            .and_then(|l| l.trim().rsplit(':').next())
            .and_then(|p| p.parse().ok());
        port.unwrap_or_else(|| panic!("{service}:{container_port} is not published: {out:?}"))
    }

    /// `docker inspect` of `container`, as JSON.
    pub fn inspect(&self, container: &str) -> serde_json::Value {
        let out = docker(&["inspect", container]);
        let all: serde_json::Value = serde_json::from_str(&out).expect("docker inspect JSON");
        all.get(0).cloned().unwrap_or(serde_json::Value::Null)
    }

    /// The health status of `service`'s container (`healthy`, `starting`, `unhealthy`),
    /// or its state when it has no health check.
    pub fn health(&self, service: &str) -> String {
        let ids = self.containers(service);
        let Some(id) = ids.first() else {
            return "absent".into();
        };
        let info = self.inspect(id);
        let state = &info["State"];
        state["Health"]["Status"]
            .as_str()
            .or_else(|| state["Status"].as_str())
            .unwrap_or("unknown")
            .to_string()
    }

    /// Waits until every one of `services` is `healthy`; how long it took.
    pub fn wait_healthy(&self, services: &[&str], deadline: Duration) -> Duration {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < deadline {
            last = services
                .iter()
                .map(|s| (s.to_string(), self.health(s)))
                .collect();
            if last.iter().all(|(_, h)| h == "healthy") {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "{}: not healthy within {deadline:?}: {last:?}\n{}",
            self.name,
            self.logs(20)
        );
    }

    /// Runs `args` inside `service`'s container (`docker exec`).
    pub fn exec(&self, service: &str, args: &[&str]) -> Output {
        let id = self.container(service);
        let mut full = vec!["exec", id.as_str()];
        full.extend_from_slice(args);
        run("docker", &full, &[], Duration::from_secs(30))
    }

    /// The last `lines` log lines of every service (for failure messages).
    pub fn logs(&self, lines: usize) -> String {
        let out = self.compose_output(&["logs", "--no-color", "--tail", &lines.to_string()]);
        out.stdout
    }

    /// The project's network (`<name>_default`).
    pub fn network(&self) -> String {
        format!("{}_default", self.name)
    }

    /// Cuts `service`'s container off the project network; returns its aliases there, for
    /// [`Project::reconnect`].
    pub fn disconnect(&self, service: &str) -> Vec<String> {
        let id = self.container(service);
        let net = self.network();
        let info = self.inspect(&id);
        let aliases = info["NetworkSettings"]["Networks"][&net]["Aliases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_else(|| vec![service.to_string()]);
        docker(&["network", "disconnect", &net, &id]);
        aliases
    }

    /// Puts `service`'s container back on the project network under `aliases`.
    pub fn reconnect(&self, service: &str, aliases: &[String]) {
        let id = self.container(service);
        let net = self.network();
        let mut args = vec!["network", "connect"];
        for a in aliases {
            args.extend(["--alias", a.as_str()]);
        }
        args.extend([net.as_str(), id.as_str()]);
        docker(&args);
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let out = self.compose_output(&["down", "-v", "--remove-orphans", "-t", "5"]);
        if !out.ok {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("cleaning up {} failed: {}\n", self.name, out.stderr).as_bytes(),
            );
        }
    }
}

/// Runs `docker args`; panics with its output on failure.
pub fn docker(args: &[&str]) -> String {
    let out = run("docker", args, &[], COMMAND_TIMEOUT);
    assert!(out.ok, "docker {args:?} failed:\n{}", out.stderr);
    out.stdout
}
