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
//!
//! # Layout
//! - `flags`: [`ClientCli`] and the one-shot subcommands ([`OneShot`]).
//! - `parse`: typed lines and menu answers into a [`Command`].
//! - `render`: events, publications and statuses as terminal lines ([`RenderOptions`]).
//! - `errors`: a clear sentence for every error ([`ErrorContext`]).
//! - `one_shot`: one request per run, for scripts.
//! - `interactive`: the session with line editing, the menu and incoming messages.

use std::io;
use std::process::ExitCode;

/// `println!` that never panics: a closed stdout (`| head`) ends the process quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

/// Writes one line to stdout for [`out!`]; exits quietly when stdout is closed.
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

mod errors;
mod flags;
mod interactive;
mod one_shot;
mod parse;
mod render;

pub use errors::{code_sentence, error_sentence, ErrorContext};
pub use flags::{ClientCli, OneShot};
pub use interactive::DEFAULT_INTERACTIVE_HISTORY;
pub use parse::{
    help_lines, menu_command, menu_prompts, parse_line, parse_target, Command, MenuChoice,
};
pub use render::{
    format_time, local_utc_offset, parse_utc_offset, render_announcement, render_direct,
    render_event, render_post, render_publication, render_status, sanitize, RenderOptions,
};

/// Runs `chat-client` with parsed flags: interactive without a subcommand, one-shot with one.
pub fn run(cli: ClientCli) -> ExitCode {
    match cli.command.clone() {
        None => interactive::run_interactive(&cli),
        Some(cmd) => one_shot::run_one_shot(&cli, &cmd),
    }
}
