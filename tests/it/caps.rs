//! Issue 13: memory from distinct names, and error messages that echo client input. A
//! flood of distinct camera ids and event types must leave the hub's memory, `/api/state`
//! and a restart small, while every event is still stored and streamed; a huge value in a
//! request must not come back whole in the 400.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{ChildHub, SseClient, WAIT, http, hub_stats, post_json, wait_until};

#[path = "../../examples/common/procfs.rs"]
#[allow(dead_code)] // the benchmarks use the rest of it
mod procfs;

/// Distinct camera ids, and (separately) distinct event types, the flood sends.
const DISTINCT: i64 = 20_000;
/// The defaults of --max-cameras and --max-event-types.
const MAX_CAMERAS: i64 = 64;
const MAX_TYPES: i64 = 256;

fn rss_mib(hub: &ChildHub) -> f64 {
    let stats = procfs::ProcStats::read(hub.child.id()).expect("/proc of the hub");
    stats.rss_kib as f64 / 1024.0
}

/// Stores the flood the way any local producer may (the public contract), in one
/// transaction: `image_captured` for cameras (and timelapses) 1..=DISTINCT, then one event
/// each of DISTINCT types `probe_00001`... Returns the row ids in insertion order.
fn insert_flood(db: &Path) -> usize {
    let mut conn = rusqlite::Connection::open(db).expect("open the database");
    conn.busy_timeout(WAIT).expect("busy timeout");
    let tx = conn.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare("INSERT INTO sse_events (event_type, event_data) VALUES (?1, ?2)")
            .expect("prepare");
        for i in 1..=DISTINCT {
            let data = format!(r#"{{"camera_id":{i},"timelapse_id":{i},"image_count":1}}"#);
            insert
                .execute(rusqlite::params!["image_captured", data])
                .expect("insert capture");
        }
        for i in 1..=DISTINCT {
            insert
                .execute(rusqlite::params![format!("probe_{i:05}"), "{}"])
                .expect("insert probe");
        }
    }
    tx.commit().expect("commit");
    2 * DISTINCT as usize
}

/// Reads a stream in a thread of its own, so that the hub seldom finds it slow; if the hub
/// cuts it off anyway (it does past 1,024 queued events), it resumes from the last id it
/// got, as a browser would. Sends the (seq, type) of every event, then the reconnects.
fn follow(addr: std::net::SocketAddr, want: usize) -> mpsc::Receiver<Result<(i64, String), usize>> {
    let (tx, rx) = mpsc::channel();
    let mut client = SseClient::connect(addr, "/api/events");
    std::thread::spawn(move || {
        let (mut got, mut reconnects) = (0, 0);
        let mut last: Option<String> = None;
        while got < want {
            match client.next_event(WAIT) {
                Some(e) => {
                    let kind = e.json()["type"].as_str().unwrap_or_default().to_owned();
                    last = e.id.clone();
                    got += 1;
                    if tx.send(Ok((e.seq(), kind))).is_err() {
                        return;
                    }
                }
                // Nothing yet: the flood may still be being written (slowly, under
                // emulation); wait on, up to the test's own deadline.
                None if last.is_none() && !client.ended => {}
                // Cut off (an end or a reset), or quiet for WAIT: resume where it was.
                None => {
                    let Some(id) = &last else { return };
                    let resumed = [("Last-Event-ID", id.as_str())];
                    match SseClient::try_connect(addr, "/api/events", &resumed, WAIT) {
                        Some(c) => client = c,
                        None => return,
                    }
                    reconnects += 1;
                }
            }
        }
        let _ = tx.send(Err(reconnects)); // the test may have stopped listening
    });
    rx
}

fn metric(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn twenty_thousand_distinct_cameras_and_types_cost_the_hub_no_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let hub = ChildHub::start(&db, &[]);
    let head0 = hub_stats(hub.addr)["dispatched"].as_i64().unwrap_or(0);
    let events = follow(hub.addr, 2 * DISTINCT as usize);
    assert!(wait_until(WAIT, || hub_stats(hub.addr)["streams"] == 1));
    let rss_before = rss_mib(&hub);

    let rows = insert_flood(&db);
    let mut seqs = Vec::with_capacity(rows);
    let mut types = Vec::with_capacity(rows);
    let mut reconnects = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while reconnects.is_none() && Instant::now() < deadline {
        match events.recv_timeout(WAIT) {
            Ok(Ok((seq, kind))) => {
                seqs.push(seq);
                types.push(kind);
            }
            Ok(Err(n)) => reconnects = Some(n),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let stats = hub_stats(hub.addr);
    let rss_after = rss_mib(&hub);
    let state = http(hub.addr, "GET", "/api/state", &[], b"");
    let metrics = http(hub.addr, "GET", "/metrics", &[], b"").text();
    let doc = state.json();
    let cameras = doc["cameras"].as_array().map_or(0, Vec::len);
    let timelapses = doc["timelapses"].as_array().map_or(0, Vec::len);
    let not_folded = &stats["not_folded"];
    println!(
        "flood of {rows} events ({DISTINCT} cameras, {DISTINCT} types): RSS {rss_before:.1} -> \
         {rss_after:.1} MiB (+{:.1}); /api/state {} bytes, {cameras} cameras, {timelapses} \
         timelapses; stream got {} events ({reconnects:?} reconnects); not_folded {not_folded}; stats by_type {} types, \
         other_types {}",
        rss_after - rss_before,
        state.body.len(),
        seqs.len(),
        stats["by_type"].as_object().map_or(0, |m| m.len()),
        stats["other_types"],
    );

    // Every event reached the client, once, in stream order, and in insertion order.
    let want: Vec<i64> = (head0 + 1..=head0 + rows as i64).collect();
    assert_eq!(seqs.len(), rows, "events streamed");
    assert!(
        seqs == want,
        "seqs are not {}..={}",
        want[0],
        want[rows - 1]
    );
    assert!(
        types[..DISTINCT as usize]
            .iter()
            .all(|t| t == "image_captured")
    );
    assert_eq!(types[rows - 1], format!("probe_{DISTINCT:05}"));
    assert_eq!(stats["pending"], 0);

    // Only the first MAX_CAMERAS cameras (and their timelapses) are in the state.
    assert_eq!(cameras as i64, MAX_CAMERAS, "cameras in /api/state");
    assert_eq!(
        timelapses as i64, MAX_CAMERAS,
        "one timelapse per kept camera"
    );
    assert!(
        state.body.len() < 64 * 1024,
        "/api/state is {} bytes",
        state.body.len()
    );
    // image_captured took the first type counter; 255 probes the others.
    let beyond_cameras = DISTINCT - MAX_CAMERAS;
    let beyond_types = DISTINCT - (MAX_TYPES - 1);
    assert_eq!(not_folded["camera_cap"], beyond_cameras, "{stats}");
    assert_eq!(not_folded["event_type_cap"], beyond_types, "{stats}");
    assert_eq!(stats["other_types"], beyond_types, "{stats}");
    assert_eq!(
        stats["by_type"].as_object().map(|m| m.len() as i64),
        Some(MAX_TYPES)
    );
    for (series, n) in [
        (
            r#"tle_events_not_folded_total{reason="camera_cap"}"#,
            beyond_cameras,
        ),
        (
            r#"tle_events_not_folded_total{reason="event_type_cap"}"#,
            beyond_types,
        ),
        (
            r#"tle_events_dispatched_total{type="(other)"}"#,
            beyond_types,
        ),
    ] {
        assert_eq!(metric(&metrics, series), Some(n), "{series}");
    }
    assert!(
        metrics.len() < 64 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(
        rss_after - rss_before < 16.0,
        "RSS grew {:.1} MiB",
        rss_after - rss_before
    );
    let log = hub.log();
    let warnings = log.matches("were not folded into the state").count();
    assert_eq!(warnings, 1, "one warning for the whole flood:\n{log}");
    hub.terminate();

    // A database written before the limits: 20,000 records in the state tables and as many
    // type counters. A restart loads the most recently updated MAX_CAMERAS.
    {
        let conn = rusqlite::Connection::open(&db).expect("open the database");
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {DISTINCT}) \
             INSERT OR REPLACE INTO camera_state (camera_id, state) SELECT i, json_object( \
               'camera_id', i, 'status', 'online', 'stale', json('false'), \
               'updated_at', strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || i || ' seconds')) \
             FROM n; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {DISTINCT}) \
             INSERT OR REPLACE INTO event_type_counts (event_type, dispatched) \
             SELECT printf('old_%05d', i), 1 FROM n;"
        ))
        .expect("write the pre-limit state");
    }
    let hub = ChildHub::start(&db, &[]);
    let rss_restart = rss_mib(&hub);
    let state = http(hub.addr, "GET", "/api/state", &[], b"");
    let doc = state.json();
    let ids: Vec<i64> = doc["cameras"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["camera_id"].as_i64()).collect())
        .unwrap_or_default();
    let stats = hub_stats(hub.addr);
    println!(
        "restart on {DISTINCT} camera records: RSS at start {rss_restart:.1} MiB; /api/state {} \
         bytes, {} cameras ({}..={}); by_type {} types",
        state.body.len(),
        ids.len(),
        ids.first().unwrap_or(&0),
        ids.last().unwrap_or(&0),
        stats["by_type"].as_object().map_or(0, |m| m.len()),
    );
    let newest: Vec<i64> = (DISTINCT - MAX_CAMERAS + 1..=DISTINCT).collect();
    assert_eq!(ids, newest, "the most recently updated cameras");
    assert!(state.body.len() < 64 * 1024, "{}", state.body.len());
    assert_eq!(
        stats["by_type"].as_object().map(|m| m.len() as i64),
        Some(MAX_TYPES)
    );
    assert!(
        rss_restart < rss_before + 16.0,
        "restart RSS {rss_restart:.1} MiB, first start {rss_before:.1} MiB"
    );
    assert!(hub.log().contains("state over its limits"), "{}", hub.log());
}

#[test]
fn a_huge_value_in_a_request_comes_back_as_a_short_prefix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = ChildHub::start(&dir.path().join("events.db"), &[]);
    // A 1 MiB request target is over the 16 KiB head limit: 431 before any parsing.
    let mib = "7".repeat(1 << 20);
    let r = http(
        hub.addr,
        "GET",
        &format!("/api/events?camera_id={mib}x"),
        &[],
        b"",
    );
    println!(
        "GET ?camera_id= of 1 MiB: {} with {} bytes: {}",
        r.status,
        r.body.len(),
        r.error()
    );
    assert_eq!(r.status, 431);
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    // The longest value a head can carry still comes back as a short prefix.
    let long = "7".repeat(15_000);
    let r = http(
        hub.addr,
        "GET",
        &format!("/api/events?camera_id={long}x"),
        &[],
        b"",
    );
    println!(
        "GET ?camera_id= of 15,000 bytes: {} with {} bytes: {}",
        r.status,
        r.body.len(),
        r.error()
    );
    assert_eq!(r.status, 400);
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    assert!(
        r.error()
            .starts_with(&format!("camera_id: `{}", "7".repeat(64))),
        "{}",
        r.error()
    );
    // POST bodies are at most 64 KiB (a 1 MiB one gets 413 before it is read), so the
    // longest value a POST can echo is just under that.
    let long = "p".repeat(60_000);
    // A priority is quoted (64 characters); serde_json's message about an unknown field
    // quotes the name itself, so that message is clipped whole (128 characters).
    for (what, body, most) in [
        (
            "priority",
            format!(r#"{{"type":"a","data":{{}},"priority":"{long}"}}"#),
            64,
        ),
        (
            "field name",
            format!(r#"{{"type":"a","data":{{}},"{long}":1}}"#),
            128,
        ),
    ] {
        let r = post_json(hub.addr, &body, &[]);
        println!(
            "POST with a 60,000-byte {what}: {} with {} bytes: {}",
            r.status,
            r.body.len(),
            r.error()
        );
        assert_eq!(r.status, 400);
        assert!(r.body.len() < 1024, "{} bytes", r.body.len());
        assert!(r.error().contains(&"p".repeat(32)), "{}", r.error());
        assert!(!r.error().contains(&"p".repeat(most + 1)), "{}", r.error());
        assert!(r.error().contains(" bytes)"), "{}", r.error());
    }
    let huge = format!(r#"{{"type":"a","data":{{"camera_id":"{mib}"}}}}"#);
    let r = post_json(hub.addr, &huge, &[]);
    println!(
        "POST with a 1 MiB camera_id: {} with {} bytes",
        r.status,
        r.body.len()
    );
    assert_eq!(r.status, 413);
    assert!(r.body.len() < 1024);
}
