//! The commit pipeline: batches made durable, and what that lets leave (publications,
//! pushes, held replies, peer replies).

use super::*;
use chat_core::{HistoryTarget, Publication};

/// The history whose topic a publication is published on: a channel's, or the recipient's.
fn publication_target(p: &Publication) -> HistoryTarget {
    match p {
        Publication::Channel(c) => HistoryTarget::Channel(c.channel.clone()),
        Publication::Direct(d) => HistoryTarget::User(d.dst.clone()),
    }
}

impl ServerCore {
    /// Batch `epoch` (from [`ServerCore::poll_batch`]) is durable; committing it made
    /// `hidden` events invisible ([`chat_store::Appended::hidden`]).
    pub fn handle_persisted(&mut self, epoch: u64, hidden: usize) {
        self.dirty = true;
        let Some(batch) = self.inflight.take_if(|b| b.epoch == epoch) else {
            warn!(server = %self.cfg.name, epoch, "a batch that was not in flight was reported durable");
            return;
        };
        let resynced = hidden as u64 != batch.hides;
        if resynced {
            // The store met copies of a request the window had forgotten: take its state.
            info!(server = %self.cfg.name, epoch, store = hidden, memory = batch.hides,
                  "copies of an old request met; state reloaded from the store");
            let reloaded = self
                .reader
                .summary()
                .and_then(|summary| self.node.resync(summary, &*self.reader));
            if let Err(e) = reloaded {
                self.failure.get_or_insert(e);
                return;
            }
            // Hides made again by the replay belong to the next batch.
            self.hides_taken = 0;
        }
        self.epoch_durable = epoch;
        if let Some(term) = batch.term {
            self.term_durable = self.term_durable.max(term);
        }
        for e in &batch.local {
            self.outbox.insert(e.id.seq, e.clone());
        }
        self.repl.committed(batch.own_max);
        self.durable_vector = batch.vector;
        for event in &batch.local {
            if let Some(mut p) = event.publication() {
                // Never publish a copy that is known to lose to an earlier copy of the
                // same request (a retry accepted twice): subscribers get the winner from
                // the server that accepted it.
                if self.is_visible(event) {
                    // Chain the publications of this server on each topic, so that a
                    // subscriber that missed one knows it (`prev` beyond what it saw).
                    let target = publication_target(&p);
                    let key = chat_store::topic_key(&target);
                    let Some(last) = self.last_published(&key, &target, event.id.seq) else {
                        return;
                    };
                    p.set_prev(Some(last));
                    self.published.insert(key, last.max(event.id.seq));
                    match encode_publication(&p, self.cfg.encoding) {
                        Ok(payload) => self.out.push_back(Transmit::Publish {
                            topic: p.topic().to_string(),
                            payload,
                        }),
                        Err(e) => warn!(error = %e, "cannot encode a publication"),
                    }
                }
            }
            match event.encode(Encoding::MsgPack) {
                Ok(payload) => self.out.push_back(Transmit::Publish {
                    topic: TOPIC_REPLICATION.to_string(),
                    payload,
                }),
                Err(e) => warn!(error = %e, "cannot encode an event"),
            }
            debug!(server = %self.cfg.name, event = %event.id, op = event.kind.operation(), "write committed");
        }
        // After a reload the window holds only the uncommitted events, numbered afresh:
        // this batch's mark means nothing there, and they must stay.
        if !resynced {
            self.node
                .trim_requests(batch.request_mark, self.cfg.request_window);
        }
    }

    /// The sequence number of the last own publication on `target`'s topic (`key` in
    /// `published`) before `seq` (0 if
    /// none): from memory, or from the store the first time (after a restart, an event
    /// committed but never published then shows as a gap to subscribers). `None` if the
    /// store failed (the server stops).
    fn last_published(&mut self, key: &str, target: &HistoryTarget, seq: u64) -> Option<u64> {
        if let Some(&last) = self.published.get(key) {
            return Some(last);
        }
        match self.reader.last_published(target, &self.cfg.name, seq) {
            Ok(last) => Some(last.unwrap_or(0)),
            Err(e) => {
                self.failure.get_or_insert(e);
                None
            }
        }
    }

    pub(super) fn is_visible(&self, event: &Event) -> bool {
        event.request_id.as_deref().is_none_or(|rid| {
            match self.node.state().event_for_request(rid) {
                Some(id) => *id == event.id,
                // Not in the window (it was just reloaded): the store knows.
                None => matches!(self.reader.request_winner(rid), Ok(Some(w)) if w.id == event.id),
            }
        })
    }

    /// Moves everything that became sendable since the last inputs to the output queue.
    pub(super) fn advance(&mut self, t: Time) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let now = t.mono;
        // Who is alive does not change between the push and the release below.
        let alive = self.alive(now);
        self.push_to_peers(t, &alive);
        self.release_held(t, &alive);
        while self
            .deferred
            .front()
            .is_some_and(|(e, _)| *e <= self.epoch_durable)
        {
            if let Some((_, tx)) = self.deferred.pop_front() {
                self.out.push_back(tx);
            }
        }
        while self
            .election_out
            .front()
            .is_some_and(|(term, _)| *term <= self.term_durable)
        {
            if let Some((_, tx)) = self.election_out.pop_front() {
                self.out.push_back(tx);
            }
        }
        self.send_peer_replies(t);
        if self.caught_up && !self.broker.registered {
            // Serve clients only once we hold what our peers hold (no stale reads after a
            // restart, no writes acknowledged before we know our peers).
            self.out.push_back(Transmit::Broker(ToBroker::Ready {
                capacity: self.cfg.capacity,
                stamp: self.stamp(now),
            }));
            self.broker.registered = true;
            self.broker.next_heartbeat = now + backend::HEARTBEAT_INTERVAL;
            info!(server = %self.cfg.name, "ready: serving clients");
        }
    }

    pub(super) fn push_to_peers(&mut self, t: Time, alive: &[String]) {
        for send in self.repl.poll_sends(t.mono, alive) {
            let mut events: Vec<Event> = self
                .outbox
                .range(send.from..=send.to)
                .map(|(_, e)| e.clone())
                .collect();
            if events.len() as u64 != send.to - send.from + 1 {
                let n = usize::try_from(send.to - send.from + 1).unwrap_or(usize::MAX);
                match self.reader.events_after(&self.cfg.name, send.from - 1, n) {
                    Ok(e) => events = e,
                    Err(e) => {
                        self.failure.get_or_insert(e);
                        return;
                    }
                }
            }
            let req = Request::Replicate {
                from: self.cfg.name.clone(),
                events,
            };
            self.send_peer(t, &send.peer, req, Pending::Replicate { msg: send.msg });
        }
        // Keep in memory only what some known peer still lacks.
        let floor = self
            .peers
            .names()
            .iter()
            .map(|p| self.repl.acked_through(p))
            .min()
            .unwrap_or(u64::MAX);
        while self
            .outbox
            .first_key_value()
            .is_some_and(|(s, _)| *s <= floor)
            || self.outbox.len() > OUTBOX_MAX
        {
            self.outbox.pop_first();
        }
    }

    pub(super) fn release_held(&mut self, t: Time, alive: &[String]) {
        let before = self.repl.local_only_acks();
        for r in self.repl.poll_released(alive) {
            match r {
                Release::Ack(h) => self.out.push_back(Transmit::Broker(ToBroker::Reply {
                    token: h.token,
                    body: h.bytes,
                })),
                Release::Refuse(h) => {
                    let e = ChatError::Unavailable(
                        "no other server is alive to hold a copy of this write; it is stored here and will be \
                         replicated; retry with the same request id"
                            .into(),
                    );
                    let meta = self.meta(t, h.id);
                    let reply = ReplyEnvelope::error(h.service, &e, meta);
                    self.queue_reply(h.token, &reply, h.encoding);
                }
            }
        }
        let local_only = self.repl.local_only_acks() - before;
        if local_only > 0 {
            warn!(
                server = %self.cfg.name,
                writes = local_only,
                "acknowledged with no other live server holding a copy (policy: accept locally)"
            );
        }
    }

    pub(super) fn send_peer_replies(&mut self, t: Time) {
        while self
            .peer_replies
            .front()
            .is_some_and(|(e, _, _)| *e <= self.epoch_durable)
        {
            let Some((_, envelope, reply)) = self.peer_replies.pop_front() else {
                break;
            };
            let reply = match reply {
                PeerReply::Ready(r) => r,
                PeerReply::Vector(service, id) => ReplyEnvelope {
                    service,
                    // What is durable here, which includes the events of the push.
                    reply: Reply::Vector(self.durable_vector.clone()),
                    meta: self.meta(t, id),
                },
                PeerReply::Sync { vector, limit, id } => {
                    let (events, more) = match self.events_beyond(&vector, limit as usize) {
                        Ok(r) => r,
                        Err(e) => {
                            self.failure.get_or_insert(e);
                            return;
                        }
                    };
                    ReplyEnvelope {
                        service: "sync".into(),
                        reply: Reply::Events { events, more },
                        meta: self.meta(t, id),
                    }
                }
            };
            let Ok(body) = encode_reply(&reply, Encoding::MsgPack) else {
                continue;
            };
            self.out.push_back(Transmit::PeerReply { envelope, body });
        }
    }

    /// Stored events beyond `vector`, at most `limit` of them and about
    /// [`SYNC_REPLY_BYTES`]; and whether more remain.
    pub(super) fn events_beyond(
        &self,
        vector: &BTreeMap<String, u64>,
        limit: usize,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (origin, applied) in self.node.state().applied() {
            let have = vector.get(origin).copied().unwrap_or(0);
            if applied.max() <= have {
                continue;
            }
            let room = limit.saturating_sub(out.len());
            if room == 0 || bytes >= SYNC_REPLY_BYTES {
                return Ok((out, true));
            }
            for e in self.reader.events_after(origin, have, room)? {
                bytes += event_size(&e);
                out.push(e);
                if bytes >= SYNC_REPLY_BYTES {
                    return Ok((out, true));
                }
            }
            if out.len() >= limit {
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    /// Queues a client reply; it leaves once what it may reveal is durable.
    pub(super) fn queue_reply(&mut self, token: u64, reply: &ReplyEnvelope, encoding: Encoding) {
        match encode_reply(reply, encoding) {
            Ok(body) => {
                let epoch = self.depends_on();
                self.emit_after(epoch, Transmit::Broker(ToBroker::Reply { token, body }));
            }
            Err(e) => warn!(error = %e, "cannot encode a reply"),
        }
    }

    /// Sends `tx` once batch `epoch` is durable (at once if it is).
    pub(super) fn emit_after(&mut self, epoch: u64, tx: Transmit) {
        if epoch <= self.epoch_durable && self.deferred.is_empty() {
            self.out.push_back(tx);
        } else {
            self.deferred.push_back((epoch, tx));
        }
    }

    /// The batch holding the newest event (or metadata) applied so far: a reply built now
    /// may reveal it, so it waits until that batch is durable.
    pub(super) fn depends_on(&self) -> u64 {
        if self.node.pending().is_empty() && self.pending_meta.is_empty() {
            self.epoch_open - 1
        } else {
            self.epoch_open
        }
    }
}
