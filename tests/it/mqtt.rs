//! The MQTT sink against a real Mosquitto (started here with a config of our own on a free
//! loopback port), watched by `mosquitto_sub` in a separate process. Skipped, with the
//! reason printed, when Mosquitto is not installed, unless `TLE_REQUIRE_MQTT=1`.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use timelapse_events::{Emitter, NewEvent};

use crate::support::{ChildHub, EmitOk, WAIT, lines_of, reserve_port, sinks_of, wait_until};

/// The sink's window of publishes in flight (what one crash may send again).
const WINDOW: usize = 64;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {cmd} >/dev/null || test -x /usr/sbin/{cmd}"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn mosquitto_bin() -> String {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto".into()
    } else {
        "mosquitto".into()
    }
}

/// Whether the tests can run; panics when required and missing.
pub(crate) fn mosquitto_here() -> bool {
    let ok = have("mosquitto") && have("mosquitto_sub") && have("mosquitto_passwd");
    if !ok {
        assert!(
            std::env::var("TLE_REQUIRE_MQTT").as_deref() != Ok("1"),
            "TLE_REQUIRE_MQTT=1 but mosquitto, mosquitto_sub or mosquitto_passwd is missing"
        );
        println!(
            "skipped: mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
        );
    }
    ok
}

/// A Mosquitto of our own: persistence on, so that queued QoS 1 messages for a persistent
/// subscriber survive its SIGKILL (saved on every change).
pub(crate) struct Broker {
    conf: PathBuf,
    pub(crate) port: u16,
    child: Option<Child>,
}

impl Broker {
    pub(crate) fn start(dir: &Path, password_file: Option<&Path>) -> Broker {
        let auth = match password_file {
            Some(p) => format!("allow_anonymous false\npassword_file {}\n", p.display()),
            None => "allow_anonymous true\n".to_owned(),
        };
        Broker::start_with(dir, &auth)
    }

    /// A broker whose listener takes `settings` (lines of mosquitto.conf: its auth, its
    /// TLS files).
    pub(crate) fn start_with(dir: &Path, settings: &str) -> Broker {
        let port = reserve_port().port();
        let conf = dir.join("mosquitto.conf");
        // Run as root, Mosquitto drops to the user `mosquitto`, which cannot write its
        // persistence here: the subscriber's session would then not survive the kill.
        let user = Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let text = format!(
            "listener {port} 127.0.0.1\nuser {user}\n{settings}persistence true\npersistence_location {}/\n\
             autosave_interval 1\nautosave_on_changes true\nmax_queued_messages 0\nset_tcp_nodelay true\n\
             log_dest stderr\n",
            dir.display()
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut b = Broker {
            conf,
            port,
            child: None,
        };
        b.restart();
        b
    }

    pub(crate) fn restart(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "mosquitto listens on {port}"
        );
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub(crate) fn url(&self, user: Option<&str>) -> String {
        match user {
            Some(u) => format!("mqtt://{u}@127.0.0.1:{}", self.port),
            None => format!("mqtt://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mosquitto_sub -v` in its own process: lines of "topic payload".
struct Sub {
    child: Child,
    lines: Receiver<String>,
}

impl Sub {
    fn start(port: u16, args: &[&str]) -> Sub {
        let mut child = mosquitto_client("mosquitto_sub", port, None)
            .args(["-v", "-q", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto_sub");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Sub { child, lines }
    }

    /// Lines until `quiet` passes without one, or `limit`.
    fn drain(&self, quiet: Duration, out: &mut Vec<(String, String)>) {
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
            out.push((topic.to_owned(), payload.to_owned()));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shot(camera: i64, n: usize) -> NewEvent {
    NewEvent::new(
        "image_captured",
        json!({"camera_id": camera, "n": n, "image_count": n, "day_number": 1}),
    )
}

#[test]
fn ten_thousand_events_through_a_broker_kill_and_a_hub_kill_arrive_all_in_order() {
    if !mosquitto_here() {
        return;
    }
    const EVENTS: usize = 10_000;
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Broker::start(dir.path(), None);
    // A persistent session (-c -i): what is queued for it survives the broker's restart.
    let sub = Sub::start(
        broker.port,
        &["-c", "-i", "tle-test-sub", "-t", "timelapse/#"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let db = dir.path().join("events.db");
    let url = broker.url(None);
    let flags = ["--mqtt", url.as_str(), "--mqtt-host-name", "testhost"];
    let mut hub = ChildHub::start(&db, &flags);
    let em = Emitter::open(&db).expect("emitter");
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        ids.push(em.emit_ok(shot(1 + (n % 3) as i64, n)).0);
        if n == EVENTS / 3 {
            broker.kill();
            std::thread::sleep(Duration::from_millis(500));
            broker.restart();
        }
        if n == 2 * EVENTS / 3 {
            hub.kill(); // SIGKILL mid-run: no cursor recorded on the way out; the will fires
            hub = ChildHub::start(&db, &flags);
        }
        if n % 1000 == 0 {
            // Paced a little, so that both kills land while the sink is delivering.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut got = Vec::new();
    let events = |got: &Vec<(String, String)>| {
        got.iter()
            .filter(|(t, _)| t.starts_with("timelapse/testhost/events/"))
            .count()
    };
    sub.drain(Duration::from_millis(300), &mut got);
    assert!(events(&got) > 0, "something arrived");
    let last = *ids.last().expect("ids");
    let deadline = Instant::now() + WAIT * 12;
    loop {
        sub.drain(Duration::from_millis(500), &mut got);
        let seen_last = got.iter().any(|(t, p)| {
            t.starts_with("timelapse/testhost/events/")
                && serde_json::from_str::<Value>(p).is_ok_and(|v| v["id"] == json!(last))
        });
        if seen_last || Instant::now() > deadline {
            break;
        }
    }
    let elapsed = started.elapsed();
    let seen: Vec<i64> = got
        .iter()
        .filter(|(t, _)| t.starts_with("timelapse/testhost/events/"))
        .filter_map(|(_, p)| serde_json::from_str::<Value>(p).ok()?["id"].as_i64())
        .collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for id in &seen {
        *counts.entry(*id).or_default() += 1;
    }
    let lost: Vec<i64> = ids
        .iter()
        .filter(|id| !counts.contains_key(id))
        .copied()
        .collect();
    let dups: usize = counts.values().map(|c| c - 1).sum();
    // In order: each id's first arrival comes after every smaller id's first arrival.
    let mut firsts = Vec::new();
    for id in &seen {
        if !firsts.contains(id) && firsts.last().is_none_or(|l| l < id) {
            firsts.push(*id);
        }
    }
    let out_of_order = counts.len() - firsts.len();
    let availability: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t == "timelapse/testhost/availability")
        .map(|(_, p)| p.as_str())
        .collect();
    println!(
        "{EVENTS} events, broker SIGKILLed at {} and the hub once: {} messages seen, {} unique, \
         {dups} duplicates (bound {}), {} lost, {out_of_order} out of order, {:.1} s; availability {availability:?}",
        EVENTS / 3,
        seen.len(),
        counts.len(),
        4 * WINDOW,
        lost.len(),
        elapsed.as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "lost {} ids, {:?} to {:?}; the broker was killed after id {}, the hub after id {}",
        lost.len(),
        lost.first(),
        lost.last(),
        ids[EVENTS / 3],
        ids[2 * EVENTS / 3]
    );
    assert_eq!(out_of_order, 0, "first arrivals in seq order");
    // At least once: what was in flight when the broker died (a window), what it had
    // acknowledged in the 2 s before (sent again, at most a window), what was in flight when
    // the hub died (a window), and what the broker itself delivers again to the subscriber
    // from its last autosave (1 s): 195 once on a loaded machine, over 3 windows.
    assert!(dups <= 4 * WINDOW, "{dups} duplicates over the bound");
    assert!(
        availability.contains(&"offline"),
        "the will published offline: {availability:?}"
    );
    assert_eq!(availability.last(), Some(&"online"), "back online");
    drop(hub);
}

/// `mosquitto_sub` or `mosquitto_pub` (`tool`) to our broker on 127.0.0.1, as `user`
/// (name, password) or anonymous.
pub(crate) fn mosquitto_client(tool: &str, port: u16, user: Option<(&str, &str)>) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((name, password)) = user {
        c.args(["-u", name, "-P", password]);
    }
    c
}

/// The retained messages under `filter`, from a fresh subscriber.
fn retained(port: u16, user: Option<(&str, &str)>, filter: &str, n: usize) -> Vec<(String, Value)> {
    let out = mosquitto_client("mosquitto_sub", port, user)
        .args(["-v", "-t", filter])
        .args(["-C", &n.to_string(), "-W", "5", "--retained-only"])
        .output()
        .expect("run mosquitto_sub");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (t, p) = l.split_once(' ')?;
            Some((
                t.to_owned(),
                serde_json::from_str(p).unwrap_or(Value::String(p.into())),
            ))
        })
        .collect()
}

#[test]
fn home_assistant_finds_each_camera_and_hears_again_after_its_birth() {
    if !mosquitto_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let passwords = dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["tle", "s3cret"])
        .status()
        .expect("mosquitto_passwd");
    assert!(made.success());
    let broker = Broker::start(dir.path(), Some(&passwords));
    let secret = dir.path().join("mqtt-password");
    std::fs::write(&secret, "s3cret\n").expect("write password");
    let db = dir.path().join("events.db");
    let url = broker.url(Some("tle"));
    let secret_arg = secret.display().to_string();
    let flags = [
        "--mqtt",
        url.as_str(),
        "--mqtt-password-file",
        secret_arg.as_str(),
        "--mqtt-host-name",
        "hahost",
    ];
    let hub = ChildHub::start(&db, &flags);
    let em = Emitter::open(&db).expect("emitter");
    em.emit_ok(shot(5, 42));
    let port = broker.port;
    // Anonymous is refused here: read as the same user.
    let read = |filter: &str, n: usize| retained(port, Some(("tle", "s3cret")), filter, n);
    assert!(wait_until(WAIT, || read("homeassistant/#", 8).len() == 8));
    let configs = read("homeassistant/#", 8);
    let mut components = BTreeMap::new();
    for (topic, c) in &configs {
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(parts.len(), 5, "{topic}");
        assert_eq!(
            (parts[0], parts[2], parts[4]),
            ("homeassistant", "timelapse_hahost", "config")
        );
        assert!(parts[3].starts_with("camera_5_"), "{topic}");
        *components.entry(parts[1].to_owned()).or_insert(0) += 1;
        assert_eq!(
            c["state_topic"], "timelapse/hahost/cameras/5/state",
            "{topic}"
        );
        assert_eq!(c["availability_topic"], "timelapse/hahost/availability");
        assert_eq!(c["payload_available"], "online");
        assert_eq!(c["payload_not_available"], "offline");
        assert_eq!(c["device"]["identifiers"], json!(["timelapse_hahost_5"]));
        assert_eq!(c["device"]["manufacturer"], "timelapse-events");
        assert!(c["device"]["model"].is_string() && c["device"]["sw_version"].is_string());
        let unique = c["unique_id"].as_str().unwrap_or_default();
        assert!(unique.starts_with("timelapse_hahost_5_"), "{unique}");
        assert_eq!(c["default_entity_id"], format!("{}.{unique}", parts[1]));
        assert!(
            c["value_template"]
                .as_str()
                .is_some_and(|t| t.contains("value_json"))
        );
    }
    assert_eq!(components.get("sensor"), Some(&6));
    assert_eq!(components.get("binary_sensor"), Some(&2));
    let classes: Vec<String> = configs
        .iter()
        .filter_map(|(_, c)| c["device_class"].as_str().map(str::to_owned))
        .collect();
    for class in ["timestamp", "problem", "connectivity"] {
        assert!(classes.iter().any(|c| c == class), "{class} in {classes:?}");
    }
    let state = read("timelapse/hahost/cameras/5/state", 1);
    assert_eq!(
        state.first().map(|(_, s)| s["image_count"].clone()),
        Some(json!(42))
    );
    assert_eq!(
        read("timelapse/hahost/availability", 1)
            .first()
            .map(|(_, v)| v.clone()),
        Some(json!("online"))
    );
    // Home Assistant's birth: the configs come again (a live subscriber sees them).
    let live = mosquitto_client("mosquitto_sub", port, Some(("tle", "s3cret")))
        .args([
            "-v",
            "-t",
            "homeassistant/+/+/+/config",
            "-C",
            "16",
            "-W",
            "8",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("live subscriber");
    std::thread::sleep(Duration::from_millis(500));
    let birth = mosquitto_client("mosquitto_pub", port, Some(("tle", "s3cret")))
        .args(["-t", "homeassistant/status", "-m", "online"])
        .status()
        .expect("mosquitto_pub");
    assert!(birth.success());
    let out = live.wait_with_output().expect("live subscriber ends");
    let heard = String::from_utf8_lossy(&out.stdout).lines().count();
    println!(
        "discovery: 8 retained configs checked; after the birth the live subscriber heard {heard} (8 retained + 8 again)"
    );
    assert_eq!(
        heard, 16,
        "8 retained on subscribe, then 8 again after the birth"
    );
    hub.kill();
    assert!(wait_until(WAIT, || {
        read("timelapse/hahost/availability", 1)
            .first()
            .map(|(_, v)| v.clone())
            == Some(json!("offline"))
    }));
    let _hub = ChildHub::start(&db, &flags);
    assert!(wait_until(WAIT, || {
        read("timelapse/hahost/availability", 1)
            .first()
            .map(|(_, v)| v.clone())
            == Some(json!("online"))
    }));
}

/// The retained state of one camera on an anonymous broker, once it has `field` = `want`.
fn state_once(port: u16, topic: &str, field: &str, want: &Value) -> Option<Value> {
    let mut last = None;
    wait_until(WAIT, || {
        last = retained(port, None, topic, 1).pop().map(|(_, v)| v);
        last.as_ref().is_some_and(|v| &v[field] == want)
    });
    last
}

#[test]
fn the_retained_state_is_the_hubs_whatever_the_sink_delivers_and_after_a_restart() {
    if !mosquitto_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start(dir.path(), None);
    // A sink that delivers only camera_stale: its own events say nothing of captures.
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[sink]]\nkind = \"mqtt\"\nname = \"ha\"\nurl = \"{}\"\n\
             host_name = \"sthost\"\ntypes = [\"camera_stale\"]\n",
            broker.url(None)
        ),
    )
    .expect("write config");
    let db = dir.path().join("events.db");
    let config_arg = config.display().to_string();
    let flags = ["--config", config_arg.as_str()];
    let hub = ChildHub::start(&db, &flags);
    let em = Emitter::open(&db).expect("emitter");
    em.emit_ok(NewEvent::camera_status_changed(7, "online", "healthy"));
    em.emit_ok(shot(7, 12));
    let topic = "timelapse/sthost/cameras/7/state";
    let s = state_once(broker.port, topic, "image_count", &json!(12));
    let s = s.unwrap_or_default();
    assert_eq!(
        (&s["image_count"], &s["status"], &s["health_status"]),
        (&json!(12), &json!("online"), &json!("healthy")),
        "the hub's state, although the sink delivered none of these events: {s}"
    );
    let status = hub.terminate();
    assert!(status.success(), "clean stop: {status}");
    // While the hub is down: one more capture, then a restart that folds nothing for the
    // sink before it publishes (its own events would be empty again).
    em.emit_ok(shot(7, 13));
    let _hub = ChildHub::start(&db, &flags);
    let s = state_once(broker.port, topic, "image_count", &json!(13)).unwrap_or_default();
    assert_eq!(
        (&s["image_count"], &s["status"], &s["camera_id"]),
        (&json!(13), &json!("online"), &json!(7)),
        "after a restart, the whole state and not a partial one: {s}"
    );
    println!("retained state after a filtered sink and a restart: {s}");
}

#[test]
fn api_sinks_follows_the_broker_while_nothing_is_sent() {
    if !mosquitto_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Broker::start(dir.path(), None);
    let db = dir.path().join("events.db");
    let url = broker.url(None);
    let hub = ChildHub::start(&db, &["--mqtt", url.as_str(), "--mqtt-host-name", "idle"]);
    let mqtt = || {
        sinks_of(hub.addr)
            .into_iter()
            .find(|s| s["name"] == "mqtt1")
            .unwrap_or_default()
    };
    // No event at all: the connection alone makes it connected.
    assert!(
        wait_until(WAIT, || mqtt()["connected"] == json!(true)),
        "connected without a delivery: {}",
        mqtt()
    );
    assert_eq!(mqtt()["kind"], "mqtt");
    broker.kill();
    assert!(
        wait_until(WAIT, || mqtt()["connected"] == json!(false)),
        "the broker's death is seen while idle: {}",
        mqtt()
    );
    let down = mqtt();
    assert!(
        down["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "with a reason: {down}"
    );
    broker.restart();
    assert!(
        wait_until(WAIT, || mqtt()["connected"] == json!(true)),
        "connected again (within the 2 s idle reconnect): {}",
        mqtt()
    );
    println!(
        "idle MQTT sink: down with {:?}, then connected again",
        down["last_error"]
    );
}

#[test]
fn a_forgotten_camera_leaves_home_assistant_and_its_retained_state_goes() {
    if !mosquitto_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start(dir.path(), None);
    let db = dir.path().join("events.db");
    let url = broker.url(None);
    let hub = ChildHub::start(&db, &["--mqtt", url.as_str(), "--mqtt-host-name", "fghost"]);
    let em = Emitter::open(&db).expect("emitter");
    em.emit_ok(shot(5, 42));
    em.emit_ok(shot(6, 7));
    let port = broker.port;
    // At most `n` retained messages under `filter` (a fresh subscriber gets them at once).
    let topics = |filter: &str, n: usize| -> Vec<String> {
        let mut t: Vec<String> = retained(port, None, filter, n)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        t.sort();
        t
    };
    assert!(wait_until(WAIT, || topics("homeassistant/#", 16).len() == 16));
    assert_eq!(topics("timelapse/fghost/cameras/+/state", 2).len(), 2);
    let r = crate::support::http(hub.addr, "DELETE", "/api/cameras/5", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // An empty retained message clears a topic: what is left is camera 6's.
    assert!(
        wait_until(Duration::from_secs(30), || topics(
            "timelapse/fghost/cameras/+/state",
            2
        ) == [
            "timelapse/fghost/cameras/6/state"
        ]),
        "camera 5's retained state is cleared: {:?}",
        topics("timelapse/fghost/cameras/+/state", 2)
    );
    let left = topics("homeassistant/#", 16);
    assert_eq!(left.len(), 8, "{left:?}");
    assert!(
        left.iter().all(|t| t.contains("/camera_6_")),
        "only camera 6's entities are left for Home Assistant: {left:?}"
    );
    assert!(hub.log().contains("camera 5 forgotten"), "{}", hub.log());
}
