//! One-shot mode: one request per run, one line per item on stdout (or JSON), exit code
//! 0 on success and 1 with a sentence on stderr otherwise.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chat_core::protocol::MAX_HISTORY_LIMIT;
use chat_core::{Encoding, ErrorCode, HistoryTarget, Publication};
use chat_net::client::{Client, ClientError, ClientEvent};
use crossbeam_channel::RecvTimeoutError;

use super::emit;
use super::errors::{error_sentence, ErrorContext};
use super::flags::{ClientCli, OneShot};
use super::parse::parse_target;
use super::render::{
    clip, local_utc_offset, render_event, render_publication, render_status, sanitize, want_color,
    RenderOptions,
};

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

/// Runs one subcommand and returns the process's exit code.
pub(super) fn run_one_shot(cli: &ClientCli, cmd: &OneShot) -> ExitCode {
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
                // The cluster check's probe user and channel are not for people.
                let items: Vec<String> = items
                    .into_iter()
                    .filter(|n| !chat_core::validate::is_probe_name(n))
                    .collect();
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
