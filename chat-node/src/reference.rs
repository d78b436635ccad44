//! The reference service without sockets: ranks for server names, the list of live
//! servers, heartbeats. `chat_net::reference` binds the ROUTER socket and drives
//! [`ReferenceCore`] with it.
//!
//! # Model
//!
//! [`Registry`] is the whole state, with no sockets and no clock of its own (time comes in
//! as `now: Instant`):
//!
//! - a name always gets the same rank while the registry lives, however often it asks;
//! - a new name gets the rank it asks for (`data.rank`, our extension: a server that
//!   remembers its rank keeps it across a reference restart) when no other name holds it,
//!   otherwise the largest rank ever assigned plus one. Ranks start at 1 and are never
//!   given to another name;
//! - `rank` and `heartbeat` both count as signs of life; `list` shows the servers heard
//!   from within the timeout (default [`DEFAULT_TIMEOUT`], 3 s), sorted by rank;
//! - a heartbeat from a name the registry does not know, carrying its rank, registers it
//!   again with that rank (how the registry is rebuilt after a reference restart). Without a
//!   rank, or with a rank that another name holds or that is not the name's rank, the reply
//!   is an `unknown_user` error: the server must send `rank` again.
//!
//! # Wire (one frame, MessagePack or JSON; the reply uses the request's encoding)
//!
//! | service | request `data` | reply `data` (besides `timestamp`, `clock`) |
//! |---|---|---|
//! | `rank` | `user`: server name; optional `endpoint` (peer endpoint), `rank` (previous rank) | `rank` |
//! | `list` | — | `list: [{"name", "rank", "endpoint"?}]`, live servers by rank |
//! | `heartbeat` | `user`; optional `rank`, `endpoint` | `status: "OK"` |
//!
//! Every reply carries `timestamp` (ISO-8601 UTC, the `wall` time passed in) and `clock`
//! (Lamport: the request's clock is observed, the clock ticks for the reply) and echoes
//! `id`. Anything else gets `status: "erro"` with a stable `code` and a `description`:
//! `bad_request` (not MessagePack/JSON, wrong types, missing `service` or `user`, not
//! exactly one body frame), `unknown_service` (including chat services such as `publish`),
//! `invalid_name`, `unknown_user` (heartbeat: send `rank` again), `unavailable` (too many
//! names).
//!
//! # Envelopes
//!
//! [`ReferenceCore::handle_message`] takes what a ROUTER socket delivers: REQ clients arrive as
//! `[identity]["" ][body]` and get `[identity]["" ][reply]`; DEALER clients may omit the
//! empty delimiter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_core::codec::Encoding;
use chat_core::error::{ChatError, ErrorCode, NameKind};
use chat_core::protocol::{
    decode_reference_request, decode_request, encode_reply, ErrorReply, Meta, ReferenceRequest,
    Reply, ReplyEnvelope, RequestFailure, MAX_ACCEPTED_CLOCK,
};
use chat_core::time::Timestamp;
use chat_core::wire::ServerInfo;
use chat_core::LamportClock;

/// How long a server stays in `list` after it was last heard from, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most distinct server names a reference keeps, by default.
pub const DEFAULT_MAX_SERVERS: usize = 4096;
/// Largest rank handed out or accepted (2^53 - 1, exact in every JSON client).
pub const MAX_RANK: u64 = MAX_ACCEPTED_CLOCK;
/// Longest accepted server name, in characters.
pub const MAX_SERVER_NAME_CHARS: usize = 128;
/// Longest accepted peer endpoint, in characters.
pub const MAX_ENDPOINT_CHARS: usize = 256;

// ----- registry -----

/// A change in the set of live servers, reported by [`Registry::take_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A server appeared in `list` (first contact, or back after going silent).
    Joined(ServerInfo),
    /// A server dropped out of `list` (silent for longer than the timeout).
    Left(ServerInfo),
}

/// Why a heartbeat was refused; every variant means "send `rank` again".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The name is unknown and the heartbeat carries no rank.
    #[error("server `{0}` is not registered; send `rank` first")]
    UnknownServer(String),
    /// The name is unknown and the rank it carries is held by another name (or invalid).
    #[error("server `{name}` is not registered and rank {rank} is not available{}; send `rank` again", held_by(.owner))]
    RankTaken {
        /// The server that sent the heartbeat.
        name: String,
        /// The rank it claimed.
        rank: u64,
        /// Who holds that rank, if anyone.
        owner: Option<String>,
    },
    /// The name is known with another rank than the one the heartbeat carries.
    #[error("server `{name}` has rank {rank}, not {claimed}; send `rank` again")]
    RankMismatch {
        /// The server that sent the heartbeat.
        name: String,
        /// The rank it claimed.
        claimed: u64,
        /// Its rank in the registry.
        rank: u64,
    },
}

/// ` (held by `owner`)`, or nothing.
fn held_by(owner: &Option<String>) -> String {
    owner
        .as_ref()
        .map(|o| format!(" (held by `{o}`)"))
        .unwrap_or_default()
}

impl RegistryError {
    /// The wire code: always `unknown_user` (the server must register again with `rank`).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::UnknownUser
    }
}

/// One registered name.
#[derive(Debug, Clone)]
struct Entry {
    rank: u64,
    endpoint: Option<String>,
    /// When it was last heard from in this run (`None`: known from a saved assignment only).
    last_seen: Option<Instant>,
    /// Whether the last change reported for it is `Joined`.
    listed: bool,
}

/// Ranks and liveness of servers; pure (no sockets, time passed in).
#[derive(Debug, Clone)]
pub struct Registry {
    timeout: Duration,
    by_name: HashMap<String, Entry>,
    by_rank: HashMap<u64, String>,
    max_rank: u64,
    changes: Vec<Change>,
    /// A rank was assigned since the assignments were last taken for saving.
    unsaved: bool,
}

impl Default for Registry {
    /// An empty registry with [`DEFAULT_TIMEOUT`].
    fn default() -> Self {
        Registry::new(DEFAULT_TIMEOUT)
    }
}

impl Registry {
    /// An empty registry where servers silent for longer than `timeout` leave `list`.
    pub fn new(timeout: Duration) -> Self {
        Registry {
            timeout,
            by_name: HashMap::new(),
            by_rank: HashMap::new(),
            max_rank: 0,
            changes: Vec::new(),
            unsaved: false,
        }
    }

    /// A registry that remembers earlier `assignments` (name, rank), saved by a previous
    /// run: those names keep their ranks, and no rank is ever given to another name. They
    /// are not live until heard from. Assignments that clash (a rank twice, out of range)
    /// are skipped.
    pub fn restore(
        timeout: Duration,
        assignments: impl IntoIterator<Item = (String, u64)>,
    ) -> Self {
        let mut r = Registry::new(timeout);
        for (name, rank) in assignments {
            if r.is_free(rank) && !r.by_name.contains_key(&name) {
                r.max_rank = r.max_rank.max(rank);
                r.by_rank.insert(rank, name.clone());
                r.by_name.insert(
                    name,
                    Entry {
                        rank,
                        endpoint: None,
                        last_seen: None,
                        listed: false,
                    },
                );
            }
        }
        r
    }

    /// Every (name, rank) assigned, sorted by name, if one was assigned since the last call:
    /// what must be saved (before the rank is revealed) for ranks to survive a restart.
    pub fn take_unsaved(&mut self) -> Option<Vec<(String, u64)>> {
        if !std::mem::take(&mut self.unsaved) {
            return None;
        }
        let mut all: Vec<(String, u64)> = self
            .by_name
            .iter()
            .map(|(n, e)| (n.clone(), e.rank))
            .collect();
        all.sort();
        Some(all)
    }

    /// The liveness timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Number of names ever registered (live or not).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no name was ever registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `name` is registered (live or not).
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The rank of `name`, if registered.
    pub fn rank_of(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|e| e.rank)
    }

    /// Whether `name` was heard from within the timeout before `now`.
    pub fn is_live(&self, now: Instant, name: &str) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|e| self.within(e.last_seen, now))
    }

    /// The rank of `name` (stable for the registry's life); a new name gets `requested` when
    /// it is free, else the largest rank ever assigned plus one. Counts as a heartbeat.
    pub fn rank(
        &mut self,
        now: Instant,
        name: &str,
        endpoint: Option<String>,
        requested: Option<u64>,
    ) -> u64 {
        let rank = match self.by_name.get(name) {
            Some(e) => e.rank,
            None => {
                let rank = match requested {
                    Some(r) if self.is_free(r) => r,
                    _ => self.fresh_rank(),
                };
                self.insert(now, name, rank);
                rank
            }
        };
        self.touch(now, name, endpoint);
        rank
    }

    /// Records a sign of life from `name`. An unknown name carrying a free `rank` is
    /// registered with it; otherwise an unknown name, or a `rank` that differs from the
    /// registered one, is refused (the server must send `rank` again).
    pub fn heartbeat(
        &mut self,
        now: Instant,
        name: &str,
        rank: Option<u64>,
        endpoint: Option<String>,
    ) -> Result<(), RegistryError> {
        match (self.by_name.get(name), rank) {
            (Some(e), Some(claimed)) if claimed != e.rank => {
                return Err(RegistryError::RankMismatch {
                    name: name.to_string(),
                    claimed,
                    rank: e.rank,
                })
            }
            (Some(_), _) => {}
            (None, None) => return Err(RegistryError::UnknownServer(name.to_string())),
            (None, Some(r)) if self.is_free(r) => self.insert(now, name, r),
            (None, Some(r)) => {
                return Err(RegistryError::RankTaken {
                    name: name.to_string(),
                    rank: r,
                    owner: self.by_rank.get(&r).cloned(),
                })
            }
        }
        self.touch(now, name, endpoint);
        Ok(())
    }

    /// Servers heard from within the timeout before `now`, sorted by rank.
    pub fn list(&self, now: Instant) -> Vec<ServerInfo> {
        let mut live: Vec<ServerInfo> = self
            .by_name
            .iter()
            .filter(|(_, e)| self.within(e.last_seen, now))
            .map(|(name, e)| info(name, e))
            .collect();
        live.sort_by_key(|s| s.rank);
        live
    }

    /// Joins and leaves since the last call, oldest first; servers silent at `now` for
    /// longer than the timeout are reported as leaving here.
    pub fn take_changes(&mut self, now: Instant) -> Vec<Change> {
        let timeout = self.timeout;
        let mut left: Vec<ServerInfo> = Vec::new();
        for (name, e) in &mut self.by_name {
            if e.listed
                && e.last_seen
                    .is_none_or(|at| now.saturating_duration_since(at) > timeout)
            {
                e.listed = false;
                left.push(info(name, e));
            }
        }
        left.sort_by_key(|s| s.rank);
        let mut changes = std::mem::take(&mut self.changes);
        changes.extend(left.into_iter().map(Change::Left));
        changes
    }

    fn within(&self, last_seen: Option<Instant>, now: Instant) -> bool {
        last_seen.is_some_and(|at| now.saturating_duration_since(at) <= self.timeout)
    }

    fn is_free(&self, rank: u64) -> bool {
        (1..=MAX_RANK).contains(&rank) && !self.by_rank.contains_key(&rank)
    }

    /// The largest rank ever assigned plus one (or, past [`MAX_RANK`], the smallest free one).
    fn fresh_rank(&self) -> u64 {
        if self.max_rank < MAX_RANK {
            return self.max_rank + 1;
        }
        // Only reachable when someone claimed MAX_RANK; there are finitely many names.
        (1..=MAX_RANK)
            .find(|r| !self.by_rank.contains_key(r))
            .unwrap_or(MAX_RANK)
    }

    fn insert(&mut self, now: Instant, name: &str, rank: u64) {
        self.unsaved = true;
        self.max_rank = self.max_rank.max(rank);
        self.by_rank.insert(rank, name.to_string());
        self.by_name.insert(
            name.to_string(),
            Entry {
                rank,
                endpoint: None,
                last_seen: Some(now),
                listed: false,
            },
        );
    }

    /// Refreshes `name` (which must exist) and records a join if it was not live.
    fn touch(&mut self, now: Instant, name: &str, endpoint: Option<String>) {
        let timeout = self.timeout;
        let Some(e) = self.by_name.get_mut(name) else {
            return;
        };
        let was_live = e.listed
            && e.last_seen
                .is_some_and(|at| now.saturating_duration_since(at) <= timeout);
        if e.listed && !was_live {
            // Went silent and came back before a sweep noticed: report both.
            self.changes.push(Change::Left(info(name, e)));
        }
        e.last_seen = Some(now);
        if let Some(ep) = endpoint {
            e.endpoint = Some(ep);
        }
        if !was_live {
            e.listed = true;
            self.changes.push(Change::Joined(info(name, e)));
        }
    }
}

fn info(name: &str, e: &Entry) -> ServerInfo {
    ServerInfo {
        name: name.to_string(),
        rank: e.rank,
        endpoint: e.endpoint.clone(),
    }
}

// ----- request handling -----

/// Counters of what the reference did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReferenceStats {
    /// Messages received.
    pub requests: u64,
    /// Error replies sent (malformed, unknown service, refused heartbeat, ...).
    pub errors: u64,
    /// Replies that could not be delivered (client gone or not reading).
    pub undeliverable: u64,
    /// Servers that appeared in `list`.
    pub joins: u64,
    /// Servers that dropped out of `list`.
    pub leaves: u64,
}

/// What can be read from a request frame even when it is not a valid request.
struct RequestContext {
    encoding: Encoding,
    service: String,
    clock: u64,
    id: Option<String>,
}

impl RequestContext {
    /// What a reply echoes: the service (`error` when unknown) and id, cut to a sane length.
    fn new(
        encoding: Encoding,
        service: Option<&str>,
        clock: u64,
        id: Option<&str>,
    ) -> RequestContext {
        RequestContext {
            encoding,
            service: service.map_or_else(|| "error".to_string(), |s| s.chars().take(64).collect()),
            clock,
            id: id.map(|s| s.chars().take(128).collect()),
        }
    }

    /// What a request that could not be served says about itself.
    fn of_failure(f: &RequestFailure) -> RequestContext {
        RequestContext::new(f.encoding, f.service.as_deref(), f.clock, f.id.as_deref())
    }

    /// Reads what it can from an arbitrary frame.
    fn read(body: &[u8]) -> RequestContext {
        match decode_request(body) {
            Ok((env, encoding)) => RequestContext::new(
                encoding,
                Some(env.request.service().as_str()),
                env.meta.clock,
                env.meta.id.as_deref(),
            ),
            Err(f) => RequestContext::of_failure(&f),
        }
    }
}

/// The reference service without its socket: the registry, the Lamport clock and the wire
/// rules. Messages come in with the time (`now` for liveness, `wall` for reply timestamps);
/// replies come out as bytes, with the envelope to send them back on.
#[derive(Debug, Clone)]
pub struct ReferenceCore {
    registry: Registry,
    clock: LamportClock,
    max_servers: usize,
    stats: ReferenceStats,
}

impl ReferenceCore {
    /// A core whose registry drops servers silent for longer than `timeout` from `list`
    /// and keeps at most `max_servers` names.
    pub fn new(timeout: Duration, max_servers: usize) -> ReferenceCore {
        ReferenceCore {
            registry: Registry::new(timeout),
            clock: LamportClock::new(),
            max_servers,
            stats: ReferenceStats::default(),
        }
    }

    /// A core that remembers the `assignments` (name, rank) a previous run saved (see
    /// [`ReferenceCore::take_unsaved`]): ranks survive restarts and are never reused.
    pub fn restore(
        timeout: Duration,
        max_servers: usize,
        assignments: impl IntoIterator<Item = (String, u64)>,
    ) -> ReferenceCore {
        ReferenceCore {
            registry: Registry::restore(timeout, assignments),
            ..ReferenceCore::new(timeout, max_servers)
        }
    }

    /// Every (name, rank) assigned, if a rank was assigned since the last call. A driver
    /// that keeps ranks across restarts saves this before it sends the reply of the
    /// request that caused it (a rank is never revealed before it is durable).
    pub fn take_unsaved(&mut self) -> Option<Vec<(String, u64)>> {
        self.registry.take_unsaved()
    }

    /// The registry (ranks and liveness).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What the core has counted so far.
    pub fn stats(&self) -> ReferenceStats {
        self.stats
    }

    /// Counts a reply the driver could not deliver (client gone or not reading).
    pub fn note_undeliverable(&mut self) {
        self.stats.undeliverable += 1;
    }

    /// Splits a ROUTER message into envelope and body and answers it: the envelope to send
    /// the reply on (identity, and the empty delimiter of REQ clients), and the reply
    /// frame. `None` when there is nobody to answer.
    pub fn handle_message(
        &mut self,
        mut frames: Vec<Vec<u8>>,
        now: Instant,
        wall: Timestamp,
    ) -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
        self.stats.requests += 1;
        if frames.len() < 2 {
            // A ROUTER always delivers the identity and at least one frame.
            tracing::debug!("message without a body ignored");
            return None;
        }
        // Everything up to and including the first empty frame after the identity (REQ),
        // or just the identity (DEALER without delimiter).
        let cut = match frames.iter().skip(1).position(Vec::is_empty) {
            Some(i) => i + 2,
            None => 1,
        };
        let mut body = frames.split_off(cut);
        let envelope = frames;
        let reply = match body.len() {
            1 if !body[0].is_empty() => self.handle_request(&body.swap_remove(0), now, wall),
            0 | 1 => {
                let err = ChatError::BadFrame("the request frame is empty".to_string());
                self.refuse(RequestContext::read(&[]), (&err).into(), wall)
            }
            n => {
                let err = ChatError::BadFrame(format!(
                    "a request is exactly one frame; this one has {n}"
                ));
                let first = body.iter().find(|f| !f.is_empty()).map_or(&[][..], |f| f);
                self.refuse(RequestContext::read(first), (&err).into(), wall)
            }
        };
        Some((envelope, reply))
    }

    /// Answers one request frame; always returns a reply in the request's encoding.
    pub fn handle_request(&mut self, body: &[u8], now: Instant, wall: Timestamp) -> Vec<u8> {
        let (env, encoding) = match decode_reference_request(body) {
            Ok(decoded) => decoded,
            Err(f) => {
                if f.not_offered() {
                    // A well-formed request of a service the reference does not offer: its
                    // clock was always observed once as a request's, then again as a
                    // refusal's (kept so that no reply changes).
                    self.clock.observe(f.clock);
                }
                return self.refuse(RequestContext::of_failure(&f), (&f.error).into(), wall);
            }
        };
        self.clock.observe(env.meta.clock);
        let service = env.request.service();
        // What a refusal by the registry (bad name, unknown server, ...) echoes.
        let ctx = RequestContext::new(
            encoding,
            Some(service.as_str()),
            env.meta.clock,
            env.meta.id.as_deref(),
        );
        let result = match env.request {
            ReferenceRequest::Rank {
                name,
                endpoint,
                rank,
            } => self.rank(now, name, endpoint, rank),
            ReferenceRequest::Heartbeat {
                user,
                rank,
                endpoint,
            } => self.heartbeat(now, user, rank, endpoint),
            ReferenceRequest::List => Ok(Reply::List(self.registry.list(now))),
        };
        match result {
            Ok(reply) => {
                let meta = Meta {
                    clock: self.clock.tick(),
                    timestamp: Some(wall),
                    id: env.meta.id,
                };
                let env = ReplyEnvelope {
                    service: service.as_str().to_string(),
                    reply,
                    meta,
                };
                encode(&env, encoding)
            }
            Err(err) => self.refuse(ctx, err, wall),
        }
    }

    fn rank(
        &mut self,
        now: Instant,
        name: String,
        endpoint: Option<String>,
        requested: Option<u64>,
    ) -> Result<Reply, ErrorReply> {
        check_name(&name)?;
        let endpoint = check_endpoint(endpoint)?;
        let known = self.registry.contains(&name);
        if !known {
            self.check_room()?;
        }
        let rank = self.registry.rank(now, &name, endpoint, requested);
        if !known {
            tracing::info!(server = %name, rank, requested, "rank assigned");
        }
        Ok(Reply::Rank(rank))
    }

    fn heartbeat(
        &mut self,
        now: Instant,
        user: Option<String>,
        rank: Option<u64>,
        endpoint: Option<String>,
    ) -> Result<Reply, ErrorReply> {
        let name = user.ok_or_else(|| {
            ErrorReply::from(&ChatError::MissingField {
                service: "heartbeat".to_string(),
                field: "user",
            })
        })?;
        check_name(&name)?;
        let endpoint = check_endpoint(endpoint)?;
        let known = self.registry.contains(&name);
        if !known && rank.is_some() {
            self.check_room()?;
        }
        match self.registry.heartbeat(now, &name, rank, endpoint) {
            Ok(()) => {
                if !known {
                    tracing::info!(server = %name, rank, "server registered again by its heartbeat");
                }
                Ok(Reply::Done)
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat refused");
                Err(ErrorReply {
                    code: e.code(),
                    description: e.to_string(),
                })
            }
        }
    }

    fn check_room(&self) -> Result<(), ErrorReply> {
        if self.registry.len() >= self.max_servers {
            return Err((&ChatError::Unavailable(format!(
                "the reference already knows {} server names, its limit",
                self.registry.len()
            )))
                .into());
        }
        Ok(())
    }

    /// An error reply built from what could be read of the request.
    fn refuse(&mut self, ctx: RequestContext, err: ErrorReply, wall: Timestamp) -> Vec<u8> {
        self.stats.errors += 1;
        tracing::debug!(service = %ctx.service, code = %err.code, description = %err.description, "request refused");
        self.clock.observe(ctx.clock);
        let meta = Meta {
            clock: self.clock.tick(),
            timestamp: Some(wall),
            id: ctx.id,
        };
        let env = ReplyEnvelope {
            service: ctx.service,
            reply: Reply::Error(err),
            meta,
        };
        encode(&env, ctx.encoding)
    }

    /// Sweeps for servers silent at `now` for longer than the timeout; logs and counts
    /// the servers that joined or left `list` since the last call, and returns them.
    pub fn poll_changes(&mut self, now: Instant) -> Vec<Change> {
        let changes = self.registry.take_changes(now);
        for change in &changes {
            match change {
                Change::Joined(s) => {
                    self.stats.joins += 1;
                    tracing::info!(server = %s.name, rank = s.rank, endpoint = ?s.endpoint, "server joined");
                }
                Change::Left(s) => {
                    self.stats.leaves += 1;
                    tracing::info!(server = %s.name, rank = s.rank, "server left (silent too long)");
                }
            }
        }
        changes
    }
}

/// A server name: 1 to [`MAX_SERVER_NAME_CHARS`] characters, not blank, no control characters.
fn check_name(name: &str) -> Result<(), ErrorReply> {
    let invalid = |reason| {
        ErrorReply::from(&ChatError::InvalidName {
            kind: NameKind::User,
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return Err(invalid("a server name cannot be empty"));
    }
    if name.chars().count() > MAX_SERVER_NAME_CHARS {
        return Err(invalid("a server name has at most 128 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("a server name cannot contain control characters"));
    }
    Ok(())
}

/// A peer endpoint: an empty one counts as absent; at most [`MAX_ENDPOINT_CHARS`].
fn check_endpoint(endpoint: Option<String>) -> Result<Option<String>, ErrorReply> {
    match endpoint {
        None => Ok(None),
        Some(ep) if ep.trim().is_empty() => Ok(None),
        Some(ep) if ep.chars().count() > MAX_ENDPOINT_CHARS || ep.chars().any(char::is_control) => {
            Err((&ChatError::InvalidField {
                field: "endpoint",
                reason: format!(
                    "at most {MAX_ENDPOINT_CHARS} characters and no control characters"
                ),
            })
                .into())
        }
        Some(ep) => Ok(Some(ep)),
    }
}

/// Encodes a reply; should encoding ever fail, answers with a minimal JSON error anyway.
fn encode(env: &ReplyEnvelope, encoding: Encoding) -> Vec<u8> {
    encode_reply(env, encoding).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reply could not be encoded");
        br#"{"service":"error","data":{"status":"erro","code":"internal","description":"reply could not be encoded"}}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn clock() -> impl Fn(u64) -> Instant {
        let base = Instant::now();
        move |ms| base + Duration::from_millis(ms)
    }

    fn names(list: &[ServerInfo]) -> Vec<(&str, u64)> {
        list.iter().map(|s| (s.name.as_str(), s.rank)).collect()
    }

    #[test]
    fn ranks_start_at_one_and_are_stable() {
        let t = clock();
        let mut r = Registry::new(Duration::from_secs(3));
        assert_eq!(r.rank(t(0), "a", None, None), 1);
        assert_eq!(r.rank(t(1), "b", None, None), 2);
        assert_eq!(r.rank(t(2), "a", None, None), 1);
        assert_eq!(
            r.rank(t(3), "a", None, Some(9)),
            1,
            "known names keep their rank"
        );
        assert_eq!(r.rank(t(4), "c", None, None), 3);
        assert_eq!(r.rank_of("b"), Some(2));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn requested_rank_when_free_only() {
        let t = clock();
        let mut r = Registry::default();
        assert_eq!(r.rank(t(0), "a", None, Some(5)), 5);
        assert_eq!(r.rank(t(0), "b", None, Some(5)), 6, "taken: max + 1");
        assert_eq!(r.rank(t(0), "c", None, Some(2)), 2, "free below max");
        assert_eq!(r.rank(t(0), "d", None, None), 7);
        assert_eq!(r.rank(t(0), "e", None, Some(0)), 8, "0 is not a rank");
        assert_eq!(r.rank(t(0), "f", None, Some(MAX_RANK + 1)), 9);
    }

    #[test]
    fn ranks_are_never_reused_even_after_silence() {
        let t = clock();
        let mut r = Registry::new(Duration::from_millis(100));
        assert_eq!(r.rank(t(0), "a", None, None), 1);
        assert!(r.list(t(1000)).is_empty());
        assert_eq!(r.rank(t(1000), "b", None, Some(1)), 2);
        assert_eq!(r.rank(t(1000), "a", None, None), 1);
    }

    #[test]
    fn past_max_rank_uses_the_smallest_free_rank() {
        let t = clock();
        let mut r = Registry::default();
        assert_eq!(r.rank(t(0), "a", None, Some(MAX_RANK)), MAX_RANK);
        assert_eq!(r.rank(t(0), "b", None, None), 1);
        assert_eq!(r.rank(t(0), "c", None, None), 2);
    }

    #[test]
    fn list_is_live_servers_by_rank() {
        let t = clock();
        let mut r = Registry::new(Duration::from_millis(3000));
        r.rank(t(0), "b", None, Some(2));
        r.rank(t(0), "a", Some("tcp://x:1".into()), Some(1));
        r.rank(t(0), "c", None, None);
        assert_eq!(names(&r.list(t(10))), [("a", 1), ("b", 2), ("c", 3)]);
        assert_eq!(r.list(t(10))[0].endpoint.as_deref(), Some("tcp://x:1"));
        r.heartbeat(t(2000), "b", None, None).unwrap();
        r.heartbeat(t(2500), "c", Some(3), None).unwrap();
        assert_eq!(names(&r.list(t(3000))), [("a", 1), ("b", 2), ("c", 3)]);
        assert_eq!(names(&r.list(t(3001))), [("b", 2), ("c", 3)]);
        assert_eq!(names(&r.list(t(5001))), [("c", 3)]);
        assert!(r.list(t(5501)).is_empty());
        assert!(!r.is_live(t(5501), "c"));
        // Coming back: same rank.
        assert_eq!(r.rank(t(6000), "a", None, None), 1);
        assert_eq!(names(&r.list(t(6000))), [("a", 1)]);
    }

    #[test]
    fn heartbeat_rules() {
        let t = clock();
        let mut r = Registry::default();
        assert_eq!(
            r.heartbeat(t(0), "x", None, None),
            Err(RegistryError::UnknownServer("x".into()))
        );
        assert!(r.is_empty());
        // Unknown name with a free rank: registered (reference restart).
        r.heartbeat(t(0), "x", Some(4), Some("tcp://h:4".into()))
            .unwrap();
        assert_eq!(r.rank_of("x"), Some(4));
        assert_eq!(r.list(t(1))[0].endpoint.as_deref(), Some("tcp://h:4"));
        assert_eq!(r.rank(t(1), "new", None, None), 5);
        // Unknown name with a taken rank: refused.
        let err = r.heartbeat(t(2), "y", Some(4), None).unwrap_err();
        assert_eq!(
            err,
            RegistryError::RankTaken {
                name: "y".into(),
                rank: 4,
                owner: Some("x".into())
            }
        );
        assert_eq!(err.code(), ErrorCode::UnknownUser);
        assert!(err.to_string().contains("held by `x`"), "{err}");
        assert!(matches!(
            r.heartbeat(t(2), "y", Some(0), None),
            Err(RegistryError::RankTaken { owner: None, .. })
        ));
        // Known name with another rank: refused; with its own rank or none: fine.
        assert!(matches!(
            r.heartbeat(t(3), "x", Some(5), None),
            Err(RegistryError::RankMismatch {
                claimed: 5,
                rank: 4,
                ..
            })
        ));
        r.heartbeat(t(3), "x", Some(4), None).unwrap();
        r.heartbeat(t(3), "x", None, None).unwrap();
        // The endpoint is kept when a heartbeat omits it, replaced when given.
        assert_eq!(r.list(t(3))[0].endpoint.as_deref(), Some("tcp://h:4"));
        r.heartbeat(t(3), "x", None, Some("tcp://h:44".into()))
            .unwrap();
        assert_eq!(r.list(t(3))[0].endpoint.as_deref(), Some("tcp://h:44"));
    }

    #[test]
    fn changes_report_joins_and_leaves() {
        let t = clock();
        let mut r = Registry::new(Duration::from_millis(100));
        r.rank(t(0), "a", None, None);
        r.rank(t(10), "a", None, None);
        r.rank(t(20), "b", None, None);
        let joined = |n: &str, rank| {
            Change::Joined(ServerInfo {
                name: n.into(),
                rank,
                endpoint: None,
            })
        };
        let left = |n: &str, rank| {
            Change::Left(ServerInfo {
                name: n.into(),
                rank,
                endpoint: None,
            })
        };
        assert_eq!(r.take_changes(t(30)), [joined("a", 1), joined("b", 2)]);
        assert!(r.take_changes(t(100)).is_empty());
        assert_eq!(r.take_changes(t(111)), [left("a", 1)]);
        assert_eq!(r.take_changes(t(200)), [left("b", 2)]);
        assert!(r.take_changes(t(300)).is_empty());
        r.heartbeat(t(400), "a", None, None).unwrap();
        assert_eq!(r.take_changes(t(400)), [joined("a", 1)]);
        // Silent and back before a sweep: both reported.
        r.heartbeat(t(600), "a", None, None).unwrap();
        assert_eq!(r.take_changes(t(600)), [left("a", 1), joined("a", 1)]);
    }

    // ----- the wire, without sockets -----

    fn core() -> ReferenceCore {
        ReferenceCore::new(Duration::from_secs(3), 3)
    }

    fn call(c: &mut ReferenceCore, now: Instant, req: &Value) -> Value {
        let body = rmp_serde::to_vec_named(req).unwrap();
        let reply = c.handle_request(&body, now, Timestamp::from_millis(1_700_000_000_000));
        assert_ne!(reply.first(), Some(&b'{'), "msgpack in, msgpack out");
        rmp_serde::from_slice(&reply).unwrap()
    }

    #[test]
    fn a_service_of_another_role_gets_the_same_refusal_as_ever() {
        // Pinned reply: the request's clock is observed twice (once as a request, once as a
        // refusal) and then ticked, exactly as before requests were typed by role.
        let t = clock();
        for (service, data) in [
            (
                "publish",
                json!({"user": "a", "channel": "c", "message": "m"}),
            ),
            ("election", json!({"user": "s1", "rank": 1})),
            ("status", json!({})),
        ] {
            let mut c = core();
            let mut data = data;
            data["clock"] = json!(5);
            data["id"] = json!("x".repeat(200));
            let r = call(&mut c, t(0), &json!({"service": service, "data": data}));
            assert_eq!(r["service"], service);
            assert_eq!(r["data"]["status"], "erro");
            assert_eq!(r["data"]["code"], "unknown_service");
            assert_eq!(
                r["data"]["description"],
                format!("service `{service}` is not offered by the reference service (it offers rank, list, heartbeat)")
            );
            assert_eq!(r["data"]["clock"], 8);
            assert_eq!(r["data"]["id"], "x".repeat(128));
        }
        // A refusal by the registry echoes the same way (clock observed twice too).
        let mut c = core();
        let r = call(
            &mut c,
            t(0),
            &json!({"service": "rank", "data": {"user": "  ", "clock": 5}}),
        );
        assert_eq!(r["data"]["code"], "invalid_name");
        assert_eq!(r["data"]["clock"], 8);
        // A malformed request: observed once.
        let mut c = core();
        let r = call(
            &mut c,
            t(0),
            &json!({"service": "rank", "data": {"clock": 5}}),
        );
        assert_eq!(r["data"]["code"], "bad_request");
        assert_eq!(r["data"]["clock"], 7);
    }

    #[test]
    fn saved_assignments_keep_ranks_across_a_restart() {
        let t = clock();
        let mut first = Registry::new(Duration::from_secs(3));
        assert_eq!(first.rank(t(0), "s1", None, None), 1);
        assert_eq!(first.rank(t(0), "s2", None, None), 2);
        let saved = first.take_unsaved().unwrap();
        assert_eq!(saved, vec![("s1".to_string(), 1), ("s2".to_string(), 2)]);
        assert_eq!(first.take_unsaved(), None, "nothing new to save");
        assert_eq!(first.rank(t(1), "s1", None, None), 1);
        assert_eq!(first.take_unsaved(), None, "a known name assigns nothing");

        // A restart: s2 is away; a newcomer must not get its rank.
        let mut again = Registry::restore(Duration::from_secs(3), saved);
        assert!(again.list(t(10)).is_empty(), "restored names are not live");
        assert_eq!(again.rank(t(10), "s3", None, None), 3);
        assert_eq!(
            again.rank(t(10), "s1", None, Some(7)),
            1,
            "s1 keeps its rank"
        );
        assert!(again.heartbeat(t(11), "s2", Some(2), None).is_ok());
        assert_eq!(
            again.list(t(11)).iter().map(|s| s.rank).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        // Clashing saved assignments are skipped, not trusted.
        let odd = Registry::restore(
            Duration::from_secs(3),
            [("a".into(), 1), ("b".into(), 1), ("c".into(), 0)],
        );
        assert_eq!(odd.rank_of("a"), Some(1));
        assert_eq!(odd.rank_of("b"), None);
        assert_eq!(odd.rank_of("c"), None);
    }

    #[test]
    fn wire_rank_list_heartbeat() {
        let t = clock();
        let mut c = core();
        let r = call(
            &mut c,
            t(0),
            &json!({"service": "rank", "data": {"user": "s1", "clock": 10, "id": "r1"}}),
        );
        assert_eq!(r["service"], "rank");
        assert_eq!(r["data"]["rank"], 1);
        assert_eq!(r["data"]["clock"], 12);
        assert_eq!(r["data"]["id"], "r1");
        assert!(r["data"]["timestamp"].is_string());
        let r = call(
            &mut c,
            t(0),
            &json!({"service": "rank", "data": {"user": "s2", "endpoint": "tcp://127.0.0.1:5602", "rank": 7}}),
        );
        assert_eq!(r["data"]["rank"], 7);
        let r = call(
            &mut c,
            t(1),
            &json!({"service": "heartbeat", "data": {"user": "s1"}}),
        );
        assert_eq!(r["data"]["status"], "OK");
        let r = call(&mut c, t(2), &json!({"service": "list", "data": {}}));
        assert_eq!(
            r["data"]["list"],
            json!([{"name": "s1", "rank": 1}, {"name": "s2", "rank": 7, "endpoint": "tcp://127.0.0.1:5602"}])
        );
        // Top-level clock (seed 003) is observed too.
        let r = call(&mut c, t(3), &json!({"service": "list", "clock": 100}));
        assert_eq!(r["data"]["clock"], 102);
    }

    #[test]
    fn wire_errors() {
        let t = clock();
        let mut c = core();
        let code = |c: &mut ReferenceCore, v: Value| call(c, t(0), &v)["data"]["code"].clone();
        assert_eq!(
            code(&mut c, json!({"service": "rank", "data": {}})),
            "bad_request"
        );
        assert_eq!(
            code(&mut c, json!({"service": "rank", "data": {"user": 5}})),
            "bad_request"
        );
        assert_eq!(
            code(&mut c, json!({"service": "rank", "data": {"user": ""}})),
            "invalid_name"
        );
        assert_eq!(
            code(&mut c, json!({"service": "heartbeat", "data": {}})),
            "bad_request"
        );
        assert_eq!(
            code(
                &mut c,
                json!({"service": "heartbeat", "data": {"user": "zz"}})
            ),
            "unknown_user"
        );
        assert_eq!(code(&mut c, json!({"data": {"user": "a"}})), "bad_request");
        assert_eq!(
            code(&mut c, json!({"service": "nope", "data": {}})),
            "unknown_service"
        );
        let r = call(
            &mut c,
            t(0),
            &json!({"service": "publish", "data": {"user": "a", "channel": "c", "message": "m"}}),
        );
        assert_eq!(r["service"], "publish");
        assert_eq!(r["data"]["status"], "erro");
        assert_eq!(r["data"]["code"], "unknown_service");
        assert_eq!(
            code(
                &mut c,
                json!({"service": "list", "data": {"clock": 1u64 << 60}})
            ),
            "bad_request"
        );
        assert_eq!(
            code(
                &mut c,
                json!({"service": "rank", "data": {"user": "a", "endpoint": "x".repeat(300)}})
            ),
            "bad_request"
        );
        // Room for three names only.
        for n in ["a", "b", "c"] {
            call(
                &mut c,
                t(0),
                &json!({"service": "rank", "data": {"user": n}}),
            );
        }
        assert_eq!(
            code(&mut c, json!({"service": "rank", "data": {"user": "d"}})),
            "unavailable"
        );
        assert_eq!(
            code(
                &mut c,
                json!({"service": "heartbeat", "data": {"user": "d", "rank": 9}})
            ),
            "unavailable"
        );
        let r = call(
            &mut c,
            t(0),
            &json!({"service": "rank", "data": {"user": "a"}}),
        );
        assert_eq!(r["data"]["rank"], 1, "known names are still served");
        assert!(c.stats().errors >= 12);
    }

    #[test]
    fn wire_garbage_and_json() {
        let t = clock();
        let mut c = core();
        let now = Timestamp::from_millis(0);
        let reply = c.handle_request(b"{not json", t(0), now);
        let v: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(v["data"]["code"], "bad_request");
        let reply = c.handle_request(&[0xc1, 0xff, 0x00], t(0), now);
        let v: Value = rmp_serde::from_slice(&reply).unwrap();
        assert_eq!(v["data"]["code"], "bad_request");
        let reply = c.handle_request(
            br#"{"service":"rank","data":{"user":"j","clock":4}}"#,
            t(0),
            now,
        );
        let v: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(v["data"]["rank"], 1);
        assert_eq!(v["data"]["clock"], 6);
    }

    #[test]
    fn envelopes() {
        let t = clock();
        let mut c = core();
        let now = Timestamp::from_millis(0);
        let body = rmp_serde::to_vec_named(&json!({"service": "list"})).unwrap();
        // REQ: [id][""][body]
        let (env, reply) = c
            .handle_message(vec![b"id".to_vec(), vec![], body.clone()], t(0), now)
            .unwrap();
        assert_eq!(env, [b"id".to_vec(), vec![]]);
        let v: Value = rmp_serde::from_slice(&reply).unwrap();
        assert!(v["data"]["list"].is_array());
        // DEALER without delimiter: [id][body]
        let (env, _) = c
            .handle_message(vec![b"id".to_vec(), body.clone()], t(0), now)
            .unwrap();
        assert_eq!(env, [b"id".to_vec()]);
        // Two body frames, or none: bad_request, same envelope.
        for frames in [
            vec![b"id".to_vec(), vec![], body.clone(), body.clone()],
            vec![b"id".to_vec(), vec![]],
            vec![b"id".to_vec(), vec![], vec![]],
        ] {
            let (env, reply) = c.handle_message(frames, t(0), now).unwrap();
            assert_eq!(env, [b"id".to_vec(), vec![]]);
            let v: Value = rmp_serde::from_slice(&reply).unwrap();
            assert_eq!(v["data"]["code"], "bad_request");
        }
        assert!(c.handle_message(vec![b"id".to_vec()], t(0), now).is_none());
    }
}
