//! `mqtts://` (the `tls` feature) against a real Mosquitto with a TLS listener, its CA and
//! certificate for `localhost`/127.0.0.1 made here with the `openssl` CLI, watched by
//! `mosquitto_sub --cafile`. Skipped like the MQTT tests when Mosquitto is not installed
//! (`TLE_REQUIRE_MQTT=1` makes it required); `openssl` is required.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use timelapse_events::{Emitter, NewEvent};

use crate::mqtt::{Broker, mosquitto_here};
use crate::support::{ChildHub, EmitOk, WAIT, http, sinks_of, wait_until};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `<name>.pem` (with its key) in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN=timelapse-events test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(pem)
}

/// `server.pem` and `server.key` for localhost and 127.0.0.1, signed by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    (dir.join("server.pem"), dir.join("server.key"))
}

/// A Mosquitto whose only listener is TLS, with a certificate signed by the CA `ca.pem`.
fn tls_broker(dir: &Path) -> (Broker, PathBuf) {
    let ca = make_ca(dir, "ca");
    let (cert, key) = make_server_cert(dir, "ca");
    let settings = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous true\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    (Broker::start_with(dir, &settings), ca)
}

/// `mosquitto_sub` over TLS for `count` messages under the test host's events, in its own
/// process; its output once it has them (or after its 10 s wait).
fn subscribe(port: u16, ca: &Path, count: usize) -> std::process::Child {
    Command::new("mosquitto_sub")
        .arg("--cafile")
        .arg(ca)
        .args(["-h", "localhost", "-p", &port.to_string()])
        .args(["-t", "timelapse/tlshost/events/#", "-q", "1"])
        .args(["-C", &count.to_string(), "-W", "10", "-v"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub")
}

fn shot(n: usize) -> NewEvent {
    NewEvent::new(
        "image_captured",
        json!({"camera_id": 1, "n": n, "image_count": n, "day_number": 1}),
    )
}

/// The `id`s of the events in `mosquitto_sub -v` output.
fn ids_in(output: &str) -> Vec<i64> {
    output
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(topic, _)| topic.starts_with("timelapse/tlshost/events/"))
        .filter_map(|(_, payload)| serde_json::from_str::<Value>(payload).ok()?["id"].as_i64())
        .collect()
}

#[test]
fn events_arrive_over_mqtts_in_order_with_a_ca_file() {
    if !mosquitto_here() {
        return;
    }
    const EVENTS: usize = 20;
    let dir = tempfile::tempdir().expect("tmp");
    let (broker, ca) = tls_broker(dir.path());
    let sub = subscribe(broker.port, &ca, EVENTS);
    std::thread::sleep(Duration::from_millis(500));
    let db = dir.path().join("events.db");
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca_flag = ca.display().to_string();
    let flags = [
        "--mqtt",
        url.as_str(),
        "--mqtt-ca-file",
        ca_flag.as_str(),
        "--mqtt-host-name",
        "tlshost",
    ];
    let hub = ChildHub::start(&db, &flags);
    let em = Emitter::open(&db).expect("emitter");
    let ids: Vec<i64> = (0..EVENTS).map(|n| em.emit_ok(shot(n)).0).collect();
    let out = sub.wait_with_output().expect("mosquitto_sub output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got = ids_in(&stdout);
    println!(
        "{} of {EVENTS} events over mqtts://localhost:{} (mosquitto_sub {})",
        got.len(),
        broker.port,
        out.status
    );
    assert_eq!(
        got,
        ids,
        "every event, in order; mosquitto_sub said {}; the hub's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        hub.log()
    );
    let sinks = sinks_of(hub.addr);
    let mqtt = sinks
        .iter()
        .find(|s| s["name"] == "mqtt1")
        .expect("the mqtt1 sink in /api/sinks");
    assert!(
        mqtt["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("mqtts://")),
        "{mqtt}"
    );
}

#[test]
fn a_broker_certificate_from_another_ca_delivers_nothing_and_is_the_sinks_last_error() {
    if !mosquitto_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (broker, ca) = tls_broker(dir.path());
    let other_ca = make_ca(dir.path(), "other");
    let sub = subscribe(broker.port, &ca, 1);
    std::thread::sleep(Duration::from_millis(500));
    let db = dir.path().join("events.db");
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca_flag = other_ca.display().to_string();
    let flags = [
        "--mqtt",
        url.as_str(),
        "--mqtt-ca-file",
        ca_flag.as_str(),
        "--mqtt-host-name",
        "tlshost",
    ];
    let hub = ChildHub::start(&db, &flags);
    let em = Emitter::open(&db).expect("emitter");
    for n in 0..3 {
        em.emit_ok(shot(n));
    }
    let last_error = || {
        sinks_of(hub.addr)
            .iter()
            .find(|s| s["name"] == "mqtt1")
            .and_then(|s| s["last_error"].as_str().map(str::to_owned))
    };
    let started = Instant::now();
    assert!(
        wait_until(WAIT, || last_error().is_some()),
        "a last_error within {WAIT:?}; the hub's log:\n{}",
        hub.log()
    );
    let error = last_error().unwrap_or_default();
    println!(
        "last_error after {:.1} s: {error}",
        started.elapsed().as_secs_f64()
    );
    assert!(error.contains("certificate"), "{error}");
    // The subscriber (which trusts the broker's CA) gets nothing in its 10 s.
    let out = sub.wait_with_output().expect("mosquitto_sub output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(ids_in(&stdout).is_empty(), "delivered anyway: {stdout}");
    // The hub keeps serving.
    let health = http(hub.addr, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200, "{}", health.text());
    let sinks = sinks_of(hub.addr);
    assert!(
        sinks.iter().any(|s| s["name"] == "mqtt1"),
        "the sink is still listed: {sinks:?}"
    );
}

/// An `https://` webhook in this build speaks TLS (ureq's rustls) and verifies the
/// certificate against the built-in roots: the broker's TLS listener, whose CA is ours and
/// not among them, fails the handshake, and the sink says so.
#[test]
fn an_https_webhook_checks_the_certificate_against_the_built_in_roots() {
    if !mosquitto_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (broker, _ca) = tls_broker(dir.path());
    let db = dir.path().join("events.db");
    let url = format!("https://localhost:{}/hook", broker.port);
    let hub = ChildHub::start(&db, &["--webhook", url.as_str()]);
    let em = Emitter::open(&db).expect("emitter");
    em.emit_ok(shot(0));
    let last_error = || {
        sinks_of(hub.addr)
            .iter()
            .find(|s| s["name"] == "hook1")
            .and_then(|s| s["last_error"].as_str().map(str::to_owned))
    };
    assert!(
        wait_until(WAIT, || last_error().is_some()),
        "a last_error within {WAIT:?}; the hub's log:\n{}",
        hub.log()
    );
    let error = last_error().unwrap_or_default();
    println!("webhook last_error: {error}");
    assert!(error.contains("certificate"), "{error}");
    let health = http(hub.addr, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200, "{}", health.text());
}
