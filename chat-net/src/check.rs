//! The cluster self-check: does the whole thing work right now? (Seed 001's "run tests"
//! button, as a library that `chat check` and chat-web's "Check the cluster" both run.)
//!
//! [`run_check`] goes through the real broker and proxy with an SDK [`Client`], one
//! [`Step`] after the other, each with its result, the time it took and, when it fails,
//! why:
//!
//! 1. `login`: log in the probe user ([`PROBE_USER`]);
//! 2. `channel`: create the probe channel ([`PROBE_CHANNEL`]; already there is fine);
//! 3. `publish`: subscribe to it, publish a post, and receive that post on the SUB socket;
//! 4. `message`: send the probe user a private message and receive it on its topic;
//! 5. `servers`: `status` through the broker, then from every server directly at the peer
//!    endpoint the others name (and every server in [`CheckConfig::expect_servers`]); each
//!    must answer;
//! 6. `coordinator`: the servers that answered follow one coordinator in one term, and that
//!    coordinator answered;
//! 7. `clocks`: the servers' physical clocks, read from the timestamps of their `status`
//!    replies at the middle of each round trip, lie within [`CheckConfig::clock_bound_ms`]
//!    of the coordinator's, and every server runs the same clock synchronisation.
//!
//! A step that cannot run because an earlier one failed is skipped, and says so. The probe
//! always uses the same two names, starting with [`chat_core::validate::PROBE_PREFIX`]
//! (`_check-`), which chat-web and `chat-client` leave out of the lists they show: checks
//! add one user and one channel to a cluster, ever, plus a post and a private message each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_core::{ErrorCode, Reply, Request, ServerStatus};
use serde::Serialize;

use crate::client::{new_request_id, Client, ClientConfig, ClientError, ClientEvent};

/// The probe user the check logs in (and sends its private message to).
pub const PROBE_USER: &str = "_check-probe";
/// The probe channel the check publishes on.
pub const PROBE_CHANNEL: &str = "_check-channel";
/// Default largest distance of a server's clock from the coordinator's (ms).
pub const DEFAULT_CLOCK_BOUND_MS: u64 = 50;
/// Default wait for the post and the private message to arrive on the SUB socket.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait for one server asked directly.
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(1);
/// Most servers one check asks (the list of endpoints comes from the servers' answers).
pub const MAX_SERVERS: usize = 64;

/// What to check and how patiently.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The broker and proxy endpoints, and the timeout and attempts of each request.
    pub client: ClientConfig,
    /// Servers that must answer, by name, besides those the cluster names itself (a server
    /// that is down long enough drops out of every list; naming it here makes its absence
    /// a failure).
    pub expect_servers: Vec<String>,
    /// Largest distance of a server's clock from the coordinator's (ms).
    pub clock_bound_ms: u64,
    /// How long the post and the private message may take to arrive.
    pub delivery_timeout: Duration,
    /// How long each server asked directly may take to answer.
    pub server_timeout: Duration,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            client: ClientConfig {
                attempts: 2,
                ..ClientConfig::default()
            },
            expect_servers: Vec::new(),
            clock_bound_ms: DEFAULT_CLOCK_BOUND_MS,
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            server_timeout: DEFAULT_SERVER_TIMEOUT,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did what it should.
    Pass,
    /// It did not; the detail says why.
    Fail,
    /// It could not run because an earlier step failed.
    Skip,
}

impl Outcome {
    /// `PASS`, `FAIL` or `SKIP`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// One step of the check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Short stable name (`login`, `channel`, `publish`, `message`, `servers`,
    /// `coordinator`, `clocks`).
    pub name: &'static str,
    /// What it checks, for people.
    pub title: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// What it saw, or why it failed or was skipped.
    pub detail: String,
    /// How long it took (ms).
    pub ms: u64,
}

/// What the check learnt of one server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerReport {
    /// Its name.
    pub name: String,
    /// Its peer endpoint, if a server named it.
    pub endpoint: Option<String>,
    /// Whether it answered `status`.
    pub answered: bool,
    /// The coordinator it follows.
    pub coordinator: Option<String>,
    /// That coordinator's term.
    pub term: u64,
    /// The clock synchronisation it runs (`berkeley`, `cristian`).
    pub clock_sync: Option<String>,
    /// Its physical clock minus the checker's, at the middle of the round trip (ms).
    pub clock_ms: Option<f64>,
    /// Round trip of that reading (ms; the reading is off by at most half of it).
    pub rtt_ms: Option<f64>,
    /// Why it did not answer.
    pub error: Option<String>,
}

impl ServerReport {
    /// A server known by name only, so far.
    pub fn unknown(name: String) -> ServerReport {
        ServerReport {
            name,
            endpoint: None,
            answered: false,
            coordinator: None,
            term: 0,
            clock_sync: None,
            clock_ms: None,
            rtt_ms: None,
            error: None,
        }
    }
}

/// The whole check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// Whether every step passed.
    pub ok: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Every server the check heard of, by name.
    pub servers: Vec<ServerReport>,
    /// The broker endpoint checked.
    pub broker: String,
    /// The proxy endpoint checked.
    pub sub: String,
    /// How long the whole check took (ms).
    pub ms: u64,
}

impl CheckReport {
    /// Steps that did not pass (failed or skipped).
    pub fn not_passed(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.outcome != Outcome::Pass)
            .count()
    }

    /// One sentence: all passed, or how many did not.
    pub fn summary(&self) -> String {
        if self.ok {
            format!("all {} steps passed in {} ms", self.steps.len(), self.ms)
        } else {
            let failed = self
                .steps
                .iter()
                .filter(|s| s.outcome == Outcome::Fail)
                .count();
            let skipped = self.not_passed() - failed;
            let mut s = format!("{failed} of {} steps failed", self.steps.len());
            if skipped > 0 {
                s.push_str(&format!(", {skipped} skipped"));
            }
            s.push_str(&format!(" ({} ms)", self.ms));
            s
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Runs `f` as step `name`, timing it.
fn timed(
    name: &'static str,
    title: &'static str,
    f: impl FnOnce() -> Result<String, String>,
) -> Step {
    let t0 = Instant::now();
    let (outcome, detail) = match f() {
        Ok(d) => (Outcome::Pass, d),
        Err(d) => (Outcome::Fail, d),
    };
    Step {
        name,
        title,
        outcome,
        detail,
        ms: ms(t0.elapsed()),
    }
}

fn skipped(name: &'static str, title: &'static str, why: &str) -> Step {
    Step {
        name,
        title,
        outcome: Outcome::Skip,
        detail: format!("skipped: {why}"),
        ms: 0,
    }
}

/// A client error as a sentence that names where to look.
fn explain(e: &ClientError, cfg: &ClientConfig) -> String {
    match e {
        ClientError::Timeout { attempts, timeout } => format!(
            "no reply from the broker at {} after {attempts} attempt(s) of {} ms: is the \
             cluster running?",
            cfg.broker,
            timeout.as_millis()
        ),
        ClientError::Server { code, description } => {
            format!("the server refused: {description} ({code})")
        }
        other => other.to_string(),
    }
}

/// Why subscribing to `topic` (and reading its baseline) failed.
fn subscribe_failed(topic: &str, e: &ClientError, cfg: &CheckConfig) -> String {
    match e {
        ClientError::Timeout { .. } => format!(
            "subscribed to {topic}, but its baseline history read (through the broker at {}) \
             did not answer within {} ms",
            cfg.client.broker,
            cfg.delivery_timeout.as_millis()
        ),
        other => format!(
            "could not subscribe to {topic} at {} ({})",
            cfg.client.sub,
            explain(other, &cfg.client)
        ),
    }
}

/// A short unique text, so that a check recognises its own post among others.
fn probe_text(what: &str) -> String {
    // The id's last characters are its random part (it starts with the time).
    let id = new_request_id();
    format!("{what} {}", &id[id.len().saturating_sub(12)..])
}

/// Waits until `wanted` arrives among `client`'s events, ignoring others, up to `timeout`.
fn wait_event(
    client: &Client,
    timeout: Duration,
    wanted: impl Fn(&ClientEvent) -> bool,
) -> Option<ClientEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match client.events().recv_timeout(left) {
            Ok(e) if wanted(&e) => return Some(e),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// The origin server of an event id `origin/seq`.
fn origin(id: Option<&str>) -> String {
    id.and_then(|i| i.rsplit_once('/').map(|(o, _)| o.to_string()))
        .unwrap_or_else(|| "an unnamed server".into())
}

/// Runs the check (blocking; a few hundred milliseconds on a healthy cluster, up to the
/// timeouts when something is down).
pub fn run_check(cfg: &CheckConfig) -> CheckReport {
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut servers = BTreeMap::new();
    match Client::connect(cfg.client.clone()) {
        Ok(client) => run_steps(cfg, &client, &mut steps, &mut servers),
        Err(e) => {
            steps.push(timed(LOGIN.0, LOGIN.1, || {
                Err(format!(
                    "cannot open the client's sockets ({e}); check the broker ({}) and \
                     subscription ({}) endpoints",
                    cfg.client.broker, cfg.client.sub
                ))
            }));
            for (name, title) in [CHANNEL, PUBLISH, MESSAGE, SERVERS, COORDINATOR, CLOCKS] {
                steps.push(skipped(name, title, "no client"));
            }
        }
    }
    let ok = steps.iter().all(|s| s.outcome == Outcome::Pass);
    CheckReport {
        ok,
        steps,
        servers: servers.into_values().collect(),
        broker: cfg.client.broker.clone(),
        sub: cfg.client.sub.clone(),
        ms: ms(started.elapsed()),
    }
}

const LOGIN: (&str, &str) = ("login", "Log in the probe user");
const CHANNEL: (&str, &str) = ("channel", "Create the probe channel");
const PUBLISH: (&str, &str) = ("publish", "Publish a post and receive it");
const MESSAGE: (&str, &str) = ("message", "Send a private message and receive it");
const SERVERS: (&str, &str) = ("servers", "Status of every server");
const COORDINATOR: (&str, &str) = ("coordinator", "One coordinator, one term");
const CLOCKS: (&str, &str) = ("clocks", "Clocks in step");

fn run_steps(
    cfg: &CheckConfig,
    client: &Client,
    steps: &mut Vec<Step>,
    servers: &mut BTreeMap<String, ServerReport>,
) {
    let ccfg = &cfg.client;
    let mut broker_silent = false;
    let login = timed(LOGIN.0, LOGIN.1, || match client.login(PROBE_USER) {
        Ok(()) => Ok(format!("logged in as {PROBE_USER} through {}", ccfg.broker)),
        Err(e) => {
            broker_silent = matches!(e, ClientError::Timeout { .. });
            Err(explain(&e, ccfg))
        }
    });
    let logged_in = login.outcome == Outcome::Pass;
    steps.push(login);
    if broker_silent {
        for (name, title) in [CHANNEL, PUBLISH, MESSAGE, SERVERS, COORDINATOR, CLOCKS] {
            steps.push(skipped(name, title, "the broker does not answer"));
        }
        return;
    }

    let channel = timed(CHANNEL.0, CHANNEL.1, || {
        match client.create_channel(PROBE_CHANNEL) {
            Ok(()) => Ok(format!("created {PROBE_CHANNEL}")),
            Err(e) if e.code() == ErrorCode::AlreadyExists => Ok(format!(
                "{PROBE_CHANNEL} is there (an earlier check created it)"
            )),
            Err(e) => Err(explain(&e, ccfg)),
        }
    });
    let channel_ok = channel.outcome == Outcome::Pass;
    steps.push(channel);

    if !logged_in || !channel_ok {
        let why = if logged_in {
            "the probe channel could not be created"
        } else {
            "the probe user could not log in"
        };
        steps.push(skipped(PUBLISH.0, PUBLISH.1, why));
    } else {
        steps.push(timed(PUBLISH.0, PUBLISH.1, || publish_step(cfg, client)));
    }
    if logged_in {
        steps.push(timed(MESSAGE.0, MESSAGE.1, || message_step(cfg, client)));
    } else {
        steps.push(skipped(
            MESSAGE.0,
            MESSAGE.1,
            "the probe user could not log in",
        ));
    }

    steps.push(timed(SERVERS.0, SERVERS.1, || {
        servers_step(cfg, client, servers)
    }));
    let answered: Vec<&ServerReport> = servers.values().filter(|s| s.answered).collect();
    if answered.is_empty() {
        steps.push(skipped(COORDINATOR.0, COORDINATOR.1, "no server answered"));
        steps.push(skipped(CLOCKS.0, CLOCKS.1, "no server answered"));
        return;
    }
    let coordinator = timed(COORDINATOR.0, COORDINATOR.1, || coordinator_step(&answered));
    steps.push(coordinator);
    steps.push(timed(CLOCKS.0, CLOCKS.1, || clocks_step(cfg, &answered)));
}

fn publish_step(cfg: &CheckConfig, client: &Client) -> Result<String, String> {
    round_trip(
        cfg,
        client,
        PROBE_CHANNEL,
        "check post",
        "on the SUB socket".to_string(),
        |text| client.publish(PROBE_USER, PROBE_CHANNEL, text),
        |e, text| match e {
            ClientEvent::Post(p) if p.message == text && p.channel == PROBE_CHANNEL => {
                Some(p.id.clone())
            }
            _ => None,
        },
    )
}

fn message_step(cfg: &CheckConfig, client: &Client) -> Result<String, String> {
    round_trip(
        cfg,
        client,
        PROBE_USER,
        "check message",
        format!("on {PROBE_USER}'s topic"),
        |text| client.send_message(PROBE_USER, PROBE_USER, text),
        |e, text| match e {
            ClientEvent::Direct(d) if d.message == text && d.dst == PROBE_USER => {
                Some(d.id.clone())
            }
            _ => None,
        },
    )
}

/// Subscribes to `topic`, sends a probe (`what` and a random tag) with `send`, and waits
/// for it to come back live: `probe` recognises the probe's event and gives its event id.
fn round_trip(
    cfg: &CheckConfig,
    client: &Client,
    topic: &str,
    what: &str,
    received_on: String,
    send: impl FnOnce(&str) -> Result<(), ClientError>,
    probe: impl Fn(&ClientEvent, &str) -> Option<Option<String>>,
) -> Result<String, String> {
    let ccfg = &cfg.client;
    client
        .subscribe_with_baseline(topic, cfg.delivery_timeout)
        .map_err(|e| subscribe_failed(topic, &e, cfg))?;
    let text = probe_text(what);
    let t0 = Instant::now();
    let result = send(&text);
    let acked = t0.elapsed();
    let outcome = match result {
        Err(e) => Err(explain(&e, ccfg)),
        Ok(()) => match wait_event(client, cfg.delivery_timeout, |e| probe(e, &text).is_some())
            .and_then(|e| probe(&e, &text))
        {
            Some(id) => Ok(format!(
                "acknowledged in {} ms; received {received_on} {} ms after sending \
                 (accepted by {})",
                ms(acked),
                ms(t0.elapsed()),
                origin(id.as_deref())
            )),
            None => Err(format!(
                "acknowledged in {} ms, but not received on the SUB socket within {} ms: is \
                 the proxy running at {}?",
                ms(acked),
                cfg.delivery_timeout.as_millis(),
                ccfg.sub
            )),
        },
    };
    let _ = client.unsubscribe(topic);
    outcome
}

/// A `status` asked of `client`: the status, the server's clock minus ours at the middle
/// of the round trip, and the round trip (ms).
fn timed_status(client: &Client) -> Result<(ServerStatus, Option<f64>, f64), ClientError> {
    let sent = wall_ms();
    let t0 = Instant::now();
    let reply = client.request(Request::Status)?;
    let rtt = t0.elapsed().as_secs_f64() * 1000.0;
    let clock = reply
        .meta
        .timestamp
        .map(|ts| ts.millis() as f64 - (sent + rtt / 2.0));
    match reply.reply {
        Reply::Status(s) => Ok((*s, clock, rtt)),
        Reply::Error(e) => Err(ClientError::Server {
            code: e.code,
            description: e.description,
        }),
        other => Err(ClientError::Protocol(format!(
            "unexpected reply to status: {other:?}"
        ))),
    }
}

fn record(
    servers: &mut BTreeMap<String, ServerReport>,
    status: &ServerStatus,
    clock: Option<f64>,
    rtt: f64,
) {
    let r = servers
        .entry(status.name.clone())
        .or_insert_with(|| ServerReport::unknown(status.name.clone()));
    r.answered = true;
    r.error = None;
    r.coordinator = status.coordinator.clone();
    r.term = status.term;
    r.clock_sync = status.clock_sync.clone();
    // Keep the reading with the shortest round trip (the tightest).
    if clock.is_some() && r.rtt_ms.is_none_or(|old| rtt < old) {
        r.clock_ms = clock;
        r.rtt_ms = Some(rtt);
    }
    for p in &status.peers {
        let peer = servers
            .entry(p.name.clone())
            .or_insert_with(|| ServerReport::unknown(p.name.clone()));
        if peer.endpoint.is_none() {
            peer.endpoint = p.endpoint.clone();
        }
    }
}

fn servers_step(
    cfg: &CheckConfig,
    client: &Client,
    servers: &mut BTreeMap<String, ServerReport>,
) -> Result<String, String> {
    for name in &cfg.expect_servers {
        servers
            .entry(name.clone())
            .or_insert_with(|| ServerReport::unknown(name.clone()));
    }
    let via_broker = match timed_status(client) {
        Ok((s, clock, rtt)) => {
            let name = s.name.clone();
            record(servers, &s, clock, rtt);
            Some(name)
        }
        Err(e) => {
            let why = format!("status through the broker: {}", explain(&e, &cfg.client));
            for r in servers.values_mut() {
                r.error = Some(format!("not asked ({why})"));
            }
            return Err(why);
        }
    };
    // Ask every server named with an endpoint directly; answers name more (bounded).
    let mut asked: Vec<String> = Vec::new();
    while asked.len() < MAX_SERVERS {
        let Some((name, endpoint)) = servers
            .values()
            .find(|r| r.endpoint.is_some() && !asked.contains(&r.name))
            .and_then(|r| r.endpoint.clone().map(|e| (r.name.clone(), e)))
        else {
            break;
        };
        asked.push(name.clone());
        let direct = ClientConfig {
            broker: endpoint.clone(),
            timeout: cfg.server_timeout,
            attempts: 1,
            ..cfg.client.clone()
        };
        let answer = Client::connect(direct).and_then(|c| timed_status(&c));
        match answer {
            Ok((s, clock, rtt)) if s.name == name => record(servers, &s, clock, rtt),
            Ok((s, _, _)) => {
                if let Some(r) = servers.get_mut(&name) {
                    r.error = Some(format!("{endpoint} answered as {}", s.name));
                }
            }
            Err(e) => {
                if let Some(r) = servers.get_mut(&name) {
                    if !r.answered {
                        r.error = Some(match e {
                            ClientError::Timeout { .. } => format!(
                                "no answer at {endpoint} within {} ms",
                                cfg.server_timeout.as_millis()
                            ),
                            other => format!("{endpoint}: {other}"),
                        });
                    }
                }
            }
        }
    }
    let mut silent = Vec::new();
    for r in servers.values_mut().filter(|r| !r.answered) {
        let why = r.error.clone().unwrap_or_else(|| {
            "no server that answered lists it, so it cannot be asked (down, or not registered \
             with the reference)"
                .into()
        });
        r.error = Some(why.clone());
        silent.push(format!("{}: {why}", r.name));
    }
    let answered: Vec<String> = servers
        .values()
        .filter(|r| r.answered)
        .map(|r| {
            if via_broker.as_deref() == Some(r.name.as_str()) {
                format!("{} (also through the broker)", r.name)
            } else {
                r.name.clone()
            }
        })
        .collect();
    if silent.is_empty() {
        Ok(format!(
            "{} server(s) answered: {}",
            answered.len(),
            answered.join(", ")
        ))
    } else {
        Err(format!(
            "{} of {} servers did not answer: {}; answered: {}",
            silent.len(),
            servers.len(),
            silent.join("; "),
            if answered.is_empty() {
                "none".into()
            } else {
                answered.join(", ")
            }
        ))
    }
}

fn coordinator_step(answered: &[&ServerReport]) -> Result<String, String> {
    if let Some(r) = answered.iter().find(|r| r.coordinator.is_none()) {
        return Err(format!(
            "{} follows no coordinator yet (an election may be running)",
            r.name
        ));
    }
    let mut views: BTreeMap<(String, u64), Vec<&str>> = BTreeMap::new();
    for r in answered {
        let c = r.coordinator.clone().unwrap_or_default();
        views.entry((c, r.term)).or_default().push(&r.name);
    }
    if views.len() > 1 {
        let parts: Vec<String> = views
            .iter()
            .map(|((c, term), who)| format!("{} follow {c} in term {term}", who.join(", ")))
            .collect();
        return Err(format!("the servers disagree: {}", parts.join("; ")));
    }
    let Some(((c, term), who)) = views.into_iter().next() else {
        return Err("no server answered".into());
    };
    if !answered.iter().any(|r| r.name == c) {
        return Err(format!(
            "every server follows {c} in term {term}, but {c} did not answer"
        ));
    }
    Ok(format!(
        "{c} coordinates in term {term} (rank {}); the {} server(s) that answered follow it",
        term & 0xffff,
        who.len()
    ))
}

fn clocks_step(cfg: &CheckConfig, answered: &[&ServerReport]) -> Result<String, String> {
    let mut modes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in answered {
        modes
            .entry(r.clock_sync.as_deref().unwrap_or("berkeley (not said)"))
            .or_default()
            .push(&r.name);
    }
    if modes.len() > 1 {
        let parts: Vec<String> = modes
            .iter()
            .map(|(m, who)| format!("{} run {m}", who.join(", ")))
            .collect();
        return Err(format!(
            "the servers run different clock syncs ({}): start every server with the same \
             --clock-sync",
            parts.join("; ")
        ));
    }
    let mode = modes.keys().next().copied().unwrap_or("?");
    let read: Vec<(&str, f64, f64)> = answered
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.clock_ms?, r.rtt_ms.unwrap_or(0.0))))
        .collect();
    if read.is_empty() {
        return Err("no server's reply carried a timestamp".into());
    }
    // Relative to the coordinator's clock when it was read (else the first one's).
    let coordinator = answered.first().and_then(|r| r.coordinator.as_deref());
    let reference = read
        .iter()
        .find(|(n, _, _)| Some(*n) == coordinator)
        .or_else(|| read.first())
        .map(|(n, c, _)| (*n, *c))
        .unwrap_or(("?", 0.0));
    let bound = cfg.clock_bound_ms as f64;
    let mut far = Vec::new();
    let mut each = Vec::new();
    for (name, clock, rtt) in &read {
        let gap = clock - reference.1;
        each.push(format!("{name} {:+.0} ms (± {:.0})", gap, rtt / 2.0));
        if gap.abs() > bound {
            far.push(format!(
                "{name} is {:.0} ms {} {}",
                gap.abs(),
                if gap > 0.0 { "ahead of" } else { "behind" },
                reference.0
            ));
        }
    }
    let spread = read.iter().map(|r| r.1).fold(f64::NEG_INFINITY, f64::max)
        - read.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    if far.is_empty() {
        Ok(format!(
            "{mode} sync; within {spread:.0} ms of each other (bound {} ms from {}): {}",
            cfg.clock_bound_ms,
            reference.0,
            each.join(", ")
        ))
    } else {
        Err(format!(
            "{} (bound {} ms; {mode} sync): {}",
            far.join("; "),
            cfg.clock_bound_ms,
            each.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        name: &str,
        coordinator: Option<&str>,
        term: u64,
        clock: Option<f64>,
    ) -> ServerReport {
        ServerReport {
            name: name.into(),
            endpoint: None,
            answered: true,
            coordinator: coordinator.map(Into::into),
            term,
            clock_sync: Some("cristian".into()),
            clock_ms: clock,
            rtt_ms: clock.map(|_| 1.0),
            error: None,
        }
    }

    #[test]
    fn one_coordinator_in_one_term_that_answered() {
        let a = report("s1", Some("s3"), 196_611, None);
        let b = report("s3", Some("s3"), 196_611, None);
        let ok = coordinator_step(&[&a, &b]).unwrap();
        assert!(
            ok.contains("s3 coordinates in term 196611 (rank 3)"),
            "{ok}"
        );
        let c = report("s2", Some("s2"), 131_074, None);
        let split = coordinator_step(&[&a, &b, &c]).unwrap_err();
        assert!(split.contains("s1, s3 follow s3 in term 196611"), "{split}");
        assert!(split.contains("s2 follow s2 in term 131074"), "{split}");
        let gone = coordinator_step(&[&a]).unwrap_err();
        assert!(gone.contains("but s3 did not answer"), "{gone}");
        let none = report("s1", None, 0, None);
        assert!(coordinator_step(&[&none])
            .unwrap_err()
            .contains("no coordinator"));
    }

    #[test]
    fn clocks_are_measured_from_the_coordinator_and_bounded() {
        let cfg = CheckConfig::default();
        let a = report("s1", Some("s3"), 1, Some(1000.0));
        let b = report("s3", Some("s3"), 1, Some(1003.0));
        let ok = clocks_step(&cfg, &[&a, &b]).unwrap();
        assert!(ok.starts_with("cristian sync; within 3 ms"), "{ok}");
        assert!(ok.contains("s1 -3 ms"), "{ok}");
        let late = report("s2", Some("s3"), 1, Some(1903.0));
        let far = clocks_step(&cfg, &[&a, &b, &late]).unwrap_err();
        assert!(far.starts_with("s2 is 900 ms ahead of s3"), "{far}");
        let mut mixed = report("s4", Some("s3"), 1, Some(1003.0));
        mixed.clock_sync = Some("berkeley".into());
        let modes = clocks_step(&cfg, &[&a, &b, &mixed]).unwrap_err();
        assert!(modes.contains("different clock syncs"), "{modes}");
    }

    #[test]
    fn a_report_sums_itself_up() {
        let step = |outcome| Step {
            name: "login",
            title: "t",
            outcome,
            detail: String::new(),
            ms: 1,
        };
        let mut r = CheckReport {
            ok: true,
            steps: vec![step(Outcome::Pass), step(Outcome::Pass)],
            servers: Vec::new(),
            broker: "b".into(),
            sub: "s".into(),
            ms: 12,
        };
        assert_eq!(r.summary(), "all 2 steps passed in 12 ms");
        r.ok = false;
        r.steps = vec![
            step(Outcome::Fail),
            step(Outcome::Skip),
            step(Outcome::Pass),
        ];
        assert_eq!(r.summary(), "1 of 3 steps failed, 1 skipped (12 ms)");
        assert_eq!(r.not_passed(), 2);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["steps"][0]["outcome"], "fail");
    }
}
