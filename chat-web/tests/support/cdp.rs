//! A small driver for a real headless Chromium over the Chrome DevTools Protocol.
//!
//! Each [`Browser`] is its own Chromium process (own `--user-data-dir` in a temporary
//! directory, own process group), reached through its DevTools websocket on 127.0.0.1.
//! Every wait has a deadline. On drop the browser is asked to close, then its process
//! group is killed, so no Chromium outlives the test, even when the test fails.

use std::fs::File;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use super::{wait_for, DEADLINE};

/// Flags every browser starts with (the machine's network is closed: no background traffic).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--mute-audio",
    "--password-store=basic",
    "--use-mock-keychain",
    "--hide-scrollbars",
    "--window-size=1280,800",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

/// The Chromium to run: `$CHROMIUM`, else a known path, else the first on `PATH`; the
/// reason, with install instructions, when there is none.
pub fn find_chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(format!("CHROMIUM={} does not exist", p.display()));
        }
        return Ok(p);
    }
    let names = ["chromium", "chromium-browser", "google-chrome", "chrome"];
    let mut candidates: Vec<PathBuf> = vec!["/usr/bin/chromium".into()];
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            candidates.extend(names.iter().map(|n| dir.join(n)));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "chromium was not found: this test drives a real headless Chromium. Install it \
         (Debian: `apt-get update && apt-get install -y chromium`; .ci/run does this) or \
         set CHROMIUM=/path/to/chromium"
            .to_string()
    })
}

/// One headless Chromium with one page, driven over DevTools.
pub struct Browser {
    name: String,
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    session: String,
    /// JavaScript dialogs (alert/confirm/prompt) that opened: there must be none.
    pub dialogs: Vec<String>,
    /// Uncaught exceptions and console errors on the page.
    pub errors: Vec<String>,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts a fresh Chromium (own profile directory) named `name` in failure messages.
    pub fn launch(name: &str) -> Browser {
        let exe = find_chromium().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("chat-web-chromium-")
            .tempdir()
            .expect("profile directory");
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromium.log");
        let stderr = File::create(&log).expect("log file");
        let child = Command::new(&exe)
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut browser_guard = Guard(Some(child));
        let port_file = profile.join("DevToolsActivePort");
        let endpoint = wait_for(DEADLINE, || {
            let text = std::fs::read_to_string(&port_file).ok()?;
            let mut lines = text.lines();
            let port: u16 = lines.next()?.trim().parse().ok()?;
            let path = lines.next()?.trim().to_string();
            Some((port, path))
        });
        let Some((port, path)) = endpoint else {
            panic!(
                "{name}: chromium did not open its DevTools port within {DEADLINE:?}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("{name}: DevTools websocket handshake failed: {e}"));
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let child = browser_guard.0.take().expect("child");
        let mut b = Browser {
            name: name.to_string(),
            child,
            ws,
            next_id: 0,
            session: String::new(),
            dialogs: Vec::new(),
            errors: Vec::new(),
            log,
            dir,
        };
        let targets = b.call("Target.getTargets", json!({}), false);
        let target = targets["targetInfos"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{name}: no page target in {targets}"));
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
            false,
        );
        b.session = attached["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no session id in {attached}"))
            .to_string();
        b.page("Page.enable", json!({}));
        b.page("Runtime.enable", json!({}));
        b.page(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
        );
        b
    }

    /// The browser's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, method: &str, params: Value, page: bool) -> u64 {
        self.next_id += 1;
        let mut msg = json!({ "id": self.next_id, "method": method, "params": params });
        if page {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("{}: DevTools send failed: {e}", self.name));
        self.next_id
    }

    fn on_event(&mut self, msg: &Value) {
        let params = &msg["params"];
        match msg["method"].as_str() {
            Some("Page.javascriptDialogOpening") => {
                self.dialogs
                    .push(params["message"].as_str().unwrap_or("").to_string());
                // A dialog blocks the page: dismiss it at once (the answer is not awaited).
                self.send(
                    "Page.handleJavaScriptDialog",
                    json!({ "accept": false }),
                    true,
                );
            }
            Some("Runtime.exceptionThrown") => {
                let d = &params["exceptionDetails"];
                self.errors.push(format!(
                    "exception: {} {}",
                    d["text"].as_str().unwrap_or(""),
                    d["exception"]["description"].as_str().unwrap_or("")
                ));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", params["args"]));
            }
            _ => {}
        }
    }

    /// Sends a DevTools command and waits (with a deadline) for its result.
    pub fn call(&mut self, method: &str, params: Value, page: bool) -> Value {
        let id = self.send(method, params, page);
        let end = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < end,
                "{}: no answer to {method} within {DEADLINE:?}",
                self.name
            );
            let msg = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("{}: DevTools connection failed: {e}", self.name),
            };
            let Ok(v) = serde_json::from_str::<Value>(msg.as_str()) else {
                continue;
            };
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{}: {method} failed: {err}", self.name);
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.on_event(&v);
            }
        }
    }

    /// A command to the page.
    pub fn page(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params, true)
    }

    /// Evaluates `expr` in the page (awaiting promises) and returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.page(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{}: script failed: {expr}\n{e}", self.name);
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy, for at most the deadline; returns its value.
    pub fn wait_js(&mut self, what: &str, expr: &str) -> Value {
        let end = Instant::now() + DEADLINE;
        let mut last;
        loop {
            last = self.eval(expr);
            let truthy = match &last {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return last;
            }
            if Instant::now() >= end {
                let shot = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target")
                    .join(format!("chat-web-failure-{}.png", self.name));
                self.screenshot(&shot);
                let body = self.eval("document.body.innerText");
                panic!(
                    "{}: timed out after {DEADLINE:?} waiting for {what}\n  last value: {last}\n  \
                     page errors: {:?}\n  screenshot: {}\n  page text:\n{}",
                    self.name,
                    self.errors,
                    shot.display(),
                    body.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Opens `url` and waits until the page has loaded.
    pub fn open(&mut self, url: &str) {
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "only loopback pages: {url}"
        );
        self.page("Page.navigate", json!({ "url": url }));
        self.wait_js(
            "the page to load",
            "document.readyState === 'complete' && !!document.getElementById('login-view')",
        );
    }

    /// Focuses `selector`, clears it and types `text` (real input events).
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let sel = js(selector);
        self.wait_js(
            &format!("{selector} to be visible"),
            &format!("(() => {{ const e = document.querySelector({sel}); return !!e && e.offsetParent !== null; }})()"),
        );
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); e.focus(); e.value = ''; }})()"
        ));
        self.page("Input.insertText", json!({ "text": text }));
    }

    /// Clicks the element `selector` once it is visible and enabled.
    pub fn click(&mut self, selector: &str) {
        let sel = js(selector);
        self.wait_js(
            &format!("{selector} to be clickable"),
            &format!(
                "(() => {{ const e = document.querySelector({sel}); \
                 if (!e || e.offsetParent === null || e.disabled) return false; e.click(); return true; }})()"
            ),
        );
    }

    /// Clicks the button of list `list` (`#channel-list`, `#user-list`) whose name is `name`.
    pub fn click_item(&mut self, list: &str, name: &str) {
        let expr = format!(
            "(() => {{ const b = [...document.querySelectorAll({} + ' button')]\
             .find(b => b.querySelector('.name').textContent === {}); if (!b) return false; \
             b.click(); return true; }})()",
            js(list),
            js(name)
        );
        self.wait_js(&format!("{name:?} in {list}"), &expr);
    }

    /// The text of every element matching `selector`.
    pub fn texts(&mut self, selector: &str) -> Vec<String> {
        let v = self.eval(&format!(
            "[...document.querySelectorAll({})].map(e => e.textContent)",
            js(selector)
        ));
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until some element matching `selector` has exactly the text `text`.
    pub fn wait_text(&mut self, selector: &str, text: &str) {
        let expr = format!(
            "[...document.querySelectorAll({})].some(e => e.textContent === {})",
            js(selector),
            js(text)
        );
        self.wait_js(&format!("{selector} showing {text:?}"), &expr);
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.page(
            "Page.captureScreenshot",
            json!({ "format": "png", "fromSurface": true }),
        );
        let data = r["data"].as_str().unwrap_or("");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The browser's own log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the profile lives.
    pub fn profile_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely, then make sure: kill the process group we created for it.
        self.next_id += 1;
        let close = json!({ "id": self.next_id, "method": "Browser.close" });
        let _ = self.ws.send(Message::text(close.to_string()));
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(&mut self.child);
    }
}

/// Kills `child`'s process group (it leads it: spawned with `process_group(0)`) and reaps it.
fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills a browser that failed before a [`Browser`] owned it.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            kill_group(&mut c);
        }
    }
}

/// `s` as a JavaScript string literal.
pub fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}
