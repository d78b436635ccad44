//! `export_seed_files` writes the seed shapes (seed 000, "Persistência").

mod common;

use chat_core::Timestamp;
use chat_store::export::{
    export_seed_files, ExportSummary, CHANNELS_FILE, MESSAGES_FILE, PUBLICATIONS_FILE, USERS_FILE,
};
use chat_store::{MemoryStore, SqliteStore, Store};
use common::{create, dm, ev, login, post, T0};
use serde_json::{json, Value};

fn read(dir: &std::path::Path, name: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    assert!(text.contains("\n  "), "{name} is pretty-printed");
    serde_json::from_str(&text).unwrap()
}

fn iso(ms: i64) -> String {
    Timestamp(ms).to_iso()
}

fn fill(store: &mut dyn Store) {
    store
        .append(&[
            ev("a", 1, 1, login("ana")),
            ev("b", 1, 2, login("bia")),
            ev("a", 2, 3, create("geral")),
            ev("b", 2, 3, create("tech")),
            ev("a", 3, 5, login("ana")),
            // Appended before the older post: the file is in history order.
            ev("a", 4, 9, post("tech", "ana", "depois")),
            ev("b", 3, 6, post("geral", "bia", "Olá todos!")),
            ev("a", 5, 7, dm("ana", "bia", "Oi!")),
            ev("b", 4, 7, dm("bia", "ana", "Oi, ana")),
        ])
        .unwrap();
}

fn check(store: &dyn Store) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let summary = export_seed_files(store, &out).unwrap();
    assert_eq!(
        summary,
        ExportSummary {
            users: 2,
            logins: 3,
            channels: 2,
            messages: 2,
            publications: 2,
        }
    );
    // ev() sets the timestamp to T0 + 1000 * clock + seq.
    let t = |clock: i64, seq: i64| iso(T0 + 1_000 * clock + seq);
    assert_eq!(
        read(&out, USERS_FILE),
        json!({"ana": [t(1, 1), t(5, 3)], "bia": [t(2, 1)]})
    );
    assert_eq!(read(&out, CHANNELS_FILE), json!(["geral", "tech"]));
    assert_eq!(
        read(&out, MESSAGES_FILE),
        json!([
            {"src": "ana", "dst": "bia", "message": "Oi!", "timestamp": t(7, 5), "clock": 7},
            {"src": "bia", "dst": "ana", "message": "Oi, ana", "timestamp": t(7, 4), "clock": 7},
        ])
    );
    assert_eq!(
        read(&out, PUBLICATIONS_FILE),
        json!([
            {"channel": "geral", "user": "bia", "message": "Olá todos!", "timestamp": t(6, 3), "clock": 6},
            {"channel": "tech", "user": "ana", "message": "depois", "timestamp": t(9, 4), "clock": 9},
        ])
    );
    // Timestamps are ISO-8601 that chat-core reads back.
    assert_eq!(
        Timestamp::parse_iso(&t(1, 1)).unwrap(),
        Timestamp(T0 + 1_001)
    );
    // Field order follows the seed.
    let text = std::fs::read_to_string(out.join(MESSAGES_FILE)).unwrap();
    let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    assert!(pos("src") < pos("dst") && pos("dst") < pos("message"));
    assert!(pos("message") < pos("timestamp") && pos("timestamp") < pos("clock"));
    // No temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [CHANNELS_FILE, MESSAGES_FILE, PUBLICATIONS_FILE, USERS_FILE]
    );

    // Exporting again replaces the files.
    export_seed_files(store, &out).unwrap();
    assert_eq!(read(&out, CHANNELS_FILE), json!(["geral", "tech"]));
}

#[test]
fn export_from_memory_store() {
    let mut store = MemoryStore::default();
    fill(&mut store);
    check(&store);
}

#[test]
fn export_from_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    fill(&mut store);
    check(&store);
}

#[test]
fn export_of_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let summary = export_seed_files(&MemoryStore::default(), dir.path()).unwrap();
    assert_eq!(summary, ExportSummary::default());
    assert_eq!(read_compact(dir.path(), USERS_FILE), json!({}));
    assert_eq!(read_compact(dir.path(), CHANNELS_FILE), json!([]));
    assert_eq!(read_compact(dir.path(), MESSAGES_FILE), json!([]));
    assert_eq!(read_compact(dir.path(), PUBLICATIONS_FILE), json!([]));
}

fn read_compact(dir: &std::path::Path, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

/// `e` as the answer to client request `rid`.
fn answering(rid: &str, mut e: chat_core::Event) -> chat_core::Event {
    e.request_id = Some(rid.into());
    e
}

/// A request accepted twice (the broker re-dispatched it to server `b` while `a` held it)
/// is stored twice on every server but exported once, the same copy everywhere: the one
/// `history` shows (smallest event id).
#[test]
fn a_request_accepted_by_two_servers_is_exported_once_on_each() {
    let base = [
        ev("a", 1, 1, login("ana")),
        ev("a", 2, 2, create("geral")),
        answering("r-post", ev("a", 3, 5, post("geral", "ana", "uma vez"))),
        answering("r-dm", ev("a", 4, 6, dm("ana", "ana", "só uma"))),
        answering("r-login", ev("a", 5, 7, login("bia"))),
    ];
    let copies = [
        answering("r-post", ev("b", 1, 4, post("geral", "ana", "uma vez"))),
        answering("r-dm", ev("b", 2, 8, dm("ana", "ana", "só uma"))),
        answering("r-login", ev("b", 3, 9, login("bia"))),
    ];
    // Server a got its own copies first; server b its own first, then a's by replication.
    let mut on_a = MemoryStore::default();
    on_a.append(&base).unwrap();
    on_a.append(&copies).unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut on_b = SqliteStore::open(dir_b.path()).unwrap();
    on_b.append(&copies).unwrap();
    on_b.append(&base).unwrap();

    let t = |clock: i64, seq: i64| iso(T0 + 1_000 * clock + seq);
    let mut exported = Vec::new();
    for store in [&on_a as &dyn Store, &on_b] {
        let out = tempfile::tempdir().unwrap();
        let summary = export_seed_files(store, out.path()).unwrap();
        assert_eq!(
            summary,
            ExportSummary {
                users: 2,
                logins: 2,
                channels: 1,
                messages: 1,
                publications: 1,
            }
        );
        // The kept copies are a's (event id a/… < b/…), whichever arrived first.
        assert_eq!(
            read(out.path(), PUBLICATIONS_FILE),
            json!([{"channel": "geral", "user": "ana", "message": "uma vez", "timestamp": t(5, 3), "clock": 5}])
        );
        assert_eq!(
            read(out.path(), MESSAGES_FILE),
            json!([{"src": "ana", "dst": "ana", "message": "só uma", "timestamp": t(6, 4), "clock": 6}])
        );
        assert_eq!(
            read(out.path(), USERS_FILE),
            json!({"ana": [t(1, 1)], "bia": [t(7, 5)]})
        );
        exported.push(
            [USERS_FILE, CHANNELS_FILE, MESSAGES_FILE, PUBLICATIONS_FILE]
                .map(|f| std::fs::read_to_string(out.path().join(f)).unwrap()),
        );
    }
    assert_eq!(
        exported[0], exported[1],
        "both servers export the same files"
    );
}
