//! Simulated clients, written like the SDK: one request at a time, a request id on every
//! write kept across retries, and Lazy Pirate retries (on silence, a new socket — a new
//! identity at the broker — and the same bytes again).

use std::time::Duration;

use chat_core::protocol::{decode_reply, encode_request};
use chat_core::{
    Encoding, HistoryTarget, LamportClock, Meta, Reply, Request, RequestEnvelope, Timestamp,
};
use rand::rngs::StdRng;
use rand::Rng;

/// How long a client waits for a reply before retrying on a new socket.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Tries per request, the first included.
pub const ATTEMPTS: u32 = 4;
/// Channels the clients post to (created on the way; `already_exists` is fine).
pub const CHANNELS: [&str; 3] = ["geral", "tech", "random"];

/// A write the cluster acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Its request id.
    pub rid: String,
    /// What it wrote.
    pub write: Write,
    /// When the request was first sent (virtual time).
    pub started: Duration,
}

/// A write, as the checkers look for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A login of `user`.
    Login(String),
    /// The creation of a channel.
    Channel(String),
    /// A post (texts are unique in a run).
    Publish {
        /// Channel.
        channel: String,
        /// Text.
        text: String,
    },
    /// A private message (texts are unique in a run).
    Message {
        /// Recipient.
        dst: String,
        /// Text.
        text: String,
    },
}

/// What a finished request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A write acknowledged.
    Acked(Acked),
    /// Any other answer.
    Answered,
    /// No answer after every attempt (started at the given time).
    GaveUp {
        /// When the request was first sent.
        started: Duration,
    },
}

#[derive(Debug)]
struct Waiting {
    write: Option<(String, Write)>,
    bytes: Vec<u8>,
    attempts: u32,
    deadline: Duration,
    started: Duration,
}

/// One client.
#[derive(Debug)]
pub struct SimClient {
    id: usize,
    user: String,
    gen: u32,
    clock: LamportClock,
    next_at: Duration,
    waiting: Option<Waiting>,
    logged_in: bool,
    written: u64,
    stop_at: Duration,
}

impl SimClient {
    /// Client `id` (user `u{id}`), starting at `start`, issuing nothing new after `stop_at`.
    pub fn new(id: usize, start: Duration, stop_at: Duration) -> Self {
        SimClient {
            id,
            user: format!("u{id}"),
            gen: 0,
            clock: LamportClock::new(),
            next_at: start,
            waiting: None,
            logged_in: false,
            written: 0,
            stop_at,
        }
    }

    /// The socket generation replies must be addressed to.
    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// When the client wants [`SimClient::on_timer`] next.
    pub fn due(&self) -> Option<Duration> {
        match &self.waiting {
            Some(w) => Some(w.deadline),
            None => (self.next_at < self.stop_at).then_some(self.next_at),
        }
    }

    /// Whether the client waits for nothing and will issue nothing more.
    pub fn finished(&self, now: Duration) -> bool {
        self.waiting.is_none() && now >= self.stop_at
    }

    /// Time passed: returns a request to send (on socket [`SimClient::gen`]), and a
    /// request given up, if any.
    pub fn on_timer(
        &mut self,
        now: Duration,
        wall_ms: i64,
        rng: &mut StdRng,
        clients: usize,
    ) -> (Option<Vec<u8>>, Option<Done>) {
        if let Some(w) = self.waiting.as_mut() {
            if now < w.deadline {
                return (None, None);
            }
            if w.attempts < ATTEMPTS {
                // Lazy Pirate: the REQ socket is stuck; a new one, the same bytes.
                w.attempts += 1;
                w.deadline = now + REPLY_TIMEOUT;
                self.gen += 1;
                return (Some(w.bytes.clone()), None);
            }
            let started = w.started;
            self.waiting = None;
            self.next_at = now + think(rng);
            return (None, Some(Done::GaveUp { started }));
        }
        if now < self.next_at || now >= self.stop_at {
            return (None, None);
        }
        let (request, write) = self.next_request(rng, clients);
        let rid = write
            .as_ref()
            .map(|_| format!("c{}-r{}", self.id, self.written));
        let env = RequestEnvelope {
            request,
            meta: Meta {
                clock: self.clock.tick(),
                timestamp: Some(Timestamp::from_millis(wall_ms)),
                id: rid.clone(),
            },
        };
        let Ok(bytes) = encode_request(&env, Encoding::MsgPack) else {
            return (None, None);
        };
        self.waiting = Some(Waiting {
            write: rid.zip(write),
            bytes: bytes.clone(),
            attempts: 1,
            deadline: now + REPLY_TIMEOUT,
            started: now,
        });
        self.gen += 1;
        (Some(bytes), None)
    }

    fn next_request(&mut self, rng: &mut StdRng, clients: usize) -> (Request, Option<Write>) {
        if !self.logged_in {
            let user = self.user.clone();
            self.written += 1;
            return (
                Request::Login { user: user.clone() },
                Some(Write::Login(user)),
            );
        }
        let roll = rng.gen_range(0..100);
        let channel = CHANNELS[rng.gen_range(0..CHANNELS.len())].to_string();
        if roll < 8 {
            self.written += 1;
            return (
                Request::Channel {
                    channel: channel.clone(),
                },
                Some(Write::Channel(channel)),
            );
        }
        if roll < 70 {
            self.written += 1;
            let text = format!("c{}-m{}", self.id, self.written);
            return (
                Request::Publish {
                    user: self.user.clone(),
                    channel: channel.clone(),
                    message: text.clone(),
                },
                Some(Write::Publish { channel, text }),
            );
        }
        if roll < 85 {
            self.written += 1;
            let dst = format!("u{}", rng.gen_range(0..clients.max(1)));
            let text = format!("c{}-m{}", self.id, self.written);
            return (
                Request::Message {
                    src: self.user.clone(),
                    dst: dst.clone(),
                    message: text.clone(),
                },
                Some(Write::Message { dst, text }),
            );
        }
        let read = match roll {
            85..=89 => Request::Users,
            90..=94 => Request::Channels,
            _ => Request::History {
                target: HistoryTarget::Channel(channel),
                before: None,
                limit: 20,
            },
        };
        (read, None)
    }

    /// A reply arrived on socket `gen`; returns what the request came to, if it was the
    /// one awaited.
    pub fn on_reply(
        &mut self,
        now: Duration,
        rng: &mut StdRng,
        gen: u32,
        body: &[u8],
    ) -> Option<Done> {
        if gen != self.gen {
            return None; // a socket given up on: ZeroMQ would have closed it
        }
        let w = self.waiting.take()?;
        self.next_at = now + think(rng);
        let Ok((env, _)) = decode_reply(body) else {
            return Some(Done::Answered);
        };
        self.clock.observe(env.meta.clock);
        match (env.reply, w.write) {
            (Reply::Done, Some((rid, write))) => {
                if matches!(write, Write::Login(_)) {
                    self.logged_in = true;
                }
                Some(Done::Acked(Acked {
                    rid,
                    write,
                    started: w.started,
                }))
            }
            _ => Some(Done::Answered),
        }
    }
}

fn think(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.gen_range(5..120))
}
