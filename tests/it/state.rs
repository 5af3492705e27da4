//! Issue 5: the live state, ETags, snapshot handover, the watchdog, stats, metrics and
//! retention.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use timelapse_events::NewEvent;

use crate::support::{EmitOk, SseClient, TestHub, WAIT, http, hub_stats, run_bin, wait_until};

/// `cleanup --older-than 0s` on `db`, which must succeed; what it printed.
fn cleanup_everything(db: &std::path::Path) -> String {
    let db = db.to_str().expect("utf-8");
    let (status, out, err) = run_bin(&["cleanup", "--db", db, "--older-than", "0s"]);
    assert!(status.success(), "{err}");
    out
}

fn state(hub: &TestHub) -> Value {
    http(hub.addr(), "GET", "/api/state", &[], b"").json()
}

fn camera(state: &Value, id: i64) -> Value {
    state["cameras"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["camera_id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// Start, captures, offline, online, pause, resume, complete, and a new timelapse.
fn camera_day(hub: &TestHub) -> Vec<i64> {
    let e = hub.emitter();
    let mut ids = Vec::new();
    let mut emit = |ev: NewEvent| ids.push(e.emit_ok(ev).0);
    emit(NewEvent::camera_status_changed(7, "online", "healthy"));
    emit(NewEvent::timelapse_status_changed(7, 70, "running"));
    for n in 1..=5 {
        emit(NewEvent::image_captured(7, 70, n, 1));
    }
    emit(NewEvent::camera_status_changed(7, "offline", "unreachable"));
    emit(NewEvent::camera_status_changed(7, "online", "degraded"));
    emit(NewEvent::image_captured(7, 70, 6, 2));
    emit(NewEvent::timelapse_status_changed(7, 70, "paused"));
    emit(NewEvent::timelapse_status_changed(7, 70, "running"));
    emit(NewEvent::image_captured(7, 70, 7, 2));
    emit(NewEvent::timelapse_status_changed(7, 70, "completed"));
    emit(NewEvent::timelapse_status_changed(7, 71, "running"));
    emit(NewEvent::image_captured(7, 71, 1, 1));
    emit(NewEvent::new("door_opened", json!({"camera_id": 7})));
    ids
}

fn assert_day_state(s: &Value) {
    let c = camera(s, 7);
    assert_eq!(c["status"], "online", "{c}");
    assert_eq!(c["health_status"], "degraded");
    assert_eq!(c["image_count"], 1);
    assert_eq!(c["day_number"], 1);
    assert_eq!(c["timelapse_id"], 71);
    assert_eq!(c["timelapse_status"], "running");
    assert_eq!(c["stale"], false);
    assert!(
        c["last_capture_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let tls = s["timelapses"].as_array().expect("timelapses");
    let t70 = tls
        .iter()
        .find(|t| t["timelapse_id"] == 70)
        .expect("timelapse 70");
    assert_eq!(
        (
            t70["status"].as_str(),
            t70["image_count"].as_i64(),
            t70["day_number"].as_i64()
        ),
        (Some("completed"), Some(7), Some(2))
    );
    let t71 = tls
        .iter()
        .find(|t| t["timelapse_id"] == 71)
        .expect("timelapse 71");
    assert_eq!(
        (
            t71["status"].as_str(),
            t71["image_count"].as_i64(),
            t71["camera_id"].as_i64()
        ),
        (Some("running"), Some(1), Some(7))
    );
}

#[test]
fn a_camera_day_survives_restart_and_cleanup_of_every_event() {
    let mut hub = TestHub::start();
    let ids = camera_day(&hub);
    assert!(wait_until(WAIT, || camera(&state(&hub), 7)["timelapse_id"] == 71));
    let s = state(&hub);
    assert_day_state(&s);
    // The state's cursor is the last event that changed it (the door event changed nothing).
    assert!(
        s["cursor"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("-{}", ids.len() - 1))),
        "{}",
        s["cursor"]
    );
    hub.restart();
    assert_day_state(&state(&hub));
    // Delete every event from the shell; the state stays.
    hub.stop().expect("stop");
    let db = hub.db_path();
    let out = cleanup_everything(&db);
    assert!(
        out.contains(&format!("deleted {} events", ids.len())),
        "{out}"
    );
    hub.restart();
    assert_day_state(&state(&hub));
    let stats = hub_stats(hub.addr());
    assert_eq!(stats["dispatched"], 0, "{stats}");
}

#[test]
fn etag_changes_exactly_when_an_event_changes_the_state() {
    let hub = TestHub::start();
    let e = hub.emitter();
    let mut c = SseClient::connect(hub.addr(), "/api/events");
    e.emit_ok(NewEvent::image_captured(1, 1, 1, 1));
    c.take(1);
    let first = http(hub.addr(), "GET", "/api/state", &[], b"");
    let tag = first.header("ETag").expect("etag").to_owned();
    let again = http(
        hub.addr(),
        "GET",
        "/api/state",
        &[("If-None-Match", &tag)],
        b"",
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    // An event the state does not read: same ETag.
    e.emit_ok(NewEvent::new("custom", json!({"x": 1})));
    c.take(1);
    assert_eq!(
        http(
            hub.addr(),
            "GET",
            "/api/state",
            &[("If-None-Match", &tag)],
            b""
        )
        .status,
        304
    );
    // One that it does: a new ETag and a new body.
    e.emit_ok(NewEvent::image_captured(1, 1, 2, 1));
    c.take(1);
    let changed = http(
        hub.addr(),
        "GET",
        "/api/state",
        &[("If-None-Match", &tag)],
        b"",
    );
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("ETag"), Some(tag.as_str()));
    assert_eq!(camera(&changed.json(), 1)["image_count"], 2);
}

#[test]
fn state_then_stream_from_its_cursor_misses_nothing_under_concurrent_emits() {
    let hub = TestHub::start();
    let running = Arc::new(AtomicBool::new(true));
    let producer = {
        let (running, e) = (running.clone(), hub.emitter());
        std::thread::spawn(move || {
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                e.emit_ok(NewEvent::image_captured(n % 3, 1, n, 1));
                n += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    for round in 0..25 {
        // Two ways: /api/state then resume, and one ?snapshot=1 stream.
        let (mut c, cursor_seq) = if round % 2 == 0 {
            let s = state(&hub);
            let cursor = s["cursor"].as_str().expect("cursor").to_owned();
            let seq: i64 = cursor
                .rsplit('-')
                .next()
                .and_then(|x| x.parse().ok())
                .expect("seq");
            (
                SseClient::connect(hub.addr(), &format!("/api/events?last_event_id={cursor}")),
                seq,
            )
        } else {
            let mut c = SseClient::connect(hub.addr(), "/api/events?snapshot=1");
            let snap = c.next_event(WAIT).expect("snapshot frame");
            assert_eq!(snap.event.as_deref(), Some("snapshot"));
            assert!(snap.json()["cameras"].is_array());
            let seq = snap.seq();
            assert_eq!(snap.json()["cursor"], snap.id.clone().unwrap_or_default());
            (c, seq)
        };
        let mut last = cursor_seq;
        for _ in 0..20 {
            let e = c.next_event(WAIT).expect("event");
            assert_eq!(e.seq(), last + 1, "round {round}: gap or duplicate");
            last = e.seq();
        }
    }
    running.store(false, Ordering::Relaxed);
    producer.join().expect("producer");
}

#[test]
fn the_watchdog_flags_a_silent_camera_and_its_recovery() {
    // A floor of 1 s: far above the 40 ms capture interval below, and above any stall a
    // loaded CI machine puts between two emits.
    let hub = TestHub::start_with(|c| c.stale_floor = Duration::from_secs(1));
    let mut c = SseClient::connect(hub.addr(), "/api/events?camera_id=1");
    let e = hub.emitter();
    // Camera 2's timelapse is paused: it is not expected to capture, so never stale. Its
    // second capture and the pause are dispatched together, so no silence falls between.
    e.emit_ok(NewEvent::image_captured(2, 20, 1, 1));
    std::thread::sleep(Duration::from_millis(30));
    e.emit_batch(vec![
        NewEvent::image_captured(2, 20, 2, 1),
        NewEvent::timelapse_status_changed(2, 20, "paused"),
    ])
    .expect("emit");
    for n in 1..=5 {
        e.emit_ok(NewEvent::image_captured(1, 10, n, 1));
        std::thread::sleep(Duration::from_millis(40));
    }
    let captures = c.take(5);
    assert!(
        captures
            .iter()
            .all(|e| e.json()["type"] == "image_captured")
    );
    // Silence: the floor (1 s) is above 3 × 40 ms, so the floor decides.
    let stale = c.next_event(WAIT).expect("camera_stale");
    let v = stale.json();
    assert_eq!(
        (
            v["type"].as_str(),
            v["data"]["camera_id"].as_i64(),
            v["source"].as_str()
        ),
        (Some("camera_stale"), Some(1), Some("watchdog"))
    );
    assert!(
        v["data"]["silent_secs"].as_f64().is_some_and(|s| s >= 1.0),
        "{v}"
    );
    assert!(
        v["data"]["expected_interval_secs"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{v}"
    );
    assert!(wait_until(WAIT, || camera(&state(&hub), 1)["stale"] == true));
    assert!(
        c.next_event(Duration::from_millis(700)).is_none(),
        "flagged once, not repeatedly"
    );
    e.emit_ok(NewEvent::image_captured(1, 10, 6, 1));
    let back = c.take(2);
    assert_eq!(back[0].json()["type"], "image_captured");
    assert_eq!(back[1].json()["type"], "camera_recovered");
    assert_eq!(back[1].json()["data"]["camera_id"], 1);
    assert!(wait_until(WAIT, || camera(&state(&hub), 1)["stale"] == false));
    let s = state(&hub);
    assert_eq!(
        camera(&s, 2)["stale"],
        false,
        "paused camera 2 was never flagged"
    );
}

#[test]
fn retention_keeps_the_newest_rows_and_never_touches_pending_ones() {
    let hub = TestHub::start_with(|c| {
        c.retention_max_rows = Some(10);
        c.retention_interval = Duration::from_millis(50);
    });
    let mut c = SseClient::connect(hub.addr(), "/api/events");
    for i in 0..30 {
        hub.emitter().emit_ok(NewEvent::new("n", json!({"i": i})));
    }
    c.take(30);
    assert!(wait_until(WAIT, || hub_stats(hub.addr())["dispatched"] == 10));
    let conn = rusqlite::Connection::open(hub.db_path()).expect("open");
    let kept: Vec<i64> = conn
        .prepare("SELECT json_extract(event_data, '$.i') FROM sse_events ORDER BY seq")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read");
    assert_eq!(kept, (20..30).collect::<Vec<_>>(), "the newest ten");
    let stats = hub_stats(hub.addr());
    assert_eq!(
        stats["by_type"]["n"], 10,
        "kept counters follow deletions: {stats}"
    );
}

#[test]
fn retention_by_age_and_by_size_and_pending_rows_are_safe() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    drop(timelapse_events::Emitter::open(&db).expect("create"));
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        for i in 0..5 {
            conn.execute(
                "INSERT INTO sse_events (event_type, event_data, created_at) VALUES ('old', ?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 days'))",
                [format!(r#"{{"i":{i}}}"#)],
            )
            .expect("insert old");
        }
    }
    let config = |db: &std::path::Path| timelapse_events::Config {
        bind: ([127, 0, 0, 1], 0).into(),
        db_path: db.to_owned(),
        retention_interval: Duration::from_millis(50),
        ..timelapse_events::Config::default()
    };
    // Default policy (7 days): the 10-day-old rows go once dispatched.
    let hub = timelapse_events::Hub::start(config(&db)).expect("start");
    hub.emitter().emit_ok(NewEvent::new("fresh", json!({})));
    let count = |t: &str| -> i64 {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.query_row(
            "SELECT count(*) FROM sse_events WHERE event_type = ?1",
            [t],
            |r| r.get(0),
        )
        .expect("count")
    };
    assert!(wait_until(WAIT, || count("old") == 0));
    assert_eq!(count("fresh"), 1);
    hub.shutdown().expect("shutdown");
    // By size: 200 events of 8 KiB, a 256 KiB budget.
    let e = timelapse_events::Emitter::open(&db).expect("open");
    for i in 0..200 {
        e.emit_ok(NewEvent::new(
            "big",
            json!({"i": i, "pad": "z".repeat(8000)}),
        ));
    }
    drop(e);
    let hub = timelapse_events::Hub::start(timelapse_events::Config {
        retention_max_db_bytes: Some(256 * 1024),
        ..config(&db)
    })
    .expect("start");
    assert!(wait_until(WAIT, || {
        let s = hub_stats(hub.addr());
        s["pending"] == 0 && s["db_used_bytes"].as_u64().is_some_and(|b| b <= 256 * 1024)
    }));
    let left = count("big");
    assert!(
        left > 0 && left < 200,
        "oldest deleted, newest kept: {left}"
    );
    hub.shutdown().expect("shutdown");
    // Pending rows (no hub dispatched them) survive any cleanup.
    let e = timelapse_events::Emitter::open(&db).expect("open");
    for _ in 0..7 {
        e.emit_ok(NewEvent::new("pending", json!({})));
    }
    drop(e);
    let out = cleanup_everything(&db);
    assert!(out.starts_with("deleted "), "{out}");
    assert_eq!(count("pending"), 7);
    assert_eq!(count("big"), 0);
    let (status, out, _) = run_bin(&["stats", "--db", db.to_str().expect("utf-8")]);
    assert!(status.success());
    let stats: Value = serde_json::from_str(&out).expect("stats JSON");
    assert_eq!(
        (stats["pending"].as_i64(), stats["dispatched"].as_i64()),
        (Some(7), Some(0))
    );
}

#[test]
fn stats_report_counts_subscribers_and_sizes() {
    let hub = TestHub::start();
    let mut a = SseClient::connect(hub.addr(), "/api/events?types=image_captured");
    let _b = SseClient::connect(hub.addr(), "/api/events?camera_id=4");
    // "other" goes first: same priority dispatches in id order, so once `a` has seen the
    // three captures, "other" is committed as dispatched too (the poller commits, then
    // broadcasts). Emitted last, it could still be pending when stats is read.
    hub.emitter().emit_ok(NewEvent::new("other", json!({})));
    for i in 0..3 {
        hub.emitter().emit_ok(NewEvent::image_captured(4, 1, i, 1));
    }
    a.take(3);
    let s = hub_stats(hub.addr());
    assert_eq!(s["total"], 4, "{s}");
    assert_eq!(
        (
            s["dispatched"].as_i64(),
            s["pending"].as_i64(),
            s["last_hour"].as_i64()
        ),
        (Some(4), Some(0), Some(4))
    );
    assert_eq!(s["distinct_types"], 2);
    assert_eq!(s["by_type"], json!({"image_captured": 3, "other": 1}));
    let subs = s["subscribers"].as_array().expect("subscribers");
    assert_eq!(subs.len(), 2);
    let filters: HashSet<String> = subs.iter().map(|x| x["filter"].to_string()).collect();
    assert!(
        filters.contains(&json!({"types": ["image_captured"], "camera_id": null}).to_string()),
        "{filters:?}"
    );
    assert!(subs.iter().all(|x| x["lag"].as_i64().is_some()));
    assert!(s["db_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(s["wal_bytes"].as_u64().is_some());
    assert!(
        s["oldest_event_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(s["cut_off_slow"], 0);
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let hub = TestHub::start();
    let mut c = SseClient::connect(hub.addr(), "/api/events");
    for i in 0..3 {
        hub.emitter().emit_ok(NewEvent::image_captured(1, 1, i, 1));
    }
    c.take(3);
    let r = http(hub.addr(), "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(
        r.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    let text = r.text();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
    let find = |name: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .collect::<Vec<_>>()
    };
    let dispatched = find("tle_events_dispatched_total");
    assert_eq!(dispatched.len(), 1);
    assert_eq!(dispatched[0].labels.get("type"), Some("image_captured"));
    match &dispatched[0].value {
        prometheus_parse::Value::Counter(v) => assert_eq!(*v, 3.0),
        other => panic!("counter expected, got {other:?}"),
    }
    let emitted = find("tle_events_emitted_total");
    assert_eq!(emitted.len(), 1);
    assert!(
        !find("tle_dispatch_latency_seconds").is_empty(),
        "histogram present"
    );
    match &find("tle_subscribers")[0].value {
        prometheus_parse::Value::Gauge(v) => assert_eq!(*v, 1.0),
        other => panic!("gauge expected, got {other:?}"),
    }
    for name in [
        "tle_subscribers_cut_off_total",
        "tle_poller_errors_total",
        "tle_db_file_bytes",
        "tle_events_pending",
    ] {
        assert_eq!(find(name).len(), 1, "{name}");
    }
}
