//! The Debian package, installed for real (issue 12): `dpkg -i` as root (no systemd
//! needed), the system user, group, state directory and conffile it makes, its unit checked
//! by `systemd-analyze`, then the hub run as the package's user, a producer user in its
//! group whose `sqlite3` and Python rows reach a stream client, and a user outside the
//! group refused by file permissions.
//!
//! Runs only with `TLE_PACKAGE=<path to the .deb>` and as root; otherwise it prints
//! `SKIPPED` and passes, unless `TLE_REQUIRE_PACKAGE=1` (set by `.ci/run`, which builds the
//! amd64 package and sets `TLE_PACKAGE`). It changes the machine: it refuses to run where
//! the package is already installed, and purges it and removes its users afterwards.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{Proc, SseClient, WAIT, reserve_port};

const NAME: &str = "timelapse-events";
const STATE: &str = "/var/lib/timelapse-events";
const DB: &str = "/var/lib/timelapse-events/events.db";
const UNIT: &str = "/lib/systemd/system/timelapse-events.service";
const PRODUCER: &str = "tle-test-producer";
const OUTSIDER: &str = "tle-test-outsider";
/// The most `systemd-analyze security` may rate the unit (issue 12).
const MAX_EXPOSURE: f64 = 2.0;

fn required() -> bool {
    std::env::var("TLE_REQUIRE_PACKAGE").is_ok_and(|v| v == "1")
}

/// The .deb to test, or None (after printing SKIPPED) when this test cannot run here.
fn gate() -> Option<PathBuf> {
    let why = match std::env::var_os("TLE_PACKAGE") {
        None => "TLE_PACKAGE is not set (.ci/run sets it to the amd64 .deb)".to_owned(),
        Some(deb) if !Path::new(&deb).is_file() => format!("TLE_PACKAGE={deb:?} is no file"),
        Some(_) if !is_root() => "not root: dpkg -i and useradd need root".to_owned(),
        Some(deb) => return Some(PathBuf::from(deb)),
    };
    assert!(!required(), "TLE_REQUIRE_PACKAGE=1 but {why}");
    eprintln!("SKIPPED package test: {why}");
    None
}

fn is_root() -> bool {
    run("id", &["-u"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(program: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(program).args(args).output()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `getent <db> <key>`'s fields, or None.
fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let out = run("getent", &[db, key]).ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(str::to_owned)
            .collect()
    })
}

fn id_of(db: &str, key: &str) -> u32 {
    getent(db, key)
        .and_then(|f| f.get(2).and_then(|id| id.parse().ok()))
        .unwrap_or_else(|| panic!("no {db} entry {key}"))
}

/// Leaves the machine as it was: kills the hub it started, purges the package, removes the
/// users and the state directory. Runs on success and on failure.
struct Cleanup {
    hub_pid: Option<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Best effort throughout: each step may have nothing to undo.
        if let Some(pid) = self.hub_pid {
            let _ = run("kill", &["-KILL", &pid.to_string()]);
        }
        let _ = run("dpkg", &["--purge", NAME]);
        for user in [PRODUCER, OUTSIDER, NAME] {
            let _ = run("userdel", &[user]);
        }
        let _ = run("groupdel", &[NAME]);
        let _ = std::fs::remove_dir_all(STATE);
    }
}

/// Runs `argv` as `user` (with that user's groups, as a login would give them).
fn as_user(user: &str, argv: &[&str]) -> Output {
    let mut args = vec!["-u", user, "--"];
    args.extend_from_slice(argv);
    run("runuser", &args).expect("runuser")
}

fn sqlite_insert(user: &str, event_type: &str, camera: u32) -> Output {
    let sql = format!(
        "INSERT INTO sse_events (event_type, event_data) VALUES ('{event_type}', '{{\"camera_id\": {camera}}}')"
    );
    as_user(user, &["sqlite3", "-cmd", ".timeout 5000", DB, &sql])
}

/// The exposure `systemd-analyze security --offline=yes` gives `unit`, and its report.
fn exposure(unit: &str) -> (f64, String) {
    let out = run("systemd-analyze", &["security", "--offline=yes", unit]).expect("run");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let score = text
        .lines()
        .find_map(|l| l.split("exposure level for ").nth(1))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    (score, text)
}

fn mode_of(path: &str) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn the_package_installs_a_hub_its_group_may_write_to_and_others_may_not() {
    let Some(deb) = gate() else { return };
    let installed = run("dpkg-query", &["-W", "-f=${Status}", NAME])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"));
    assert!(
        !installed,
        "{NAME} is installed on this machine: refusing to purge it for a test"
    );
    let mut cleanup = Cleanup { hub_pid: None };
    for user in [PRODUCER, OUTSIDER] {
        let _ = run("userdel", &[user]); // left by an earlier run that was killed
    }

    let deb = deb.to_str().expect("UTF-8 path");
    ok("dpkg", &["-i", deb]);

    // The system user and group, the shared state directory, the conffile.
    let user = getent("passwd", NAME).expect("the package creates its user");
    let (uid, gid) = (id_of("passwd", NAME), id_of("group", NAME));
    assert!(uid < 1000, "not a system user: {user:?}");
    assert_eq!(
        user[3].parse::<u32>().ok(),
        Some(gid),
        "primary group: {user:?}"
    );
    assert_eq!(user[6], "/usr/sbin/nologin", "{user:?}");
    assert_eq!(
        mode_of(STATE),
        (0o2775, uid, gid),
        "{STATE}: mode, owner, group"
    );
    assert_eq!(mode_of("/etc/default/timelapse-events"), (0o600, 0, 0));
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", NAME]);
    assert!(
        conffiles.contains("/etc/default/timelapse-events"),
        "conffiles: {conffiles}"
    );
    assert_eq!(mode_of("/usr/bin/timelapse-events").0, 0o755);

    // The packaged unit, with the packaged binary in place.
    let verify = run("systemd-analyze", &["verify", UNIT]).expect("systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );
    let (score, report) = exposure(UNIT);
    println!("systemd-analyze security --offline=yes {UNIT}: {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{report}"
    );

    // The hub as the package's user, with the unit's UMask.
    let addr = reserve_port();
    let serve = format!(
        "umask 0002; echo $$; exec /usr/bin/timelapse-events serve --db {DB} --bind {addr}"
    );
    let mut hub = Proc::spawn(
        Command::new("runuser")
            .args(["-u", NAME, "--", "sh", "-c", &serve])
            .current_dir("/")
            .env("RUST_LOG", "info"),
    );
    let pid: u32 = hub
        .line(WAIT)
        .and_then(|l| l.trim().parse().ok())
        .expect("the hub's pid");
    cleanup.hub_pid = Some(pid);
    let deadline = Instant::now() + WAIT;
    while !hub.stderr().contains("listening on") {
        assert!(
            Instant::now() < deadline,
            "hub did not start:\n{}",
            hub.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut client = SseClient::connect(addr, "/api/events");

    // A producer in the group: the sqlite3 CLI, then Python's sqlite3.
    ok(
        "useradd",
        &["--no-create-home", "--shell", "/usr/sbin/nologin", PRODUCER],
    );
    ok("usermod", &["-aG", NAME, PRODUCER]);
    ok(
        "useradd",
        &["--no-create-home", "--shell", "/usr/sbin/nologin", OUTSIDER],
    );
    let cli = sqlite_insert(PRODUCER, "image_captured", 7);
    assert!(cli.status.success(), "producer's sqlite3: {cli:?}");
    let py = as_user(
        PRODUCER,
        &[
            "/usr/bin/python3",
            "-c",
            "import json, sqlite3, sys\n\
             with sqlite3.connect('file:' + sys.argv[1] + '?mode=rw', uri=True, timeout=5) as db:\n\
             \x20   db.execute('INSERT INTO sse_events (event_type, event_data) VALUES (?, ?)', \
             ('camera_status_changed', json.dumps({'camera_id': 8, 'status': 'online'})))\n",
            DB,
        ],
    );
    assert!(py.status.success(), "producer's python3: {py:?}");
    let got = client.take(2);
    let seen: Vec<(String, i64)> = got
        .iter()
        .map(|e| {
            let j = e.json();
            let camera = j["data"]["camera_id"].as_i64().unwrap_or(-1);
            (j["type"].as_str().unwrap_or("").to_owned(), camera)
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("image_captured".to_owned(), 7),
            ("camera_status_changed".to_owned(), 8)
        ],
        "{got:?}\n{}",
        hub.stderr()
    );
    assert_eq!(got[1].json()["data"]["status"], "online");
    // Every file of the database is the group's and writable by it.
    for file in [DB, &format!("{DB}-wal"), &format!("{DB}-shm")] {
        let (mode, _, group) = mode_of(file);
        assert!(
            mode & 0o060 == 0o060 && group == gid,
            "{file}: {mode:o}, gid {group}"
        );
    }

    // Outside the group: refused by the file's permissions, and nothing stored.
    let refused = sqlite_insert(OUTSIDER, "intruder", 9);
    let err = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(!refused.status.success(), "the outsider's INSERT worked");
    assert!(
        ["readonly", "read-only", "permission", "unable to open"]
            .iter()
            .any(|w| err.contains(w)),
        "the outsider failed for another reason: {err}"
    );
    let db = rusqlite::Connection::open(DB).expect("open as root");
    let intruders: i64 = db
        .query_row(
            "SELECT count(*) FROM sse_events WHERE event_type = 'intruder'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(intruders, 0);
    drop(db);

    ok("kill", &["-TERM", &pid.to_string()]);
    let exit = hub.wait(WAIT);
    assert!(exit.success(), "{exit:?}\n{}", hub.stderr_to_end());
    cleanup.hub_pid = None;
    ok("dpkg", &["--purge", NAME]);
    assert!(!Path::new(UNIT).exists() && !Path::new("/usr/bin/timelapse-events").exists());
}
