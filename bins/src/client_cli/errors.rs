//! Error sentences: what went wrong and what to do next, never a Debug dump.

use chat_core::ErrorCode;
use chat_net::client::ClientError;

use super::render::{clip, sanitize};

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
