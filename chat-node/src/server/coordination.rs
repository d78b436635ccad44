//! The reference (rank, live list), timers, the election and clock sync.

use super::*;

impl ServerCore {
    /// The reference's reply to our last request.
    pub fn handle_reference_reply(&mut self, t: Time, body: &[u8]) {
        self.dirty = true;
        let Some(reg) = self.registrar.as_mut() else {
            return;
        };
        let Some((event, clock)) = reg.handle_reply(body) else {
            return;
        };
        self.node.observe(clock);
        match event {
            RefEvent::Rank(r) => {
                if self.rank != Some(r) {
                    info!(server = %self.cfg.name, rank = r, "rank assigned");
                    self.pending_meta.push((META_RANK.into(), r.to_string()));
                    self.bully = None;
                    self.bully_started = false;
                    self.bully_start_by = None;
                }
                self.rank = Some(r);
                self.registered = true;
                if self.bully.is_none() {
                    match Bully::restore(
                        self.cfg.name.clone(),
                        r,
                        self.cfg.bully,
                        self.term_written,
                    ) {
                        Ok(b) => self.bully = Some(b),
                        Err(e) => warn!(error = %e, "this server cannot take part in elections"),
                    }
                }
            }
            RefEvent::Forgotten => {
                info!(server = %self.cfg.name, "the reference forgot us (restarted?); registering again");
                self.registered = false;
            }
            RefEvent::List(list) => self.set_peers(t, &list),
        }
    }

    /// Our request to the reference could not be sent.
    pub fn handle_reference_unsent(&mut self, t: Time) {
        if let Some(reg) = self.registrar.as_mut() {
            reg.unsent(t.mono);
        }
    }

    pub(super) fn set_peers(&mut self, t: Time, list: &[ServerInfo]) {
        let now = t.mono;
        let peers: Vec<(String, u64, String)> = list
            .iter()
            .filter(|s| s.name != self.cfg.name)
            .filter_map(|s| s.endpoint.clone().map(|e| (s.name.clone(), s.rank, e)))
            .collect();
        let still_alive = self.alive(now);
        let (changed, forgotten) = self.peers.update(&peers, &still_alive);
        for (peer, kind) in forgotten {
            // Its answer can no longer arrive: a catch-up in flight with it is over.
            if kind == Pending::Sync && self.sync_inflight.as_deref() == Some(peer.as_str()) {
                self.sync_inflight = None;
            }
        }
        if changed {
            let names = self.peers.names();
            info!(server = %self.cfg.name, peers = ?names, "peers");
            self.fd.set_peers(now, names.iter().map(String::as_str));
            self.repl.set_peers(names.iter().map(String::as_str));
            self.berkeley.set_peers(names.iter().map(String::as_str));
        }
        if !self.listed {
            self.listed = true;
            if peers.is_empty() && !self.caught_up {
                self.caught_up = true;
                info!(server = %self.cfg.name, "first server of the cluster: nothing to catch up");
            }
        }
        let ranked: Vec<(String, u64)> = self
            .peers
            .links()
            .map(|l| (l.name.clone(), l.rank))
            .collect();
        if let Some(b) = self.bully.as_mut() {
            b.set_peers(now, &ranked);
            if !self.bully_started && self.bully_start_by.is_none() {
                // Give the new links a moment to connect and answer, so the election
                // hears the peers that are alive instead of bullying them.
                self.bully_start_by = Some(now + self.cfg.detector.timeout);
            }
        }
        self.drain_bully(t, None);
    }

    /// Runs what is due at `t` (call at [`ServerCore::poll_timeout`], or more often).
    pub fn handle_timeout(&mut self, t: Time) {
        self.dirty = true;
        let now = t.mono;
        if let Some(reg) = self.registrar.as_mut() {
            let me = Identity {
                name: &self.cfg.name,
                rank: self.rank,
                registered: self.registered,
                endpoint: &self.peer_endpoint,
            };
            let clock = self.clock_offset_ms;
            let node = &mut self.node;
            let wall = t.wall_ms;
            if let Some(body) = reg.poll_send(now, &me, || {
                node.meta(Timestamp::from_millis(wall).offset(clock), None)
            }) {
                self.out.push_back(Transmit::Reference { body });
            }
        }
        for (peer, kind) in self.peers.expired(now) {
            match kind {
                Pending::Replicate { .. } => {}
                Pending::Sync => {
                    self.sync_inflight = None;
                    self.fd.missed_reply(now, &peer);
                }
                _ => self.fd.missed_reply(now, &peer),
            }
        }
        self.fd.handle_timeout(now);
        for peer in self.fd.due_heartbeats(now) {
            let req = Request::Heartbeat {
                user: Some(self.cfg.name.clone()),
                rank: None,
                endpoint: None,
            };
            self.send_peer(t, &peer, req, Pending::Ping);
        }
        while let Some(v) = self.fd.poll_verdict() {
            match v {
                Verdict::Down(p) => {
                    warn!(server = %self.cfg.name, peer = %p, "peer down");
                    self.repl.handle_peer_down(&p);
                    if let Some(b) = self.bully.as_mut() {
                        b.handle_peer_down(now, &p);
                    }
                }
                Verdict::Up(p) => {
                    info!(server = %self.cfg.name, peer = %p, "peer up");
                    if let Some(b) = self.bully.as_mut() {
                        b.handle_peer_up(now, &p);
                    }
                }
            }
        }
        let alive = self.alive(now);
        self.berkeley.set_peers(alive.iter().map(String::as_str));
        self.maybe_start_bully(now);
        if let Some(b) = self.bully.as_mut() {
            if b.poll_timeout().is_some_and(|at| at <= now) {
                b.handle_timeout(now);
            }
        }
        self.drain_bully(t, None);
        let local = self.clock_now(t).millis();
        self.berkeley.handle_timeout(now, local);
        self.drain_berkeley(t);
        self.cristian.handle_timeout(now);
        self.drain_cristian(t);
        // Catch-up / anti-entropy.
        if now >= self.next_sync {
            if self.sync_inflight.is_none() && !alive.is_empty() {
                self.sync_turn = (self.sync_turn + 1) % alive.len();
                let peer = alive[self.sync_turn].clone();
                self.next_sync = now + self.cfg.sync_interval;
                self.send_sync(t, &peer);
            } else {
                // Due but not possible now (one in flight, nobody alive): look again soon.
                self.next_sync = now + SYNC_RECHECK;
            }
        }
        if !self.caught_up && now.saturating_duration_since(self.started) >= ALONE_GRACE {
            self.grace_over = true;
            if alive.is_empty() {
                self.caught_up = true;
                info!(server = %self.cfg.name, "no live peer to catch up from; serving what we have");
            }
        }
        // The broker link.
        if self.broker.registered && now >= self.broker.next_heartbeat {
            self.out.push_back(Transmit::Broker(ToBroker::Heartbeat {
                capacity: self.cfg.capacity,
                stamp: self.stamp(now),
            }));
            self.broker.next_heartbeat = now + backend::HEARTBEAT_INTERVAL;
        }
        if self.broker.registered
            && now.saturating_duration_since(self.broker.last_heard) > backend::LIVENESS * 3
            && !self.broker.silent_logged
        {
            warn!(server = %self.cfg.name, "no heartbeat from the broker; still trying");
            self.broker.silent_logged = true;
        }
    }

    pub(super) fn maybe_start_bully(&mut self, now: Instant) {
        if self.bully_started {
            return;
        }
        let Some(by) = self.bully_start_by else {
            return;
        };
        let all_heard = self.peers.links().all(|l| self.heard.contains(&l.name));
        if all_heard || now >= by {
            if let Some(b) = self.bully.as_mut() {
                b.start(now);
                self.bully_started = true;
            }
        }
    }

    /// Runs the election's outputs; returns whether an `Ok` is owed to `answering`.
    pub(super) fn drain_bully(&mut self, t: Time, answering: Option<&str>) -> bool {
        let mut outputs = Vec::new();
        let mut term = 0;
        if let Some(b) = self.bully.as_mut() {
            while let Some(o) = b.poll_output() {
                outputs.push(o);
            }
            term = b.term();
        }
        if term > self.term_written {
            // Persist the greatest term seen before acting on it: election messages wait
            // for the batch that carries it.
            self.pending_meta.push((META_TERM.into(), term.to_string()));
            self.term_written = term;
        }
        let mut ok = false;
        for o in outputs {
            match o {
                BullyOutput::Send {
                    to,
                    msg: BullyMsg::Ok { .. },
                } => {
                    if answering == Some(to.as_str()) {
                        ok = true;
                    }
                }
                BullyOutput::Send { to, msg } => {
                    let kind = match msg {
                        BullyMsg::Election { .. } => Pending::Election,
                        _ => Pending::Coordinator,
                    };
                    if let Some(req) = msg.to_request() {
                        if let Some(tx) = self.peer_transmit(t, &to, req, kind) {
                            self.emit_election(tx);
                        }
                    }
                }
                BullyOutput::Announce(a) => {
                    info!(server = %self.cfg.name, term = a.term, rank = a.rank, "elected coordinator");
                    let meta = self.meta(t, None);
                    match encode_announcement(&a, &meta, self.cfg.encoding) {
                        Ok(payload) => self.emit_election(Transmit::Publish {
                            topic: TOPIC_SERVERS.to_string(),
                            payload,
                        }),
                        Err(e) => warn!(error = %e, "cannot encode an announcement"),
                    }
                }
                BullyOutput::CoordinatorChanged(c) => {
                    match &c {
                        Some(a) => {
                            info!(server = %self.cfg.name, coordinator = %a.coordinator, term = a.term, "coordinator")
                        }
                        None => info!(server = %self.cfg.name, "coordinator suspected; electing"),
                    }
                    match self.cfg.clock_sync {
                        ClockSync::Berkeley => {
                            let active = self.bully.as_ref().is_some_and(Bully::is_coordinator);
                            self.berkeley.set_active(t.mono, active);
                            self.drain_berkeley(t);
                        }
                        ClockSync::Cristian => {
                            // Follow the coordinator's clock (nothing to do as coordinator).
                            let followed = c.as_ref().map(|a| a.coordinator.as_str());
                            self.cristian.set_coordinator(t.mono, followed);
                            self.drain_cristian(t);
                        }
                    }
                }
            }
        }
        ok
    }

    /// An election message leaves only once the greatest term written is durable.
    pub(super) fn emit_election(&mut self, tx: Transmit) {
        if self.term_durable >= self.term_written && self.election_out.is_empty() {
            self.out.push_back(tx);
        } else {
            self.election_out.push_back((self.term_written, tx));
        }
    }

    pub(super) fn drain_berkeley(&mut self, t: Time) {
        while let Some(o) = self.berkeley.poll_output() {
            match o {
                BerkeleyOutput::RequestTime { to, round } => {
                    self.send_peer(t, &to, Request::Clock, Pending::Clock { round });
                }
                BerkeleyOutput::Adjust { to, offset_ms } => {
                    if to == self.cfg.name {
                        self.adjust_clock(offset_ms);
                    } else {
                        self.send_peer(t, &to, Request::Adjust { offset_ms }, Pending::Adjust);
                    }
                }
                BerkeleyOutput::RoundFinished {
                    round,
                    average_offset_ms,
                    discarded,
                    missing,
                } => {
                    debug!(server = %self.cfg.name, round, average_offset_ms, ?discarded, ?missing, "clock sync round");
                    for m in missing {
                        self.fd.missed_reply(t.mono, &m);
                    }
                }
            }
        }
    }

    pub(super) fn drain_cristian(&mut self, t: Time) {
        while let Some(o) = self.cristian.poll_output() {
            match o {
                CristianOutput::RequestTime { to, sample } => {
                    // Unsent (the coordinator is not a listed peer yet): the sample times
                    // out in the machine and the round goes on without it.
                    self.send_peer(t, &to, Request::Clock, Pending::TimeSample { sample });
                }
                CristianOutput::Adjust { offset_ms } => self.adjust_clock(offset_ms),
                CristianOutput::RoundFinished {
                    round,
                    coordinator,
                    offset_ms,
                    error_bound_ms,
                    samples,
                    discarded,
                    missing,
                } => {
                    debug!(server = %self.cfg.name, round, %coordinator, ?offset_ms, ?error_bound_ms, samples, discarded, missing, "clock sync round (cristian)");
                }
            }
        }
    }

    pub(super) fn adjust_clock(&mut self, offset_ms: i64) {
        // Bound one adjustment to a day: a bigger one is a bug or an attack, not drift.
        let offset_ms = offset_ms.clamp(-86_400_000, 86_400_000);
        self.clock_offset_ms = self.clock_offset_ms.saturating_add(offset_ms);
        debug!(server = %self.cfg.name, offset_ms, total = self.clock_offset_ms, "clock adjusted");
    }
}
