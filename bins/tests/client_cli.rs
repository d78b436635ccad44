//! Tests of `chat-client` and `chat-bot` that need no cluster: command parsing, menu
//! answers, rendering of events, statuses and errors, flags, the bot's random choices, and
//! the bot stopping promptly on shutdown while the cluster does not answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bins::bot::{
    is_fatal_login_error, pick_channel, pick_message, random_bot_name, run_bot, BotArgs, BotConfig,
    BOT_MESSAGES,
};
use bins::client_cli::{
    code_sentence, error_sentence, format_time, help_lines, menu_command, menu_prompts, parse_line,
    parse_target, parse_utc_offset, render_event, render_publication, render_status, sanitize,
    ClientCli, Command, ErrorContext, MenuChoice, OneShot, RenderOptions,
};
use chat_core::{
    Announcement, ChannelPost, DirectPost, Encoding, ErrorCode, HistoryTarget, Publication,
    ServerInfo, ServerStatus, Timestamp,
};
use chat_net::client::{ClientError, ClientEvent};
use chat_net::Shutdown;
use clap::{CommandFactory, Parser};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Flag parsing reads CHAT_* variables; tests that parse flags or set variables take this.
static ENV: Mutex<()> = Mutex::new(());

fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

const PLAIN: RenderOptions = RenderOptions {
    color: false,
    utc_offset_secs: 0,
};

/// 2025-11-12T10:00:00.123Z
const T: Timestamp = Timestamp::from_millis(1_762_941_600_123);

fn s(v: &str) -> String {
    v.to_string()
}

fn post(channel: &str, user: &str, message: &str) -> ChannelPost {
    ChannelPost {
        channel: s(channel),
        user: s(user),
        message: s(message),
        timestamp: T,
        clock: 7,
        id: None,
        rid: None,
        prev: None,
    }
}

fn direct(src: &str, dst: &str, message: &str) -> DirectPost {
    DirectPost {
        src: s(src),
        dst: s(dst),
        message: s(message),
        timestamp: T,
        clock: 8,
        id: Some(s("server-1/3")),
        rid: None,
        prev: None,
    }
}

// ----- parse_line -------------------------------------------------------------------------

#[test]
fn plain_lines_go_to_the_current_channel() {
    assert_eq!(parse_line("oi pessoal"), Ok(Command::Say(s("oi pessoal"))));
    assert_eq!(parse_line("  oi  "), Ok(Command::Say(s("oi"))));
    assert_eq!(parse_line("12"), Ok(Command::Say(s("12"))));
    assert_eq!(
        parse_line("5 minutes late"),
        Ok(Command::Say(s("5 minutes late")))
    );
    assert_eq!(parse_line("//join x"), Ok(Command::Say(s("/join x"))));
    assert_eq!(parse_line("/say 7"), Ok(Command::Say(s("7"))));
    assert!(parse_line("/say").is_err());
}

#[test]
fn blank_lines_do_nothing() {
    assert_eq!(parse_line(""), Ok(Command::Empty));
    assert_eq!(parse_line("   \t "), Ok(Command::Empty));
}

#[test]
fn seed_menu_numbers() {
    assert_eq!(parse_line("1"), Ok(Command::Users));
    assert_eq!(
        parse_line("2"),
        Ok(Command::Menu(MenuChoice::CreateChannel))
    );
    assert_eq!(parse_line("3"), Ok(Command::Channels));
    assert_eq!(parse_line(" 4 "), Ok(Command::Menu(MenuChoice::Subscribe)));
    assert_eq!(parse_line("5"), Ok(Command::Menu(MenuChoice::Publish)));
    assert_eq!(
        parse_line("6"),
        Ok(Command::Menu(MenuChoice::PrivateMessage))
    );
    assert_eq!(parse_line("7"), Ok(Command::Quit));
    assert_eq!(parse_line("0"), Ok(Command::Say(s("0"))));
    assert_eq!(parse_line("8"), Ok(Command::Say(s("8"))));
}

#[test]
fn join_leave_create_subscribe() {
    assert_eq!(parse_line("/join geral"), Ok(Command::Join(s("geral"))));
    assert_eq!(parse_line("/JOIN #geral"), Ok(Command::Join(s("geral"))));
    assert_eq!(parse_line("/j tech"), Ok(Command::Join(s("tech"))));
    assert!(parse_line("/join").is_err());
    assert!(parse_line("/join #").is_err());
    assert!(parse_line("/join a b")
        .unwrap_err()
        .contains("/join <channel>"));
    assert_eq!(parse_line("/leave"), Ok(Command::Leave(None)));
    assert_eq!(
        parse_line("/part #geral"),
        Ok(Command::Leave(Some(s("geral"))))
    );
    assert_eq!(parse_line("/create novo"), Ok(Command::Create(s("novo"))));
    assert_eq!(parse_line("/sub geral"), Ok(Command::Subscribe(s("geral"))));
}

#[test]
fn messages_keep_their_inner_spacing() {
    assert_eq!(
        parse_line("/msg bia oi,  tudo bem?"),
        Ok(Command::Msg {
            user: s("bia"),
            text: s("oi,  tudo bem?")
        })
    );
    assert_eq!(
        parse_line("/msg @bia oi"),
        Ok(Command::Msg {
            user: s("bia"),
            text: s("oi")
        })
    );
    assert_eq!(
        parse_line("/pub #geral bom dia"),
        Ok(Command::Publish {
            channel: s("geral"),
            text: s("bom dia")
        })
    );
    assert_eq!(
        parse_line("/msg bia").unwrap_err(),
        "usage: /msg <user> <text>"
    );
    assert!(parse_line("/msg").is_err());
    assert!(parse_line("/pub geral").is_err());
}

#[test]
fn simple_commands_and_aliases() {
    for (line, want) in [
        ("/users", Command::Users),
        ("/who", Command::Users),
        ("/channels", Command::Channels),
        ("/list", Command::Channels),
        ("/status", Command::Status),
        ("/help", Command::Help),
        ("/?", Command::Help),
        ("/quit", Command::Quit),
        ("/exit", Command::Quit),
        ("/Q", Command::Quit),
    ] {
        assert_eq!(parse_line(line), Ok(want), "{line}");
    }
}

#[test]
fn history_arguments_in_any_order() {
    let h = |target: Option<HistoryTarget>, limit: Option<u32>| Command::History { target, limit };
    assert_eq!(parse_line("/history"), Ok(h(None, None)));
    assert_eq!(
        parse_line("/history geral"),
        Ok(h(Some(HistoryTarget::Channel(s("geral"))), None))
    );
    assert_eq!(
        parse_line("/history @bia 5"),
        Ok(h(Some(HistoryTarget::User(s("bia"))), Some(5)))
    );
    assert_eq!(
        parse_line("/h 30 #tech"),
        Ok(h(Some(HistoryTarget::Channel(s("tech"))), Some(30)))
    );
    assert_eq!(parse_line("/history 10"), Ok(h(None, Some(10))));
    assert!(parse_line("/history 0").is_err());
    assert!(parse_line("/history 1001").is_err());
    assert!(parse_line("/history 99999999999999").is_err());
    assert!(parse_line("/history a b").is_err());
    assert!(parse_line("/history 1 2").is_err());
    assert!(parse_line("/history @").is_err());
}

#[test]
fn unknown_commands_are_explained() {
    let e = parse_line("/frobnicate x").unwrap_err();
    assert!(e.contains("/frobnicate") && e.contains("/help"), "{e}");
    assert!(parse_line("/").unwrap_err().contains("/help"));
    // Control characters typed (or pasted) never reach the terminal raw.
    assert!(!parse_line("/\x1b[31m").unwrap_err().contains('\x1b'));
}

#[test]
fn parse_line_never_panics_on_odd_input() {
    for line in [
        "/",
        "//",
        "///",
        "/ join",
        "/join\t#a",
        "ção",
        "/msg 😀 😀",
        "\u{0}",
        "/history @@",
        "/h ##",
        "/leave # extra",
    ] {
        let _ = parse_line(line);
    }
}

#[test]
fn targets() {
    assert_eq!(
        parse_target("geral"),
        Ok(HistoryTarget::Channel(s("geral")))
    );
    assert_eq!(
        parse_target("#geral"),
        Ok(HistoryTarget::Channel(s("geral")))
    );
    assert_eq!(parse_target("@bia"), Ok(HistoryTarget::User(s("bia"))));
    assert!(parse_target("@").is_err());
    assert!(parse_target("").is_err());
}

// ----- menu -------------------------------------------------------------------------------

#[test]
fn menu_questions_and_answers() {
    assert_eq!(menu_prompts(MenuChoice::Publish).len(), 2);
    assert_eq!(menu_prompts(MenuChoice::CreateChannel).len(), 1);
    assert_eq!(
        menu_command(MenuChoice::CreateChannel, &[s("novo")]),
        Ok(Command::Create(s("novo")))
    );
    assert_eq!(
        menu_command(MenuChoice::Subscribe, &[s(" #geral ")]),
        Ok(Command::Subscribe(s("geral")))
    );
    assert_eq!(
        menu_command(MenuChoice::Publish, &[s("geral"), s("oi pessoal")]),
        Ok(Command::Publish {
            channel: s("geral"),
            text: s("oi pessoal")
        })
    );
    assert_eq!(
        menu_command(MenuChoice::PrivateMessage, &[s("@bia"), s("oi")]),
        Ok(Command::Msg {
            user: s("bia"),
            text: s("oi")
        })
    );
    assert!(menu_command(MenuChoice::CreateChannel, &[s("a b")]).is_err());
    assert!(menu_command(MenuChoice::CreateChannel, &[]).is_err());
    assert!(menu_command(MenuChoice::Publish, &[s("geral"), s("  ")]).is_err());
    assert!(menu_command(MenuChoice::PrivateMessage, &[s("bia")]).is_err());
}

#[test]
fn help_mentions_every_command_and_the_menu() {
    let help = help_lines().join("\n");
    for cmd in [
        "/join",
        "/leave",
        "/msg",
        "/users",
        "/channels",
        "/history",
        "/status",
        "/help",
        "/quit",
    ] {
        assert!(help.contains(cmd), "{cmd}");
    }
    assert!(help.contains("7 exit"));
}

// ----- rendering --------------------------------------------------------------------------

#[test]
fn clock_format() {
    assert_eq!(format_time(T, 0), "10:00:00");
    assert_eq!(format_time(T, -3 * 3600), "07:00:00");
    assert_eq!(format_time(T, 14 * 3600 + 30 * 60), "00:30:00");
    assert_eq!(format_time(Timestamp::from_millis(0), 0), "--:--:--");
    assert_eq!(format_time(Timestamp::from_millis(-1_000), 0), "23:59:59");
}

#[test]
fn utc_offsets() {
    assert_eq!(parse_utc_offset("+0000\n"), Some(0));
    assert_eq!(parse_utc_offset("-0300"), Some(-3 * 3600));
    assert_eq!(parse_utc_offset("+0530"), Some(5 * 3600 + 30 * 60));
    assert_eq!(parse_utc_offset("+05:45"), Some(5 * 3600 + 45 * 60));
    assert_eq!(parse_utc_offset("UTC"), None);
    assert_eq!(parse_utc_offset("+2500"), None);
    assert_eq!(parse_utc_offset("+12"), None);
    assert_eq!(parse_utc_offset(""), None);
}

#[test]
fn channel_posts_render_with_time_channel_and_author() {
    let line = render_event(&ClientEvent::Post(post("geral", "ana", "oi")), &PLAIN);
    assert_eq!(line, "[10:00:00] #geral <ana> oi");
}

#[test]
fn private_messages_are_marked() {
    let line = render_event(&ClientEvent::Direct(direct("bia", "ana", "psiu")), &PLAIN);
    assert_eq!(line, "[10:00:00] [private] bia -> ana: psiu");
    assert_eq!(
        render_publication(&Publication::Direct(direct("ana", "bia", "oi")), &PLAIN),
        "[10:00:00] [private] ana -> bia: oi"
    );
    assert_eq!(
        render_publication(&Publication::Channel(post("tech", "c", "x")), &PLAIN),
        "[10:00:00] #tech <c> x"
    );
}

#[test]
fn colors_only_when_asked() {
    let colored = RenderOptions {
        color: true,
        utc_offset_secs: 0,
    };
    let line = render_event(&ClientEvent::Post(post("geral", "ana", "oi")), &colored);
    assert!(line.contains("\x1b["));
    assert!(line.ends_with(" oi"));
    let plain = render_event(&ClientEvent::Post(post("geral", "ana", "oi")), &PLAIN);
    assert!(!plain.contains('\x1b'));
}

#[test]
fn network_text_cannot_drive_the_terminal() {
    let evil = post(
        "geral\x1b[2J",
        "ana\x07",
        "a\x1b]0;owned\x07b\nsecond line\r\tx",
    );
    let line = render_event(&ClientEvent::Post(evil), &PLAIN);
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(!line.contains('\n'));
    assert_eq!(sanitize("a\nb"), "a↵b");
    assert_eq!(sanitize("tab\there"), "tab here");
    assert_eq!(sanitize("ção 😀"), "ção 😀");
}

#[test]
fn malformed_events_are_a_warning_line() {
    let e = ClientEvent::Malformed {
        topic: s("geral"),
        error: s("service `publication` needs the field `data.message`"),
    };
    let line = render_event(&e, &PLAIN);
    assert!(
        line.starts_with("! ignored a malformed message on topic geral"),
        "{line}"
    );
    let long = ClientEvent::Malformed {
        topic: "t".repeat(500),
        error: "x\u{1b}".repeat(1000),
    };
    let line = render_event(&long, &PLAIN);
    assert!(line.chars().count() < 400);
    assert!(!line.chars().any(char::is_control));
    let dim = render_event(
        &e,
        &RenderOptions {
            color: true,
            utc_offset_secs: 0,
        },
    );
    assert!(dim.starts_with("\x1b[2m"));
}

#[test]
fn coordinator_announcements() {
    let a = Announcement {
        coordinator: s("server-3"),
        term: 4,
        rank: 3,
    };
    assert_eq!(
        render_event(&ClientEvent::Coordinator(a), &PLAIN),
        "* server-3 is now the coordinator (term 4, rank 3)"
    );
}

#[test]
fn status_lines() {
    let st = ServerStatus {
        name: s("server-1"),
        rank: Some(2),
        coordinator: Some(s("server-3")),
        term: 5,
        lamport: 120,
        clock_offset_ms: -3,
        peers: vec![ServerInfo {
            name: s("server-3"),
            rank: 3,
            endpoint: None,
        }],
        users: 4,
        channels: 2,
        messages: 100,
        events: 130,
        digest: s("abc"),
        ..ServerStatus::default()
    };
    let lines = render_status(&st);
    assert_eq!(lines[0], "server: server-1 (rank 2)");
    assert!(lines.iter().any(|l| l == "coordinator: server-3 (term 5)"));
    assert!(lines.iter().any(|l| l == "clock offset: -3 ms"));
    let cristian = ServerStatus {
        clock_sync: Some(s("cristian")),
        ..st.clone()
    };
    assert!(render_status(&cristian)
        .iter()
        .any(|l| l == "clock offset: -3 ms (cristian sync)"));
    assert!(lines.iter().any(|l| l == "peers: server-3 (rank 3)"));
    assert!(lines
        .iter()
        .any(|l| l == "users: 4, channels: 2, messages: 100, events: 130"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("caught up with peers: not yet")));
    let empty = render_status(&ServerStatus::default());
    assert!(empty.iter().any(|l| l.contains("none known")));
    assert!(empty.iter().any(|l| l == "peers: none"));
}

// ----- error sentences --------------------------------------------------------------------

fn server(code: ErrorCode, description: &str) -> ClientError {
    ClientError::Server {
        code,
        description: s(description),
    }
}

const INTERACTIVE: ErrorContext<'static> = ErrorContext {
    channel: None,
    user: None,
    broker: None,
    interactive: true,
};

#[test]
fn unknown_channel_suggests_how_to_create_it() {
    let e = server(
        ErrorCode::UnknownChannel,
        "channel `x` does not exist; create it first",
    );
    let ctx = ErrorContext {
        channel: Some("x"),
        ..INTERACTIVE
    };
    assert_eq!(
        error_sentence(&e, &ctx),
        "channel x does not exist — /join x creates it"
    );
    let one_shot = ErrorContext {
        interactive: false,
        ..ctx
    };
    assert_eq!(
        error_sentence(&e, &one_shot),
        "channel x does not exist — `chat-client channel x` creates it"
    );
    assert!(error_sentence(&e, &INTERACTIVE).contains("/join <channel>"));
}

#[test]
fn timeout_points_at_the_cluster() {
    let e = ClientError::Timeout {
        attempts: 3,
        timeout: Duration::from_secs(3),
    };
    assert_eq!(
        error_sentence(&e, &INTERACTIVE),
        "the cluster does not answer (is `chat up` running?)"
    );
    let ctx = ErrorContext {
        broker: Some("tcp://127.0.0.1:5555"),
        ..INTERACTIVE
    };
    assert_eq!(
        error_sentence(&e, &ctx),
        "the cluster does not answer at tcp://127.0.0.1:5555 (is `chat up` running?)"
    );
}

#[test]
fn every_code_has_a_sentence_without_debug_dumps() {
    let codes: Vec<ErrorCode> = ErrorCode::KNOWN
        .into_iter()
        .chain([
            ErrorCode::Other(s("weird_code")),
            ErrorCode::Other(String::new()),
        ])
        .collect();
    for code in codes {
        for desc in ["", "some reason"] {
            let sentence = code_sentence(&code, desc, &INTERACTIVE);
            assert!(!sentence.is_empty(), "{code:?}");
            for debug in ["Server {", "code:", "ErrorCode", "Some(", "None"] {
                assert!(!sentence.contains(debug), "{code:?}: {sentence}");
            }
        }
    }
    assert!(code_sentence(&ErrorCode::RateLimited, "", &INTERACTIVE).contains("slow down"));
    assert!(code_sentence(&ErrorCode::Unavailable, "", &INTERACTIVE).contains("try again"));
    assert!(code_sentence(
        &ErrorCode::TooLarge,
        "message is 70000 bytes; the limit is 65536 bytes",
        &INTERACTIVE
    )
    .contains("70000 bytes"));
    assert!(
        code_sentence(&ErrorCode::Other(s("weird_code")), "", &INTERACTIVE).contains("weird_code")
    );
}

#[test]
fn name_errors_explain_the_rule() {
    let invalid = server(
        ErrorCode::InvalidName,
        "invalid channel name \"a b\": it contains whitespace",
    );
    let sentence = error_sentence(&invalid, &INTERACTIVE);
    assert!(sentence.contains("whitespace") && sentence.contains("64 characters"));
    let reserved = server(
        ErrorCode::ReservedName,
        "channel name `servers` is reserved for internal use",
    );
    assert!(error_sentence(&reserved, &INTERACTIVE).ends_with("pick another name"));
    let exists = server(ErrorCode::AlreadyExists, "channel `geral` already exists");
    let ctx = ErrorContext {
        channel: Some("geral"),
        ..INTERACTIVE
    };
    assert_eq!(
        error_sentence(&exists, &ctx),
        "channel geral already exists"
    );
    let unknown_user = server(ErrorCode::UnknownUser, "user `zé` does not exist");
    let ctx = ErrorContext {
        user: Some("zé"),
        ..INTERACTIVE
    };
    let sentence = error_sentence(&unknown_user, &ctx);
    assert!(sentence.starts_with("user zé does not exist") && sentence.contains("/users"));
}

#[test]
fn protocol_and_local_errors_are_sentences() {
    let e = ClientError::Protocol(s("unexpected reply Users([\"a\"])"));
    let sentence = error_sentence(&e, &INTERACTIVE);
    assert!(!sentence.contains("Users(["), "{sentence}");
    let local = ClientError::Invalid(chat_core::ChatError::RateLimited);
    assert!(error_sentence(&local, &INTERACTIVE).contains("slow down"));
    let hostile = server(ErrorCode::Internal, "disk \x1b[2J failed");
    assert!(!error_sentence(&hostile, &INTERACTIVE).contains('\x1b'));
}

// ----- flags ------------------------------------------------------------------------------

#[test]
fn clap_definitions_are_consistent() {
    ClientCli::command().debug_assert();
    BotArgs::command().debug_assert();
}

#[test]
fn client_flags_and_subcommands() {
    let _g = env_lock();
    let cli = ClientCli::try_parse_from([
        "chat-client",
        "--user",
        "ana",
        "--broker",
        "tcp://10.0.0.1:5555",
        "--sub",
        "tcp://10.0.0.1:5558",
        "--timeout-ms",
        "500",
        "--json",
        "publish",
        "geral",
        "oi",
        "pessoal",
    ])
    .expect("parse");
    assert_eq!(cli.user.as_deref(), Some("ana"));
    let cfg = cli.client_config();
    assert_eq!(cfg.broker, "tcp://10.0.0.1:5555");
    assert_eq!(cfg.sub, "tcp://10.0.0.1:5558");
    assert_eq!(cfg.timeout, Duration::from_millis(500));
    assert_eq!(cfg.encoding, Encoding::Json);
    assert_eq!(
        cli.command,
        Some(OneShot::Publish {
            channel: s("geral"),
            message: vec![s("oi"), s("pessoal")]
        })
    );

    let cli = ClientCli::try_parse_from([
        "chat-client",
        "listen",
        "geral",
        "@ana",
        "--count",
        "3",
        "--timeout-ms",
        "10000",
        "--user",
        "bia",
    ])
    .expect("parse listen");
    assert_eq!(cli.user.as_deref(), Some("bia"));
    assert_eq!(cli.timeout_ms, 3000, "listen's --timeout-ms is its own");
    assert_eq!(
        cli.command,
        Some(OneShot::Listen {
            topics: vec![s("geral"), s("@ana")],
            count: Some(3),
            timeout_ms: Some(10_000)
        })
    );

    let cli = ClientCli::try_parse_from(["chat-client", "history", "@bia", "--limit", "5"])
        .expect("parse history");
    assert_eq!(
        cli.command,
        Some(OneShot::History {
            target: s("@bia"),
            limit: 5,
            before: None
        })
    );
    let cli = ClientCli::try_parse_from(["chat-client"]).expect("interactive");
    assert!(cli.command.is_none());
    assert!(ClientCli::try_parse_from(["chat-client", "publish", "geral"]).is_err());
    assert!(ClientCli::try_parse_from(["chat-client", "frob"]).is_err());
}

#[test]
fn client_flags_fall_back_to_the_environment() {
    let _g = env_lock();
    std::env::set_var("CHAT_BROKER", "tcp://192.0.2.1:5555");
    std::env::set_var("CHAT_JSON", "1");
    std::env::set_var("CHAT_USER", "env_user");
    let cli = ClientCli::try_parse_from(["chat-client", "users"]);
    let bot = BotArgs::try_parse_from(["chat-bot"]);
    std::env::remove_var("CHAT_BROKER");
    std::env::remove_var("CHAT_JSON");
    std::env::remove_var("CHAT_USER");
    let cli = cli.expect("parse");
    assert_eq!(cli.broker, "tcp://192.0.2.1:5555");
    assert!(cli.json);
    assert_eq!(cli.user.as_deref(), Some("env_user"));
    let bot = bot.expect("parse bot").config();
    assert_eq!(bot.broker, "tcp://192.0.2.1:5555");
    assert_eq!(bot.encoding, Encoding::Json);

    let cli = ClientCli::try_parse_from(["chat-client", "status"]).expect("defaults");
    assert_eq!(cli.broker, chat_core::DEFAULT_BROKER_FRONTEND);
    assert_eq!(cli.sub, chat_core::DEFAULT_PROXY_XPUB);
    assert!(!cli.json);
}

#[test]
fn bot_flags() {
    let _g = env_lock();
    let cfg = BotArgs::try_parse_from(["chat-bot"])
        .expect("defaults")
        .config();
    assert_eq!(cfg.messages, 10);
    assert_eq!(cfg.interval, Duration::from_millis(2000));
    assert_eq!(cfg.iterations, 0);
    assert_eq!(cfg.name, None);
    assert_eq!(cfg.default_channel, "geral");
    assert_eq!(cfg.broker, chat_core::DEFAULT_BROKER_FRONTEND);
    let cfg = BotArgs::try_parse_from([
        "chat-bot",
        "--name",
        "bot_x",
        "--messages",
        "3",
        "--interval-ms",
        "10",
        "--iterations",
        "2",
        "--channel",
        "tech",
        "--seed",
        "42",
    ])
    .expect("parse")
    .config();
    assert_eq!(cfg.name.as_deref(), Some("bot_x"));
    assert_eq!(
        (cfg.messages, cfg.interval, cfg.iterations),
        (3, Duration::from_millis(10), 2)
    );
    assert_eq!(cfg.channel.as_deref(), Some("tech"));
    assert_eq!(cfg.seed, Some(42));
}

// ----- bot --------------------------------------------------------------------------------

#[test]
fn bot_names_are_seed_shaped() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..1000 {
        let name = random_bot_name(&mut rng);
        assert_eq!(name.len(), 9, "{name}");
        assert!(name.starts_with("bot_"));
        assert!(name[4..].bytes().all(|b| b.is_ascii_digit()), "{name}");
    }
}

#[test]
fn bot_messages_are_the_seed_ten() {
    assert_eq!(BOT_MESSAGES.len(), 10);
    assert_eq!(BOT_MESSAGES[0], "Olá, sou um bot!");
    assert_eq!(BOT_MESSAGES[9], "Mensagem gerada automaticamente");
    let mut rng = StdRng::seed_from_u64(7);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let m = pick_message(&mut rng);
        assert!(BOT_MESSAGES.contains(&m));
        seen.insert(m);
    }
    assert_eq!(seen.len(), 10, "every message gets picked");
}

#[test]
fn bot_channel_choice() {
    let mut rng = StdRng::seed_from_u64(3);
    assert_eq!(pick_channel(&[], &mut rng), None);
    let channels = vec![s("geral"), s("tech"), s("random")];
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        let c = pick_channel(&channels, &mut rng).expect("some");
        assert!(channels.iter().any(|x| x == c));
        seen.insert(c.to_string());
    }
    assert_eq!(seen.len(), 3);
    // Same seed, same choices.
    let a: Vec<_> = {
        let mut r = StdRng::seed_from_u64(9);
        (0..20).map(|_| pick_message(&mut r)).collect()
    };
    let b: Vec<_> = {
        let mut r = StdRng::seed_from_u64(9);
        (0..20).map(|_| pick_message(&mut r)).collect()
    };
    assert_eq!(a, b);
}

#[test]
fn only_name_refusals_stop_the_bot_at_login() {
    assert!(is_fatal_login_error(&ErrorCode::InvalidName));
    assert!(is_fatal_login_error(&ErrorCode::ReservedName));
    for code in [
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::BadRequest,
    ] {
        assert!(!is_fatal_login_error(&code), "{code:?}");
    }
}

#[test]
fn bot_refuses_a_bad_name_before_connecting() {
    let cfg = BotConfig {
        name: Some(s("servers")),
        ..BotConfig::default()
    };
    let err = run_bot(&cfg, &Shutdown::new()).expect_err("reserved name");
    assert!(format!("{err:#}").contains("reserved"));
}

/// Nothing listens on the endpoints: the bot keeps retrying its login until shutdown, then
/// stops within ~100 ms even though a request is waiting for its reply.
#[test]
fn bot_stops_promptly_while_the_cluster_is_silent() {
    let cfg = BotConfig {
        broker: s("tcp://127.0.0.1:9"),
        sub: s("tcp://127.0.0.1:9"),
        timeout: Duration::from_secs(5),
        attempts: 3,
        error_pause: Duration::from_millis(20),
        ..BotConfig::default()
    };
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    let raiser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        trigger.trigger();
        Instant::now()
    });
    let stats = run_bot(&cfg, &shutdown).expect("a silent cluster is not an error");
    let stopped = Instant::now();
    let raised = raiser.join().expect("raiser");
    let lag = stopped.saturating_duration_since(raised);
    assert!(lag < Duration::from_millis(250), "took {lag:?} to stop");
    assert_eq!(stats.sent, 0);
    assert_eq!(stats.rounds, 0);
}
