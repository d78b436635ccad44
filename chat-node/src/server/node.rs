//! The socket-free heart of a server: the chat state, the Lamport clock, and the events
//! of the current loop iteration waiting for their commit.

use chat_core::protocol::{RequestFailure, NOT_A_CLIENT_SERVICE};
use chat_core::ratelimit::{write_key, RateLimit, RateLimiter};
use chat_core::{
    history_page, ChatError, ChatState, ClientRequest, Event, EventId, EventKind, HistoryTarget,
    LamportClock, Limits, Meta, Read, Reply, ReplyEnvelope, RequestEnvelope, RequestWindow, Stamp,
    Summary, Timestamp,
};
use chat_store::{StoreError, StoreRead};
use tracing::{debug, error, warn};

/// Most bytes of names in a `users` or `channels` reply, so the reply stays well under the
/// 1 MiB frame limit however many names exist (the list is cut, in name order, beyond).
pub const MAX_LIST_BYTES: usize = 512 * 1024;

/// The names that fit in [`MAX_LIST_BYTES`].
fn capped(mut names: Vec<String>) -> Vec<String> {
    let mut bytes = 0;
    let keep = names
        .iter()
        .take_while(|n| {
            bytes += n.len() + 2;
            bytes <= MAX_LIST_BYTES
        })
        .count();
    if keep < names.len() {
        warn!(
            total = names.len(),
            listed = keep,
            "name list cut to fit one reply"
        );
        names.truncate(keep);
    }
    names
}

/// What handling one client request produced.
#[derive(Debug)]
pub struct Handled {
    /// The reply.
    pub reply: ReplyEnvelope,
    /// When the reply acknowledges a write of this server: that event's sequence number.
    /// The reply may only be sent once enough peers hold the event.
    pub hold_for: Option<u64>,
}

/// The socket-free heart of a server: state, Lamport clock, and the batch of events waiting
/// for their commit.
#[derive(Debug)]
pub struct Node {
    name: String,
    state: ChatState,
    clock: LamportClock,
    next_seq: u64,
    limits: Limits,
    pending: Vec<Event>,
    local: Vec<Event>,
    /// Per-user token buckets charged by client writes (flood protection).
    limiter: RateLimiter,
}

impl Node {
    /// A node with empty state; client writes are limited per user by `rate_limit`.
    pub fn new(name: impl Into<String>, limits: Limits, rate_limit: RateLimit) -> Node {
        Node {
            name: name.into(),
            state: ChatState::new(),
            clock: LamportClock::new(),
            next_seq: 1,
            limits,
            pending: Vec::new(),
            local: Vec::new(),
            limiter: RateLimiter::new(rate_limit),
        }
    }

    /// Takes the small state a store recovered (on start; history stays on disk).
    pub fn recover(&mut self, summary: Summary) {
        self.state = ChatState::from_summary(summary);
        self.clock.witness(self.state.max_clock());
        self.next_seq = self.state.applied().get(&self.name).map_or(0, |a| a.max()) + 1;
    }

    /// Forgets request ids of durable events beyond `window` (`mark`: the state's
    /// [`ChatState::request_mark`] when the durable batch was taken); the store's index
    /// answers for them from then on.
    pub fn trim_requests(&mut self, mark: u64, window: RequestWindow) -> usize {
        let now = self.state.newest_timestamp_ms();
        self.state.trim_requests(mark, now, window)
    }

    /// Server name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The replicated state.
    pub fn state(&self) -> &ChatState {
        &self.state
    }

    /// Current Lamport clock.
    pub fn lamport(&self) -> u64 {
        self.clock.value()
    }

    /// Highest sequence number this server gave to one of its own events.
    pub fn own_max_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Advances the Lamport clock for a message this server sends.
    pub fn tick(&mut self) -> u64 {
        self.clock.tick()
    }

    /// Merges the Lamport clock of a message this server received.
    pub fn observe(&mut self, clock: u64) {
        self.clock.observe(clock);
    }

    /// Metadata for a reply or request sent now.
    pub fn meta(&mut self, now: Timestamp, id: Option<String>) -> Meta {
        Meta {
            clock: self.clock.tick(),
            timestamp: Some(now),
            id,
        }
    }

    /// Handles a request of any role at physical time `now` as a client's: a service
    /// clients may not use gets the error reply [`chat_core::protocol::decode_client_request`]
    /// gives it (for callers holding a [`chat_core::Request`], such as tests).
    pub fn handle_request(
        &mut self,
        env: RequestEnvelope,
        now: Timestamp,
        store: &dyn StoreRead,
    ) -> Handled {
        let RequestEnvelope { request, meta } = env;
        let service = request.service();
        match ClientRequest::try_from(request) {
            Ok(request) => {
                self.handle_client_request(RequestEnvelope { request, meta }, now, store)
            }
            Err(e) => {
                self.clock.observe(meta.clock);
                debug!(server = %self.name, %service, error = %e, "request refused");
                Handled {
                    reply: ReplyEnvelope::error(service.as_str(), &e, self.meta(now, meta.id)),
                    hold_for: None,
                }
            }
        }
    }

    /// Handles a decoded client request at physical time `now`, reading history and older
    /// request ids from `store`.
    pub fn handle_client_request(
        &mut self,
        env: RequestEnvelope<ClientRequest>,
        now: Timestamp,
        store: &dyn StoreRead,
    ) -> Handled {
        self.clock.observe(env.meta.clock);
        let service = env.request.service();
        let id = env.meta.id.clone();
        let (reply, hold_for) = match self.answer(env, now, store) {
            Ok(r) => r,
            Err(e) => {
                debug!(server = %self.name, %service, error = %e, "request refused");
                (Reply::Error((&e).into()), None)
            }
        };
        Handled {
            reply: ReplyEnvelope {
                service: service.as_str().to_string(),
                reply,
                meta: self.meta(now, id),
            },
            hold_for,
        }
    }

    /// Answers a frame that could not be decoded.
    pub fn handle_failure(&mut self, f: &RequestFailure, now: Timestamp) -> ReplyEnvelope {
        self.clock.observe(f.clock);
        warn!(server = %self.name, error = %f.error, "bad request");
        let meta = self.meta(now, f.id.clone());
        ReplyEnvelope::error(
            f.service.clone().unwrap_or_else(|| "error".into()),
            &f.error,
            meta,
        )
    }

    fn answer(
        &mut self,
        env: RequestEnvelope<ClientRequest>,
        now: Timestamp,
        store: &dyn StoreRead,
    ) -> Result<(Reply, Option<u64>), ChatError> {
        let RequestEnvelope { request, meta } = env;
        let reply = match request {
            ClientRequest::Write(write) => {
                let kind = EventKind::from(write);
                if let Some(rid) = &meta.id {
                    let original = match self.state.event_for_request(rid) {
                        Some(id) => Some(id.clone()),
                        // Older than the window: the store's index knows.
                        None => store
                            .request_winner(rid)
                            .map_err(|e| self.storage_error(&e))?
                            .map(|e| e.id),
                    };
                    if let Some(original) = original {
                        // A retry of a write we already have: the same answer, once it is safe.
                        let hold = (original.origin == self.name).then_some(original.seq);
                        return Ok((Reply::Done, hold));
                    }
                }
                // Charged after the retry check (a retry costs nothing) and before validation
                // (refused writes cost a token too).
                self.limiter.check(write_key(&kind), now.millis())?;
                self.state.validate(&kind, &self.limits)?;
                let seq = self.next_seq;
                let event = Event {
                    id: EventId {
                        origin: self.name.clone(),
                        seq,
                    },
                    clock: self.clock.tick(),
                    timestamp: now,
                    request_id: meta.id,
                    kind,
                };
                self.next_seq += 1;
                self.state.apply(&event);
                self.pending.push(event.clone());
                self.local.push(event);
                return Ok((Reply::Done, Some(seq)));
            }
            ClientRequest::Read(Read::Users) => Reply::Users(capped(self.state.users())),
            ClientRequest::Read(Read::Channels) => Reply::Channels(capped(self.state.channels())),
            ClientRequest::Read(Read::History {
                target,
                before,
                limit,
            }) => {
                let (HistoryTarget::Channel(name) | HistoryTarget::User(name)) = &target;
                if name.is_empty() {
                    return Err(ChatError::MissingField {
                        service: "history".into(),
                        field: "channel` or `data.user",
                    });
                }
                Reply::History(self.history(&target, before.as_deref(), limit, store)?)
            }
            ClientRequest::Presence(_) => Reply::Done,
            ClientRequest::Status => {
                // The runtime answers `status` (it knows the cluster) before a request
                // reaches the node; a node alone refuses it as it always has.
                return Err(ChatError::NotOffered {
                    service: "status".into(),
                    reason: NOT_A_CLIENT_SERVICE,
                });
            }
        };
        Ok((reply, None))
    }

    /// A page of `target`'s history from the store (the same page, item for item, that
    /// every replica holding the same events gives).
    fn history(
        &self,
        target: &HistoryTarget,
        before: Option<&str>,
        limit: u32,
        store: &dyn StoreRead,
    ) -> Result<chat_core::HistoryPage, ChatError> {
        let before = before.map(Stamp::parse_cursor).transpose()?;
        let limit = (limit as usize).max(1);
        let rows = store
            .history(target, before.as_ref(), limit + 1)
            .map_err(|e| self.storage_error(&e))?;
        if rows.newest_first.is_empty() {
            // Nothing stored for the topic: an unknown name, or one with no history yet.
            match target {
                HistoryTarget::Channel(c) if !self.state.has_channel(c) => {
                    return Err(ChatError::UnknownChannel(c.clone()))
                }
                HistoryTarget::User(u) if !self.state.has_user(u) => {
                    return Err(ChatError::UnknownUser(u.clone()))
                }
                _ => {}
            }
        }
        Ok(history_page(rows.newest_first, limit, rows.heads))
    }

    /// Logs a failed store read and turns it into the error a client gets.
    fn storage_error(&self, e: &StoreError) -> ChatError {
        error!(server = %self.name, error = %e, "store read failed");
        ChatError::Internal(format!("the server could not read its store: {e}"))
    }

    /// Applies an event replicated from another server; returns whether it was new.
    ///
    /// A request id that is not in the window is taken as new here (no store read on this
    /// path, taken by every replica for every write): if the store, which decides exactly
    /// when it commits the event, finds an older copy, it counts a hide this state did not
    /// make, and the core reloads the state ([`Node::resync`]).
    pub fn handle_replicated(&mut self, event: Event) -> bool {
        self.clock.observe(event.clock);
        if self.state.contains(&event.id) {
            return false;
        }
        self.state.apply(&event);
        if event.id.origin == self.name {
            // Our own event coming back from a peer (we lost it, e.g. a disk restored
            // from backup): keep it, and never reuse its sequence number.
            self.next_seq = self.next_seq.max(event.id.seq + 1);
        }
        self.pending.push(event);
        true
    }

    /// Rebuilds the state from the store's `summary` (everything durable) and the events
    /// not yet committed, which are applied again with exact request-id lookups in `store`.
    /// The window starts over with those events.
    pub fn resync(&mut self, summary: Summary, store: &dyn StoreRead) -> Result<(), StoreError> {
        let mut state = ChatState::from_summary(summary);
        for e in &self.pending {
            state.apply_with(e, |rid| store.request_winner(rid))?;
        }
        self.state = state;
        Ok(())
    }

    /// Events this node's state made invisible since it was built or resynced.
    pub fn hides(&self) -> u64 {
        self.state.hides()
    }

    /// This server's own events of the current batch (not yet committed).
    pub fn local(&self) -> &[Event] {
        &self.local
    }

    /// Events waiting to be committed to the store.
    pub fn pending(&self) -> &[Event] {
        &self.pending
    }

    /// Takes the batch to commit: every pending event, and this server's own among them
    /// (to publish and replicate once the batch is durable).
    pub fn take_batch(&mut self) -> (Vec<Event>, Vec<Event>) {
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.local),
        )
    }

    /// Marks the pending events committed; returns this server's own new events, to
    /// publish and replicate.
    pub fn committed(&mut self) -> Vec<Event> {
        self.take_batch().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_name_lists_are_cut_to_fit_a_reply() {
        let names: Vec<String> = (0..100_000).map(|i| format!("user-{i:08}")).collect();
        let cut = capped(names.clone());
        assert!(cut.len() < names.len());
        assert!(cut.iter().map(|n| n.len() + 2).sum::<usize>() <= MAX_LIST_BYTES);
        assert_eq!(cut[..], names[..cut.len()]);
        let few: Vec<String> = vec!["ana".into(), "bia".into()];
        assert_eq!(capped(few.clone()), few);
    }
}
