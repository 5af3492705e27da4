//! Issue 8: what an operator relies on: adopting an old table with hostile rows, `check`,
//! and `backup` of a running hub.

use std::time::Duration;

use serde_json::{Value, json};
use timelapse_events::NewEvent;

use crate::support::{
    EmitOk, SseClient, TestHub, WAIT, http, hub_stats, run_bin, scribble_over_events_table,
    wait_until,
};

/// The table of the design we replace: same columns, no CHECKs, no seq.
const LEGACY_SCHEMA: &str = "CREATE TABLE sse_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL,
    event_data TEXT NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    processed_at TIMESTAMP,
    retry_count INTEGER DEFAULT 0,
    priority TEXT DEFAULT 'normal',
    source TEXT DEFAULT 'system'
)";

/// `backup` of the hub's database to `dest`.
fn backup(hub: &TestHub, dest: &std::path::Path) -> (std::process::ExitStatus, String, String) {
    let db = hub.db_path();
    let (db, dest) = (db.to_str().expect("utf-8"), dest.to_str().expect("utf-8"));
    run_bin(&["backup", "--db", db, "--to", dest])
}

#[test]
fn hostile_rows_in_an_adopted_legacy_table_are_skipped_counted_and_never_block() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("legacy.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch(LEGACY_SCHEMA).expect("legacy schema");
        let rows: [(&str, &str, &str); 7] = [
            ("good_1", r#"{"n":1}"#, "normal"),
            ("bad\ntype", r#"{"n":2}"#, "normal"),
            ("good_2", "this is not json", "normal"),
            ("good_3", r#"[1,2,3]"#, "normal"),
            ("good_4", r#"{"n":5}"#, "urgent"),
            ("good_5", "{\n  \"pretty\": true\n}", "normal"),
            ("good_6", r#"{"n":7}"#, "normal"),
        ];
        for (t, d, p) in rows {
            conn.execute(
                "INSERT INTO sse_events (event_type, event_data, priority) VALUES (?1, ?2, ?3)",
                (t, d, p),
            )
            .expect("legacy insert");
        }
        // One row the old design had already processed: history, never re-sent.
        conn.execute("INSERT INTO sse_events (event_type, event_data, processed_at) VALUES ('old', '{}', CURRENT_TIMESTAMP)", [])
            .expect("processed row");
    }
    let mut hub = TestHub::start_with(|c| c.db_path = db.clone());
    let stream = http(hub.addr(), "GET", "/api/state", &[], b"").json()["cursor"]
        .as_str()
        .unwrap_or("")
        .split('-')
        .next()
        .unwrap_or("")
        .to_owned();
    let mut c = SseClient::connect(hub.addr(), &format!("/api/events?last_event_id={stream}-0"));
    let got: Vec<String> = c
        .take(3)
        .iter()
        .map(|e| e.json()["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(got, ["good_1", "good_5", "good_6"]);
    assert!(
        c.next_event(Duration::from_millis(300)).is_none(),
        "bad and already-processed rows are not sent"
    );
    let pretty = {
        let mut c =
            SseClient::connect(hub.addr(), &format!("/api/events?last_event_id={stream}-1"));
        c.next_event(WAIT).expect("pretty row")
    };
    assert_eq!(
        pretty.json()["data"]["pretty"],
        true,
        "a multi-line payload goes out as one data line"
    );
    let stats = hub_stats(hub.addr());
    assert_eq!(stats["rejected_rows"], 4, "{stats}");
    assert_eq!(stats["pending"], 0, "nothing blocks the queue");
    // New events flow behind them, and a restart does not retry the bad rows.
    hub.emitter().emit_ok(NewEvent::new("after", json!({})));
    assert_eq!(c.next_event(WAIT).expect("live").json()["type"], "after");
    hub.restart();
    let stats = hub_stats(hub.addr());
    assert_eq!(
        (stats["pending"].as_i64(), stats["rejected_rows"].as_i64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    // The adopted table now has every column of the contract.
    let conn = rusqlite::Connection::open(&db).expect("open");
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('sse_events')")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("columns");
    assert!(cols.contains(&"seq".to_owned()), "{cols:?}");
}

#[test]
fn check_reports_a_healthy_database_and_fails_on_a_damaged_one() {
    let mut hub = TestHub::start();
    for i in 0..5 {
        hub.emitter().emit_ok(NewEvent::image_captured(1, 1, i, 1));
    }
    assert!(wait_until(WAIT, || hub_stats(hub.addr())["dispatched"] == 5));
    let db = hub.db_path();
    let db_s = db.to_str().expect("utf-8").to_owned();
    // While the hub runs.
    let (status, out, err) = run_bin(&["check", "--db", &db_s]);
    assert!(status.success(), "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["integrity"], "ok");
    assert_eq!(report["ok"], true);
    assert_eq!(report["schema_version"], timelapse_events::SCHEMA_VERSION);
    assert_eq!(report["dispatched"], 5);
    assert!(report["wal_bytes"].as_u64().is_some());
    hub.stop().expect("stop");
    scribble_over_events_table(&db);
    let (status, out, err) = run_bin(&["check", "--db", &db_s]);
    assert_eq!(
        status.code(),
        Some(1),
        "a damaged file fails the check: {out}{err}"
    );
    assert!(err.contains("error:"), "{err}");
    let missing = run_bin(&["check", "--db", "/nonexistent/dir/x.db"]);
    assert_eq!(missing.0.code(), Some(1));
    assert!(missing.2.contains("does not exist"), "{}", missing.2);
}

#[test]
fn backup_of_a_running_hub_is_a_consistent_standalone_copy() {
    let hub = TestHub::start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (e, stop) = (hub.emitter(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                e.emit_ok(NewEvent::image_captured(1, 1, n, 1));
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let dest = hub.dir.path().join("backup.db");
    let (status, out, err) = backup(&hub, &dest);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let emitted = producer.join().expect("producer");
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("backed up"), "{out}");
    assert!(
        !hub.dir.path().join("backup.db-wal").exists(),
        "a standalone file"
    );
    let (status, out, _) = run_bin(&["check", "--db", dest.to_str().expect("utf-8")]);
    assert!(status.success(), "{out}");
    let conn = rusqlite::Connection::open(&dest).expect("open copy");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM sse_events", [], |r| r.get(0))
        .expect("count");
    assert!(
        n > 0 && n <= emitted,
        "a snapshot of what was committed: {n} of {emitted}"
    );
    // Refuses to overwrite.
    let (status, _, err) = backup(&hub, &dest);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");
}

/// A file whose `user_version` no timelapse-events ever wrote: a clear error and exit 1
/// from every subcommand, never a panic (exit 101); `check` names the problem as a failed
/// check.
#[test]
fn an_unknown_schema_version_is_refused_with_a_message_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("odd.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.pragma_update(None, "user_version", -1))
        .expect("write user_version -1");
    let db_s = db.to_str().expect("utf-8");
    for cmd in ["stats", "cleanup"] {
        let (status, out, err) = run_bin(&[cmd, "--db", db_s]);
        assert_eq!(status.code(), Some(1), "{cmd}: {out}{err}");
        assert!(err.contains("schema version -1 is not one"), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
    let (status, out, err) = run_bin(&["check", "--db", db_s]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.starts_with("error: check failed: schema version -1"),
        "{err}"
    );
    assert!(!err.contains("thread"), "{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["ok"], false);
}
