//! `chat-client` flags and one-shot subcommands.

use std::time::Duration;

use chat_core::Encoding;
use chat_net::client::ClientConfig;
use clap::builder::FalseyValueParser;
use clap::{Parser, Subcommand};

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
            ..ClientConfig::default()
        }
    }
}
