//! The terminal client `chat-client`: flags, command parsing, rendering and the two modes.
//!
//! - Interactive mode (no subcommand): logs in, subscribes to the user's own topic and reads
//!   commands, both the seed's numbered menu (`1`..`7`) and IRC-style `/commands`; a line
//!   without a slash goes to the current channel. On a terminal, rustyline edits lines and
//!   incoming messages are printed through its external printer so they do not garble the
//!   line being typed; otherwise lines are read from stdin, so a pipe can script it.
//! - One-shot mode (a subcommand such as `users` or `publish`): one request, one line per
//!   item on stdout, exit code 0 on success and 1 with a sentence on stderr otherwise.
//!
//! Parsing ([`parse_line`], [`menu_command`], [`parse_target`]) and rendering
//! ([`render_event`], [`render_publication`], [`render_status`], [`error_sentence`]) are pure
//! functions, tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_core::protocol::MAX_HISTORY_LIMIT;
use chat_core::validate::validate_name;
use chat_core::{
    Announcement, ChannelPost, DirectPost, Encoding, ErrorCode, HistoryTarget, NameKind,
    Publication, ServerStatus, Timestamp,
};
use chat_net::client::{Client, ClientConfig, ClientError, ClientEvent};
use chat_net::Shutdown;
use clap::builder::FalseyValueParser;
use clap::{Parser, Subcommand};
use crossbeam_channel::{Receiver, RecvTimeoutError};

/// Messages shown by `/history` when no count is given.
pub const DEFAULT_INTERACTIVE_HISTORY: u32 = 20;

const EXAMPLES: &str = "\
Interactive mode (no subcommand):
  chat-client --user ana
      then type: /join geral   (creates it if needed, subscribes, makes it current)
                 oi pessoal    (a line without / goes to the current channel)
                 /msg bia oi   /users   /channels   /history   /status   /help   /quit
      or the seed menu: 1 users, 2 create channel, 3 channels, 4 subscribe,
                        5 publish, 6 private message, 7 exit
  printf '/join geral\\noi\\n' | chat-client --user ana     (scripted through a pipe)

One-shot commands (one line per item; exit code 0, or 1 with the reason on stderr):
  chat-client --user ana login
  chat-client users
  chat-client channels
  chat-client channel geral --exist-ok
  chat-client --user ana publish geral \"oi, pessoal\"
  chat-client --user ana msg bia \"oi\"
  chat-client history geral --limit 20
  chat-client history @bia
  chat-client status --json-output
  chat-client listen geral --count 5 --timeout-ms 10000
  chat-client --user ana listen          (your own private messages)

Environment: CHAT_USER, CHAT_BROKER, CHAT_SUB, CHAT_TIMEOUT_MS, CHAT_ATTEMPTS, CHAT_JSON,
NO_COLOR (no colors), RUST_LOG (log filter).";

/// Command-line flags of `chat-client`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-client",
    version,
    about = "Terminal client of the replicated chat: interactive, or one command per run for scripts",
    after_help = EXAMPLES
)]
pub struct ClientCli {
    /// Your user name (asked for in interactive mode when missing).
    #[arg(long, short = 'u', env = "CHAT_USER", global = true)]
    pub user: Option<String>,
    /// Broker frontend endpoint (requests go here).
    #[arg(long, env = "CHAT_BROKER", default_value = chat_core::DEFAULT_BROKER_FRONTEND, global = true)]
    pub broker: String,
    /// Proxy XPUB endpoint (publications come from here).
    #[arg(long, env = "CHAT_SUB", default_value = chat_core::DEFAULT_PROXY_XPUB, global = true)]
    pub sub: String,
    /// How long to wait for each reply before retrying, in milliseconds (give it before the
    /// subcommand; `listen --timeout-ms` is how long to listen).
    #[arg(long = "timeout-ms", env = "CHAT_TIMEOUT_MS", default_value_t = 3000)]
    pub timeout_ms: u64,
    /// How many times a request is sent before giving up (first try included).
    #[arg(long, env = "CHAT_ATTEMPTS", default_value_t = 3, global = true)]
    pub attempts: u32,
    /// Encode requests as JSON instead of MessagePack.
    #[arg(long, env = "CHAT_JSON", value_parser = FalseyValueParser::new(), default_value_t = false, global = true)]
    pub json: bool,
    /// Print one-shot results as JSON (one document, or one per line for history and listen).
    #[arg(long, global = true)]
    pub json_output: bool,
    /// No colors (also when NO_COLOR is set or stdout is not a terminal).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// A one-shot command; without one the client is interactive.
    #[command(subcommand)]
    pub command: Option<OneShot>,
}

/// The one-shot subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum OneShot {
    /// Log in (register) the --user name.
    Login,
    /// List users, one per line.
    Users,
    /// List channels, one per line.
    Channels,
    /// Create a channel.
    Channel {
        /// Channel name.
        name: String,
        /// Succeed when the channel already exists.
        #[arg(long)]
        exist_ok: bool,
    },
    /// Post a message to a channel as --user.
    Publish {
        /// Channel name.
        channel: String,
        /// The message (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        message: Vec<String>,
    },
    /// Send a private message from --user.
    Msg {
        /// Recipient.
        to: String,
        /// The message (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        message: Vec<String>,
    },
    /// Past messages of a channel (`geral`) or private messages of a user (`@bia`), oldest first.
    History {
        /// `channel` or `@user`.
        target: String,
        /// How many messages.
        #[arg(long, short = 'n', default_value_t = chat_core::protocol::DEFAULT_HISTORY_LIMIT)]
        limit: u32,
        /// Only messages older than this cursor (printed on stderr after a full page).
        #[arg(long)]
        before: Option<String>,
    },
    /// Status of whichever server answers.
    Status,
    /// Subscribe and print incoming messages as lines until --count or --timeout-ms.
    Listen {
        /// Channels, `@user` for private messages, or `servers` for coordinator
        /// announcements (default: @--user).
        topics: Vec<String>,
        /// Exit after this many messages (exit code 1 if fewer arrive before the timeout).
        #[arg(long, short = 'c')]
        count: Option<u64>,
        /// Stop listening after this many milliseconds (default: until Ctrl-C).
        #[arg(long = "timeout-ms")]
        timeout_ms: Option<u64>,
    },
}

impl ClientCli {
    /// The SDK configuration these flags describe.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            broker: self.broker.clone(),
            sub: self.sub.clone(),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            attempts: self.attempts.max(1),
            encoding: if self.json {
                Encoding::Json
            } else {
                Encoding::MsgPack
            },
        }
    }
}

/// `println!` that never panics: a closed stdout (`| head`) ends the process quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// A seed menu entry that needs arguments, asked for one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuChoice {
    /// 2: create a channel.
    CreateChannel,
    /// 4: subscribe to a channel.
    Subscribe,
    /// 5: publish to a channel.
    Publish,
    /// 6: private message.
    PrivateMessage,
}

/// What a typed line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A blank line: nothing to do.
    Empty,
    /// List users (`/users`, menu 1).
    Users,
    /// List channels (`/channels`, menu 3).
    Channels,
    /// Server status (`/status`).
    Status,
    /// Show the help (`/help`).
    Help,
    /// Leave the client (`/quit`, menu 7).
    Quit,
    /// Create the channel if needed, subscribe, make it current (`/join`).
    Join(String),
    /// Unsubscribe from a channel, the current one when `None` (`/leave`).
    Leave(Option<String>),
    /// Create a channel without joining it (`/create`, menu 2).
    Create(String),
    /// Subscribe to a channel and make it current, without creating it (`/sub`, menu 4).
    Subscribe(String),
    /// Post to the current channel (a line without a slash, `/say`).
    Say(String),
    /// Post to a given channel (`/pub`, menu 5).
    Publish {
        /// Channel.
        channel: String,
        /// Body.
        text: String,
    },
    /// Private message (`/msg`, menu 6).
    Msg {
        /// Recipient.
        user: String,
        /// Body.
        text: String,
    },
    /// Past messages (`/history [channel|@user] [n]`); `None` target = current channel.
    History {
        /// Channel or user, when given.
        target: Option<HistoryTarget>,
        /// How many, when given.
        limit: Option<u32>,
    },
    /// A menu number that needs its arguments asked for.
    Menu(MenuChoice),
}

fn channel_arg(s: &str) -> Option<String> {
    let name = s.strip_prefix('#').unwrap_or(s);
    (!name.is_empty()).then(|| name.to_string())
}

fn user_arg(s: &str) -> Option<String> {
    let name = s.strip_prefix('@').unwrap_or(s);
    (!name.is_empty()).then(|| name.to_string())
}

/// Splits off the first whitespace-separated word; returns it and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// Reads `channel`, `#channel` or `@user` as a history target.
pub fn parse_target(s: &str) -> Result<HistoryTarget, String> {
    let s = s.trim();
    if let Some(user) = s.strip_prefix('@') {
        if user.is_empty() {
            return Err("`@` must be followed by a user name, as in @bia".into());
        }
        return Ok(HistoryTarget::User(user.to_string()));
    }
    channel_arg(s)
        .map(HistoryTarget::Channel)
        .ok_or_else(|| "a channel name or @user is needed".to_string())
}

fn parse_limit(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "the number of messages must be between 1 and {MAX_HISTORY_LIMIT}"
        )),
    }
}

fn one_channel(rest: &str, usage: &str) -> Result<String, String> {
    let (word, extra) = split_word(rest);
    if !extra.is_empty() {
        return Err(format!("usage: {usage} (channel names have no spaces)"));
    }
    channel_arg(word).ok_or_else(|| format!("usage: {usage}"))
}

/// Parses one typed line into a [`Command`]; the error is a usage sentence to show.
///
/// Rules: a bare `1`..`7` is the seed menu; `//text` posts `/text`; `/word ...` is a command
/// (case-insensitive, `#` before channels and `@` before users optional); anything else is
/// posted to the current channel.
pub fn parse_line(line: &str) -> Result<Command, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Command::Empty);
    }
    match line {
        "1" => return Ok(Command::Users),
        "2" => return Ok(Command::Menu(MenuChoice::CreateChannel)),
        "3" => return Ok(Command::Channels),
        "4" => return Ok(Command::Menu(MenuChoice::Subscribe)),
        "5" => return Ok(Command::Menu(MenuChoice::Publish)),
        "6" => return Ok(Command::Menu(MenuChoice::PrivateMessage)),
        "7" => return Ok(Command::Quit),
        _ => {}
    }
    if line.starts_with("//") {
        return Ok(Command::Say(line[1..].to_string()));
    }
    let Some(body) = line.strip_prefix('/') else {
        return Ok(Command::Say(line.to_string()));
    };
    let (word, rest) = split_word(body);
    let name = word.to_lowercase();
    match name.as_str() {
        "join" | "j" => one_channel(rest, "/join <channel>").map(Command::Join),
        "leave" | "part" => {
            if rest.is_empty() {
                Ok(Command::Leave(None))
            } else {
                one_channel(rest, "/leave [channel]").map(|c| Command::Leave(Some(c)))
            }
        }
        "create" | "channel" => one_channel(rest, "/create <channel>").map(Command::Create),
        "sub" | "subscribe" => one_channel(rest, "/sub <channel>").map(Command::Subscribe),
        "msg" | "m" | "w" | "query" => {
            let (to, text) = split_word(rest);
            match (user_arg(to), text.is_empty()) {
                (Some(user), false) => Ok(Command::Msg {
                    user,
                    text: text.to_string(),
                }),
                _ => Err("usage: /msg <user> <text>".into()),
            }
        }
        "pub" | "publish" => {
            let (ch, text) = split_word(rest);
            match (channel_arg(ch), text.is_empty()) {
                (Some(channel), false) => Ok(Command::Publish {
                    channel,
                    text: text.to_string(),
                }),
                _ => Err("usage: /pub <channel> <text>".into()),
            }
        }
        "say" => {
            if rest.is_empty() {
                Err("usage: /say <text>".into())
            } else {
                Ok(Command::Say(rest.to_string()))
            }
        }
        "users" | "who" => Ok(Command::Users),
        "channels" | "list" => Ok(Command::Channels),
        "status" => Ok(Command::Status),
        "help" | "?" => Ok(Command::Help),
        "quit" | "exit" | "q" => Ok(Command::Quit),
        "history" | "hist" | "h" => {
            let mut target = None;
            let mut limit = None;
            for arg in rest.split_whitespace() {
                if arg.bytes().all(|b| b.is_ascii_digit()) {
                    if limit.is_some() {
                        return Err("usage: /history [channel|@user] [n]".into());
                    }
                    limit = Some(parse_limit(arg)?);
                } else {
                    if target.is_some() {
                        return Err("usage: /history [channel|@user] [n]".into());
                    }
                    target = Some(parse_target(arg)?);
                }
            }
            Ok(Command::History { target, limit })
        }
        "" => Err("a command name must follow the slash — /help lists the commands".into()),
        _ => Err(format!(
            "unknown command /{} — /help lists the commands",
            sanitize(word)
        )),
    }
}

/// The questions asked, in order, for a menu choice.
pub fn menu_prompts(choice: MenuChoice) -> &'static [&'static str] {
    match choice {
        MenuChoice::CreateChannel => &["channel name"],
        MenuChoice::Subscribe => &["channel"],
        MenuChoice::Publish => &["channel", "message"],
        MenuChoice::PrivateMessage => &["to user", "message"],
    }
}

/// Builds the command of a menu choice from the answers to [`menu_prompts`].
pub fn menu_command(choice: MenuChoice, answers: &[String]) -> Result<Command, String> {
    let answer = |i: usize| answers.get(i).map(|s| s.trim()).unwrap_or("");
    let name = |i: usize, what: &str, strip: fn(&str) -> Option<String>| {
        let a = answer(i);
        if a.chars().any(char::is_whitespace) {
            return Err(format!("a {what} name has no spaces"));
        }
        strip(a).ok_or_else(|| format!("a {what} name is needed"))
    };
    let text = |i: usize| {
        let t = answer(i);
        if t.is_empty() {
            Err("the message is empty".to_string())
        } else {
            Ok(t.to_string())
        }
    };
    Ok(match choice {
        MenuChoice::CreateChannel => Command::Create(name(0, "channel", channel_arg)?),
        MenuChoice::Subscribe => Command::Subscribe(name(0, "channel", channel_arg)?),
        MenuChoice::Publish => Command::Publish {
            channel: name(0, "channel", channel_arg)?,
            text: text(1)?,
        },
        MenuChoice::PrivateMessage => Command::Msg {
            user: name(0, "user", user_arg)?,
            text: text(1)?,
        },
    })
}

/// The interactive help text, one line per entry.
pub fn help_lines() -> Vec<&'static str> {
    vec![
        "commands:",
        "  /join <channel>             create the channel if needed, subscribe, make it current",
        "  /leave [channel]            unsubscribe (default: the current channel)",
        "  /msg <user> <text>          private message",
        "  /users                      list users",
        "  /channels                   list channels",
        "  /history [channel|@user] [n]  last n messages (default 20) of a channel or a user",
        "  /status                     status of the server that answers",
        "  /create <channel>           create a channel without joining it",
        "  /sub <channel>              subscribe to an existing channel and make it current",
        "  /pub <channel> <text>       post to a channel without switching to it",
        "  /say <text>                 post to the current channel (so does any line without /)",
        "  /help                       this help",
        "  /quit                       leave (also Ctrl-D or Ctrl-C)",
        "menu: 1 users · 2 create channel · 3 channels · 4 subscribe · 5 publish · 6 private message · 7 exit",
        "a line starting with // posts the text without its first slash",
    ]
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

/// How rendered lines are decorated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenderOptions {
    /// Use ANSI colors.
    pub color: bool,
    /// Local time zone offset from UTC, in seconds, for HH:MM:SS.
    pub utc_offset_secs: i64,
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";
const AUTHOR_COLORS: [&str; 6] = [
    "\x1b[32m", "\x1b[33m", "\x1b[34m", "\x1b[35m", "\x1b[36m", "\x1b[91m",
];

fn paint(opts: &RenderOptions, code: &str, text: &str) -> String {
    if opts.color {
        format!("{code}{text}{RESET}")
    } else {
        text.to_string()
    }
}

fn author_color(name: &str) -> &'static str {
    let h = name
        .bytes()
        .fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
    AUTHOR_COLORS[h as usize % AUTHOR_COLORS.len()]
}

/// Makes text from the network safe for a terminal: one line, no control characters
/// (escape sequences from other users must not drive the terminal).
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' => '↵',
            '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// `HH:MM:SS` of a timestamp shifted by `utc_offset_secs`; `--:--:--` for a missing (zero) one.
pub fn format_time(ts: Timestamp, utc_offset_secs: i64) -> String {
    if ts.millis() == 0 {
        return "--:--:--".to_string();
    }
    let secs = ts.millis().div_euclid(1000).saturating_add(utc_offset_secs);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}

/// Reads a `date +%z` style offset (`+0130`, `-0300`, `+05:30`) as seconds.
pub fn parse_utc_offset(s: &str) -> Option<i64> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

/// The local offset from UTC in seconds (asked once of `date +%z`; 0 when unknown).
pub fn local_utc_offset() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::process::Command::new("date")
            .arg("+%z")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| parse_utc_offset(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or(0)
    })
}

/// One line for a channel post: `[12:34:56] #geral <ana> oi`.
pub fn render_post(p: &ChannelPost, opts: &RenderOptions) -> String {
    let author = sanitize(&p.user);
    format!(
        "{} {} {} {}",
        paint(
            opts,
            DIM,
            &format!("[{}]", format_time(p.timestamp, opts.utc_offset_secs))
        ),
        paint(opts, CYAN, &format!("#{}", sanitize(&p.channel))),
        paint(
            opts,
            &format!("{BOLD}{}", author_color(&p.user)),
            &format!("<{author}>")
        ),
        sanitize(&p.message)
    )
}

/// One line for a private message: `[12:34:56] [private] ana -> bia: oi`.
pub fn render_direct(p: &DirectPost, opts: &RenderOptions) -> String {
    format!(
        "{} {} {}",
        paint(
            opts,
            DIM,
            &format!("[{}]", format_time(p.timestamp, opts.utc_offset_secs))
        ),
        paint(
            opts,
            &format!("{BOLD}{MAGENTA}"),
            &format!("[private] {} -> {}:", sanitize(&p.src), sanitize(&p.dst))
        ),
        sanitize(&p.message)
    )
}

/// One line for a publication (channel post or private message).
pub fn render_publication(p: &Publication, opts: &RenderOptions) -> String {
    match p {
        Publication::Channel(p) => render_post(p, opts),
        Publication::Direct(p) => render_direct(p, opts),
    }
}

/// One line for a coordinator announcement.
pub fn render_announcement(a: &Announcement, opts: &RenderOptions) -> String {
    paint(
        opts,
        YELLOW,
        &format!(
            "* {} is now the coordinator (term {}, rank {})",
            sanitize(&a.coordinator),
            a.term,
            a.rank
        ),
    )
}

/// One line for anything that arrives on a subscription; malformed frames become a dim warning.
pub fn render_event(e: &ClientEvent, opts: &RenderOptions) -> String {
    match e {
        ClientEvent::Post(p) => render_post(p, opts),
        ClientEvent::Direct(p) => render_direct(p, opts),
        ClientEvent::Coordinator(a) => render_announcement(a, opts),
        ClientEvent::Malformed { topic, error } => paint(
            opts,
            DIM,
            &format!(
                "! ignored a malformed message on topic {}: {}",
                clip(&sanitize(topic), 64),
                clip(&sanitize(error), 200)
            ),
        ),
    }
}

/// The lines of a `status` reply.
pub fn render_status(s: &ServerStatus) -> Vec<String> {
    let rank = s
        .rank
        .map_or_else(|| "no rank yet".to_string(), |r| format!("rank {r}"));
    let coordinator = s
        .coordinator
        .as_deref()
        .map_or_else(|| "none known".to_string(), sanitize);
    let peers = if s.peers.is_empty() {
        "none".to_string()
    } else {
        s.peers
            .iter()
            .map(|p| format!("{} (rank {})", sanitize(&p.name), p.rank))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!("server: {} ({rank})", sanitize(&s.name)),
        format!("coordinator: {coordinator} (term {})", s.term),
        format!("lamport clock: {}", s.lamport),
        format!("clock offset: {:+} ms", s.clock_offset_ms),
        format!("peers: {peers}"),
        format!(
            "users: {}, channels: {}, messages: {}, events: {}",
            s.users, s.channels, s.messages, s.events
        ),
        format!("state digest: {}", sanitize(&s.digest)),
        format!(
            "caught up with peers: {}",
            if s.caught_up {
                "yes"
            } else {
                "not yet (still fetching what it missed)"
            }
        ),
    ];
    if s.local_only_acks > 0 {
        lines.push(format!(
            "writes acknowledged with no other live copy: {}",
            s.local_only_acks
        ));
    }
    if !s.vector.is_empty() {
        let held = s
            .vector
            .iter()
            .map(|(origin, seq)| format!("{} {seq}", sanitize(origin)))
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(format!("events held per origin: {held}"));
    }
    lines
}

/// What an error is about, so its sentence can name things and suggest the next step.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorContext<'a> {
    /// The channel the request was about.
    pub channel: Option<&'a str>,
    /// The (other) user the request was about.
    pub user: Option<&'a str>,
    /// The broker endpoint, for "does not answer" sentences.
    pub broker: Option<&'a str>,
    /// Suggest `/commands` (interactive) rather than `chat-client` subcommands.
    pub interactive: bool,
}

/// A clear sentence for an error code and the server's description (which may be empty).
pub fn code_sentence(code: &ErrorCode, description: &str, ctx: &ErrorContext) -> String {
    let desc = clip(&sanitize(description.trim()), 200);
    let with_desc = |fallback: &str| {
        if desc.is_empty() {
            fallback.to_string()
        } else {
            desc.clone()
        }
    };
    match code {
        ErrorCode::UnknownChannel => {
            let ch = ctx.channel.map(sanitize);
            match (ch, ctx.interactive) {
                (Some(ch), true) => format!("channel {ch} does not exist — /join {ch} creates it"),
                (Some(ch), false) => {
                    format!("channel {ch} does not exist — `chat-client channel {ch}` creates it")
                }
                (None, true) => "that channel does not exist — /join <channel> creates it".into(),
                (None, false) => {
                    "that channel does not exist — `chat-client channel <name>` creates it".into()
                }
            }
        }
        ErrorCode::UnknownUser => {
            let who = ctx
                .user
                .map_or_else(|| "that user".to_string(), |u| format!("user {}", sanitize(u)));
            let list = if ctx.interactive {
                "/users"
            } else {
                "`chat-client users`"
            };
            format!("{who} does not exist — a user exists once they log in ({list} lists them)")
        }
        ErrorCode::Timeout => match ctx.broker {
            Some(b) => format!(
                "the cluster does not answer at {} (is `chat up` running?)",
                sanitize(b)
            ),
            None => "the cluster does not answer (is `chat up` running?)".into(),
        },
        ErrorCode::Unavailable => {
            "no server can take the request right now (the cluster may be starting or electing a coordinator) — try again in a moment".into()
        }
        ErrorCode::RateLimited => {
            "too many requests — slow down and try again in a moment".into()
        }
        ErrorCode::TooLarge => {
            if desc.is_empty() {
                "the message is too large — split it into smaller messages".into()
            } else {
                format!("the message is too large ({desc}) — split it into smaller messages")
            }
        }
        ErrorCode::InvalidName => format!(
            "{} — names are 1 to 64 characters, without spaces or control characters",
            with_desc("that name is not valid")
        ),
        ErrorCode::ReservedName => format!(
            "{} — pick another name",
            with_desc("that name is reserved for the cluster's internal use")
        ),
        ErrorCode::AlreadyExists => match ctx.channel {
            Some(ch) => format!("channel {} already exists", sanitize(ch)),
            None => with_desc("it already exists"),
        },
        ErrorCode::BadRequest => {
            format!("the cluster refused the request as malformed: {}", with_desc("no reason given"))
        }
        ErrorCode::UnknownService => {
            "the server does not offer this service (is it an older or a seed server?)".into()
        }
        ErrorCode::Internal => {
            if desc.is_empty() {
                "the server failed to carry out the request — try again".into()
            } else {
                format!("the server failed to carry out the request ({desc}) — try again")
            }
        }
        ErrorCode::Other(c) => {
            let c = clip(&sanitize(c), 40);
            match (desc.is_empty(), c.is_empty()) {
                (true, true) => "the server refused the request without saying why".into(),
                (true, false) => format!("the server refused the request ({c})"),
                (false, true) => desc.clone(),
                (false, false) => format!("{desc} ({c})"),
            }
        }
    }
}

/// A clear sentence for any client error (never a Debug dump).
pub fn error_sentence(err: &ClientError, ctx: &ErrorContext) -> String {
    match err {
        ClientError::Server { code, description } => code_sentence(code, description, ctx),
        ClientError::Timeout { .. } => code_sentence(&ErrorCode::Timeout, "", ctx),
        ClientError::Transport(e) => format!(
            "network error: {} (check --broker and --sub)",
            sanitize(&e.to_string())
        ),
        ClientError::Protocol(_) => {
            "the cluster sent a reply this client does not understand (is it a different version?)"
                .into()
        }
        ClientError::Invalid(e) => code_sentence(&e.code(), &e.to_string(), ctx),
    }
}

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}

fn want_color(no_color: bool) -> bool {
    !no_color
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
        && io::stdout().is_terminal()
}

// ---------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------

/// Runs `chat-client` with parsed flags: interactive without a subcommand, one-shot with one.
pub fn run(cli: ClientCli) -> ExitCode {
    match cli.command.clone() {
        None => run_interactive(&cli),
        Some(cmd) => run_one_shot(&cli, &cmd),
    }
}

// ---------------------------------------------------------------------------------------
// One-shot mode
// ---------------------------------------------------------------------------------------

/// One line of JSON through chat-core's codec (so this crate needs no JSON library).
macro_rules! json_line {
    ($value:expr) => {
        match chat_core::encode($value, Encoding::Json) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("{{\"status\":\"erro\",\"description\":{:?}}}", e.0),
        }
    };
}

fn one_shot_fail(cli: &ClientCli, code: &str, sentence: &str) -> ExitCode {
    eprintln!("chat-client: {sentence}");
    if cli.json_output {
        let mut m = BTreeMap::new();
        m.insert("status", "erro");
        m.insert("code", code);
        m.insert("description", sentence);
        out!("{}", json_line!(&m));
    }
    ExitCode::FAILURE
}

fn one_shot_done(cli: &ClientCli, text: &str) -> ExitCode {
    if cli.json_output {
        let mut m = BTreeMap::new();
        m.insert("status", "OK");
        m.insert("result", text);
        out!("{}", json_line!(&m));
    } else {
        out!("{text}");
    }
    ExitCode::SUCCESS
}

fn run_one_shot(cli: &ClientCli, cmd: &OneShot) -> ExitCode {
    let opts = RenderOptions {
        color: want_color(cli.no_color) && !cli.json_output,
        utc_offset_secs: local_utc_offset(),
    };
    let mut ctx = ErrorContext {
        broker: Some(&cli.broker),
        ..ErrorContext::default()
    };
    let needs_user = matches!(
        cmd,
        OneShot::Login | OneShot::Publish { .. } | OneShot::Msg { .. }
    );
    let user = match (&cli.user, needs_user) {
        (Some(u), _) => u.as_str(),
        (None, true) => {
            return one_shot_fail(
                cli,
                "bad_request",
                "this command needs --user <name> (or CHAT_USER)",
            )
        }
        (None, false) => "",
    };
    let client = match Client::connect(cli.client_config()) {
        Ok(c) => c,
        Err(e) => {
            return one_shot_fail(cli, e.code().as_str(), &error_sentence(&e, &ctx));
        }
    };
    let result: Result<ExitCode, ClientError> = match cmd {
        OneShot::Login => {
            ctx.user = Some(user);
            client
                .login(user)
                .map(|()| one_shot_done(cli, &format!("logged in as {user}")))
        }
        OneShot::Users | OneShot::Channels => {
            let list = if *cmd == OneShot::Users {
                client.users()
            } else {
                client.channels()
            };
            list.map(|items| {
                if cli.json_output {
                    out!("{}", json_line!(&items));
                } else {
                    for item in &items {
                        out!("{}", sanitize(item));
                    }
                }
                ExitCode::SUCCESS
            })
        }
        OneShot::Channel { name, exist_ok } => {
            ctx.channel = Some(name);
            match client.create_channel(name) {
                Ok(()) => Ok(one_shot_done(cli, &format!("created channel {name}"))),
                Err(e) if *exist_ok && e.code() == ErrorCode::AlreadyExists => Ok(one_shot_done(
                    cli,
                    &format!("channel {name} already exists"),
                )),
                Err(e) => Err(e),
            }
        }
        OneShot::Publish { channel, message } => {
            ctx.channel = Some(channel);
            client
                .publish(user, channel, &message.join(" "))
                .map(|()| one_shot_done(cli, &format!("published to {channel}")))
        }
        OneShot::Msg { to, message } => {
            ctx.user = Some(to);
            client
                .send_message(user, to, &message.join(" "))
                .map(|()| one_shot_done(cli, &format!("sent to {to}")))
        }
        OneShot::History {
            target,
            limit,
            before,
        } => {
            let target = match parse_target(target) {
                Ok(t) => t,
                Err(e) => return one_shot_fail(cli, "bad_request", &e),
            };
            if !(1..=MAX_HISTORY_LIMIT).contains(limit) {
                return one_shot_fail(
                    cli,
                    "bad_request",
                    &format!("--limit must be between 1 and {MAX_HISTORY_LIMIT}"),
                );
            }
            let (ch, us) = match &target {
                HistoryTarget::Channel(c) => (Some(c.as_str()), None),
                HistoryTarget::User(u) => (None, Some(u.as_str())),
            };
            let ctx_h = ErrorContext {
                channel: ch,
                user: us,
                ..ctx
            };
            match client.history(target.clone(), before.clone(), *limit) {
                Ok(page) => {
                    for item in &page.items {
                        if cli.json_output {
                            out!("{}", json_line!(&item.to_wire()));
                        } else {
                            out!("{}", render_publication(item, &opts));
                        }
                    }
                    if let Some(next) = &page.next {
                        eprintln!("older messages exist: add --before {next}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    return one_shot_fail(cli, e.code().as_str(), &error_sentence(&e, &ctx_h))
                }
            }
        }
        OneShot::Status => client.status().map(|s| {
            if cli.json_output {
                out!("{}", json_line!(&s));
            } else {
                for line in render_status(&s) {
                    out!("{line}");
                }
            }
            ExitCode::SUCCESS
        }),
        OneShot::Listen {
            topics,
            count,
            timeout_ms,
        } => {
            let topics: Vec<String> = if topics.is_empty() {
                match &cli.user {
                    Some(u) => vec![u.clone()],
                    None => {
                        return one_shot_fail(
                            cli,
                            "bad_request",
                            "listen needs a topic (channel, @user or servers) or --user",
                        )
                    }
                }
            } else {
                topics
                    .iter()
                    .filter_map(|t| {
                        let t = t.trim();
                        let t = t
                            .strip_prefix('@')
                            .or_else(|| t.strip_prefix('#'))
                            .unwrap_or(t);
                        (!t.is_empty()).then(|| t.to_string())
                    })
                    .collect()
            };
            if topics.is_empty() {
                return one_shot_fail(cli, "bad_request", "listen needs a non-empty topic");
            }
            listen(cli, &client, &topics, *count, *timeout_ms, &opts)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => one_shot_fail(cli, e.code().as_str(), &error_sentence(&e, &ctx)),
    }
}

/// Time given to the proxy to hear of a new subscription before "listening" is announced.
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(200);

fn listen(
    cli: &ClientCli,
    client: &Client,
    topics: &[String],
    count: Option<u64>,
    timeout_ms: Option<u64>,
    opts: &RenderOptions,
) -> Result<ExitCode, ClientError> {
    let shutdown = crate::install_shutdown();
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    for t in topics {
        client.subscribe(t)?;
    }
    std::thread::sleep(SUBSCRIBE_SETTLE);
    eprintln!(
        "listening on {} (Ctrl-C to stop)",
        topics
            .iter()
            .map(|t| sanitize(t))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut received = 0u64;
    while count.is_none_or(|n| received < n) && !shutdown.is_triggered() {
        let mut wait = Duration::from_millis(100);
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            wait = wait.min(left);
        }
        match client.events().recv_timeout(wait) {
            Ok(ClientEvent::Malformed { topic, error }) => {
                eprintln!(
                    "chat-client: ignored a malformed message on topic {}: {}",
                    clip(&sanitize(&topic), 64),
                    clip(&sanitize(&error), 200)
                );
            }
            Ok(event) => {
                received += 1;
                if cli.json_output {
                    let line = match &event {
                        ClientEvent::Post(p) => {
                            json_line!(&Publication::Channel(p.clone()).to_wire())
                        }
                        ClientEvent::Direct(p) => {
                            json_line!(&Publication::Direct(p.clone()).to_wire())
                        }
                        ClientEvent::Coordinator(a) => {
                            let mut m = BTreeMap::new();
                            m.insert("coordinator", a.coordinator.clone());
                            m.insert("term", a.term.to_string());
                            m.insert("rank", a.rank.to_string());
                            json_line!(&m)
                        }
                        ClientEvent::Malformed { .. } => continue,
                    };
                    out!("{line}");
                } else {
                    out!("{}", render_event(&event, opts));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(ClientError::Protocol("the subscriber stopped".into()));
            }
        }
    }
    match count {
        Some(n) if received < n && !shutdown.is_triggered() => {
            let sentence = format!(
                "only {received} of {n} messages arrived within {} ms",
                timeout_ms.unwrap_or(0)
            );
            Ok(one_shot_fail(cli, "timeout", &sentence))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

// ---------------------------------------------------------------------------------------
// Interactive mode
// ---------------------------------------------------------------------------------------

enum Read {
    Line(String),
    End,
}

/// Where lines come from: rustyline on a terminal, or plain stdin read by a thread.
enum Input {
    Tty {
        editor: Box<rustyline::DefaultEditor>,
        in_readline: Arc<AtomicBool>,
    },
    Plain {
        lines: Receiver<String>,
    },
}

impl Input {
    fn plain() -> Input {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let spawned = std::thread::Builder::new()
            .name("chat-client-stdin".into())
            .spawn(move || {
                for line in io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the stdin reader");
        }
        Input::Plain { lines: rx }
    }

    fn read(&mut self, prompt: &str, shutdown: &Shutdown) -> Read {
        match self {
            Input::Tty {
                editor,
                in_readline,
            } => {
                in_readline.store(true, Ordering::SeqCst);
                let r = editor.readline(prompt);
                in_readline.store(false, Ordering::SeqCst);
                match r {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Read::Line(line)
                    }
                    Err(_) => Read::End, // Ctrl-C, Ctrl-D or a terminal error
                }
            }
            Input::Plain { lines } => loop {
                if shutdown.is_triggered() {
                    return Read::End;
                }
                match lines.recv_timeout(Duration::from_millis(100)) {
                    Ok(line) => return Read::Line(line),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Read::End,
                }
            },
        }
    }
}

type Printer = Box<dyn FnMut(String) + Send>;

/// Prints incoming events until `stop` is raised.
fn spawn_event_printer(
    events: Receiver<ClientEvent>,
    mut print: Printer,
    opts: RenderOptions,
    stop: Arc<AtomicBool>,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("chat-client-events".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match events.recv_timeout(Duration::from_millis(100)) {
                    Ok(event) => print(render_event(&event, &opts)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .map_err(|e| tracing::error!(error = %e, "cannot start the event printer"))
        .ok()
}

/// Saves the terminal settings (`stty -g`) so a signal during line editing can restore them.
fn save_tty() -> Option<String> {
    if !cfg!(unix) {
        return None;
    }
    let out = std::process::Command::new("stty")
        .arg("-g")
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn restore_tty(saved: &str) {
    let _ = std::process::Command::new("stty")
        .arg(saved)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .status();
}

/// On SIGINT/SIGTERM, gives the main loop a moment to end by itself, then exits the process
/// (restoring the terminal if line editing had it in raw mode).
fn spawn_watchdog(
    shutdown: Shutdown,
    in_readline: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
    tty: Option<String>,
) {
    let spawned = std::thread::Builder::new()
        .name("chat-client-signals".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            if finished.load(Ordering::SeqCst) {
                return;
            }
            if shutdown.is_triggered() {
                std::thread::sleep(Duration::from_millis(150));
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                if in_readline.load(Ordering::SeqCst) {
                    if let Some(saved) = &tty {
                        restore_tty(saved);
                    }
                    // rustyline turned bracketed paste on; turn it off as it would have.
                    print!("\x1b[?2004l");
                }
                println!();
                std::process::exit(0);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the signal watchdog");
    }
}

enum Flow {
    Continue,
    Quit,
}

struct Session<'a> {
    client: &'a Client,
    me: String,
    broker: String,
    current: Option<String>,
    joined: BTreeSet<String>,
    opts: RenderOptions,
}

impl Session<'_> {
    fn ctx<'b>(&'b self, channel: Option<&'b str>, user: Option<&'b str>) -> ErrorContext<'b> {
        ErrorContext {
            channel,
            user,
            broker: Some(&self.broker),
            interactive: true,
        }
    }

    fn info(&self, text: &str) {
        out!("{}", paint(&self.opts, DIM, &format!("* {text}")));
    }

    fn error(&self, text: &str) {
        out!("{}", paint(&self.opts, RED, &format!("! {text}")));
    }

    fn fail(&self, e: &ClientError, channel: Option<&str>, user: Option<&str>) {
        self.error(&error_sentence(e, &self.ctx(channel, user)));
    }

    fn prompt(&self) -> String {
        match &self.current {
            Some(ch) => format!("{}@{}> ", self.me, ch),
            None => format!("{}> ", self.me),
        }
    }

    fn banner(&self) {
        self.info(&format!(
            "logged in as {} — /help lists the commands, 1-7 is the menu; lines without / go to the current channel",
            sanitize(&self.me)
        ));
        self.info("menu: 1 users · 2 create channel · 3 channels · 4 subscribe · 5 publish · 6 private message · 7 exit");
    }

    /// Asks the questions of a menu choice; `None` when the user leaves an answer empty.
    fn ask_menu(
        &self,
        choice: MenuChoice,
        input: &mut Input,
        shutdown: &Shutdown,
    ) -> Option<Result<Command, String>> {
        let mut answers = Vec::new();
        for (i, question) in menu_prompts(choice).iter().enumerate() {
            let default =
                (i == 0 && matches!(choice, MenuChoice::Publish) && self.current.is_some())
                    .then(|| self.current.clone())
                    .flatten();
            let prompt = match &default {
                Some(d) => format!("{question} [{d}]: "),
                None => format!("{question}: "),
            };
            let answer = match input.read(&prompt, shutdown) {
                Read::Line(l) => l.trim().to_string(),
                Read::End => return None,
            };
            let answer = match (answer.is_empty(), &default) {
                (true, Some(d)) => d.clone(),
                (true, None) => {
                    self.info("cancelled");
                    return None;
                }
                (false, _) => answer,
            };
            answers.push(answer);
        }
        Some(menu_command(choice, &answers))
    }

    fn execute(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Empty | Command::Menu(_) => {}
            Command::Quit => return Flow::Quit,
            Command::Help => {
                for line in help_lines() {
                    out!("{line}");
                }
            }
            Command::Users => match self.client.users() {
                Ok(users) if users.is_empty() => self.info("no users yet"),
                Ok(users) => self.info(&format!(
                    "users ({}): {}",
                    users.len(),
                    users
                        .iter()
                        .map(|u| sanitize(u))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Err(e) => self.fail(&e, None, None),
            },
            Command::Channels => match self.client.channels() {
                Ok(chs) if chs.is_empty() => {
                    self.info("no channels yet — /join <name> creates one")
                }
                Ok(chs) => {
                    let list: Vec<String> = chs
                        .iter()
                        .map(|c| {
                            let mark = if self.current.as_deref() == Some(c.as_str()) {
                                " (current)"
                            } else if self.joined.contains(c) {
                                " (joined)"
                            } else {
                                ""
                            };
                            format!("{}{mark}", sanitize(c))
                        })
                        .collect();
                    self.info(&format!("channels ({}): {}", chs.len(), list.join(", ")));
                }
                Err(e) => self.fail(&e, None, None),
            },
            Command::Status => match self.client.status() {
                Ok(s) => {
                    for line in render_status(&s) {
                        self.info(&line);
                    }
                }
                Err(e) => self.fail(&e, None, None),
            },
            Command::Join(ch) => {
                match self.client.create_channel(&ch) {
                    Ok(()) => self.info(&format!("created channel #{}", sanitize(&ch))),
                    Err(e) if e.code() == ErrorCode::AlreadyExists => {}
                    Err(e) => return self.failed(&e, Some(&ch), None),
                }
                self.enter(&ch, "joined");
            }
            Command::Subscribe(ch) => self.enter(&ch, "subscribed to"),
            Command::Leave(ch) => {
                let Some(ch) = ch.or_else(|| self.current.clone()) else {
                    self.error("you are not in a channel — /leave <channel> names one");
                    return Flow::Continue;
                };
                if !self.joined.contains(&ch) {
                    self.error(&format!("you are not in #{}", sanitize(&ch)));
                    return Flow::Continue;
                }
                if let Err(e) = self.client.unsubscribe(&ch) {
                    return self.failed(&e, Some(&ch), None);
                }
                self.joined.remove(&ch);
                if self.current.as_deref() == Some(ch.as_str()) {
                    self.current = self.joined.iter().next().cloned();
                }
                match &self.current {
                    Some(now_in) => self.info(&format!(
                        "left #{} — lines now go to #{}",
                        sanitize(&ch),
                        sanitize(now_in)
                    )),
                    None => self.info(&format!("left #{}", sanitize(&ch))),
                }
            }
            Command::Create(ch) => match self.client.create_channel(&ch) {
                Ok(()) => self.info(&format!(
                    "created channel #{0} — /join {0} to talk there",
                    sanitize(&ch)
                )),
                Err(e) => self.fail(&e, Some(&ch), None),
            },
            Command::Say(text) => {
                let Some(ch) = self.current.clone() else {
                    self.error(
                        "you are not in a channel — /join <channel> first (or /msg <user> <text>)",
                    );
                    return Flow::Continue;
                };
                // No local echo: the channel subscription brings the post back.
                if let Err(e) = self.client.publish(&self.me, &ch, &text) {
                    self.fail(&e, Some(&ch), None);
                }
            }
            Command::Publish { channel, text } => {
                match self.client.publish(&self.me, &channel, &text) {
                    Ok(()) if !self.joined.contains(&channel) => {
                        self.info(&format!("published to #{}", sanitize(&channel)))
                    }
                    Ok(()) => {}
                    Err(e) => self.fail(&e, Some(&channel), None),
                }
            }
            Command::Msg { user, text } => match self.client.send_message(&self.me, &user, &text) {
                Ok(()) if user != self.me => {
                    let echo = DirectPost {
                        src: self.me.clone(),
                        dst: user,
                        message: text,
                        timestamp: now(),
                        clock: self.client.clock(),
                        id: None,
                    };
                    out!("{}", render_direct(&echo, &self.opts));
                }
                Ok(()) => {}
                Err(e) => self.fail(&e, None, Some(&user)),
            },
            Command::History { target, limit } => {
                let target =
                    match target.or_else(|| self.current.clone().map(HistoryTarget::Channel)) {
                        Some(t) => t,
                        None => {
                            self.error("no current channel — /history <channel> or /history @user");
                            return Flow::Continue;
                        }
                    };
                let limit = limit.unwrap_or(DEFAULT_INTERACTIVE_HISTORY);
                let (ch, us, label) = match &target {
                    HistoryTarget::Channel(c) => {
                        (Some(c.clone()), None, format!("#{}", sanitize(c)))
                    }
                    HistoryTarget::User(u) => (None, Some(u.clone()), format!("@{}", sanitize(u))),
                };
                match self.client.history(target, None, limit) {
                    Ok(page) if page.items.is_empty() => {
                        self.info(&format!("no messages for {label} yet"))
                    }
                    Ok(page) => {
                        for item in &page.items {
                            out!("{}", render_publication(item, &self.opts));
                        }
                        if page.next.is_some() {
                            let more = (limit.saturating_mul(2)).min(MAX_HISTORY_LIMIT);
                            self.info(&format!(
                                "older messages exist — /history {label} {more} shows more"
                            ));
                        }
                    }
                    Err(e) => self.fail(&e, ch.as_deref(), us.as_deref()),
                }
            }
        }
        Flow::Continue
    }

    fn failed(&self, e: &ClientError, channel: Option<&str>, user: Option<&str>) -> Flow {
        self.fail(e, channel, user);
        Flow::Continue
    }

    fn enter(&mut self, ch: &str, verb: &str) {
        if let Err(e) = self.client.subscribe(ch) {
            self.fail(&e, Some(ch), None);
            return;
        }
        self.joined.insert(ch.to_string());
        self.current = Some(ch.to_string());
        self.info(&format!(
            "{verb} #{0} — lines you type now go to #{0}",
            sanitize(ch)
        ));
    }
}

fn run_interactive(cli: &ClientCli) -> ExitCode {
    let shutdown = crate::install_shutdown();
    let tty = io::stdin().is_terminal() && io::stdout().is_terminal();
    let in_readline = Arc::new(AtomicBool::new(false));
    let mut input = if tty {
        match rustyline::DefaultEditor::new() {
            Ok(editor) => Input::Tty {
                editor: Box::new(editor),
                in_readline: in_readline.clone(),
            },
            Err(e) => {
                tracing::debug!(error = %e, "no line editing; reading plain lines");
                Input::plain()
            }
        }
    } else {
        Input::plain()
    };
    let finished = Arc::new(AtomicBool::new(false));
    let saved_tty = if matches!(input, Input::Tty { .. }) {
        save_tty()
    } else {
        None
    };
    spawn_watchdog(
        shutdown.clone(),
        in_readline.clone(),
        finished.clone(),
        saved_tty,
    );
    let code = interactive_session(cli, &mut input, &shutdown, tty);
    finished.store(true, Ordering::SeqCst);
    code
}

fn interactive_session(
    cli: &ClientCli,
    input: &mut Input,
    shutdown: &Shutdown,
    tty: bool,
) -> ExitCode {
    let opts = RenderOptions {
        color: want_color(cli.no_color),
        utc_offset_secs: local_utc_offset(),
    };
    let err_line = |s: &str| out!("{}", paint(&opts, RED, &format!("! {s}")));
    let me = match &cli.user {
        Some(u) => u.trim().to_string(),
        None => loop {
            let name = match input.read("your name: ", shutdown) {
                Read::Line(l) => l.trim().to_string(),
                Read::End => return ExitCode::SUCCESS,
            };
            match validate_name(NameKind::User, &name) {
                Ok(()) => break name,
                Err(e) if tty => err_line(&code_sentence(
                    &e.code(),
                    &e.to_string(),
                    &ErrorContext::default(),
                )),
                Err(e) => {
                    err_line(&code_sentence(
                        &e.code(),
                        &e.to_string(),
                        &ErrorContext::default(),
                    ));
                    return ExitCode::FAILURE;
                }
            }
        },
    };
    let ctx = ErrorContext {
        broker: Some(&cli.broker),
        interactive: true,
        ..ErrorContext::default()
    };
    let client = match Client::connect(cli.client_config()) {
        Ok(c) => c,
        Err(e) => {
            err_line(&error_sentence(&e, &ctx));
            return ExitCode::FAILURE;
        }
    };
    if tty {
        out!(
            "{}",
            paint(
                &opts,
                DIM,
                &format!(
                    "* connecting to {} as {}…",
                    sanitize(&cli.broker),
                    sanitize(&me)
                )
            )
        );
    }
    if let Err(e) = client.login(&me) {
        err_line(&format!(
            "cannot log in as {}: {}",
            sanitize(&me),
            error_sentence(&e, &ctx)
        ));
        return ExitCode::FAILURE;
    }
    if let Err(e) = client.subscribe(&me) {
        err_line(&format!(
            "private messages will not be shown: {}",
            error_sentence(&e, &ctx)
        ));
    }

    // Incoming messages: through rustyline's external printer when there is one.
    let printer: Printer = match input {
        Input::Tty { editor, .. } => match editor.create_external_printer() {
            Ok(mut p) => {
                use rustyline::ExternalPrinter as _;
                Box::new(move |line: String| {
                    if p.print(format!("{line}\n")).is_err() {
                        out!("{line}");
                    }
                })
            }
            Err(_) => Box::new(|line: String| out!("{line}")),
        },
        Input::Plain { .. } => Box::new(|line: String| out!("{line}")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let printer_thread = spawn_event_printer(client.events().clone(), printer, opts, stop.clone());

    let mut session = Session {
        client: &client,
        me,
        broker: cli.broker.clone(),
        current: None,
        joined: BTreeSet::new(),
        opts,
    };
    session.banner();
    while !shutdown.is_triggered() {
        let line = match input.read(&session.prompt(), shutdown) {
            Read::Line(l) => l,
            Read::End => break,
        };
        let cmd = match parse_line(&line) {
            Ok(Command::Menu(choice)) => match session.ask_menu(choice, input, shutdown) {
                Some(Ok(cmd)) => cmd,
                Some(Err(e)) => {
                    session.error(&e);
                    continue;
                }
                None => continue,
            },
            Ok(cmd) => cmd,
            Err(e) => {
                session.error(&e);
                continue;
            }
        };
        if let Flow::Quit = session.execute(cmd) {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = printer_thread {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}
