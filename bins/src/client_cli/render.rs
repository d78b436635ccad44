//! Rendering of what arrives (posts, private messages, announcements) and of statuses as
//! terminal lines: sanitized, optionally colored, with local times.

use std::io::{self, IsTerminal};
use std::sync::OnceLock;

use chat_core::{Announcement, ChannelPost, DirectPost, Publication, ServerStatus, Timestamp};
use chat_net::client::ClientEvent;

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
pub(super) const DIM: &str = "\x1b[2m";
pub(super) const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";
const AUTHOR_COLORS: [&str; 6] = [
    "\x1b[32m", "\x1b[33m", "\x1b[34m", "\x1b[35m", "\x1b[36m", "\x1b[91m",
];

/// `text` in ANSI color `code` when colors are on.
pub(super) fn paint(opts: &RenderOptions, code: &str, text: &str) -> String {
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

/// `s` cut to `max` characters, with an ellipsis when cut.
pub(super) fn clip(s: &str, max: usize) -> String {
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
        match s.clock_sync.as_deref() {
            Some(sync) => format!(
                "clock offset: {:+} ms ({} sync)",
                s.clock_offset_ms,
                sanitize(sync)
            ),
            None => format!("clock offset: {:+} ms", s.clock_offset_ms),
        },
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

/// Whether to color output: not refused by the flag or `NO_COLOR`, a capable terminal.
pub(super) fn want_color(no_color: bool) -> bool {
    !no_color
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
        && io::stdout().is_terminal()
}
