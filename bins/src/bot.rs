//! The seed bot `chat-bot`: logs in as `bot_XXXXX`, then in rounds picks a channel at random
//! (creating `geral` when there is none), sends messages drawn from the seed's ten
//! Portuguese sentences, and sleeps; it also subscribes to the chosen channel and counts
//! the posts it receives.
//!
//! Cluster errors (timeout, unavailable...) are logged and the bot carries on after a pause.
//! Requests run on a worker thread so that a raised [`Shutdown`] stops the bot within about
//! 100 ms even while a request is waiting for its reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chat_core::validate::validate_name;
use chat_core::{Encoding, ErrorCode, NameKind};
use chat_net::client::{Client, ClientConfig, ClientError, ClientEvent};
use chat_net::Shutdown;
use clap::builder::FalseyValueParser;
use clap::Parser;
use crossbeam_channel::{RecvTimeoutError, Sender};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The seed bot's ten messages.
pub const BOT_MESSAGES: [&str; 10] = [
    "Olá, sou um bot!",
    "Mensagem automática",
    "Testando o sistema",
    "Bot em ação",
    "Mensagem de teste",
    "Sistema funcionando",
    "Publicação automática",
    "Bot ativo",
    "Teste de carga",
    "Mensagem gerada automaticamente",
];

/// Channel created when the cluster has none.
pub const DEFAULT_BOT_CHANNEL: &str = "geral";

/// Longest single wait, so a raised shutdown is noticed quickly.
const STEP: Duration = Duration::from_millis(50);

/// What a bot does and where it connects.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// Broker frontend endpoint.
    pub broker: String,
    /// Proxy XPUB endpoint.
    pub sub: String,
    /// Login name; `bot_XXXXX` (5 random digits) when `None`.
    pub name: Option<String>,
    /// Messages sent per round.
    pub messages: u32,
    /// Pause between rounds.
    pub interval: Duration,
    /// Rounds to run; 0 runs until shutdown.
    pub iterations: u64,
    /// Always use this channel (created if missing) instead of a random one.
    pub channel: Option<String>,
    /// Channel created when the cluster has none.
    pub default_channel: String,
    /// Pause after a cluster error before trying again.
    pub error_pause: Duration,
    /// Wait for one reply before the SDK retries.
    pub timeout: Duration,
    /// Sends per request (first try included).
    pub attempts: u32,
    /// Encoding of requests.
    pub encoding: Encoding,
    /// Seed of the random choices (name, channel, messages); random when `None`.
    pub seed: Option<u64>,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            broker: chat_core::DEFAULT_BROKER_FRONTEND.to_string(),
            sub: chat_core::DEFAULT_PROXY_XPUB.to_string(),
            name: None,
            messages: 10,
            interval: Duration::from_millis(2000),
            iterations: 0,
            channel: None,
            default_channel: DEFAULT_BOT_CHANNEL.to_string(),
            error_pause: Duration::from_millis(1000),
            timeout: Duration::from_millis(3000),
            attempts: 3,
            encoding: Encoding::MsgPack,
            seed: None,
        }
    }
}

/// What a bot did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BotStats {
    /// Rounds started.
    pub rounds: u64,
    /// Messages the cluster accepted.
    pub sent: u64,
    /// Messages the cluster refused or did not answer.
    pub failed: u64,
    /// Posts received on the subscribed channel (the bot's own included).
    pub received: u64,
    /// Cluster errors of any request (login, channels, create, publish).
    pub errors: u64,
}

const EXAMPLES: &str = "\
Examples:
  chat-bot                                   seed behaviour: bot_XXXXX, 10 messages every 2 s, forever
  chat-bot --name bot_demo --iterations 3    three rounds, then exit
  chat-bot --channel geral --messages 50 --interval-ms 100
  CHAT_BROKER=tcp://10.0.0.5:5555 CHAT_SUB=tcp://10.0.0.5:5558 chat-bot

Environment: CHAT_BROKER, CHAT_SUB, CHAT_BOT_NAME, CHAT_BOT_MESSAGES, CHAT_BOT_INTERVAL_MS,
CHAT_BOT_ITERATIONS, CHAT_BOT_CHANNEL, CHAT_TIMEOUT_MS, CHAT_JSON, RUST_LOG.";

/// Command-line flags of `chat-bot`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-bot",
    version,
    about = "Seed bot: logs in as bot_XXXXX and posts messages to a random channel in rounds",
    after_help = EXAMPLES
)]
pub struct BotArgs {
    /// Broker frontend endpoint (requests go here).
    #[arg(long, env = "CHAT_BROKER", default_value = chat_core::DEFAULT_BROKER_FRONTEND)]
    pub broker: String,
    /// Proxy XPUB endpoint (publications come from here).
    #[arg(long, env = "CHAT_SUB", default_value = chat_core::DEFAULT_PROXY_XPUB)]
    pub sub: String,
    /// Login name (default: bot_ and 5 random digits).
    #[arg(long, env = "CHAT_BOT_NAME")]
    pub name: Option<String>,
    /// Messages per round.
    #[arg(long, env = "CHAT_BOT_MESSAGES", default_value_t = 10)]
    pub messages: u32,
    /// Pause between rounds, in milliseconds.
    #[arg(
        long = "interval-ms",
        env = "CHAT_BOT_INTERVAL_MS",
        default_value_t = 2000
    )]
    pub interval_ms: u64,
    /// Rounds to run (0 = until Ctrl-C).
    #[arg(long, env = "CHAT_BOT_ITERATIONS", default_value_t = 0)]
    pub iterations: u64,
    /// Always post to this channel (created if missing) instead of a random one.
    #[arg(long, env = "CHAT_BOT_CHANNEL")]
    pub channel: Option<String>,
    /// Channel created when the cluster has none.
    #[arg(long, default_value = DEFAULT_BOT_CHANNEL)]
    pub default_channel: String,
    /// Pause after a cluster error before trying again, in milliseconds.
    #[arg(long = "error-pause-ms", default_value_t = 1000)]
    pub error_pause_ms: u64,
    /// How long to wait for each reply before retrying, in milliseconds.
    #[arg(long = "timeout-ms", env = "CHAT_TIMEOUT_MS", default_value_t = 3000)]
    pub timeout_ms: u64,
    /// How many times a request is sent before giving up (first try included).
    #[arg(long, env = "CHAT_ATTEMPTS", default_value_t = 3)]
    pub attempts: u32,
    /// Encode requests as JSON instead of MessagePack.
    #[arg(long, env = "CHAT_JSON", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub json: bool,
    /// Seed of the random choices, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl BotArgs {
    /// The bot configuration these flags describe.
    pub fn config(&self) -> BotConfig {
        BotConfig {
            broker: self.broker.clone(),
            sub: self.sub.clone(),
            name: self.name.clone(),
            messages: self.messages,
            interval: Duration::from_millis(self.interval_ms),
            iterations: self.iterations,
            channel: self.channel.clone(),
            default_channel: self.default_channel.clone(),
            error_pause: Duration::from_millis(self.error_pause_ms),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            attempts: self.attempts.max(1),
            encoding: if self.json {
                Encoding::Json
            } else {
                Encoding::MsgPack
            },
            seed: self.seed,
        }
    }
}

/// A seed-style bot name: `bot_` and 5 random digits.
pub fn random_bot_name<R: Rng + ?Sized>(rng: &mut R) -> String {
    format!("bot_{:05}", rng.gen_range(0..100_000u32))
}

/// One of [`BOT_MESSAGES`], at random.
pub fn pick_message<R: Rng + ?Sized>(rng: &mut R) -> &'static str {
    BOT_MESSAGES[rng.gen_range(0..BOT_MESSAGES.len())]
}

/// One of `channels` at random (`None` when there are none).
pub fn pick_channel<'a, R: Rng + ?Sized>(channels: &'a [String], rng: &mut R) -> Option<&'a str> {
    channels.choose(rng).map(String::as_str)
}

/// Whether a login error means the bot can never log in (its name is refused), rather than
/// a cluster problem worth waiting out.
pub fn is_fatal_login_error(code: &ErrorCode) -> bool {
    matches!(code, ErrorCode::InvalidName | ErrorCode::ReservedName)
}

type Job = Box<dyn FnOnce(&Client) + Send>;

/// Runs requests on a thread of its own, so waiting for a reply can be abandoned.
struct Worker {
    jobs: Sender<Job>,
}

impl Worker {
    fn start(client: Arc<Client>) -> std::io::Result<Worker> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("chat-bot-requests".into())
            .spawn(move || {
                for job in rx {
                    job(&client);
                }
            })?;
        Ok(Worker { jobs: tx })
    }

    /// Runs `f` on the worker; `None` when shutdown was raised before it finished.
    fn call<T: Send + 'static>(
        &self,
        shutdown: &Shutdown,
        f: impl FnOnce(&Client) -> Result<T, ClientError> + Send + 'static,
    ) -> Option<Result<T, ClientError>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        if self.jobs.send(job).is_err() {
            return Some(Err(ClientError::Protocol(
                "the request thread stopped".into(),
            )));
        }
        loop {
            match rx.recv_timeout(STEP) {
                Ok(r) => return Some(r),
                Err(RecvTimeoutError::Timeout) if shutdown.is_triggered() => return None,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Some(Err(ClientError::Protocol(
                        "the request thread stopped".into(),
                    )))
                }
            }
        }
    }
}

/// How a round ended.
enum RoundEnd {
    /// All messages went out (or some failed without a cluster error).
    Done,
    /// A cluster error cut it short: pause before the next one.
    Failed,
    /// Shutdown was raised.
    Stopped,
}

struct Bot<'a> {
    cfg: &'a BotConfig,
    shutdown: &'a Shutdown,
    client: Arc<Client>,
    worker: Worker,
    name: String,
    rng: StdRng,
    subscribed: Option<String>,
    fixed_channel_ready: bool,
    stats: BotStats,
}

impl Bot<'_> {
    /// Counts posts that have arrived, waiting up to `wait` (in small steps) for more.
    /// Returns false when shutdown was raised.
    fn wait(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.shutdown.is_triggered() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.events().recv_timeout(left.min(STEP)) {
                Ok(ClientEvent::Post(_)) => self.stats.received += 1,
                Ok(ClientEvent::Malformed { topic, error }) => {
                    tracing::debug!(%topic, %error, "malformed publication ignored");
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if left.is_zero() {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left.min(STEP));
                    if left.is_zero() {
                        return true;
                    }
                }
            }
        }
    }

    fn cluster_error(&mut self, what: &str, e: &ClientError) {
        self.stats.errors += 1;
        tracing::warn!(bot = %self.name, code = %e.code(), error = %e, "{what} failed; retrying after a pause");
    }

    fn login(&mut self) -> anyhow::Result<bool> {
        loop {
            if self.shutdown.is_triggered() {
                return Ok(false);
            }
            let name = self.name.clone();
            match self.worker.call(self.shutdown, move |c| c.login(&name)) {
                None => return Ok(false),
                Some(Ok(())) => return Ok(true),
                Some(Err(e)) if is_fatal_login_error(&e.code()) => {
                    anyhow::bail!("cannot log in as {}: {e}", self.name)
                }
                Some(Err(e)) => {
                    self.cluster_error("login", &e);
                    if !self.wait(self.cfg.error_pause) {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Creates `channel`, treating "already exists" as success.
    fn ensure_channel(&mut self, channel: &str) -> Option<Result<(), ClientError>> {
        let ch = channel.to_string();
        match self
            .worker
            .call(self.shutdown, move |c| c.create_channel(&ch))?
        {
            Err(e) if e.code() == ErrorCode::AlreadyExists => Some(Ok(())),
            other => Some(other),
        }
    }

    /// The channel of this round, `Err(())` after a logged cluster error, `Ok(None)` on shutdown.
    fn choose_channel(&mut self) -> Result<Option<String>, ()> {
        if let Some(fixed) = self.cfg.channel.clone() {
            if !self.fixed_channel_ready {
                match self.ensure_channel(&fixed) {
                    None => return Ok(None),
                    Some(Ok(())) => self.fixed_channel_ready = true,
                    Some(Err(e)) => {
                        self.cluster_error("creating the channel", &e);
                        return Err(());
                    }
                }
            }
            return Ok(Some(fixed));
        }
        let mut channels = match self.worker.call(self.shutdown, |c| c.channels()) {
            None => return Ok(None),
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                self.cluster_error("listing channels", &e);
                return Err(());
            }
        };
        if channels.is_empty() {
            let default = self.cfg.default_channel.clone();
            match self.ensure_channel(&default) {
                None => return Ok(None),
                Some(Ok(())) => {
                    tracing::info!(bot = %self.name, channel = %default, "no channels yet; created one");
                    channels.push(default);
                }
                Some(Err(e)) => {
                    self.cluster_error("creating the channel", &e);
                    return Err(());
                }
            }
        }
        Ok(pick_channel(&channels, &mut self.rng).map(str::to_string))
    }

    fn follow(&mut self, channel: &str) {
        if self.subscribed.as_deref() == Some(channel) {
            return;
        }
        if let Some(old) = self.subscribed.take() {
            if let Err(e) = self.client.unsubscribe(&old) {
                tracing::warn!(bot = %self.name, channel = %old, error = %e, "cannot unsubscribe");
            }
        }
        match self.client.subscribe(channel) {
            Ok(()) => self.subscribed = Some(channel.to_string()),
            Err(e) => {
                tracing::warn!(bot = %self.name, %channel, error = %e, "cannot subscribe; received posts will not be counted")
            }
        }
    }

    fn round(&mut self) -> RoundEnd {
        let round = self.stats.rounds;
        let before = self.stats;
        let channel = match self.choose_channel() {
            Ok(Some(c)) => c,
            Ok(None) => return RoundEnd::Stopped,
            Err(()) => return RoundEnd::Failed,
        };
        self.follow(&channel);
        let mut end = RoundEnd::Done;
        for _ in 0..self.cfg.messages {
            if !self.wait(Duration::ZERO) {
                end = RoundEnd::Stopped;
                break;
            }
            let (user, ch, msg) = (
                self.name.clone(),
                channel.clone(),
                pick_message(&mut self.rng),
            );
            match self
                .worker
                .call(self.shutdown, move |c| c.publish(&user, &ch, msg))
            {
                None => {
                    end = RoundEnd::Stopped;
                    break;
                }
                Some(Ok(())) => self.stats.sent += 1,
                Some(Err(e)) => {
                    self.stats.failed += 1;
                    self.cluster_error("publish", &e);
                    end = RoundEnd::Failed;
                    break;
                }
            }
        }
        // Give the last posts of the round a moment to come back before reporting.
        let last = self.cfg.iterations != 0 && round >= self.cfg.iterations;
        let settle = if last || !matches!(end, RoundEnd::Done) {
            self.cfg.interval.min(Duration::from_millis(200))
        } else {
            self.cfg.interval
        };
        if !matches!(end, RoundEnd::Stopped) && !self.wait(settle) {
            end = RoundEnd::Stopped;
        }
        tracing::info!(
            bot = %self.name,
            round,
            %channel,
            sent = self.stats.sent - before.sent,
            failed = self.stats.failed - before.failed,
            received = self.stats.received - before.received,
            total_sent = self.stats.sent,
            total_received = self.stats.received,
            "round done"
        );
        end
    }
}

/// Runs the bot until `cfg.iterations` rounds are done or `shutdown` is raised.
///
/// Fails only when the bot cannot start (sockets, thread) or its name is refused; cluster
/// errors are logged and waited out.
pub fn run_bot(cfg: &BotConfig, shutdown: &Shutdown) -> anyhow::Result<BotStats> {
    let mut rng = match cfg.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_entropy(),
    };
    let name = match &cfg.name {
        Some(n) => n.clone(),
        None => random_bot_name(&mut rng),
    };
    validate_name(NameKind::User, &name).with_context(|| format!("bot name {name:?}"))?;
    let client = Arc::new(
        Client::connect(ClientConfig {
            broker: cfg.broker.clone(),
            sub: cfg.sub.clone(),
            timeout: cfg.timeout,
            attempts: cfg.attempts.max(1),
            encoding: cfg.encoding,
            ..ClientConfig::default()
        })
        .context("cannot open the client sockets")?,
    );
    let worker = Worker::start(client.clone()).context("cannot start the request thread")?;
    let mut bot = Bot {
        cfg,
        shutdown,
        client,
        worker,
        name,
        rng,
        subscribed: None,
        fixed_channel_ready: false,
        stats: BotStats::default(),
    };
    tracing::info!(bot = %bot.name, broker = %cfg.broker, sub = %cfg.sub, "starting");
    let logged_in = bot.login()?;
    if logged_in {
        tracing::info!(bot = %bot.name, "logged in");
    }
    while logged_in && (cfg.iterations == 0 || bot.stats.rounds < cfg.iterations) {
        if shutdown.is_triggered() {
            break;
        }
        bot.stats.rounds += 1;
        match bot.round() {
            RoundEnd::Done => {}
            RoundEnd::Failed => {
                if !bot.wait(cfg.error_pause) {
                    break;
                }
            }
            RoundEnd::Stopped => break,
        }
    }
    tracing::info!(
        bot = %bot.name,
        rounds = bot.stats.rounds,
        sent = bot.stats.sent,
        failed = bot.stats.failed,
        received = bot.stats.received,
        errors = bot.stats.errors,
        "stopped"
    );
    Ok(bot.stats)
}
