//! Interactive mode: logs in, subscribes to the user's own topic and reads commands (the
//! seed's numbered menu and `/commands`); rustyline on a terminal, plain lines otherwise.

use std::collections::BTreeSet;
use std::io::{self, BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_core::protocol::MAX_HISTORY_LIMIT;
use chat_core::validate::validate_name;
use chat_core::{DirectPost, ErrorCode, HistoryTarget, NameKind, Timestamp};
use chat_net::client::{Client, ClientError, ClientEvent};
use chat_net::Shutdown;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::emit;
use super::errors::{code_sentence, error_sentence, ErrorContext};
use super::flags::ClientCli;
use super::parse::{help_lines, menu_command, menu_prompts, parse_line, Command, MenuChoice};
use super::render::{
    local_utc_offset, paint, render_direct, render_event, render_publication, render_status,
    sanitize, want_color, RenderOptions, DIM, RED,
};

/// Messages shown by `/history` when no count is given.
pub const DEFAULT_INTERACTIVE_HISTORY: u32 = 20;

/// The wall clock as a wire timestamp (for the local echo of a private message).
fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}

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
            Command::Users => match self.client.users().map(without_probes) {
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
            Command::Channels => match self.client.channels().map(without_probes) {
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
                        rid: None,
                        prev: None,
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

/// Runs the interactive session and returns the process's exit code.
pub(super) fn run_interactive(cli: &ClientCli) -> ExitCode {
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

/// A list of names without the cluster check's probe user and channel (not for people).
fn without_probes(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !chat_core::validate::is_probe_name(n))
        .collect()
}
