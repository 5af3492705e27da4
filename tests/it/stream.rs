//! Issue 3: live streams over real TCP: framing, filters, heartbeats, resume and reset,
//! POST ingest, CORS and graceful shutdown.

use std::time::{Duration, Instant};

use serde_json::json;
use timelapse_events::NewEvent;

use crate::support::{
    EmitOk, SseClient, TestHub, WAIT, http, hub_stats, open_streams, post_json, sql_value,
    wait_until,
};

#[test]
fn each_event_arrives_while_the_stream_stays_open_on_http11_and_http10() {
    let hub = TestHub::start();
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let mut c = SseClient::connect_with(hub.addr(), "/api/events", &[], version);
        assert_eq!(c.status, 200);
        assert_eq!(
            c.header("Content-Type"),
            Some("text/event-stream; charset=utf-8")
        );
        assert_eq!(c.header("Cache-Control"), Some("no-cache, no-transform"));
        assert_eq!(c.header("X-Accel-Buffering"), Some("no"));
        if version == "HTTP/1.0" {
            assert_eq!(c.header("Transfer-Encoding"), None);
            assert_eq!(c.header("Connection"), Some("close"));
        } else {
            assert_eq!(c.header("Transfer-Encoding"), Some("chunked"));
        }
        for i in 0..5 {
            // One at a time: each must arrive on its own, before the next exists.
            let id = hub
                .emitter()
                .emit_ok(NewEvent::new("ping", json!({"i": i})));
            let e = c
                .next_event(WAIT)
                .unwrap_or_else(|| panic!("{version}: event {i} not delivered"));
            assert_eq!(e.json()["id"], id.0);
            assert_eq!(e.json()["data"]["i"], i);
            assert!(!c.ended, "{version}: stream closed after an event");
        }
        assert!(c.comments >= 1, "the prelude comment fires `open` at once");
    }
}

#[test]
fn filters_and_named_events_select_and_label_frames() {
    let hub = TestHub::start();
    let mut by_type = SseClient::connect(
        hub.addr(),
        "/api/events?types=camera_status_changed%2Ctimelapse_status_changed",
    );
    let mut by_camera = SseClient::connect(hub.addr(), "/api/events?camera_id=2");
    let mut named = SseClient::connect(hub.addr(), "/api/events?named=1&types=image_captured");
    let e = hub.emitter();
    e.emit_ok(NewEvent::image_captured(1, 1, 1, 1));
    e.emit_ok(NewEvent::camera_status_changed(2, "offline", "unreachable"));
    e.emit_ok(NewEvent::image_captured(2, 5, 7, 1));
    e.emit_ok(NewEvent::timelapse_status_changed(1, 1, "paused"));
    let types: Vec<String> = by_type
        .take(2)
        .iter()
        .map(|e| e.json()["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(types, ["camera_status_changed", "timelapse_status_changed"]);
    let cams: Vec<(String, i64)> = by_camera
        .take(2)
        .iter()
        .map(|e| {
            (
                e.json()["type"].as_str().unwrap_or("").to_owned(),
                e.json()["data"]["camera_id"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        cams,
        [
            ("camera_status_changed".to_owned(), 2),
            ("image_captured".to_owned(), 2)
        ]
    );
    let n = named.take(2);
    assert!(
        n.iter()
            .all(|e| e.event.as_deref() == Some("image_captured")),
        "{n:?}"
    );
    for c in [&mut by_type, &mut by_camera, &mut named] {
        assert!(
            c.next_event(Duration::from_millis(200)).is_none(),
            "filtered out"
        );
    }
    // A filter that cannot match anything is a client error, not a silent empty stream.
    let bad = http(hub.addr(), "GET", "/api/events?camera_id=two", &[], b"");
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("camera_id"));
    let bad = http(hub.addr(), "GET", "/api/events?types=a%0Ab", &[], b"");
    assert_eq!(bad.status, 400);
}

#[test]
fn idle_streams_get_bare_comment_heartbeats_at_the_interval() {
    let hub = TestHub::start_with(|c| c.heartbeat_interval = Duration::from_millis(200));
    let mut c = SseClient::connect(hub.addr(), "/api/events");
    // Count from the prelude's `: connected` comment, so five heartbeats are awaited.
    assert!(c.wait_comments(1, WAIT), "the prelude's comment");
    let start = Instant::now();
    let before = c.comments;
    assert!(c.wait_comments(before + 5, WAIT), "five heartbeats");
    let took = start.elapsed();
    // A sanity bound only (a hang guard): five intervals cannot pass in under four.
    assert!(
        took >= Duration::from_millis(800),
        "heartbeats too frequent: {took:?}"
    );
    assert!(
        c.next_event(Duration::from_millis(50)).is_none(),
        "heartbeats are not events"
    );
    // An event resets the silence; the stream carries on.
    hub.emitter().emit_ok(NewEvent::new("x", json!({})));
    assert!(c.next_event(WAIT).is_some());
}

#[test]
fn bad_foreign_future_and_pruned_cursors_get_reset_then_live_events() {
    let hub = TestHub::start_with(|c| {
        c.retention_max_rows = Some(5);
        c.retention_interval = Duration::from_millis(50);
    });
    let e = hub.emitter();
    let mut first = SseClient::connect(hub.addr(), "/api/events");
    for i in 0..20 {
        e.emit_ok(NewEvent::new("n", json!({"i": i})));
    }
    let all = first.take(20);
    let old_cursor = all[2].id.clone().expect("id");
    let stream = old_cursor.split('-').next().expect("stream").to_owned();
    // Retention keeps 5, so seq 3 is gone.
    assert!(wait_until(
        WAIT,
        || hub_stats(hub.addr())["pruned_through_seq"] == 15
    ));
    let cases = [
        ("DROP TABLE sse_events;--", "malformed cursor"),
        ("0badf00d-3", "cursor is from another database"),
        (
            &*format!("{stream}-999"),
            "cursor is ahead of this database",
        ),
        (
            &*old_cursor,
            "events after this cursor were deleted by retention",
        ),
    ];
    for (round, (cursor, reason)) in cases.into_iter().enumerate() {
        let mut c = SseClient::resume(hub.addr(), "/api/events", cursor);
        assert_eq!(
            c.status, 200,
            "a browser EventSource gives up on anything else"
        );
        let reset = c.next_event(WAIT).expect("reset frame");
        assert_eq!(reset.event.as_deref(), Some("reset"), "{cursor}");
        assert_eq!(reset.json()["reason"], reason);
        let head = format!("{stream}-{}", 20 + round);
        assert_eq!(reset.id.as_deref(), Some(&*head), "reset carries the head");
        let id = e.emit_ok(NewEvent::new("after_reset", json!({})));
        let live = c.next_event(WAIT).expect("live after reset");
        assert_eq!(live.json()["id"], id.0);
        first.take(1);
    }
    // The query parameter works too, and the header wins over it. The head is now 24 and
    // retention keeps 5 (seq 20..=24), so resume from seq 20.
    let good = all[19].id.clone().expect("id");
    let mut c = SseClient::connect_with(
        hub.addr(),
        &format!("/api/events?last_event_id={stream}-999"),
        &[("Last-Event-ID", &good)],
        "HTTP/1.1",
    );
    let next = c.next_event(WAIT).expect("replayed");
    assert_eq!(next.seq(), 21, "resumed from the header's cursor");
}

#[test]
fn post_stores_events_and_refuses_bad_requests_with_json_errors() {
    let hub = TestHub::start();
    let mut c = SseClient::connect(hub.addr(), "/api/events");
    let ok = post_json(
        hub.addr(),
        r#"{"type":"image_captured","data":{"camera_id":3,"image_count":9},"priority":"high","source":"cam-3"}"#,
        &[],
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    let id = ok.json()["id"].as_i64().expect("id");
    let e = c.next_event(WAIT).expect("posted event streamed");
    assert_eq!(
        (
            e.json()["id"].as_i64(),
            e.json()["priority"].as_str(),
            e.json()["source"].as_str()
        ),
        (Some(id), Some("high"), Some("cam-3"))
    );
    // The table's own column names are accepted too.
    let ok = post_json(hub.addr(), r#"{"event_type":"x","event_data":{}}"#, &[]);
    assert_eq!(ok.status, 201, "{}", ok.text());
    const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];
    const TEXT: &[(&str, &str)] = &[("Content-Type", "text/plain")];
    const NONE: &[(&str, &str)] = &[];
    let cases = [
        ("{not json", JSON, 400, "invalid JSON"),
        (r#"{"type":"a b","data":{}}"#, JSON, 400, "type"),
        (r#"{"type":"a","data":[1]}"#, JSON, 400, "JSON object"),
        (
            r#"{"type":"a","data":{},"priority":"urgent"}"#,
            JSON,
            400,
            "priority",
        ),
        (r#"{"type":"a"}"#, JSON, 400, "data"),
        (r#"{"type":"a","data":{},"extra":1}"#, JSON, 400, "extra"),
        (r#"{"type":"a","data":{}}"#, TEXT, 415, "application/json"),
        (r#"{"type":"a","data":{}}"#, NONE, 415, "application/json"),
    ];
    for (body, headers, status, needle) in cases {
        let r = crate::support::http(hub.addr(), "POST", "/api/events", headers, body.as_bytes());
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let msg = r.error();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let big = format!(
        r#"{{"type":"a","data":{{"pad":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    let r = post_json(hub.addr(), &big, &[]);
    assert_eq!(r.status, 413);
    // Still serving; and nothing refused was stored.
    let e = c.next_event(WAIT).expect("the second good post");
    assert_eq!(e.json()["type"], "x");
    assert!(c.next_event(Duration::from_millis(200)).is_none());
}

#[test]
fn post_needs_the_bearer_token_when_one_is_set() {
    let hub = TestHub::start_with(|c| c.token = Some("s3cret".into()));
    let body = r#"{"type":"a","data":{}}"#;
    let none = post_json(hub.addr(), body, &[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.header("WWW-Authenticate"), Some("Bearer"));
    assert_eq!(
        post_json(hub.addr(), body, &[("Authorization", "Bearer wrong")]).status,
        401
    );
    assert_eq!(
        post_json(hub.addr(), body, &[("Authorization", "s3cret")]).status,
        401
    );
    assert_eq!(
        post_json(hub.addr(), body, &[("Authorization", "Bearer s3cret")]).status,
        201
    );
    // Reading the stream needs no token.
    assert_eq!(SseClient::connect(hub.addr(), "/api/events").status, 200);
}

#[test]
fn post_is_refused_off_loopback_without_a_token() {
    let hub = TestHub::start_with(|c| {
        c.bind = ([0, 0, 0, 0], 0).into();
        c.mdns = false; // a test announces nothing on this machine's real network
    });
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], hub.addr().port()));
    let r = post_json(addr, r#"{"type":"a","data":{}}"#, &[]);
    assert_eq!(r.status, 403);
    assert!(r.error().contains("--token"), "{}", r.text());
    assert_eq!(
        http(addr, "GET", "/health", &[], b"").status,
        200,
        "reading still works"
    );
}

#[test]
fn cors_headers_only_for_allowed_origins() {
    let hub = TestHub::start_with(|c| c.cors_origins = vec!["http://cams.local:3000".into()]);
    let pre = http(
        hub.addr(),
        "OPTIONS",
        "/api/events",
        &[
            ("Origin", "http://cams.local:3000"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("Access-Control-Allow-Origin"),
        Some("http://cams.local:3000")
    );
    assert!(
        pre.header("Access-Control-Allow-Methods")
            .unwrap_or("")
            .contains("POST")
    );
    assert!(
        pre.header("Access-Control-Allow-Headers")
            .unwrap_or("")
            .contains("Last-Event-ID")
    );
    let other = http(
        hub.addr(),
        "OPTIONS",
        "/api/events",
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(other.header("Access-Control-Allow-Origin"), None);
    assert_eq!(other.header("Access-Control-Allow-Methods"), None);
    let get = http(
        hub.addr(),
        "GET",
        "/health",
        &[("Origin", "http://cams.local:3000")],
        b"",
    );
    assert_eq!(
        get.header("Access-Control-Allow-Origin"),
        Some("http://cams.local:3000")
    );
    assert_eq!(get.header("Vary"), Some("Origin"));
    let s = SseClient::connect_with(
        hub.addr(),
        "/api/events",
        &[("Origin", "http://cams.local:3000")],
        "HTTP/1.1",
    );
    assert_eq!(
        s.header("Access-Control-Allow-Origin"),
        Some("http://cams.local:3000")
    );
    let s = SseClient::connect_with(
        hub.addr(),
        "/api/events",
        &[("Origin", "http://evil.example")],
        "HTTP/1.1",
    );
    assert_eq!(s.header("Access-Control-Allow-Origin"), None);
}

#[test]
fn unknown_paths_and_methods_get_json_404_and_405() {
    let hub = TestHub::start();
    let r = http(hub.addr(), "GET", "/etc/passwd", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no such path"));
    let r = http(hub.addr(), "GET", "/../../etc/passwd", &[], b"");
    assert_eq!(r.status, 404);
    let r = http(hub.addr(), "DELETE", "/api/events", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, POST, OPTIONS"));
    assert!(r.json()["error"].is_string());
    let r = http(hub.addr(), "PUT", "/health", &[], b"");
    assert_eq!(r.status, 405);
}

#[test]
fn over_max_clients_streams_get_503_with_retry_after() {
    let hub = TestHub::start_with(|c| c.max_clients = 3);
    let held: Vec<SseClient> = (0..3)
        .map(|_| SseClient::connect(hub.addr(), "/api/events"))
        .collect();
    let r = http(hub.addr(), "GET", "/api/events", &[], b"");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("5"));
    assert!(r.json()["error"].is_string());
    drop(held);
    // Slots come back once the hub notices the clients left (at its next write).
    assert!(wait_until(WAIT, || {
        hub.emitter().emit(NewEvent::new("nudge", json!({}))).ok();
        open_streams(hub.addr()) == 0
    }));
    assert_eq!(SseClient::connect(hub.addr(), "/api/events").status, 200);
}

#[test]
fn graceful_shutdown_ends_fifty_streams_cleanly_and_keeps_acknowledged_events() {
    let mut hub = TestHub::start_with(|c| c.max_streams_per_addr = 50);
    let mut clients: Vec<SseClient> = (0..50)
        .map(|_| SseClient::connect(hub.addr(), "/api/events"))
        .collect();
    assert!(wait_until(WAIT, || open_streams(hub.addr()) == 50));
    let ids: Vec<i64> = (0..20)
        .map(|i| {
            hub.emitter()
                .emit_ok(NewEvent::new("before_stop", json!({"i": i})))
                .0
        })
        .collect();
    for c in &mut clients {
        let got: Vec<i64> = c
            .take(20)
            .iter()
            .map(|e| e.json()["id"].as_i64().unwrap_or(0))
            .collect();
        assert_eq!(got, ids);
    }
    let db = hub.db_path();
    let started = Instant::now();
    hub.stop().expect("clean shutdown");
    eprintln!("shutdown with 50 streams took {:?}", started.elapsed());
    for c in &mut clients {
        assert!(c.wait_end(WAIT), "stream ends with the last chunk");
    }
    // Every acknowledged event is in the file.
    let conn = rusqlite::Connection::open(&db).expect("open");
    let n: i64 = sql_value(
        &conn,
        "SELECT count(*) FROM sse_events WHERE event_type = 'before_stop'",
    );
    assert_eq!(n, 20);
}

#[test]
fn sigterm_stops_the_binary_with_exit_zero_and_a_checkpointed_wal() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let hub = crate::support::ChildHub::start(&db, &[]);
    let mut c = SseClient::connect(hub.addr, "/api/events");
    let r = post_json(hub.addr, r#"{"type":"a","data":{}}"#, &[]);
    assert_eq!(r.status, 201);
    assert!(c.next_event(WAIT).is_some());
    let log = hub.log.clone();
    let status = hub.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(c.wait_end(WAIT), "the stream was ended cleanly");
    // The log reader may still be a line behind the exit.
    let read = || log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        wait_until(WAIT, || {
            let l = read();
            l.contains("shutting down") && l.contains("stopped")
        }),
        "{}",
        read()
    );
    let wal = dir.path().join("events.db-wal");
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(wal_len, 0, "WAL checkpointed and truncated at shutdown");
}
