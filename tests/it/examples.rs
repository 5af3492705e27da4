//! Tests: the example programs run as child processes against real hubs (`simulate_cameras`
//! into a hub's database file and over HTTP, `tail` across hub restarts), and the README's
//! Python producer snippet run by `python3`.
//!
//! The examples are located beside the hub binary cargo built for this run and built once
//! per test process with `cargo build --examples` (a no-op when `cargo test` already built
//! them), so `cargo test --test it examples::` never runs stale example binaries.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use timelapse_events::{Emitter, NewEvent};

use crate::support::{
    ChildHub, EmitOk, Proc, SseClient, SseEvent, TestHub, WAIT, bin, reserve_port, run_bin,
};

/// Hang guard for a child process that should end by itself, and for `tail` to come back
/// after a hub restart (its reconnect delay is the hub's `retry:` of 2 s, jittered).
const CHILD_WAIT: Duration = Duration::from_secs(60);

/// The three event types the simulator produces.
const SIMULATED_TYPES: [&str; 3] = [
    "camera_status_changed",
    "timelapse_status_changed",
    "image_captured",
];

// ---------------------------------------------------------------------------------------
// simulate_cameras

#[test]
fn simulate_cameras_streams_every_event_with_its_fields_in_order() {
    let hub = TestHub::start();
    let mut client = SseClient::connect(hub.addr(), "/api/events");
    wait_subscribed(&hub.emitter(), &mut client);
    let db = hub.db_path();
    let out = simulate(&["--db", path_str(&db)], "60", "5", "1", "3");
    let printed = parse_simulated(&out, 60);
    let streamed = take_except(&mut client, 60, "test_ready");
    check_simulated(&printed, &streamed, 3);
    let extra = client.next_event(Duration::from_millis(300));
    assert!(extra.is_none(), "more than 60 events streamed: {extra:?}");
}

#[test]
fn simulate_cameras_is_reproducible_with_a_seed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |name: &str| {
        let db = dir.path().join(name);
        simulate(&["--db", path_str(&db)], "40", "1", "7", "1").stdout
    };
    let (first, second) = (run("a.db"), run("b.db"));
    assert_eq!(first.lines().count(), 40, "got:\n{first}");
    assert_eq!(first, second, "same seed, same camera life");
}

#[test]
fn simulate_cameras_posts_over_http_with_a_token() {
    let hub = TestHub::start_with(|c| c.token = Some("s3cret".into()));
    let mut client = SseClient::connect(hub.addr(), "/api/events");
    wait_subscribed(&hub.emitter(), &mut client);
    let url = format!("http://{}", hub.addr());
    let out = simulate(&["--url", &url, "--token", "s3cret"], "20", "5", "2", "2");
    let printed = parse_simulated(&out, 20);
    let streamed = take_except(&mut client, 20, "test_ready");
    check_simulated(&printed, &streamed, 2);

    // A wrong token cannot be fixed by retrying: the simulator says why and exits 1.
    let mut wrong = Command::new(example("simulate_cameras"));
    wrong.args(["--url", &url, "--token", "nope", "--events", "3"]);
    wrong.args(["--interval-ms", "5", "--cameras", "1"]);
    let out = run_to_end(&mut wrong);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("401"), "stderr: {}", out.stderr);
}

#[test]
fn simulate_cameras_writes_jpegs_that_the_hub_serves() {
    let images = tempfile::tempdir().expect("images dir");
    let dir = images.path().to_owned();
    let hub = TestHub::start_with(|c| c.images_dir = Some(dir.clone()));
    let db = hub.db_path();
    let to = ["--db", path_str(&db), "--images-dir", path_str(&dir)];
    let out = simulate(&to, "160", "1", "4", "2");
    let printed = parse_simulated(&out, 160);
    let mut last: BTreeMap<i64, &str> = BTreeMap::new();
    let mut captures: BTreeMap<i64, usize> = BTreeMap::new();
    for p in printed.iter().filter(|p| p.event_type == "image_captured") {
        let camera = p.data["camera_id"].as_i64().expect("camera_id");
        let name = p.data["file_name"].as_str().expect("file_name");
        assert!(name.starts_with(&format!("camera-{camera}/")), "{name}");
        last.insert(camera, name);
        *captures.entry(camera).or_default() += 1;
    }
    assert_eq!(last.len(), 2, "both cameras captured: {captures:?}");
    for (camera, name) in &last {
        let on_disk = walk(&dir.join(format!("camera-{camera}")));
        // The last 50 frames stay, older ones are deleted.
        assert_eq!(on_disk.len(), captures[camera].min(50), "camera {camera}");
        for file in &on_disk {
            let bytes = std::fs::read(file).expect("a frame");
            assert!(
                bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
                "SOI: {}",
                file.display()
            );
            assert!(bytes.ends_with(&[0xFF, 0xD9]), "EOI: {}", file.display());
            assert!(
                (500..64 * 1024).contains(&bytes.len()),
                "{}",
                file.display()
            );
        }
        let newest = std::fs::read(dir.join(name)).expect("the newest frame is kept");
        let target = format!("/api/cameras/{camera}/latest");
        let served = || crate::support::http(hub.addr(), "GET", &target, &[], b"");
        assert!(
            crate::support::wait_until(WAIT, || served().body == newest),
            "the hub serves camera {camera}'s newest frame"
        );
        assert_eq!(served().header("Content-Type"), Some("image/jpeg"));
    }
    let (one, two) = (walk(&dir.join("camera-1")), walk(&dir.join("camera-2")));
    let read = |p: &PathBuf| std::fs::read(p).expect("a frame");
    assert_ne!(read(&one[0]), read(&one[1]), "frames differ");
    assert_ne!(read(&one[0]), read(&two[0]), "cameras differ");
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read a dir") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `simulate_cameras` writing to `to` (`--db PATH`, or `--url URL` and more), run to its end.
fn simulate(to: &[&str], events: &str, interval_ms: &str, seed: &str, cameras: &str) -> Finished {
    let mut cmd = Command::new(example("simulate_cameras"));
    cmd.args(to);
    cmd.args(["--events", events, "--interval-ms", interval_ms]);
    cmd.args(["--seed", seed, "--cameras", cameras]);
    run_to_end(&mut cmd)
}

/// One line the simulator printed: `<id> <source> <type> <data>`.
#[derive(Debug)]
struct Printed {
    id: i64,
    source: String,
    event_type: String,
    data: Value,
}

fn parse_simulated(out: &Finished, n: usize) -> Vec<Printed> {
    assert!(out.status.success(), "simulator failed: {}", out.stderr);
    let printed: Vec<Printed> = out
        .stdout
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let mut next = || {
                parts
                    .next()
                    .unwrap_or_else(|| panic!("short line {line:?}"))
            };
            Printed {
                id: next().parse().expect("line starts with the event id"),
                source: next().to_owned(),
                event_type: next().to_owned(),
                data: serde_json::from_str(next()).expect("line ends in JSON data"),
            }
        })
        .collect();
    assert_eq!(printed.len(), n, "one line per event:\n{}", out.stdout);
    printed
}

/// Checks what a stream got from a simulator run against what it printed.
fn check_simulated(printed: &[Printed], streamed: &[SseEvent], cameras: i64) {
    let by_id: BTreeMap<i64, &Printed> = printed.iter().map(|p| (p.id, p)).collect();
    assert_eq!(by_id.len(), printed.len(), "printed ids are unique");
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    let mut last_id_by_priority: BTreeMap<String, i64> = BTreeMap::new();
    for e in streamed {
        let env = e.json();
        let id = env["id"].as_i64().expect("envelope id");
        assert!(seen.insert(id), "event {id} streamed twice");
        let p = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("streamed {env} was never printed"));
        assert_eq!(env["type"], p.event_type.as_str(), "{env}");
        assert_eq!(env["data"], p.data, "{env}");
        assert_eq!(env["source"], p.source.as_str(), "{env}");
        check_fields(&env, cameras);
        assert!(e.seq() > last_seq, "cursors increase: {env}");
        last_seq = e.seq();
        // Higher priorities may overtake within a poll batch; within one priority the
        // stream keeps the commit order.
        let priority = env["priority"].as_str().unwrap_or("?").to_owned();
        let last = last_id_by_priority.insert(priority, id).unwrap_or(0);
        assert!(id > last, "{env} streamed after event {last}");
    }
    assert_eq!(seen.len(), printed.len(), "every printed event streamed");

    // Each camera's life, in the order it produced it.
    let mut per_camera: BTreeMap<i64, Vec<&Printed>> = BTreeMap::new();
    for p in printed {
        let camera = p.data["camera_id"].as_i64().expect("camera_id");
        per_camera.entry(camera).or_default().push(p);
    }
    for (camera, life) in &per_camera {
        assert_eq!(
            life[0].event_type, "camera_status_changed",
            "camera {camera}"
        );
        assert_eq!(life[0].data["status"], "online", "camera {camera}");
        if let Some(second) = life.get(1) {
            assert_eq!(second.event_type, "timelapse_status_changed");
            assert_eq!(second.data["status"], "running", "camera {camera}");
        }
        // image_count grows by one per image within a timelapse.
        let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
        for p in life.iter().filter(|p| p.event_type == "image_captured") {
            let timelapse = p.data["timelapse_id"].as_i64().expect("timelapse_id");
            let count = p.data["image_count"].as_i64().expect("image_count");
            let before = counts.insert(timelapse, count).unwrap_or(0);
            assert_eq!(count, before + 1, "camera {camera}: {}", p.data);
        }
    }
    for t in SIMULATED_TYPES {
        assert!(
            printed.iter().any(|p| p.event_type == t),
            "no {t} among {printed:?}"
        );
    }
}

/// The documented fields of each simulated event type.
fn check_fields(env: &Value, cameras: i64) {
    let data = &env["data"];
    let camera = data["camera_id"].as_i64().expect("camera_id");
    assert!((1..=cameras).contains(&camera), "{env}");
    assert_eq!(env["source"], format!("camera-{camera}"), "{env}");
    let text = |k: &str| data[k].as_str().unwrap_or_else(|| panic!("{k} in {env}"));
    let int = |k: &str| data[k].as_i64().unwrap_or_else(|| panic!("{k} in {env}"));
    match env["type"].as_str() {
        Some("image_captured") => {
            assert_eq!(env["priority"], "normal", "{env}");
            assert!(int("timelapse_id") > 0 && int("image_count") > 0, "{env}");
            assert!(int("day_number") >= 1 && int("image_id") > 0, "{env}");
            assert!(text("file_name").ends_with(".jpg"), "{env}");
        }
        Some("camera_status_changed") => {
            assert_eq!(env["priority"], "high", "{env}");
            assert!(["online", "offline"].contains(&text("status")), "{env}");
            assert!(!text("health_status").is_empty(), "{env}");
        }
        Some("timelapse_status_changed") => {
            let statuses = ["running", "paused", "completed"];
            assert!(statuses.contains(&text("status")), "{env}");
            assert!(int("timelapse_id") > 0, "{env}");
        }
        _ => panic!("unexpected event {env}"),
    }
}

// ---------------------------------------------------------------------------------------
// tail

#[test]
fn tail_prints_every_event_once_across_hub_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let addr = reserve_port().to_string();
    let mut hub = ChildHub::start_on(&db, &addr, &[]);
    let emitter = Emitter::open(&db).expect("emitter on the hub's database");
    let url = format!("http://{addr}/api/events");
    let mut tail = Proc::spawn(Command::new(example("tail")).args(["--url", &url]));
    wait_tail_ready(&emitter, &mut tail);

    let tick = |n: i64| {
        emitter.emit_ok(NewEvent::new("test_tick", json!({"n": n})));
    };
    let mut printed = Vec::new();
    (1..=5).for_each(tick);
    tail.wait_tick(5, &mut printed);

    // A clean restart, with events stored while the hub is down.
    let status = hub.terminate();
    assert!(status.success(), "hub exited {status}");
    (6..=10).for_each(tick);
    hub = ChildHub::start_on(&db, &addr, &[]);
    (11..=15).for_each(tick);
    tail.wait_tick(15, &mut printed);

    // A crash: the stream just stops, without its last chunk.
    hub.child.kill().expect("kill the hub");
    hub.child.wait().expect("reap the hub");
    (16..=18).for_each(tick);
    hub = ChildHub::start_on(&db, &addr, &[]);
    (19..=20).for_each(tick);
    tail.wait_tick(20, &mut printed);

    let ns: Vec<i64> = printed.iter().map(|t| t.n).collect();
    assert_eq!(
        ns,
        (1..=20).collect::<Vec<_>>(),
        "tail printed:\n{printed:#?}"
    );
    let seqs: Vec<i64> = printed.iter().map(|t| t.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "cursors: {seqs:?}");

    // Ctrl-C ends it cleanly.
    let status = tail.interrupt();
    let stderr = tail.stderr_to_end();
    assert!(status.success(), "tail exited {status}: {stderr}");
    assert!(stderr.contains("reconnecting"), "stderr:\n{stderr}");
    assert!(stderr.contains("stopped"), "stderr:\n{stderr}");
    drop(hub);
}

#[test]
fn tail_filters_speaks_http10_and_reports_a_reset() {
    let hub = TestHub::start();
    let url = format!("http://{}/api/events", hub.addr());
    let mut tail = Proc::spawn(Command::new(example("tail")).args([
        "--url",
        &url,
        "--http10",
        "--types",
        "image_captured",
        "--camera-id",
        "2",
        "--last-event-id",
        "not-a-cursor",
    ]));
    // The reset comes after the hub subscribed the stream: nothing later can be missed.
    let reset = tail.line(WAIT).expect("a reset line");
    assert!(
        reset.starts_with("--- reset") && reset.contains("malformed cursor"),
        "{reset}"
    );
    let emitter = hub.emitter();
    for (camera, n) in [(1, 1), (2, 2), (3, 3), (2, 4)] {
        emitter.emit_ok(NewEvent::image_captured(camera, 9, n, 1));
        emitter.emit_ok(NewEvent::camera_status_changed(camera, "online", "healthy"));
    }
    for want in [2, 4] {
        let line = tail.line(WAIT).expect("an event line");
        let (_, kind, data) = split_tail_line(&line);
        assert_eq!(kind, "image_captured", "{line}");
        assert_eq!(data["camera_id"], 2, "{line}");
        assert_eq!(data["image_count"], want, "{line}");
    }
    let extra = tail.line(Duration::from_millis(300));
    assert!(extra.is_none(), "filtered out, yet printed: {extra:?}");
    assert!(tail.interrupt().success(), "{}", tail.stderr());
}

/// One `test_tick` line printed by tail.
#[derive(Debug)]
struct Tick {
    seq: i64,
    n: i64,
}

fn split_tail_line(line: &str) -> (&str, &str, Value) {
    let mut parts = line.splitn(3, ' ');
    let cursor = parts.next().unwrap_or("");
    let kind = parts.next().unwrap_or("");
    let data = serde_json::from_str(parts.next().unwrap_or("")).unwrap_or(Value::Null);
    (cursor, kind, data)
}

/// Emits a marker through `emitter` until `tail` prints one: its stream is then subscribed.
fn wait_tail_ready(emitter: &Emitter, tail: &mut Proc) {
    let deadline = Instant::now() + CHILD_WAIT;
    while Instant::now() < deadline {
        emitter
            .emit(NewEvent::new("tail_ready", json!({})))
            .expect("emit marker");
        if let Some(line) = tail.line(Duration::from_millis(200)) {
            assert!(line.contains("tail_ready"), "unexpected line {line:?}");
            return;
        }
    }
    panic!("tail printed nothing: {}", tail.stderr());
}

// ---------------------------------------------------------------------------------------
// README

/// The README's Python snippet sits between these lines.
const SNIPPET_START: &str = "<!-- producer.py: start -->";
const SNIPPET_END: &str = "<!-- producer.py: end -->";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).expect("README.md is readable")
}

/// The code inside the fenced block between the snippet markers.
fn python_snippet() -> String {
    let readme = readme();
    let start = readme.find(SNIPPET_START).expect("snippet start marker");
    let end = readme.find(SNIPPET_END).expect("snippet end marker");
    let block = &readme[start + SNIPPET_START.len()..end];
    let code = block
        .split_once("```python\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("a ```python block between the markers");
    code.to_owned()
}

#[test]
fn readme_python_producer_snippet_reaches_a_stream() {
    let snippet = python_snippet();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/producer.py");
    let file = std::fs::read_to_string(file).expect("examples/producer.py is readable");
    assert!(
        file.contains(&snippet),
        "examples/producer.py must hold the README's snippet verbatim:\n{snippet}"
    );
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: python3 is not installed");
        return;
    }
    // The snippet opens ./timelapse-events.db, the hub's default.
    let hub = TestHub::start_with(|c| c.db_path = c.db_path.with_file_name("timelapse-events.db"));
    let mut client = SseClient::connect(hub.addr(), "/api/events");
    wait_subscribed(&hub.emitter(), &mut client);
    let out = run_to_end(
        Command::new("python3")
            .args(["-c", &snippet])
            .current_dir(hub.dir.path()),
    );
    assert!(out.status.success(), "python3 failed: {}", out.stderr);
    let streamed = take_except(&mut client, 1, "test_ready");
    let env = streamed[0].json();
    assert_eq!(env["type"], "image_captured", "{env}");
    assert_eq!(env["data"]["camera_id"], 1, "{env}");
    assert_eq!(env["source"], "system", "{env}");
}

#[test]
fn readme_documents_every_flag_and_environment_variable() {
    let readme = readme();
    for command in ["serve", "emit"] {
        let (status, help, _) = run_bin(&[command, "--help"]);
        assert!(status.success(), "{command} --help");
        let words = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        for word in words {
            let flag = word.starts_with("--") && word.len() > 2;
            let env = word.starts_with("TIMELAPSE_EVENTS_");
            let builtin = ["--help", "--version"].contains(&word);
            if (flag || env) && !builtin && !readme.contains(word) {
                panic!("README.md does not mention `{word}` (from `{command} --help`)");
            }
        }
    }
    for needed in ["cargo run --release -- serve", "cargo test", "curl -N"] {
        assert!(readme.contains(needed), "README.md lacks `{needed}`");
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures

/// Emits markers until the client receives one, so the stream is surely subscribed.
fn wait_subscribed(emitter: &Emitter, client: &mut SseClient) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        emitter
            .emit(NewEvent::new("test_ready", json!({})))
            .expect("emit marker");
        if client.next_event(Duration::from_millis(200)).is_some() {
            return;
        }
    }
    panic!("the stream received no marker within {WAIT:?}");
}

/// The next `n` events whose type is not `skip` (late markers from `wait_subscribed`).
fn take_except(client: &mut SseClient, n: usize, skip: &str) -> Vec<SseEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        let e = client
            .next_event(WAIT)
            .unwrap_or_else(|| panic!("only {} of {n} events arrived", got.len()));
        if e.json()["type"] != skip {
            got.push(e);
        }
    }
    got
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// An example binary, built for this test run's profile.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let bin_dir = Path::new(bin())
        .parent()
        .expect("the hub binary sits in a directory");
    let path = bin_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    BUILT.get_or_init(|| build_examples(bin_dir));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `cargo build --examples` into the target directory and profile of this test binary.
fn build_examples(bin_dir: &Path) {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--examples", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match bin_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    if let Some(target_dir) = bin_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    match cmd.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "cargo build --examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        // No cargo here (the test binary run by hand): use what is already built.
        Err(e) => println!("cannot run cargo ({e}); using the example binaries as they are"),
    }
}

/// What a finished child printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a child to its end (killed after [`CHILD_WAIT`]: a hang guard).
fn run_to_end(cmd: &mut Command) -> Finished {
    let mut proc = Proc::spawn(cmd);
    let status = proc.wait(CHILD_WAIT);
    let mut stdout = String::new();
    while let Some(line) = proc.line(WAIT) {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    Finished {
        status,
        stdout,
        stderr: proc.stderr_to_end(),
    }
}

impl Proc {
    /// SIGINT (Ctrl-C), then the exit status.
    fn interrupt(&mut self) -> ExitStatus {
        signal(&self.child, "INT");
        self.wait(WAIT)
    }

    /// Reads `tail` lines into `printed` until the `test_tick` with `n` arrives.
    fn wait_tick(&self, n: i64, printed: &mut Vec<Tick>) {
        let deadline = Instant::now() + CHILD_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left).unwrap_or_else(|| {
                panic!(
                    "tick {n} not printed; so far {printed:?}\nstderr:\n{}",
                    self.stderr()
                )
            });
            let (cursor, kind, data) = split_tail_line(&line);
            assert!(!line.starts_with("--- reset"), "unexpected reset: {line}");
            if kind != "test_tick" {
                continue; // late tail_ready markers
            }
            let seq = cursor.rsplit('-').next().and_then(|s| s.parse().ok());
            let tick = Tick {
                seq: seq.unwrap_or_else(|| panic!("cursor in {line:?}")),
                n: data["n"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("n in {line:?}")),
            };
            let done = tick.n == n;
            printed.push(tick);
            if done {
                return;
            }
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {}", child.id());
}
