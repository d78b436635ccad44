//! Typed lines and menu answers into commands: pure functions, tested without a cluster.

use chat_core::protocol::MAX_HISTORY_LIMIT;
use chat_core::HistoryTarget;

use super::render::sanitize;

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
