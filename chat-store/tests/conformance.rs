//! The `Store` contract, checked against both implementations, and SQLite specifics.

mod common;

use chat_core::Event;
use chat_store::sqlite::{DB_FILE, SCHEMA_VERSION};
use chat_store::{MemoryStore, SqliteStore, Store, StoreError, StoreRead};
use common::{chan_hist, conformance, create, dm, ev, login, post};

#[test]
fn memory_store_conforms() {
    let mut store = MemoryStore::default();
    conformance(&mut store);
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("data")).unwrap();
    conformance(&mut store);
}

#[test]
fn stores_are_send_and_usable_as_trait_objects() {
    fn assert_send<T: Send>() {}
    assert_send::<SqliteStore>();
    assert_send::<MemoryStore>();
    let dir = tempfile::tempdir().unwrap();
    let boxed: Vec<Box<dyn Store>> = vec![
        Box::new(MemoryStore::default()),
        Box::new(SqliteStore::open(dir.path()).unwrap()),
    ];
    let handle = std::thread::spawn(move || boxed.len());
    assert_eq!(handle.join().unwrap(), 2);
}

fn sample() -> Vec<Event> {
    vec![
        ev("a", 1, 1, login("ana")),
        ev("a", 2, 2, create("geral")),
        ev("b", 1, 3, post("geral", "ana", "oi")),
        ev("b", 3, 5, dm("ana", "bia", "psiu")),
    ]
}

#[test]
fn sqlite_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("data");
    let events = sample();
    {
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.path(), path.join(DB_FILE));
        assert_eq!(store.append(&events).unwrap(), 4);
        store.set_meta("term", "7").unwrap();
    }
    assert!(path.join(DB_FILE).is_file());
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load_all().unwrap(), events);
    assert_eq!(store.get_meta("term").unwrap().as_deref(), Some("7"));
    assert_eq!(store.applied().unwrap()["b"], 1);
    assert_eq!(chan_hist(&store, "geral", None, 10), events[2..3]);
    // Dedup holds across reopen.
    assert_eq!(store.append(&events).unwrap(), 0);
    assert_eq!(store.append(&[ev("b", 2, 4, login("bia"))]).unwrap(), 1);
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.applied().unwrap()["b"], 3);
    assert_eq!(store.load_all().unwrap().len(), 5);
}

#[test]
fn sqlite_uses_wal_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let _store = SqliteStore::open(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn sqlite_refuses_unknown_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnsupportedSchema {
                found: 99,
                supported: SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("99"), "{err}");
}

#[test]
fn sqlite_reports_corrupt_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    store.append(&sample()).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();

    // A body that is not an event.
    conn.execute(
        "UPDATE events SET body = x'c1ffee' WHERE origin = 'a' AND seq = 1",
        [],
    )
    .unwrap();
    let err = store.load_all().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("a/1"), "{err}");
    // Other reads that do not touch the row still work.
    assert_eq!(store.events_after("b", 0, 10).unwrap().len(), 2);

    // A body of another event than the row says.
    let other = ev("a", 9, 1, login("ana"))
        .encode(chat_core::Encoding::MsgPack)
        .unwrap();
    conn.execute(
        "UPDATE events SET body = ?1 WHERE origin = 'a' AND seq = 1",
        [other],
    )
    .unwrap();
    let err = store.events_after("a", 0, 10).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

    // Wrong column types.
    conn.execute(
        "UPDATE events SET body = 'text' WHERE origin = 'b' AND seq = 1",
        [],
    )
    .unwrap();
    assert!(matches!(
        store
            .history(&chat_core::HistoryTarget::Channel("geral".into()), None, 10)
            .unwrap_err(),
        StoreError::Corrupt(_)
    ));
    conn.execute("INSERT INTO meta (key, value) VALUES ('k', x'00ff')", [])
        .unwrap();
    assert!(matches!(
        store.get_meta("k").unwrap_err(),
        StoreError::Corrupt(_)
    ));
}

#[test]
fn sqlite_two_handles_on_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = SqliteStore::open(dir.path()).unwrap();
    let mut b = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(a.append(&sample()[..2]).unwrap(), 2);
    assert_eq!(b.append(&sample()).unwrap(), 2);
    assert_eq!(a.load_all().unwrap(), sample());
}

#[test]
fn a_version_1_database_is_migrated_with_its_indexes() {
    // The schema of version 1: the events (and a channel index), nothing else.
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TABLE events (
            row INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, seq INTEGER NOT NULL,
            clock INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL, operation TEXT NOT NULL,
            channel TEXT, body BLOB NOT NULL, UNIQUE (origin, seq));
         CREATE INDEX events_channel_history ON events (channel, clock, origin, seq)
            WHERE channel IS NOT NULL;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
         INSERT INTO meta VALUES ('term', '3');
         PRAGMA user_version = 1;",
    )
    .unwrap();
    let mut events = sample();
    // Two copies of one request: only the first (smaller id) is visible.
    let mut copy1 = ev("a", 3, 9, post("geral", "ana", "twice"));
    copy1.request_id = Some("r".into());
    let mut copy2 = ev("b", 2, 8, post("geral", "ana", "twice"));
    copy2.request_id = Some("r".into());
    events.push(copy1);
    events.push(copy2);
    for e in &events {
        let channel = match &e.kind {
            chat_core::EventKind::ChannelMessage { channel, .. } => Some(channel.clone()),
            _ => None,
        };
        conn.execute(
            "INSERT INTO events (origin, seq, clock, timestamp_ms, operation, channel, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                e.id.origin,
                e.id.seq as i64,
                e.clock as i64,
                e.timestamp.millis(),
                e.kind.operation(),
                channel,
                e.encode(chat_core::Encoding::MsgPack).unwrap()
            ],
        )
        .unwrap();
    }
    drop(conn);

    let store = SqliteStore::open(dir.path()).unwrap();
    let mut reference = MemoryStore::default();
    reference.append(&events).unwrap();
    assert_eq!(
        store.load_all().unwrap(),
        events,
        "every event kept, in order"
    );
    assert_eq!(store.summary().unwrap(), reference.summary().unwrap());
    assert_eq!(
        chan_hist(&store, "geral", None, 10),
        chan_hist(&reference, "geral", None, 10)
    );
    assert_eq!(
        store.request_winner("r").unwrap().map(|e| e.id.origin),
        Some("a".to_string())
    );
    assert_eq!(store.get_meta("term").unwrap().as_deref(), Some("3"));
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}
