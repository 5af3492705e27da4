//! Outbound sinks against a webhook receiver written here (a std `TcpListener` on
//! 127.0.0.1:0 and a thread per connection): failures and recovery, refusals, a hub
//! SIGKILLed and restarted, retention while the receiver is down, and ntfy's payload.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use timelapse_events::{Emitter, NewEvent, Priority, SinkConfig};

use crate::support::{ChildHub, EmitOk, TestHub, WAIT, http, run_bin, sinks_of, wait_until};

/// What the receiver does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Answer with this status (and a short body).
    Status(u16),
    /// Read the request, then say nothing for this long and close.
    Hang(Duration),
    /// Close the connection without reading (a receiver that is down).
    Close,
}

/// One request the receiver read.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Value,
    pub(crate) answered: Mode,
}

impl Got {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The event's row id (the envelope's `id`).
    fn id(&self) -> i64 {
        self.body["id"].as_i64().unwrap_or(-1)
    }
}

type Decide = dyn Fn(&Value) -> Mode + Send + Sync;

/// A webhook receiver; `decide` picks each request's fate from its body.
pub(crate) struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver that closes every connection until the flag it returns is set, then
    /// answers 200: a far side that is down, then comes back.
    pub(crate) fn down_until_up() -> (Receiver, Arc<AtomicBool>) {
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let receiver = Receiver::start(move |_| {
            if flag.load(SeqCst) {
                Mode::Status(200)
            } else {
                Mode::Close
            }
        });
        (receiver, up)
    }

    pub(crate) fn start(decide: impl Fn(&Value) -> Mode + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let decide: Arc<Decide> = Arc::new(decide);
        let acceptor = {
            let (got, stop) = (got.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (got, decide) = (got.clone(), decide.clone());
                            std::thread::spawn(move || serve(conn, &got, &*decide));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Receiver {
            addr,
            got,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn got(&self) -> Vec<Got> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The ids answered 200, in arrival order.
    pub(crate) fn accepted(&self) -> Vec<i64> {
        self.got()
            .iter()
            .filter(|g| g.answered == Mode::Status(200))
            .map(Got::id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join(); // the loop only sleeps and accepts
        }
    }
}

/// Serves requests on one (kept-alive) connection until the client closes it.
fn serve(conn: TcpStream, got: &Mutex<Vec<Got>>, decide: &Decide) {
    conn.set_read_timeout(Some(WAIT)).ok();
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mode = decide(&body);
        got.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Got {
                path,
                headers,
                body,
                answered: mode,
            });
        match mode {
            Mode::Status(code) => {
                let text = if code == 200 { "ok" } else { "not today" };
                let answer = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                if conn.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Mode::Hang(d) => {
                std::thread::sleep(d);
                return;
            }
            Mode::Close => return,
        }
    }
}

/// A webhook sink with quick retries, for tests.
fn quick_webhook(name: &str, url: &str, headers: Vec<(String, String)>) -> SinkConfig {
    SinkConfig {
        timeout: Duration::from_millis(500),
        window: 8,
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..SinkConfig::webhook(name, url, headers)
    }
}

/// Collapses runs of the same id (re-sends) and counts them.
fn dedup_runs(ids: &[i64]) -> (Vec<i64>, usize) {
    let mut out: Vec<i64> = Vec::new();
    let mut dups = 0;
    for &id in ids {
        if out.last() == Some(&id) {
            dups += 1;
        } else {
            out.push(id);
        }
    }
    (out, dups)
}

#[test]
fn a_webhook_gets_every_event_in_order_through_500s_a_hang_and_a_4xx() {
    // Requests 1-5: 500; 6-7: hang past the sink's timeout; then 200, but 400 for the
    // event marked `reject`.
    let seen = Arc::new(AtomicUsize::new(0));
    let receiver = {
        let seen = seen.clone();
        Receiver::start(move |body| match seen.fetch_add(1, SeqCst) + 1 {
            ..=5 => Mode::Status(500),
            6..=7 => Mode::Hang(Duration::from_millis(1500)),
            _ if body["data"]["reject"] == json!(true) => Mode::Status(400),
            _ => Mode::Status(200),
        })
    };
    let secret = "Bearer s3cret-token";
    let url = receiver.url("/hook?key=query-secret");
    let sink = quick_webhook("hook1", &url, vec![("Authorization".into(), secret.into())]);
    let hub = TestHub::start_with(|c| c.sinks = vec![sink]);
    let em = hub.emitter();
    let mut ids = Vec::new();
    let mut rejected = None;
    for i in 0..60 {
        let data = if i == 30 {
            json!({"camera_id": 1, "i": i, "reject": true})
        } else {
            json!({"camera_id": 1, "i": i})
        };
        let id = em.emit_ok(NewEvent::new("image_captured", data)).0;
        if i == 30 {
            rejected = Some(id);
        }
        ids.push(id);
    }
    let rejected = rejected.expect("event 30 emitted");
    let started = Instant::now();
    let done = wait_until(WAIT * 2, || {
        let s = sinks_of(hub.addr());
        s.first()
            .is_some_and(|s| s["lag"] == 0 && s["cursor"].as_i64() >= Some(60))
    });
    let took = started.elapsed();
    let status = sinks_of(hub.addr());
    assert!(done, "the sink did not catch up: {status:?}");
    let accepted = receiver.accepted();
    let (unique, dups) = dedup_runs(&accepted);
    let want: Vec<i64> = ids.iter().copied().filter(|&id| id != rejected).collect();
    let all = receiver.got();
    let refusals: Vec<i64> = all
        .iter()
        .filter(|g| g.answered == Mode::Status(400))
        .map(Got::id)
        .collect();
    let s = &status[0];
    println!(
        "webhook: {} requests, {} accepted ({} unique, {dups} re-sent), refused {refusals:?}, \
         retried {}, skipped {}, caught up in {took:.2?}",
        all.len(),
        accepted.len(),
        unique.len(),
        s["retried"],
        s["skipped"]
    );
    assert_eq!(
        unique, want,
        "every event but the refused one, in order, none lost"
    );
    assert!(dups <= 8, "re-sends bounded by the window: {dups}");
    assert_eq!(refusals, [rejected], "the 4xx is not retried");
    assert_eq!(s["delivered"], 59);
    assert_eq!(s["skipped"], 1);
    assert!(s["retried"].as_u64() >= Some(7), "5 × 500 and 2 hangs: {s}");
    assert_eq!(s["gaps"], 0);
    assert_eq!(s["kind"], "webhook");
    assert_eq!(
        s["target"],
        format!("http://{}/hook", receiver.addr),
        "no query string"
    );
    assert!(s["connected_since"].is_string() && s["last_success_at"].is_string());
    assert!(
        s["last_error"].as_str().unwrap_or("").contains("HTTP 400"),
        "{s}"
    );
    assert!(!status.iter().any(|v| v.to_string().contains("s3cret")));
    // Every request carried the header, the JSON content type and the stream's envelope.
    for g in &all {
        assert_eq!(g.header("Authorization"), Some(secret));
        assert_eq!(g.header("Content-Type"), Some("application/json"));
        assert_eq!(g.path, "/hook?key=query-secret");
    }
    let first = all
        .iter()
        .find(|g| g.answered == Mode::Status(200))
        .expect("one");
    let keys: BTreeSet<&str> = first
        .body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let want_keys: BTreeSet<&str> =
        ["id", "type", "data", "priority", "source", "timestamp"].into();
    assert_eq!(keys, want_keys, "the SSE envelope");
    // The same figures in stats and /metrics.
    let stats = http(hub.addr(), "GET", "/api/events/stats", &[], b"").json();
    assert_eq!(stats["sinks"][0]["delivered"], 59);
    let metrics = http(hub.addr(), "GET", "/metrics", &[], b"").text();
    for line in [
        "tle_sink_delivered_total{sink=\"hook1\",kind=\"webhook\"} 59",
        "tle_sink_skipped_total{sink=\"hook1\",kind=\"webhook\"} 1",
        "tle_sink_lag{sink=\"hook1\",kind=\"webhook\"} 0",
        "tle_sink_connected{sink=\"hook1\",kind=\"webhook\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in /metrics");
    }
    hub.shutdown().expect("clean shutdown");
}

#[test]
fn a_hub_sigkilled_mid_delivery_resumes_from_its_cursor_with_nothing_lost() {
    const EVENTS: usize = 1500;
    let receiver = Receiver::start(|_| {
        std::thread::sleep(Duration::from_micros(500));
        Mode::Status(200)
    });
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let url = receiver.url("/in");
    let flags = ["--webhook", url.as_str()];
    let hub = ChildHub::start(&db, &flags);
    // The sink registers at the head (0) when the hub starts: it gets everything after.
    let em = Emitter::open(&db).expect("an emitter of another process");
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        ids.push(
            em.emit_ok(NewEvent::new(
                "image_captured",
                json!({"camera_id": 2, "i": i}),
            ))
            .0,
        );
    }
    assert!(
        wait_until(WAIT * 2, || receiver.accepted().len() >= EVENTS / 3),
        "deliveries started: {}",
        receiver.accepted().len()
    );
    hub.kill(); // SIGKILL: no cursor recorded on the way out
    let before = receiver.accepted();
    let hub = ChildHub::start(&db, &flags);
    let complete = || {
        let got: BTreeSet<i64> = receiver.accepted().into_iter().collect();
        ids.iter().all(|id| got.contains(id))
    };
    // Bounded, and long: under qemu on a loaded machine a thousand POSTs took over 30 s.
    assert!(
        wait_until(WAIT * 6, complete),
        "not all delivered after the restart: {} of {EVENTS}",
        receiver
            .accepted()
            .into_iter()
            .collect::<BTreeSet<i64>>()
            .len()
    );
    let after = receiver.accepted();
    let resent_from = after[before.len()..].first().copied().unwrap_or(0);
    let (unique, dups) = dedup_sorted_runs(&after);
    println!(
        "kill -9 after {} deliveries (last id {:?}); the restarted hub resumed at id {resent_from}: \
         {} requests, {} unique, {dups} delivered twice",
        before.len(),
        before.last(),
        after.len(),
        unique.len()
    );
    assert_eq!(
        unique, ids,
        "every event, in order, once the duplicates are set aside"
    );
    assert!(
        dups <= 32 + 1,
        "re-sent at most a window (32) plus the one in flight: {dups}"
    );
    assert!(
        after.windows(2).filter(|w| w[1] <= w[0]).count() <= 1,
        "in order, except one step back at the restart"
    );
    let cursors = sinks_of(hub.addr);
    assert_eq!(cursors[0]["lag"], 0);
    hub.terminate();
    let (status, out, err) = run_bin(&["sinks", "--db", db.to_str().expect("utf-8 path")]);
    assert!(status.success(), "{err}");
    let stored: Value = serde_json::from_str(&out).expect("JSON");
    println!("stored cursors: {stored}");
    assert_eq!(stored[0]["name"], "hook1");
    assert_eq!(stored[0]["kind"], "webhook");
    assert_eq!(stored[0]["seq"], EVENTS as i64);
    assert!(stored[0]["delivered"].as_i64() >= Some(EVENTS as i64));
}

/// Ids in arrival order with a restart's re-sends: the ids once each, in order, and how
/// many arrived again.
fn dedup_sorted_runs(ids: &[i64]) -> (Vec<i64>, usize) {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for &id in ids {
        if seen.insert(id) {
            out.push(id);
        }
    }
    let again = ids.len() - out.len();
    (out, again)
}

#[test]
fn retention_by_age_waits_for_a_receiver_that_is_down() {
    let (receiver, up) = Receiver::down_until_up();
    let sink = quick_webhook("hook1", &receiver.url("/"), vec![]);
    let hub = TestHub::start_with(|c| {
        c.sinks = vec![sink];
        c.retention_age = Some(Duration::from_secs(1));
        c.retention_interval = Duration::from_millis(100);
    });
    let em = hub.emitter();
    let ids: Vec<i64> = (0..40)
        .map(|i| {
            em.emit_ok(NewEvent::new("image_captured", json!({"i": i})))
                .0
        })
        .collect();
    // Three times the age limit, thirty retention rounds.
    std::thread::sleep(Duration::from_secs(3));
    let stats = http(hub.addr(), "GET", "/api/events/stats", &[], b"").json();
    let retained = stats["dispatched"].as_i64();
    println!("after 3 s down (age limit 1 s): {retained:?} of 40 events retained");
    assert_eq!(
        retained,
        Some(40),
        "retention kept what the sink has not delivered"
    );
    up.store(true, SeqCst);
    assert!(wait_until(WAIT, || receiver.accepted().len() >= 40));
    let (unique, _) = dedup_runs(&receiver.accepted());
    assert_eq!(unique, ids, "all of them, in order");
    // Delivered, they are old enough to go now.
    assert!(
        wait_until(WAIT, || {
            let s = http(hub.addr(), "GET", "/api/events/stats", &[], b"").json();
            s["dispatched"] == 0
        }),
        "retention deletes them once delivered"
    );
    assert_eq!(sinks_of(hub.addr())[0]["gaps"], 0);
}

#[test]
fn the_size_limit_forces_a_gap_that_the_sink_records_and_carries_on_from() {
    const EVENTS: usize = 200;
    let (receiver, up) = Receiver::down_until_up();
    let sink = quick_webhook("hook1", &receiver.url("/"), vec![]);
    let hub = TestHub::start_with(|c| {
        c.sinks = vec![sink];
        c.retention_age = None;
        c.retention_max_db_bytes = Some(200 * 1024);
        c.retention_interval = Duration::from_millis(100);
    });
    let em = hub.emitter();
    let pad = "x".repeat(2000);
    let ids: Vec<i64> = (0..EVENTS)
        .map(|i| {
            em.emit_ok(NewEvent::new("image_captured", json!({"i": i, "pad": pad})))
                .0
        })
        .collect();
    let pruned = || {
        http(hub.addr(), "GET", "/api/events/stats", &[], b"").json()["pruned_through_seq"]
            .as_i64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(WAIT, || pruned() > 0),
        "the size limit deleted events"
    );
    // Let retention settle, then bring the receiver up.
    std::thread::sleep(Duration::from_millis(300));
    up.store(true, SeqCst);
    let caught_up = wait_until(WAIT, || {
        sinks_of(hub.addr())
            .first()
            .is_some_and(|s| s["lag"] == 0 && s["gaps"].as_u64() >= Some(1))
    });
    let s = sinks_of(hub.addr())[0].clone();
    assert!(caught_up, "{s}");
    let (unique, dups) = dedup_runs(&receiver.accepted());
    let lost = s["lost"].as_u64().unwrap_or(0) as usize;
    println!(
        "size limit 200 KiB, {EVENTS} events of 2 KB: gaps {}, lost {lost}, delivered {} ({dups} re-sent), stream pruned through seq {}",
        s["gaps"],
        unique.len(),
        pruned()
    );
    assert!(lost > 0 && !unique.is_empty());
    assert_eq!(unique.len() + lost, EVENTS, "delivered + lost = emitted");
    assert_eq!(
        unique,
        ids[lost..],
        "everything the size limit left, in order"
    );
    assert!(
        s["last_error"].is_string(),
        "the failures before are visible"
    );
}

#[test]
fn ntfy_gets_stale_and_offline_cameras_as_its_json_publish_format() {
    let receiver = Receiver::start(|_| Mode::Status(200));
    let sink = SinkConfig {
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..SinkConfig::ntfy("ntfy1", &receiver.url("/camera-alerts")).expect("ntfy URL")
    };
    let hub = TestHub::start_with(|c| {
        c.sinks = vec![sink];
        c.public_url = Some("http://pi.local:8080/".into());
    });
    let em = hub.emitter();
    em.emit_ok(NewEvent::camera_status_changed(4, "online", "healthy"));
    em.emit_ok(NewEvent::new("image_captured", json!({"camera_id": 4})));
    em.emit_ok(
        NewEvent::new(
            "camera_stale",
            json!({"camera_id": 4, "silent_secs": 1800.0, "expected_interval_secs": 300.0}),
        )
        .with_priority(Priority::High),
    );
    em.emit_ok(NewEvent::camera_status_changed(4, "offline", "unreachable"));
    assert!(wait_until(WAIT, || receiver.got().len() >= 2));
    assert!(wait_until(WAIT, || sinks_of(hub.addr())[0]["lag"] == 0));
    let got = receiver.got();
    println!(
        "ntfy bodies: {:?}",
        got.iter().map(|g| g.body.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        got.len(),
        2,
        "online and image_captured are not for a phone"
    );
    for g in &got {
        assert_eq!(g.path, "/", "JSON publishing goes to the server root");
        assert_eq!(g.header("Content-Type"), Some("application/json"));
    }
    assert_eq!(
        got[0].body,
        json!({
            "topic": "camera-alerts",
            "title": "Camera 4 is stale",
            "message": "No capture for 1800 s (one expected every 300 s).",
            "priority": 4,
            "tags": ["warning", "camera"],
            "click": "http://pi.local:8080/",
        })
    );
    assert_eq!(
        got[1].body,
        json!({
            "topic": "camera-alerts",
            "title": "Camera 4 is offline",
            "message": "Status offline, health unreachable.",
            "priority": 4,
            "tags": ["rotating_light", "camera"],
            "click": "http://pi.local:8080/",
        })
    );
    let s = &sinks_of(hub.addr())[0];
    assert_eq!(s["kind"], "ntfy");
    assert_eq!(
        s["target"],
        format!("http://{}/camera-alerts", receiver.addr)
    );
    assert_eq!(s["delivered"], 2);
}

#[test]
fn a_receiver_down_then_up_is_logged_once_each_way_and_headers_come_from_the_environment() {
    let (receiver, up) = Receiver::down_until_up();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let url = receiver.url("/in");
    let secret = "Bearer env-s3cret";
    let hub = ChildHub::start_env(
        &db,
        "127.0.0.1:0",
        &[],
        &[
            ("TIMELAPSE_EVENTS_WEBHOOKS", url.as_str()),
            (
                "TIMELAPSE_EVENTS_WEBHOOK_HEADERS",
                &format!("Authorization: {secret}"),
            ),
        ],
    );
    let em = Emitter::open(&db).expect("emitter");
    let ids: Vec<i64> = (0..5)
        .map(|i| {
            em.emit_ok(NewEvent::new("image_captured", json!({"i": i})))
                .0
        })
        .collect();
    // Default backoff (0.5 s doubling): about three tries in 2.5 s.
    assert!(wait_until(WAIT, || receiver.got().len() >= 3));
    up.store(true, SeqCst);
    assert!(wait_until(WAIT, || receiver.accepted().len() >= 5));
    let s = sinks_of(hub.addr)[0].clone();
    let log = hub.log();
    let failing = log.matches("delivery failing").count();
    let delivering = log.matches("sink hook1: delivering").count();
    println!(
        "{} tries while down, retried {}, log lines: {failing} failing, {delivering} delivering",
        receiver.got().len() - receiver.accepted().len(),
        s["retried"]
    );
    assert!(s["retried"].as_u64() >= Some(3));
    assert_eq!(
        (failing, delivering),
        (1, 1),
        "one line per state change:\n{log}"
    );
    let (unique, _) = dedup_runs(&receiver.accepted());
    assert_eq!(unique, ids);
    assert!(
        receiver
            .got()
            .iter()
            .filter(|g| g.answered == Mode::Status(200))
            .all(|g| g.header("Authorization") == Some(secret)),
        "the header from the environment"
    );
    assert!(!log.contains("env-s3cret"), "secrets stay out of the log");
    hub.terminate();
}

/// Field 19 (nice) of /proc/PID/task/TID/stat, for each thread: (name, nice).
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The name is in parentheses and may hold spaces: fields count from the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_owned();
        // rest starts at field 3 (state); nice is field 19.
        if let Some(nice) = rest.split_whitespace().nth(16).and_then(|n| n.parse().ok()) {
            out.push((name, nice));
        }
    }
    out
}

#[test]
fn sink_threads_run_nicer_than_the_streams() {
    let receiver = Receiver::start(|_| Mode::Status(200));
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let url = receiver.url("/in");
    let hub = ChildHub::start(&db, &["--webhook", url.as_str()]);
    let mut nices = Vec::new();
    assert!(wait_until(WAIT, || {
        nices = thread_nices(hub.child.id());
        nices.iter().any(|(n, _)| n == "tle-sink-hook1")
    }));
    let of = |name: &str| nices.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let (poller, sink) = (of("tle-poller"), of("tle-sink-hook1"));
    println!("thread nice values: poller {poller:?}, sink {sink:?}");
    assert!(poller.is_some(), "a poller thread in {nices:?}");
    assert_eq!(
        sink,
        poller.map(|p| (p + 10).min(19)),
        "the sink 10 nicer than the poller: {nices:?}"
    );
}
