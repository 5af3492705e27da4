//! The fleet: camera hosts publish through their MQTT sinks into a real Mosquitto, and a
//! fleet hub (`--mqtt-subscribe`) stores their events in its own log. Three hub processes,
//! each killed once with the broker; the fleet hub's table is the judge.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use timelapse_events::{Emitter, NewEvent};

use crate::mqtt::{Broker, mosquitto_client, mosquitto_here};
use crate::support::{
    ChildHub, EmitOk, SseClient, WAIT, http, reserve_port, stream_id, wait_until,
};

/// A camera host's hub: its MQTT sink publishes as `name`.
pub(crate) fn camera_host(db: &Path, url: &str, name: &str) -> ChildHub {
    // No watchdog events: a test that pauses its cameras longer than the 60 s floor on a
    // loaded machine would otherwise see a camera_stale it did not emit.
    ChildHub::start(
        db,
        &[
            "--mqtt",
            url,
            "--mqtt-host-name",
            name,
            "--stale-floor-secs",
            "3600",
        ],
    )
}

/// The fleet hub: it subscribes to every camera host's events, and is itself `fleet`.
pub(crate) fn fleet_hub(db: &Path, bind: &str, url: &str) -> ChildHub {
    ChildHub::start_on(
        db,
        bind,
        &["--mqtt-subscribe", url, "--mqtt-host-name", "fleet"],
    )
}

/// A stream client of the fleet hub that follows it from the start of its log and across
/// its restarts (Last-Event-ID), collecting (host, n) of every event, until `done`; `seen`
/// counts them as they come.
fn follow(
    addr: SocketAddr,
    done: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(String, i64)>> {
    // From the start rather than live: under qemu the client's first connect came after
    // the fleet hub had dispatched the first event, which it then never saw.
    let from_start = format!("{}-0", stream_id(addr));
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut last: Option<String> = Some(from_start);
        while !done.load(SeqCst) {
            let headers: Vec<(&str, &str)> = match &last {
                Some(id) => vec![("Last-Event-ID", id.as_str())],
                None => Vec::new(),
            };
            let Some(mut c) =
                SseClient::try_connect(addr, "/api/events", &headers, Duration::from_secs(2))
            else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            while let Some(e) = c.next_event(Duration::from_millis(500)) {
                last.clone_from(&e.id);
                let v = e.json();
                got.push((
                    v["host"].as_str().unwrap_or("").to_owned(),
                    v["data"]["n"].as_i64().unwrap_or(-1),
                ));
                seen.store(got.len(), SeqCst);
            }
            if c.ended {
                std::thread::sleep(Duration::from_millis(100));
            } else if done.load(SeqCst) {
                break;
            }
        }
        got
    })
}

/// Every dispatched seq of a camera host's database, as the cursors its sink publishes.
fn cursors_of(db: &Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(db).expect("open a camera host's db");
    let log: String = conn
        .query_row(
            "SELECT value FROM hub_meta WHERE key = 'stream_id'",
            [],
            |r| r.get(0),
        )
        .expect("stream id");
    let mut stmt = conn
        .prepare("SELECT seq FROM sse_events WHERE seq IS NOT NULL ORDER BY seq")
        .expect("select");
    stmt.query_map([], |r| r.get::<_, i64>(0))
        .expect("seqs")
        .map(|s| format!("{log}-{}", s.expect("seq")))
        .collect()
}

/// The fleet hub's stored remote events: origin host → origin cursors (with repeats).
fn stored(db: &Path) -> BTreeMap<String, Vec<String>> {
    let conn = rusqlite::Connection::open(db).expect("open the fleet db");
    let mut stmt = conn
        .prepare(
            "SELECT origin_host, origin_cursor FROM sse_events \
             WHERE origin_host IS NOT NULL ORDER BY id",
        )
        .expect("select");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("rows")
    {
        let (h, c) = row.expect("row");
        out.entry(h).or_default().push(c);
    }
    out
}

#[test]
fn a_fleet_hub_stores_every_event_of_two_hosts_once_through_three_kills() {
    if !mosquitto_here() {
        return;
    }
    const PER_HOST: i64 = 600;
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Broker::start(dir.path(), None);
    let url = broker.url(None);
    let (db_a, db_b, db_f) = (
        dir.path().join("garden.db"),
        dir.path().join("window.db"),
        dir.path().join("fleet.db"),
    );
    let fleet_bind = reserve_port().to_string();
    let mut fleet = fleet_hub(&db_f, &fleet_bind, &url);
    let fleet_addr = fleet.addr;
    let mut garden = camera_host(&db_a, &url, "garden");
    let window = camera_host(&db_b, &url, "window");
    // The fleet's session exists before anything is published (what it holds survives).
    assert!(wait_until(WAIT * 3, || {
        http(fleet_addr, "GET", "/api/hosts", &[], b"").json()["fleet"]["connected"] == json!(true)
    }));
    let done = Arc::new(AtomicBool::new(false));
    let seen_so_far = Arc::new(AtomicUsize::new(0));
    let client = follow(fleet_addr, done.clone(), seen_so_far.clone());
    let (em_a, em_b) = (
        Emitter::open(&db_a).expect("garden emitter"),
        Emitter::open(&db_b).expect("window emitter"),
    );
    let kills: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    for n in 0..PER_HOST {
        // Both hosts have a camera 1: the fleet tells them apart by host.
        for (em, cam) in [(&em_a, 1), (&em_b, 1)] {
            em.emit_ok(NewEvent::new(
                "image_captured",
                json!({"camera_id": cam, "n": n, "image_count": n}),
            ));
        }
        let note = |what: &str| {
            kills
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!("{what} after n={n}"));
        };
        if n == PER_HOST / 4 {
            garden.kill();
            note("garden SIGKILLed");
            std::thread::sleep(Duration::from_millis(300));
            garden = camera_host(&db_a, &url, "garden");
        }
        if n == PER_HOST / 2 {
            broker.kill();
            note("broker SIGKILLed");
            std::thread::sleep(Duration::from_millis(500));
            broker.restart();
        }
        if n == 3 * PER_HOST / 4 {
            fleet.kill();
            note("fleet hub SIGKILLed");
            std::thread::sleep(Duration::from_millis(300));
            fleet = fleet_hub(&db_f, &fleet_bind, &url);
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    let complete = |s: &BTreeMap<String, Vec<String>>| {
        ["garden", "window"]
            .iter()
            .all(|h| s.get(*h).map_or(0, Vec::len) >= PER_HOST as usize)
    };
    let arrived = wait_until(WAIT * 12, || complete(&stored(&db_f)));
    let elapsed = started.elapsed();
    // The stream client catches up with the log, then stops.
    let total = 2 * PER_HOST as usize;
    wait_until(WAIT, || {
        http(fleet.addr, "GET", "/api/events/stats", &[], b"").json()["dispatched"]
            .as_u64()
            .unwrap_or(0)
            >= total as u64
    });
    // Until it has as many as were stored (under qemu on a loaded machine a fixed 1.5 s was
    // not always enough), then a little longer, for any event it would get twice.
    wait_until(WAIT * 3, || seen_so_far.load(SeqCst) >= total);
    std::thread::sleep(Duration::from_millis(1000));
    done.store(true, SeqCst);
    let seen = client.join().expect("the stream client");
    let table = stored(&db_f);
    let kills = kills.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let hosts = http(fleet.addr, "GET", "/api/hosts", &[], b"").json();
    println!(
        "fleet: {} garden and {} window events stored in {:.1} s ({kills:?}); the stream client \
         saw {} events; /api/hosts {hosts}",
        table.get("garden").map_or(0, Vec::len),
        table.get("window").map_or(0, Vec::len),
        elapsed.as_secs_f64(),
        seen.len()
    );
    assert!(
        arrived,
        "every event arrived: {kills:?}\ngarden's log:\n{}\nwindow's log:\n{}\nthe fleet's log:\n{}",
        garden.log(),
        window.log(),
        fleet.log()
    );
    for (host, db) in [("garden", &db_a), ("window", &db_b)] {
        let want = cursors_of(db);
        let got = table.get(host).cloned().unwrap_or_default();
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), unique.len(), "{host}: nothing stored twice");
        let lost: Vec<&String> = want.difference(&unique).collect();
        assert!(lost.is_empty(), "{host}: lost {lost:?}");
        assert_eq!(unique, want, "{host}: exactly its events");
        assert_eq!(want.len(), PER_HOST as usize, "{host}: one row per emit");
    }
    // The stream: each event once, per host in the order it happened there.
    let mut per_host: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (h, n) in &seen {
        per_host.entry(h.as_str()).or_default().push(*n);
    }
    for host in ["garden", "window"] {
        let ns = per_host.get(host).cloned().unwrap_or_default();
        let late: Vec<(usize, i64)> = ns
            .iter()
            .enumerate()
            .filter(|(i, n)| ns[..*i].iter().any(|m| m > n))
            .map(|(i, n)| (i, *n))
            .collect();
        println!(
            "{host}: {} stream events, arrived after a later one: {late:?}",
            ns.len()
        );
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..PER_HOST).collect::<Vec<_>>(),
            "{host}: the fleet's stream has every event once"
        );
    }
    let listed: Vec<Value> = hosts["hosts"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = listed.iter().filter_map(|h| h["host"].as_str()).collect();
    assert_eq!(names, ["garden", "window"], "{hosts}");
    assert_eq!(hosts["host"], "fleet");
    // The state: camera 1 twice, once per host; and narrowed to one host.
    let state = http(fleet.addr, "GET", "/api/state", &[], b"").json();
    let cams: Vec<(String, i64, i64)> = state["cameras"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["host"].as_str().unwrap_or("").to_owned(),
                c["camera_id"].as_i64().unwrap_or(0),
                c["image_count"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let last = PER_HOST - 1;
    assert_eq!(
        cams,
        [
            ("garden".to_owned(), 1, last),
            ("window".to_owned(), 1, last)
        ],
        "{state}"
    );
    let garden_only = http(fleet.addr, "GET", "/api/state?host=garden", &[], b"").json();
    assert_eq!(garden_only["cameras"].as_array().map(Vec::len), Some(1));
    assert_eq!(garden_only["cameras"][0]["host"], "garden");
    let ours = http(fleet.addr, "GET", "/api/state?host=fleet", &[], b"").json();
    assert_eq!(
        ours["cameras"],
        json!([]),
        "the fleet hub has no camera of its own"
    );
    // The stream, narrowed to one host, replayed from the start.
    let from_start = format!("{}-0", stream_id(fleet.addr));
    let mut c = SseClient::resume(fleet.addr, "/api/events?host=window", &from_start);
    let mut ns: Vec<i64> = c
        .take(PER_HOST as usize)
        .iter()
        .map(|e| {
            let v = e.json();
            assert_eq!(v["host"], "window", "{v}");
            v["data"]["n"].as_i64().unwrap_or(-1)
        })
        .collect();
    assert!(
        c.next_event(Duration::from_millis(300)).is_none(),
        "nothing of garden's"
    );
    ns.sort_unstable();
    assert_eq!(ns, (0..PER_HOST).collect::<Vec<_>>());
    drop((garden, window, fleet));
}

/// `mosquitto_pub` of one QoS 1 message from a file.
fn publish_file(port: u16, topic: &str, path: &Path) {
    let ok = mosquitto_client("mosquitto_pub", port, None)
        .args(["-q", "1", "-t", topic])
        .arg("-f")
        .arg(path)
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success(), "published to {topic}");
}

#[test]
fn oversized_and_malformed_messages_are_skipped_for_good_and_the_fleet_carries_on() {
    if !mosquitto_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start(dir.path(), None);
    let url = broker.url(None);
    let db = dir.path().join("fleet.db");
    let bind = reserve_port().to_string();
    let fleet = fleet_hub(&db, &bind, &url);
    let connected = |addr| {
        http(addr, "GET", "/api/hosts", &[], b"").json()["fleet"]["connected"] == json!(true)
    };
    assert!(wait_until(WAIT, || connected(fleet.addr)));
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b'x'; 300 * 1024]).expect("write a big payload");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, b"{\"type\": \"has space\", \"cursor\": \"a-1\"}").expect("junk");
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        json!({"type": "image_captured", "data": {"camera_id": 1, "image_count": 5},
               "host": "garden", "cursor": "0000abcd-1"})
        .to_string(),
    )
    .expect("good");
    publish_file(broker.port, "timelapse/garden/events/image_captured", &big);
    publish_file(broker.port, "timelapse/garden/events/x", &junk);
    publish_file(broker.port, "timelapse/garden/events/image_captured", &good);
    let fleet_status = |addr| http(addr, "GET", "/api/hosts", &[], b"").json()["fleet"].clone();
    assert!(
        wait_until(WAIT, || fleet_status(fleet.addr)["stored"] == json!(1)),
        "the good one is stored after the bad ones: {}",
        fleet_status(fleet.addr)
    );
    let f = fleet_status(fleet.addr);
    assert_eq!(f["ignored"], json!(2), "{f}");
    assert_eq!(http(fleet.addr, "GET", "/health", &[], b"").status, 200);
    // Acknowledged: a restarted fleet hub (same session) is not sent them again.
    let status = fleet.terminate();
    assert!(status.success(), "{status}");
    let fleet = fleet_hub(&db, &bind, &url);
    assert!(wait_until(WAIT, || connected(fleet.addr)));
    std::thread::sleep(Duration::from_millis(800));
    let again = fleet_status(fleet.addr);
    println!("hostile messages: first run {f}, after a restart {again}");
    assert_eq!(
        (again["ignored"].clone(), again["stored"].clone()),
        (json!(0), json!(0)),
        "nothing redelivered: {again}"
    );
}
