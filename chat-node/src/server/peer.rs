//! The peer socket (requests of other servers, answered once what they reveal is durable)
//! and the links to the peers (our requests, their replies).

use super::*;

impl ServerCore {
    /// A request on our peer socket, from the sender identified by `envelope`.
    pub fn handle_peer_request(&mut self, t: Time, envelope: Vec<Vec<u8>>, body: &[u8]) {
        self.dirty = true;
        let reply = match decode_peer_request(body) {
            Ok((env, _)) => self.peer_request(t, env),
            Err(f) => PeerReply::Ready(self.failure_reply(t, &f)),
        };
        let epoch = self.depends_on();
        self.peer_replies.push_back((epoch, envelope, reply));
    }

    pub(super) fn failure_reply(&mut self, t: Time, f: &RequestFailure) -> ReplyEnvelope {
        let now_ts = self.clock_now(t);
        self.node.handle_failure(f, now_ts)
    }

    pub(super) fn peer_request(&mut self, t: Time, env: RequestEnvelope<PeerRequest>) -> PeerReply {
        let now = t.mono;
        self.node.observe(env.meta.clock);
        let service = env.request.service();
        let id = env.meta.id.clone();
        let done = |core: &mut Self, reply: Reply| {
            PeerReply::Ready(ReplyEnvelope {
                service: service.as_str().to_string(),
                reply,
                meta: core.meta(t, id.clone()),
            })
        };
        match env.request {
            PeerRequest::Heartbeat { user } => {
                if let Some(u) = user {
                    if self.peers.contains(&u) {
                        self.fd.heard(now, &u);
                    }
                }
                done(self, Reply::Done)
            }
            PeerRequest::Election { from, rank, term } => {
                self.fd.heard(now, &from);
                let ok = match self.bully.as_mut() {
                    Some(b) => {
                        b.handle_message(
                            now,
                            BullyMsg::Election {
                                from: from.clone(),
                                rank,
                                term,
                            },
                        );
                        self.drain_bully(t, Some(&from))
                    }
                    None => false,
                };
                if ok {
                    // The `Ok` is an election message: it leaves once our term is durable.
                    let reply = ReplyEnvelope {
                        service: service.as_str().to_string(),
                        reply: Reply::Election,
                        meta: self.meta(t, id),
                    };
                    return PeerReply::Ready(reply);
                }
                done(self, Reply::Done)
            }
            PeerRequest::Coordinator(a) => {
                self.fd.heard(now, &a.coordinator);
                if let Some(b) = self.bully.as_mut() {
                    b.handle_announcement(now, a);
                }
                self.drain_bully(t, None);
                done(self, Reply::Done)
            }
            PeerRequest::Clock => {
                let c = self.clock_now(t);
                done(self, Reply::Clock(c))
            }
            PeerRequest::Adjust { offset_ms } => {
                self.adjust_clock(offset_ms);
                done(self, Reply::Done)
            }
            PeerRequest::Replicate { from, events } => {
                if !self.peers.contains(&from) {
                    // Only servers the reference lists may write into our state (the sender
                    // retries after its ack timeout, by when our list knows a new peer).
                    let e = ChatError::NotOffered {
                        service: service.as_str().to_string(),
                        reason: "the sender is not a server this one knows from the reference",
                    };
                    return done(self, Reply::Error((&e).into()));
                }
                self.fd.heard(now, &from);
                for e in events {
                    self.apply_replicated(e);
                }
                PeerReply::Vector(service.as_str().to_string(), id)
            }
            PeerRequest::Sync {
                from,
                vector,
                limit,
            } => {
                if self.peers.contains(&from) {
                    self.fd.heard(now, &from);
                }
                PeerReply::Sync { vector, limit, id }
            }
            PeerRequest::Status => {
                let s = self.status(t);
                done(self, Reply::Status(Box::new(s)))
            }
            PeerRequest::Read(read) => {
                let now_ts = self.clock_now(t);
                let handled = self.node.handle_client_request(
                    RequestEnvelope {
                        request: ClientRequest::Read(read),
                        meta: env.meta,
                    },
                    now_ts,
                    &*self.reader,
                );
                PeerReply::Ready(handled.reply)
            }
        }
    }

    /// A reply from `peer` on our link to it.
    pub fn handle_peer_reply(&mut self, t: Time, peer: &str, body: &[u8]) {
        self.dirty = true;
        let now = t.mono;
        let Ok((reply, _)) = decode_reply(body) else {
            warn!(peer, "undecodable reply from a peer");
            return;
        };
        let Some(kind) = self.peers.answered(peer, reply.meta.id.as_deref()) else {
            return; // late reply to a request we gave up on
        };
        self.fd.heard(now, peer);
        self.heard.insert(peer.to_string());
        self.node.observe(reply.meta.clock);
        match (kind, reply.reply) {
            (Pending::Election, Reply::Election) => {
                if let Some(b) = self.bully.as_mut() {
                    b.handle_message(
                        now,
                        BullyMsg::Ok {
                            from: peer.to_string(),
                        },
                    );
                }
                self.drain_bully(t, None);
            }
            (Pending::Clock { round }, Reply::Clock(c)) => {
                let local = self.clock_now(t).millis();
                self.berkeley
                    .handle_time(now, local, peer, round, c.millis());
                self.drain_berkeley(t);
            }
            (Pending::TimeSample { sample }, Reply::Clock(c)) => {
                let local = self.clock_now(t).millis();
                self.cristian
                    .handle_time(now, local, peer, sample, c.millis());
                self.drain_cristian(t);
            }
            (Pending::Replicate { msg }, Reply::Vector(_)) => self.repl.handle_ack(peer, msg),
            (Pending::Sync, Reply::Events { events, more }) => {
                let n = events.len();
                let mut new = 0;
                for e in events {
                    new += usize::from(self.apply_replicated(e));
                }
                if new > 0 {
                    info!(server = %self.cfg.name, from = peer, received = n, new, "caught up events");
                }
                self.sync_inflight = None;
                if more {
                    if !self.send_sync(t, peer) {
                        self.next_sync = now;
                    }
                } else if !self.caught_up {
                    self.caught_up = true;
                    info!(server = %self.cfg.name, with = peer, events = self.node.state().event_count(), "caught up");
                }
            }
            (Pending::Sync, Reply::Error(e)) => {
                self.sync_inflight = None;
                warn!(peer, error = %e.description, "sync refused");
            }
            (_, Reply::Error(e)) => {
                debug!(peer, code = %e.code, error = %e.description, "peer refused")
            }
            _ => {}
        }
    }

    /// Request `id` to `peer` could not be sent (link still connecting, or its queue full).
    pub fn handle_peer_unsent(&mut self, t: Time, peer: &str, id: u64) {
        // Not a missed reply: silence beyond the detector's timeout is what marks a peer down.
        if self.peers.cancel(peer, id) == Some(Pending::Sync) {
            self.sync_inflight = None;
            self.next_sync = t.mono + SYNC_RETRY;
        }
    }

    /// Asks `peer` for what we miss; false if the request could not be queued.
    pub(super) fn send_sync(&mut self, t: Time, peer: &str) -> bool {
        let req = Request::Sync {
            from: self.cfg.name.clone(),
            vector: vector_of(&self.node),
            limit: DEFAULT_SYNC_LIMIT,
        };
        let sent = self.send_peer(t, peer, req, Pending::Sync);
        if sent {
            self.sync_inflight = Some(peer.to_string());
        }
        sent
    }

    /// Queues `request` to `peer` now; false if the peer is unknown or saturated.
    pub(super) fn send_peer(
        &mut self,
        t: Time,
        peer: &str,
        request: Request,
        kind: Pending,
    ) -> bool {
        match self.peer_transmit(t, peer, request, kind) {
            Some(tx) => {
                self.out.push_back(tx);
                true
            }
            None => false,
        }
    }

    /// A request to `peer`, registered as pending.
    pub(super) fn peer_transmit(
        &mut self,
        t: Time,
        peer: &str,
        request: Request,
        kind: Pending,
    ) -> Option<Transmit> {
        let (id, endpoint) = self.peers.start(peer, kind, t.mono)?;
        let mut meta = self.meta(t, None);
        meta.id = Some(peers::wire_id(id));
        let env = RequestEnvelope { request, meta };
        match encode_request(&env, Encoding::MsgPack) {
            Ok(body) => Some(Transmit::Peer {
                to: peer.to_string(),
                endpoint,
                id,
                body,
            }),
            Err(e) => {
                warn!(error = %e, "cannot encode a peer request");
                self.peers.cancel(peer, id);
                None
            }
        }
    }
}
