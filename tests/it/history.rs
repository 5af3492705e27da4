//! Issue 16: the capture history (`GET /api/history`) and forgetting a camera
//! (`DELETE /api/cameras/<id>`), over real HTTP.

use rusqlite::Connection;
use serde_json::{Value, json};
use timelapse_events::{HISTORY_READ_SQL, NewEvent};

use crate::support::{EmitOk, TestHub, WAIT, http, run_bin, sql_value, wait_until};

fn history(hub: &TestHub, target: &str) -> Value {
    let r = http(hub.addr(), "GET", target, &[], b"");
    assert_eq!(r.status, 200, "{target}: {}", r.text());
    r.json()
}

fn entry(doc: &Value, id: i64, host: Option<&str>) -> Value {
    doc["cameras"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["camera_id"] == id && c["host"].as_str() == host)
                .cloned()
        })
        .unwrap_or(Value::Null)
}

/// The status line of a HEAD request (the response has no body to read).
fn head_status(hub: &TestHub, target: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(hub.addr()).expect("connect");
    s.set_read_timeout(Some(WAIT)).ok();
    let req = format!(
        "HEAD {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        hub.addr()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("status line");
    line
}

/// Waits until `/api/state` lists camera `id` of this host: an emit returns once its event
/// is dispatched, and the state's snapshot is published a moment after.
fn wait_listed(addr: std::net::SocketAddr, id: i64) {
    let listed = || {
        let s = http(addr, "GET", "/api/state", &[], b"").json();
        s["cameras"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["camera_id"] == id && c.get("host").is_none())
        })
    };
    assert!(wait_until(WAIT, listed), "camera {id} never listed");
}

fn db(hub: &TestHub) -> Connection {
    Connection::open(hub.db_path()).expect("open the hub's database")
}

/// Stores `n` image_captured rows of camera `camera` created `hours_ago`, as a local
/// producer (or, with `origin`, the fleet ingest) would, with an explicit `created_at`.
fn insert_captures(conn: &Connection, camera: i64, hours_ago: i64, n: i64, origin: Option<&str>) {
    for i in 0..n {
        conn.execute(
            "INSERT INTO sse_events (event_type, event_data, created_at, origin_host, origin_cursor) \
             VALUES ('image_captured', json_object('camera_id', ?1), \
                     strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2), ?3, \
                     CASE WHEN ?3 IS NULL THEN NULL ELSE '0000abcd-' || (?4 + 1) END)",
            rusqlite::params![camera, format!("-{hours_ago} hours"), origin, i],
        )
        .expect("insert a capture");
    }
}

/// Where each stored capture of `camera` falls among the document's 24 hours.
fn expected_hourly(conn: &Connection, doc: &Value, camera: i64) -> Vec<i64> {
    let start: i64 = conn
        .query_row(
            "SELECT CAST(strftime('%s', ?1) AS INTEGER)",
            [doc["hours"]["start"].as_str().unwrap_or_default()],
            |r| r.get(0),
        )
        .expect("hours.start is a time");
    let mut want = vec![0; 24];
    let mut stmt = conn
        .prepare(
            "SELECT CAST(strftime('%s', created_at) AS INTEGER) / 3600 * 3600 FROM sse_events \
             WHERE event_type = 'image_captured' AND origin_host IS NULL \
               AND json_extract(event_data, '$.camera_id') = ?1",
        )
        .expect("prepare");
    let hours: Vec<i64> = stmt
        .query_map([camera], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .expect("read the captures");
    for h in hours {
        let i = (h - start) / 3600;
        if (0..24).contains(&i) {
            want[i as usize] += 1;
        }
    }
    want
}

#[test]
fn captures_land_in_their_hours_with_gaps_and_outlive_a_restart_and_cleanup() {
    let mut hub = TestHub::start();
    let e = hub.emitter();
    for n in 1..=3 {
        e.emit_ok(NewEvent::image_captured(1, 10, n, 1));
    }
    e.emit_ok(NewEvent::new(
        "camera_registered",
        json!({"camera_id": 2, "name": "Garden"}),
    ));
    let conn = db(&hub);
    insert_captures(&conn, 1, 5, 2, None);
    insert_captures(&conn, 1, 1, 1, Some("garden"));
    assert!(
        wait_until(WAIT, || {
            let doc = history(&hub, "/api/history");
            entry(&doc, 1, None)["total"] == 5 && entry(&doc, 1, Some("garden"))["total"] == 1
        }),
        "{}",
        history(&hub, "/api/history")
    );
    let r = http(hub.addr(), "GET", "/api/history", &[], b"");
    assert_eq!(r.header("Cache-Control"), Some("no-cache"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let doc = r.json();
    assert_eq!(doc["hours"]["count"], 24);
    assert_eq!(doc["days"]["count"], 30);
    assert!(
        doc["now"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && s.len() == 24),
        "{doc}"
    );
    let ids: Vec<(Value, Value)> = doc["cameras"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| (c["camera_id"].clone(), c["host"].clone()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        ids,
        [
            (json!(1), Value::Null),
            (json!(2), Value::Null),
            (json!(1), json!("garden"))
        ],
        "the state's order: ours, then the others'"
    );
    let ours = entry(&doc, 1, None);
    let hourly: Vec<i64> = serde_json::from_value(ours["hourly"].clone()).expect("24 ints");
    assert_eq!(hourly, expected_hourly(&conn, &doc, 1), "{ours}");
    assert_eq!(hourly.iter().sum::<i64>(), 5);
    assert_eq!(hourly[23], 3, "the current hour is the last");
    assert!(
        hourly[19..23].iter().all(|n| *n == 0),
        "the hours between are a gap: {hourly:?}"
    );
    let daily: Vec<i64> = serde_json::from_value(ours["daily"].clone()).expect("30 ints");
    assert_eq!((daily.len(), daily.iter().sum::<i64>()), (30, 5));
    assert!(ours.get("host").is_none(), "ours has no host: {ours}");
    let named = entry(&doc, 2, None);
    assert_eq!(named["hourly"], json!(vec![0; 24]), "no captures: zeros");
    assert_eq!(named["total"], 0);
    let state = http(hub.addr(), "GET", "/api/state", &[], b"").json();
    let cam2 = state["cameras"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["camera_id"] == 2).cloned())
        .unwrap_or_default();
    assert_eq!(cam2["name"], "Garden", "{cam2}");
    // Narrowed by camera and by host; bad values are refused.
    let one = history(&hub, "/api/history?camera_id=2");
    assert_eq!(one["cameras"].as_array().map(Vec::len), Some(1));
    let garden = history(&hub, "/api/history?host=garden");
    assert_eq!(garden["cameras"], json!([entry(&doc, 1, Some("garden"))]));
    let local = history(
        &hub,
        &format!("/api/history?host={}", hub.config.this_host()),
    );
    assert_eq!(local["cameras"].as_array().map(Vec::len), Some(2));
    for bad in ["/api/history?camera_id=one", "/api/history?host=a%20b"] {
        let r = http(hub.addr(), "GET", bad, &[], b"");
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(!r.error().is_empty());
    }
    assert!(head_status(&hub, "/api/history").starts_with("HTTP/1.1 200"));
    // Every event deleted, the hub restarted: the counters stay.
    drop((e, conn));
    let before = (entry(&doc, 1, None), entry(&doc, 1, Some("garden")));
    hub.stop().expect("stop");
    let db_path = hub.db_path();
    let (status, out, err) = run_bin(&[
        "cleanup",
        "--db",
        db_path.to_str().expect("utf-8"),
        "--older-than",
        "0s",
    ]);
    assert!(status.success(), "{err}");
    assert!(out.starts_with("deleted "), "{out}");
    let left: i64 = sql_value(
        &Connection::open(&db_path).expect("open"),
        "SELECT count(*) FROM sse_events",
    );
    assert_eq!(left, 0, "every event deleted");
    hub.restart();
    let after = history(&hub, "/api/history");
    assert_eq!(
        (entry(&after, 1, None), entry(&after, 1, Some("garden"))),
        before
    );
}

/// `/api/history` reads its statement by the counters' primary key, never the events.
#[test]
fn the_history_read_searches_capture_history_by_its_key_and_never_the_events() {
    let hub = TestHub::start();
    hub.emitter().emit_ok(NewEvent::image_captured(1, 10, 1, 1));
    let conn = db(&hub);
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {HISTORY_READ_SQL}"))
        .expect("the statement prepares");
    let plan: Vec<String> = stmt
        .query_map(rusqlite::params!["", 1], |r| r.get::<_, String>(3))
        .and_then(|rows| rows.collect())
        .expect("a plan");
    assert!(!plan.is_empty());
    for step in &plan {
        assert!(
            step.starts_with("SEARCH capture_history USING PRIMARY KEY (host=? AND camera_id=?)"),
            "{plan:?}"
        );
        assert!(!step.contains("sse_events"), "{plan:?}");
    }
    let rows: i64 = sql_value(&conn, "SELECT count(*) FROM capture_history");
    assert_eq!(rows, 3, "an hour, a day and the total");
}

fn forget(hub: &TestHub, target: &str, headers: &[(&str, &str)]) -> crate::support::HttpResponse {
    http(hub.addr(), "DELETE", target, headers, b"")
}

#[test]
fn forgetting_a_camera_removes_it_its_rows_and_its_history_until_it_reports_again() {
    let mut hub = TestHub::start();
    let e = hub.emitter();
    e.emit_ok(NewEvent::image_captured(1, 10, 1, 1));
    e.emit_ok(NewEvent::image_captured(2, 20, 1, 1));
    let conn = db(&hub);
    insert_captures(&conn, 1, 0, 1, Some("garden"));
    let count = |sql: &str| sql_value::<i64>(&conn, sql);
    assert!(wait_until(WAIT, || count(
        "SELECT count(*) FROM remote_camera_state"
    ) == 1));
    wait_listed(hub.addr(), 1);
    let r = forget(&hub, "/api/cameras/1", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["forgotten"], json!({"camera_id": 1}));
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let stream = crate::support::stream_id(hub.addr());
    assert!(id.starts_with(&format!("{stream}-")), "{id} of {stream}");
    let (source, priority, data): (String, String, String) = conn
        .query_row(
            "SELECT source, priority, event_data FROM sse_events \
             WHERE event_type = 'camera_forgotten'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the event is stored");
    assert_eq!(
        (source.as_str(), priority.as_str()),
        ("dashboard", "normal")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&data).ok(),
        Some(json!({"camera_id": 1}))
    );
    let state = http(hub.addr(), "GET", "/api/state", &[], b"").json();
    let listed = |s: &Value, id: i64, host: Option<&str>| {
        s["cameras"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["camera_id"] == id && c["host"].as_str() == host)
        })
    };
    assert!(!listed(&state, 1, None), "{state}");
    assert!(
        listed(&state, 2, None) && listed(&state, 1, Some("garden")),
        "{state}"
    );
    assert_eq!(
        state["timelapses"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    assert_eq!(
        count("SELECT count(*) FROM camera_state WHERE camera_id = 1"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM timelapse_state WHERE timelapse_id = 10"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM capture_history WHERE host = '' AND camera_id = 1"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM capture_history WHERE host = 'garden' AND camera_id = 1"),
        3,
        "garden's camera 1 is another camera"
    );
    let again = forget(&hub, "/api/cameras/1", &[]);
    assert_eq!(again.status, 404, "{}", again.text());
    assert!(again.error().contains("camera 1"), "{}", again.text());
    for bad in [
        "/api/cameras/one",
        "/api/cameras/",
        "/api/cameras/1/x",
        "/api/cameras/99",
    ] {
        let r = forget(&hub, bad, &[]);
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
        assert!(!r.error().is_empty(), "{bad}: a JSON error");
    }
    // Another site's page may not; the dashboard's own origin may.
    let evil = forget(&hub, "/api/cameras/2", &[("Origin", "http://evil.example")]);
    assert_eq!(evil.status, 403, "{}", evil.text());
    let pre = http(hub.addr(), "OPTIONS", "/api/cameras/2", &[], b"");
    assert_eq!(pre.status, 204);
    assert!(
        pre.header("Allow").is_some_and(|a| a.contains("DELETE")),
        "{:?}",
        pre.header("Allow")
    );
    // Another host's camera, by name.
    let theirs = forget(&hub, "/api/cameras/1?host=garden", &[]);
    assert_eq!(theirs.status, 200, "{}", theirs.text());
    assert_eq!(
        theirs.json()["forgotten"],
        json!({"camera_id": 1, "host": "garden"})
    );
    assert_eq!(count("SELECT count(*) FROM remote_camera_state"), 0);
    assert_eq!(
        count("SELECT count(*) FROM capture_history WHERE host = 'garden'"),
        0
    );
    // Gone after a restart too; a later capture brings camera 1 back, counted afresh.
    drop(conn);
    hub.restart();
    let state = http(hub.addr(), "GET", "/api/state", &[], b"").json();
    assert!(
        !listed(&state, 1, None) && listed(&state, 2, None),
        "{state}"
    );
    hub.emitter().emit_ok(NewEvent::image_captured(1, 10, 2, 1));
    wait_listed(hub.addr(), 1);
    let doc = history(&hub, "/api/history?camera_id=1");
    assert_eq!(doc["cameras"][0]["total"], 1, "{doc}");
}

#[test]
fn forgetting_is_guarded_as_posting_is() {
    let hub = TestHub::start_with(|c| c.token = Some("s3cret".into()));
    hub.emitter().emit_ok(NewEvent::image_captured(1, 10, 1, 1));
    wait_listed(hub.addr(), 1);
    let none = forget(&hub, "/api/cameras/1", &[]);
    assert_eq!(none.status, 401, "{}", none.text());
    assert_eq!(none.header("WWW-Authenticate"), Some("Bearer"));
    let wrong = forget(&hub, "/api/cameras/1", &[("Authorization", "Bearer wrong")]);
    assert_eq!(wrong.status, 401);
    let right = forget(
        &hub,
        "/api/cameras/1",
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(right.status, 200, "{}", right.text());
    drop(hub);
    // Beyond loopback without a token: refused, as POST is.
    let lan = TestHub::start_with(|c| {
        c.bind = ([0, 0, 0, 0], 0).into();
        c.mdns = false; // a test announces nothing on this machine's real network
    });
    lan.emitter().emit_ok(NewEvent::image_captured(1, 10, 1, 1));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], lan.addr().port()));
    wait_listed(addr, 1);
    let r = http(addr, "DELETE", "/api/cameras/1", &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("--token"), "{}", r.text());
}
