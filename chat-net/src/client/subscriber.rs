//! [`Subscriber`]: live subscriptions read on the caller's thread, with exactly-once,
//! gap-free delivery (the [`Delivery`] core) and history repairs on a REQ socket of its own.

use super::*;

pub(super) fn start_subscriber(
    ctx: &zmq::Context,
    cfg: &ClientConfig,
    tx: Sender<ClientEvent>,
    clock: Arc<Mutex<LamportClock>>,
) -> Result<SubHandle, ClientError> {
    let addr = format!("inproc://chat-client-sub-{:x}", rand::random::<u64>());
    let control = sockets::socket(ctx, zmq::PAIR, sockets::REQUEST_HWM)?;
    control.bind(&addr)?;
    let sub = Subscriber::on(ctx, cfg, clock)?;
    let stats = sub.stats.clone();
    let baselines = sub.baselines.clone();
    let peer = sockets::socket(ctx, zmq::PAIR, sockets::REQUEST_HWM)?;
    peer.connect(&addr)?;
    let thread = std::thread::Builder::new()
        .name("chat-client-sub".into())
        .spawn(move || subscriber_loop(sub, peer, tx))
        .map_err(|e| ClientError::Protocol(format!("cannot start subscriber thread: {e}")))?;
    Ok(SubHandle {
        control: Mutex::new(control),
        thread: Some(thread),
        stats,
        baselines,
    })
}

/// The [`Client`]'s subscriber thread: topic changes from `control`, events to `tx`.
fn subscriber_loop(mut sub: Subscriber, control: zmq::Socket, tx: Sender<ClientEvent>) {
    loop {
        let from_client = match sub.step(Some(&control), Duration::from_secs(1)) {
            Ok(readable) => readable,
            Err(_) => return,
        };
        while let Some(event) = sub.ready.pop_front() {
            let _ = tx.try_send(event);
        }
        if from_client {
            let Ok(msg) = control.recv_bytes(0) else {
                return;
            };
            let topic = match msg.split_first() {
                Some((op, topic)) => (*op, String::from_utf8_lossy(topic).into_owned()),
                None => return,
            };
            let done = match topic {
                (b'+', t) => sub.subscribe(&t),
                (b'-', t) => sub.unsubscribe(&t),
                _ => return,
            };
            if done.is_err() || control.send(&b"ok"[..], 0).is_err() {
                return;
            }
        }
    }
}

/// Live subscriptions read on the caller's thread: no background thread, no channel.
/// (A [`Client`]'s subscriber thread is one of these, feeding its event channel.)
pub struct Subscriber {
    socket: zmq::Socket,
    topics: HashSet<Vec<u8>>,
    clock: Arc<Mutex<LamportClock>>,
    delivery: Delivery,
    /// Events ready for the caller, in order.
    ready: VecDeque<ClientEvent>,
    stats: Arc<Mutex<DeliveryStats>>,
    /// When each topic's baseline answered (shared with a [`Client`]'s callers).
    baselines: Arc<Baselines>,
    /// History reads and the SUB socket's monitor, when repair is on.
    repair: Option<Repair>,
    // Declared last: the sockets close before their context.
    _ctx: zmq::Context,
}

/// What a repairing subscriber needs besides its SUB socket.
struct Repair {
    fetcher: Fetcher,
    /// Receives the SUB socket's connection events (ZeroMQ socket monitor).
    monitor: zmq::Socket,
    /// The SUB socket was connected once: the next connection is a reconnection.
    connected_once: bool,
}

impl Subscriber {
    /// Connects to the proxy's XPUB endpoint (lazily, as ZeroMQ does; nothing blocks).
    /// Repeats are dropped; gaps are not repaired (there is no broker to read history
    /// from): see [`Subscriber::connect_with_repair`].
    pub fn connect(endpoint: &str) -> Result<Subscriber, ClientError> {
        let cfg = ClientConfig {
            sub: endpoint.to_string(),
            delivery: DeliveryConfig::dedup_only(),
            ..ClientConfig::default()
        };
        Self::on(
            &zmq::Context::new(),
            &cfg,
            Arc::new(Mutex::new(LamportClock::new())),
        )
    }

    /// Connects to the proxy's XPUB endpoint `sub`, and repairs what pub/sub loses with
    /// `history` reads through the broker frontend `broker` (exactly-once, gap-free).
    pub fn connect_with_repair(sub: &str, broker: &str) -> Result<Subscriber, ClientError> {
        Self::with_config(&ClientConfig {
            sub: sub.to_string(),
            broker: broker.to_string(),
            ..ClientConfig::default()
        })
    }

    /// A subscriber for `cfg`: `cfg.sub`, and with `cfg.delivery.repair`, history reads
    /// through `cfg.broker` (with `cfg.timeout`, `cfg.attempts` and `cfg.encoding`).
    pub fn with_config(cfg: &ClientConfig) -> Result<Subscriber, ClientError> {
        Self::on(
            &zmq::Context::new(),
            cfg,
            Arc::new(Mutex::new(LamportClock::new())),
        )
    }

    /// A subscriber in `ctx` whose events advance `clock`.
    fn on(
        ctx: &zmq::Context,
        cfg: &ClientConfig,
        clock: Arc<Mutex<LamportClock>>,
    ) -> Result<Subscriber, ClientError> {
        let socket = sockets::socket(ctx, zmq::SUB, sockets::PUB_HWM)?;
        socket.set_maxmsgsize(sockets::MAX_MSG_SIZE)?;
        let repair = if cfg.delivery.repair {
            // Watch the connection to the proxy: what was published while it was down is
            // lost, and a reconnection asks for a history check.
            let addr = format!("inproc://chat-sub-monitor-{:x}", rand::random::<u64>());
            let events =
                zmq::SocketEvent::CONNECTED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
            socket.monitor(&addr, i32::from(events))?;
            let monitor = sockets::socket(ctx, zmq::PAIR, sockets::REQUEST_HWM)?;
            monitor.connect(&addr)?;
            Some(Repair {
                fetcher: Fetcher::new(ctx, cfg),
                monitor,
                connected_once: false,
            })
        } else {
            None
        };
        socket.connect(&cfg.sub)?;
        Ok(Subscriber {
            socket,
            topics: HashSet::new(),
            clock,
            delivery: Delivery::new(cfg.delivery.clone()),
            ready: VecDeque::new(),
            stats: Arc::new(Mutex::new(DeliveryStats::default())),
            baselines: Arc::new(Baselines::default()),
            repair,
            _ctx: ctx.clone(),
        })
    }

    /// Receives `topic` (a channel, a user name, or `servers`), matched exactly.
    pub fn subscribe(&mut self, topic: &str) -> Result<(), ClientError> {
        if self.topics.insert(topic.as_bytes().to_vec()) {
            self.socket.set_subscribe(topic.as_bytes())?;
            self.delivery.subscribe(Instant::now(), topic);
        }
        Ok(())
    }

    /// Stops receiving `topic`.
    pub fn unsubscribe(&mut self, topic: &str) -> Result<(), ClientError> {
        if self.topics.remove(topic.as_bytes()) {
            self.socket.set_unsubscribe(topic.as_bytes())?;
            self.delivery.unsubscribe(topic);
            self.baselines.at.lock().remove(topic);
        }
        Ok(())
    }

    /// When `topic`'s baseline read answered, if it did: from then on, every post or private
    /// message whose request is sent later is delivered exactly once (one sent before may or
    /// may not be, never twice). `None` before, and without repair.
    pub fn baselined_at(&self, topic: &str) -> Option<Instant> {
        self.delivery.baselined_at(topic)
    }

    /// Reads (up to `timeout`) until `topic`'s baseline read answered; returns when it did,
    /// `None` if it did not in time (or there is no repair). Events that arrive meanwhile are
    /// kept for [`Subscriber::recv`].
    pub fn wait_for_baseline(
        &mut self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<Instant>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.delivery.baselined_at(topic) {
                return Ok(Some(at));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.repair.is_none() {
                return Ok(None);
            }
            // `step` does not wait while events are ready: set them aside meanwhile.
            let mut kept = std::mem::take(&mut self.ready);
            let stepped = self.step(None, left);
            kept.append(&mut self.ready);
            self.ready = kept;
            stepped?;
        }
    }

    /// The Lamport clock advanced by every event received.
    pub fn clock(&self) -> u64 {
        self.clock.lock().value()
    }

    /// What live delivery did so far: deliveries, repeats dropped, gaps repaired.
    pub fn delivery_stats(&self) -> DeliveryStats {
        self.delivery.stats()
    }

    /// Whether every subscribed topic has read its history baseline and no noticed gap
    /// waits for its repair (lost tails are found by the periodic check only).
    pub fn is_settled(&self) -> bool {
        self.delivery.is_settled()
    }

    /// The next event on a subscribed topic, waiting up to `timeout`; `None` if none came.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<ClientEvent>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.step(None, left)?;
            if left.is_zero() {
                return Ok(self.ready.pop_front());
            }
        }
    }

    /// One turn: waits up to `timeout` (less when something is due) for the SUB socket,
    /// the history reads, the monitor, or `extra`; handles what came; returns whether
    /// `extra` is readable (the caller reads it). Events go to `self.ready`.
    fn step(
        &mut self,
        extra: Option<&zmq::Socket>,
        timeout: Duration,
    ) -> Result<bool, ClientError> {
        self.service(Instant::now());
        let now = Instant::now();
        let mut wait = if self.ready.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        let due = [
            self.delivery.poll_timeout(),
            self.repair.as_ref().and_then(|r| r.fetcher.deadline()),
        ];
        for at in due.into_iter().flatten() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        let (sub, ext, mon, req) = {
            let mut items = vec![self.socket.as_poll_item(zmq::POLLIN)];
            let ext = extra.map(|e| {
                items.push(e.as_poll_item(zmq::POLLIN));
                items.len() - 1
            });
            let (mon, req) = match &self.repair {
                Some(r) => {
                    items.push(r.monitor.as_poll_item(zmq::POLLIN));
                    let mon = Some(items.len() - 1);
                    let req = r.fetcher.socket().map(|s| {
                        items.push(s.as_poll_item(zmq::POLLIN));
                        items.len() - 1
                    });
                    (mon, req)
                }
                None => (None, None),
            };
            // Round up so a sub-millisecond remainder still waits instead of spinning.
            let ms = if wait.is_zero() {
                0
            } else {
                i64::try_from(wait.as_millis() + 1).unwrap_or(i64::MAX)
            };
            match zmq::poll(&mut items, ms) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let readable = |i: Option<usize>| i.is_some_and(|i| items[i].is_readable());
            (
                readable(Some(0)),
                readable(ext),
                readable(mon),
                readable(req),
            )
        };
        if mon {
            self.read_monitor();
        }
        if req {
            self.read_history();
        }
        if sub {
            self.read_sub()?;
        }
        self.service(Instant::now());
        Ok(ext)
    }

    /// Timers and history reads: what is due now, and the next read to send.
    fn service(&mut self, now: Instant) {
        self.delivery.handle_timeout(now);
        if let Some(r) = self.repair.as_mut() {
            if let Some((id, result)) = r.fetcher.handle_timeout(now) {
                self.delivery.handle_history(now, id, result);
                note_baselines(&self.delivery, &self.topics, &self.baselines);
            }
            if r.fetcher.is_idle() {
                if let Some(fetch) = self.delivery.poll_fetch(now) {
                    if let Err(result) = r.fetcher.send(now, &fetch, &self.clock) {
                        self.delivery.handle_history(now, fetch.id, Err(result));
                        note_baselines(&self.delivery, &self.topics, &self.baselines);
                    }
                }
            }
        }
        self.pump();
    }

    /// Publishes the baselines that answered (for a [`Client`]'s waiting callers).
    fn note_baselines(&self) {
        note_baselines(&self.delivery, &self.topics, &self.baselines);
    }

    /// Moves what delivery released into `ready`.
    fn pump(&mut self) {
        while let Some(p) = self.delivery.poll_delivery() {
            self.clock.lock().observe(p.clock());
            self.ready.push_back(match p {
                Publication::Channel(p) => ClientEvent::Post(p),
                Publication::Direct(p) => ClientEvent::Direct(p),
            });
        }
        *self.stats.lock() = self.delivery.stats();
    }

    /// Reads what the proxy sent (at most [`DRAIN_MAX`] frames, so a flood cannot hold the
    /// caller here).
    fn read_sub(&mut self) -> Result<(), ClientError> {
        for _ in 0..DRAIN_MAX {
            let parts = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(parts) => parts,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(topic) = parts.first() else { continue };
            if !self.topics.contains(topic) {
                continue; // prefix match of another topic: not ours
            }
            let payload = parts.get(1).map(Vec::as_slice).unwrap_or(&[]);
            match decode_frame(topic, payload, &self.clock) {
                Frame::Publication(topic, p) => {
                    self.delivery.handle_publication(Instant::now(), &topic, p);
                    self.pump();
                }
                Frame::Event(event) => self.ready.push_back(event),
            }
        }
        Ok(())
    }

    /// Connection events of the SUB socket: a connection after the first is a
    /// reconnection (what was published meanwhile is lost).
    fn read_monitor(&mut self) {
        let Some(r) = self.repair.as_mut() else {
            return;
        };
        while let Ok(frames) = r.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = frames
                .first()
                .and_then(|f| f.get(..2))
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            else {
                continue;
            };
            if event == zmq::SocketEvent::CONNECTED.to_raw() {
                if r.connected_once {
                    self.delivery.handle_reconnect(Instant::now());
                }
                r.connected_once = true;
            }
        }
    }

    /// The answer to the history read in flight.
    fn read_history(&mut self) {
        let Some(r) = self.repair.as_mut() else {
            return;
        };
        if let Some((id, result)) = r.fetcher.read(&self.clock) {
            self.delivery.handle_history(Instant::now(), id, result);
            self.note_baselines();
            self.pump();
        }
    }
}

/// Publishes the baselines of `topics` that answered (for a [`Client`]'s waiting callers).
fn note_baselines(delivery: &Delivery, topics: &HashSet<Vec<u8>>, baselines: &Baselines) {
    let mut at = baselines.at.lock();
    let mut changed = false;
    for t in topics {
        let Ok(topic) = std::str::from_utf8(t) else {
            continue;
        };
        if at.contains_key(topic) {
            continue;
        }
        if let Some(when) = delivery.baselined_at(topic) {
            at.insert(topic.to_string(), when);
            changed = true;
        }
    }
    if changed {
        baselines.changed.notify_all();
    }
}

/// Most frames [`Subscriber`] reads in one go.
const DRAIN_MAX: usize = 1024;

/// A frame on a subscribed topic, decoded.
enum Frame {
    /// A post or private message (it goes through live delivery).
    Publication(String, Publication),
    /// Anything else: an announcement, or something that could not be read.
    Event(ClientEvent),
}

fn decode_frame(topic: &[u8], payload: &[u8], clock: &Mutex<LamportClock>) -> Frame {
    let Ok(topic) = std::str::from_utf8(topic) else {
        return Frame::Event(ClientEvent::Malformed {
            topic: String::from_utf8_lossy(topic).into_owned(),
            error: "topic is not UTF-8".into(),
        });
    };
    if topic == TOPIC_SERVERS {
        return match decode_announcement(payload) {
            Ok((a, meta)) => {
                clock.lock().observe(meta.clock);
                Frame::Event(ClientEvent::Coordinator(a))
            }
            Err(e) => Frame::Event(ClientEvent::Malformed {
                topic: topic.to_string(),
                error: e.to_string(),
            }),
        };
    }
    match decode_publication(topic, payload) {
        // The clock is observed when the publication is delivered.
        Ok(p) => Frame::Publication(topic.to_string(), p),
        Err(e) => Frame::Event(ClientEvent::Malformed {
            topic: topic.to_string(),
            error: e.to_string(),
        }),
    }
}

/// `history` reads through the broker on a REQ socket of their own, without blocking
/// (Lazy Pirate: on silence, close, reopen, send again; give up after `attempts`).
struct Fetcher {
    ctx: zmq::Context,
    broker: String,
    timeout: Duration,
    attempts: u32,
    encoding: Encoding,
    socket: Option<zmq::Socket>,
    inflight: Option<InFlight>,
}

struct InFlight {
    id: u64,
    bytes: Vec<u8>,
    deadline: Instant,
    tries: u32,
}

impl Fetcher {
    fn new(ctx: &zmq::Context, cfg: &ClientConfig) -> Fetcher {
        Fetcher {
            ctx: ctx.clone(),
            broker: cfg.broker.clone(),
            timeout: cfg.timeout,
            attempts: cfg.attempts.max(1),
            encoding: cfg.encoding,
            socket: None,
            inflight: None,
        }
    }

    fn is_idle(&self) -> bool {
        self.inflight.is_none()
    }

    /// The socket to wait on while a read is in flight.
    fn socket(&self) -> Option<&zmq::Socket> {
        self.inflight.as_ref().and(self.socket.as_ref())
    }

    fn deadline(&self) -> Option<Instant> {
        self.inflight.as_ref().map(|f| f.deadline)
    }

    /// Sends `fetch`; on failure, the error code to answer it with.
    fn send(
        &mut self,
        now: Instant,
        fetch: &Fetch,
        clock: &Mutex<LamportClock>,
    ) -> Result<(), ErrorCode> {
        let env = RequestEnvelope {
            request: Request::History {
                target: fetch.target.clone(),
                before: fetch.before.clone(),
                limit: fetch.limit,
            },
            meta: Meta {
                clock: clock.lock().tick(),
                timestamp: Some(crate::wall_clock()),
                id: None,
            },
        };
        let bytes = encode_request(&env, self.encoding).map_err(|_| ErrorCode::BadRequest)?;
        self.inflight = Some(InFlight {
            id: fetch.id,
            bytes,
            deadline: now,
            tries: 0,
        });
        self.transmit(now)
    }

    /// (Re)sends the read in flight on a working socket.
    fn transmit(&mut self, now: Instant) -> Result<(), ErrorCode> {
        let Some(f) = self.inflight.as_mut() else {
            return Ok(());
        };
        f.tries += 1;
        f.deadline = now + self.timeout;
        let sent = (|| -> zmq::Result<()> {
            if self.socket.is_none() {
                let s = sockets::socket(&self.ctx, zmq::REQ, sockets::REQUEST_HWM)?;
                s.connect(&self.broker)?;
                self.socket = Some(s);
            }
            match &self.socket {
                Some(s) => s.send(&f.bytes[..], zmq::DONTWAIT),
                None => Err(zmq::Error::EFAULT),
            }
        })();
        if sent.is_err() {
            self.socket = None;
            self.inflight = None;
            return Err(ErrorCode::Unavailable);
        }
        Ok(())
    }

    /// A read that got no answer in time: send it again on a new socket, or give up.
    fn handle_timeout(&mut self, now: Instant) -> Option<(u64, Result<HistoryPage, ErrorCode>)> {
        let f = self.inflight.as_ref()?;
        if now < f.deadline {
            return None;
        }
        let id = f.id;
        // This REQ socket waits for a reply that may never come: replace it.
        self.socket = None;
        if f.tries >= self.attempts {
            self.inflight = None;
            return Some((id, Err(ErrorCode::Timeout)));
        }
        match self.transmit(now) {
            Ok(()) => None,
            Err(code) => Some((id, Err(code))),
        }
    }

    /// Reads the reply to the read in flight, if it is there.
    fn read(
        &mut self,
        clock: &Mutex<LamportClock>,
    ) -> Option<(u64, Result<HistoryPage, ErrorCode>)> {
        let socket = self.socket.as_ref()?;
        let reply = match socket.recv_bytes(zmq::DONTWAIT) {
            Ok(r) => r,
            Err(zmq::Error::EAGAIN) => return None,
            Err(_) => {
                self.socket = None;
                let f = self.inflight.take()?;
                return Some((f.id, Err(ErrorCode::Unavailable)));
            }
        };
        let f = self.inflight.take()?;
        let result = match decode_reply(&reply) {
            Ok((env, _)) => {
                clock.lock().observe(env.meta.clock);
                match env.reply {
                    Reply::History(page) => Ok(page),
                    Reply::Error(e) => Err(e.code),
                    _ => Err(ErrorCode::BadRequest),
                }
            }
            Err(_) => Err(ErrorCode::BadRequest),
        };
        Some((f.id, result))
    }
}
