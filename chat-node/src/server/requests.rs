//! Client requests handed over by the broker, the broker link (registration, heartbeats,
//! the lease), and the `servers` and `replication` topics.

use super::*;

impl ServerCore {
    /// A message from the broker, as backend frames; false if it is not one (ignored).
    pub fn handle_broker(&mut self, t: Time, frames: &[Vec<u8>]) -> bool {
        match backend::parse_from_broker(frames) {
            Some(backend::FromBroker::Heartbeat { echo }) => {
                self.handle_broker_heartbeat(t, echo);
                true
            }
            Some(backend::FromBroker::Request {
                token,
                request,
                echo,
            }) => {
                self.handle_client_request(t, token, request, echo);
                true
            }
            None => false,
        }
    }

    /// The broker's heartbeat, with the newest stamp of ours it received.
    pub fn handle_broker_heartbeat(&mut self, t: Time, echo: Option<u64>) {
        self.heard_broker(t, echo);
    }

    /// A client request handed over by the broker as `token` (with the broker's echo of
    /// our newest stamp).
    pub fn handle_client_request(&mut self, t: Time, token: u64, body: &[u8], echo: Option<u64>) {
        self.heard_broker(t, echo);
        if !self.lease_holds(t.mono) {
            // The broker may already have given this request to another server: applying
            // it here too would accept the write twice. Drop it; the client's retry (same
            // request id) or the broker's re-dispatch answers it.
            self.broker.fenced += 1;
            if !self.broker.fence_logged {
                warn!(
                    server = %self.cfg.name,
                    "broker lease ran out (paused or cut off longer than the broker's liveness window); \
                     dropping requests the broker may have given to another server"
                );
                self.broker.fence_logged = true;
            }
            // Tell the broker we are back as soon as possible.
            self.broker.next_heartbeat = t.mono;
            return;
        }
        self.dirty = true;
        let now_ts = self.clock_now(t);
        let (env, encoding) = match decode_client_request(body) {
            Ok(ok) => ok,
            Err(f) => {
                if f.not_offered() {
                    // A well-formed request of another role counts as a request, as before.
                    self.berkeley.note_request(t.mono, now_ts.millis());
                }
                let reply = self.node.handle_failure(&f, now_ts);
                self.queue_reply(token, &reply, f.encoding);
                return;
            }
        };
        self.berkeley.note_request(t.mono, now_ts.millis());
        if env.request == ClientRequest::Status {
            self.node.observe(env.meta.clock);
            let reply = ReplyEnvelope {
                service: "status".into(),
                reply: Reply::Status(Box::new(self.status(t))),
                meta: self.meta(t, env.meta.id),
            };
            self.queue_reply(token, &reply, encoding);
            return;
        }
        let Handled { reply, hold_for } =
            self.node.handle_client_request(env, now_ts, &*self.reader);
        match hold_for {
            Some(_) if self.defect == Defect::ReplyBeforeDurable => {
                match encode_reply(&reply, encoding) {
                    Ok(body) => self
                        .out
                        .push_back(Transmit::Broker(ToBroker::Reply { token, body })),
                    Err(e) => warn!(error = %e, "cannot encode a reply"),
                }
            }
            Some(seq) => match encode_reply(&reply, encoding) {
                Ok(bytes) => self.repl.hold(
                    seq,
                    HeldReply {
                        token,
                        bytes,
                        encoding,
                        service: reply.service.clone(),
                        id: reply.meta.id.clone(),
                    },
                ),
                Err(e) => warn!(error = %e, "cannot encode a reply"),
            },
            None => self.queue_reply(token, &reply, encoding),
        }
    }

    /// Applies an event replicated from another server; returns whether it was new.
    pub(super) fn apply_replicated(&mut self, event: Event) -> bool {
        self.node.handle_replicated(event)
    }

    pub(super) fn heard_broker(&mut self, t: Time, echo: Option<u64>) {
        self.broker.last_heard = t.mono;
        self.broker.silent_logged = false;
        if let Some(e) = echo {
            if self.broker.echoed.is_none_or(|old| e > old) {
                self.broker.echoed = Some(e);
            }
        }
        if self.lease_holds(t.mono) && self.broker.fence_logged {
            info!(server = %self.cfg.name, dropped = self.broker.fenced, "broker lease renewed; serving again");
            self.broker.fence_logged = false;
        }
    }

    /// Whether the broker cannot have given up on us yet. Before any echo (an older broker
    /// that does not echo), there is no lease to check.
    pub(super) fn lease_holds(&self, now: Instant) -> bool {
        match self.broker.echoed {
            None => true,
            Some(e) => now < self.base + Duration::from_millis(e) + LEASE,
        }
    }

    pub(super) fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// A message on a topic this server subscribes to (`servers`, and `replication` when it
    /// runs without a reference).
    pub fn handle_subscription(&mut self, t: Time, topic: &[u8], payload: &[u8]) {
        self.dirty = true;
        if topic == TOPIC_REPLICATION.as_bytes() {
            match Event::decode(payload) {
                Ok(event) => {
                    let id = event.id.clone();
                    if self.apply_replicated(event) {
                        debug!(server = %self.cfg.name, event = %id, "replicated event applied (topic)");
                    }
                }
                Err(e) => {
                    warn!(server = %self.cfg.name, error = %e, "undecodable replication frame")
                }
            }
        } else if topic == TOPIC_SERVERS.as_bytes() {
            match decode_announcement(payload) {
                Ok((a, meta)) => {
                    self.node.observe(meta.clock);
                    if a.coordinator != self.cfg.name {
                        self.fd.heard(t.mono, &a.coordinator);
                    }
                    if let Some(b) = self.bully.as_mut() {
                        b.handle_announcement(t.mono, a);
                    }
                    self.drain_bully(t, None);
                }
                Err(e) => debug!(error = %e, "undecodable announcement"),
            }
        }
    }
}
