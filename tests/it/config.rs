//! `serve --config`: the real binary reads a TOML file for its flags and its sinks; flags and
//! the environment win over it; refusals name the file, line and key and touch no database.

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};
use timelapse_events::{Emitter, NewEvent};

use crate::sinks::{Mode, Receiver};
use crate::support::{ChildHub, EmitOk, SseClient, WAIT, http, reserve_port, run_bin, wait_until};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the test's file");
}

fn config_args(config: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args = vec![OsString::from("--config"), config.into()];
    args.extend(extra.iter().map(OsString::from));
    args
}

#[test]
fn a_config_file_sets_flags_and_two_webhooks_each_with_its_own_filter() {
    let shots = Receiver::start(|_| Mode::Status(200));
    let alerts = Receiver::start(|_| Mode::Status(200));
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let headers = dir.path().join("alerts.headers");
    let secret = "Bearer file-s3cret-42";
    write(
        &headers,
        &format!("# the alert receiver's token\nAuthorization: {secret}\n"),
    );
    let bind = reserve_port();
    let config = dir.path().join("config.toml");
    write(
        &config,
        &format!(
            r#"# a camera host's settings
db = {db:?}
bind = "{bind}"
heartbeat_secs = 1
max-clients = 1

[[sink]]
kind = "webhook"
name = "shots"
url = "{}"
types = ["image_captured"]
timeout_secs = 2

[[sink]]
kind = "webhook"
name = "alerts"
url = "{}"
types = ["camera_stale", "camera_status_changed"]
min_priority = "normal"
header_file = {headers:?}
"#,
            shots.url("/shots"),
            alerts.url("/alerts"),
        ),
    );
    let hub = ChildHub::start_args(&config_args(&config, &[]), &[]);
    assert_eq!(hub.addr, bind, "bind from the file");

    // heartbeat_secs = 1: a silent stream gets comments; max_clients = 1: a second gets 503.
    let mut stream = SseClient::connect(hub.addr, "/api/events");
    let t = Instant::now();
    // The stream's opening comment, then a heartbeat: within WAIT only at 1 s, not at 15.
    assert!(
        stream.wait_comments(2, WAIT),
        "a heartbeat within the file's 1 s"
    );
    let heartbeat = t.elapsed();
    let second = http(hub.addr, "GET", "/api/events", &[], b"");
    assert_eq!(second.status, 503, "max-clients = 1 from the file");
    drop(stream);

    let em = Emitter::open(&db).expect("emitter on the file's db");
    let mut want_shots = Vec::new();
    let mut want_alerts = Vec::new();
    for i in 0..12 {
        let (kind, data) = match i % 3 {
            0 => ("camera_stale", json!({"camera_id": 1, "i": i})),
            1 => ("image_captured", json!({"camera_id": 1, "i": i})),
            _ => ("camera_status_changed", json!({"camera_id": 2, "i": i})),
        };
        let id = em.emit_ok(NewEvent::new(kind, data)).0;
        if kind == "image_captured" {
            want_shots.push(id);
        } else {
            want_alerts.push(id);
        }
    }
    assert!(wait_until(WAIT, || shots.accepted().len()
        >= want_shots.len()
        && alerts.accepted().len() >= want_alerts.len()));
    let sinks = http(hub.addr, "GET", "/api/sinks", &[], b"");
    let listing = sinks.text();
    let log = hub.log();
    println!(
        "heartbeat after {heartbeat:?}; shots got {:?} (want {want_shots:?}), alerts got {:?} \
         (want {want_alerts:?})",
        shots.accepted(),
        alerts.accepted()
    );
    assert_eq!(
        shots.accepted(),
        want_shots,
        "only image_captured, in order"
    );
    assert_eq!(
        alerts.accepted(),
        want_alerts,
        "only the alert types, in order"
    );
    assert!(
        shots
            .got()
            .iter()
            .all(|g| g.header("Authorization").is_none())
    );
    assert!(
        alerts
            .got()
            .iter()
            .all(|g| g.header("Authorization") == Some(secret)),
        "the header_file's token reaches its receiver"
    );
    let names: Vec<Value> = sinks
        .json()
        .as_array()
        .map(|a| a.iter().map(|s| s["name"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec![json!("shots"), json!("alerts")], "{listing}");
    assert!(
        !listing.contains("s3cret"),
        "no secret in /api/sinks: {listing}"
    );
    assert!(!log.contains("s3cret"), "no secret in the log:\n{log}");
    hub.terminate();
}

#[test]
fn a_flag_and_an_environment_variable_beat_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let in_file = reserve_port();
    let config = dir.path().join("config.toml");
    write(
        &config,
        &format!("db = {db:?}\nbind = \"{in_file}\"\nmax_clients = 1\n"),
    );

    let flag = ChildHub::start_args(
        &config_args(&config, &["--bind", "127.0.0.1:0", "--max-clients", "2"]),
        &[],
    );
    let _one = SseClient::connect(flag.addr, "/api/events");
    let two = http(flag.addr, "GET", "/api/events/stats", &[], b"");
    let streams_ok = SseClient::try_connect(flag.addr, "/api/events", &[], WAIT).is_some();
    println!(
        "file bind {in_file}, flag's hub on {}; second stream admitted: {streams_ok}",
        flag.addr
    );
    assert_ne!(flag.addr, in_file, "--bind beats the file");
    assert_eq!(two.status, 200);
    assert!(streams_ok, "--max-clients 2 beats the file's 1");
    flag.terminate();

    let env_port = reserve_port();
    let env = ChildHub::start_args(
        &config_args(&config, &[]),
        &[
            ("TIMELAPSE_EVENTS_BIND", &env_port.to_string()),
            (
                "TIMELAPSE_EVENTS_CONFIG",
                "/nonexistent/ignored-when-the-flag-is-given",
            ),
        ],
    );
    println!(
        "file bind {in_file}, environment's {env_port}: listening on {}",
        env.addr
    );
    assert_eq!(env.addr, env_port, "TIMELAPSE_EVENTS_BIND beats the file");
    env.terminate();

    // The file named by TIMELAPSE_EVENTS_CONFIG alone, without the flag.
    let only_env = ChildHub::start_args(
        &[],
        &[("TIMELAPSE_EVENTS_CONFIG", &config.to_string_lossy())],
    );
    println!(
        "config from the environment: listening on {}",
        only_env.addr
    );
    assert_eq!(
        only_env.addr, in_file,
        "TIMELAPSE_EVENTS_CONFIG names the file"
    );
    only_env.terminate();
}

#[test]
fn refusals_name_the_file_line_and_key_and_exit_2_before_any_database() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let config = dir.path().join("config.toml");
    let sink = |name: &str| {
        format!("[[sink]]\nkind = \"webhook\"\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/\"\n")
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "typo'd key",
            "bind = \"127.0.0.1:0\"\nheartbaet_secs = 5\n".into(),
            "line 2",
            "`heartbaet_secs`",
        ),
        (
            "wrong type",
            "heartbeat_secs = \"often\"\n".into(),
            "line 1",
            "`heartbeat_secs`",
        ),
        (
            "out of range",
            "\n\nmax_clients = 0\n".into(),
            "line 3",
            "`max_clients`",
        ),
        (
            "typo'd sink key",
            format!("{}tyeps = [\"x\"]\n", sink("a")),
            "line 5",
            "`sink.tyeps`",
        ),
        (
            "duplicate sink name",
            format!("{}\n{}", sink("a"), sink("a")),
            "line 8",
            "`sink.name`",
        ),
        (
            "a file sink named like a flag's",
            sink("hook1"),
            "",
            "hook1",
        ),
    ];
    for (what, text, line, key) in &cases {
        write(&config, text);
        let mut args = vec!["serve", "--db"];
        let db_arg = db.to_string_lossy().into_owned();
        let config_arg = config.to_string_lossy().into_owned();
        args.extend([db_arg.as_str(), "--config", config_arg.as_str()]);
        if *what == "a file sink named like a flag's" {
            args.extend(["--webhook", "http://127.0.0.1:9/"]);
        }
        let (status, _, stderr) = run_bin(&args);
        println!("{what}: exit {:?}: {}", status.code(), stderr.trim());
        assert_eq!(status.code(), Some(2), "{what}: {stderr}");
        if !line.is_empty() {
            assert!(
                stderr.contains(&config_arg),
                "{what} names the file: {stderr}"
            );
        }
        assert!(
            stderr.contains(line) && stderr.contains(key),
            "{what}: {stderr}"
        );
        assert!(!db.exists(), "{what}: no database was created");
    }
}
