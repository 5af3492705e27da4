//! Issue 12, item 4: a CLI that refuses the wrong file. Only `serve` and `emit --create`
//! create a database; every other subcommand names the path, what it expected and the
//! flag to fix it, and leaves the directory as it found it. `check` and `stats` read a file
//! this user may not write. Each failure has a message of its own.
//!
//! Tests run as root in CI, and root ignores file modes: the read-only and permission cases
//! run the binary as `nobody` (through `runuser`) when root, and rely on the modes alone
//! otherwise. They say so and pass as skipped when neither is possible.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use serde_json::Value;

use crate::support::{ChildHub, Proc, WAIT, bin, run_bin, scribble_over_events_table};

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A database made by `emit --create`, holding `events` pending events.
fn new_db(dir: &Path, events: usize) -> PathBuf {
    let db = dir.join("events.db");
    for _ in 0..events.max(1) {
        let (status, _, err) = run_bin(&["emit", "--create", "--db", s(&db), "--type", "seed"]);
        assert!(status.success(), "{err}");
    }
    db
}

/// How to run the binary as a user that file modes apply to: `runuser -u nobody --` when
/// we are root, nothing when we are not; None (with a message) when root cannot switch.
pub(crate) fn unprivileged() -> Option<Vec<&'static str>> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some(Vec::new());
    }
    let prefix = vec!["runuser", "-u", "nobody", "--"];
    let works = Command::new(prefix[0])
        .args(&prefix[1..])
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if works {
        Some(prefix)
    } else {
        println!("skipped: running as root and `runuser -u nobody` does not work here");
        None
    }
}

/// Runs the binary through `prefix`; (status, stdout, stderr). A `serve` that does not
/// exit within the hang guard fails the test.
pub(crate) fn run_via(prefix: &[&str], args: &[&str]) -> (ExitStatus, String, String) {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    let mut p = Proc::spawn(cmd.args(args));
    let status = p.wait(WAIT);
    let mut out = String::new();
    while let Some(line) = p.line(std::time::Duration::from_millis(200)) {
        out.push_str(&line);
        out.push('\n');
    }
    (status, out, p.stderr_to_end())
}

/// A temp dir that `nobody` may enter (and, with `writable`, create files in).
fn shared_dir(writable: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    chmod(dir.path(), if writable { 0o777 } else { 0o755 });
    dir
}

/// Asserts a refusal: exit 1, no output, the message holding every piece of `needles`.
fn assert_refused(what: &str, got: &(ExitStatus, String, String), needles: &[&str]) {
    assert_refused_with(1, what, got, needles);
}

/// [`assert_refused`] with exit `code`: 2 for a `serve` this user may not write with.
fn assert_refused_with(
    code: i32,
    what: &str,
    (status, out, err): &(ExitStatus, String, String),
    needles: &[&str],
) {
    assert_eq!(status.code(), Some(code), "{what}: {out}{err}");
    assert_eq!(out, "", "{what} prints nothing on stdout: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: `{n}` missing from: {err}");
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
}

const HINT: [&str; 2] = ["--db", "TIMELAPSE_EVENTS_DB"];

#[test]
fn a_mistyped_db_is_refused_by_every_subcommand_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let typo = dir.path().join("evnets.db");
    let copy = dir.path().join("copy.db");
    let no_dir = dir.path().join("no-such-dir").join("events.db");
    for db in [&typo, &no_dir] {
        let cases: [(&str, Vec<&str>); 5] = [
            ("emit", vec!["emit", "--db", s(db), "--type", "x"]),
            ("stats", vec!["stats", "--db", s(db)]),
            ("cleanup", vec!["cleanup", "--db", s(db)]),
            ("check", vec!["check", "--db", s(db)]),
            ("backup", vec!["backup", "--db", s(db), "--to", s(&copy)]),
        ];
        for (what, args) in cases {
            let got = run_bin(&args);
            let expected = format!("no timelapse-events database at {}", db.display());
            let mut needles = vec![expected.as_str(), "does not exist"];
            needles.extend(HINT);
            assert_refused(what, &got, &needles);
            assert_eq!(
                listing(dir.path()),
                Vec::<String>::new(),
                "{what} created a file"
            );
        }
    }
    // The environment variable is the same path.
    let out = Command::new(bin())
        .args(["stats"])
        .env("TIMELAPSE_EVENTS_DB", &typo)
        .output()
        .expect("run binary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(s(&typo)), "{err}");
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[test]
fn emit_create_creates_a_database_and_logs_created_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("new.db");
    let (status, out, err) = run_bin(&["emit", "--create", "--db", s(&db), "--type", "first"]);
    assert!(status.success(), "{err}");
    assert!(out.trim().parse::<i64>().is_ok(), "prints the id: {out}");
    assert_eq!(err.matches("created database").count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "schema version {}",
            timelapse_events::SCHEMA_VERSION
        )),
        "{err}"
    );
    assert!(!err.contains("migrated"), "{err}");
    // Now it exists, so plain `emit` writes into it, and nothing is created again.
    let (status, _, err) = run_bin(&["emit", "--db", s(&db), "--type", "second"]);
    assert!(status.success(), "{err}");
    assert!(!err.contains("created"), "{err}");
    let (status, out, err) = run_bin(&["stats", "--db", s(&db)]);
    assert!(status.success(), "{err}");
    let stats: Value = serde_json::from_str(&out).expect("stats JSON");
    assert_eq!(stats["pending"], 2, "{stats}");
}

#[test]
fn a_fresh_database_from_serve_logs_created_once_not_each_migration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let hub = ChildHub::start(&db, &[]);
    let log = hub.log();
    let status = hub.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("created database").count(), 1, "{log}");
    assert!(log.contains(s(&db)), "{log}");
    assert!(!log.contains("migrated"), "{log}");
    // A restart on the same file creates nothing.
    let hub = ChildHub::start(&db, &[]);
    let log = hub.log();
    hub.terminate();
    assert!(!log.contains("created database"), "{log}");
}

#[test]
fn serve_on_a_port_in_use_fails_before_touching_the_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let got = run_via(&[], &["serve", "--db", s(&db), "--bind", &addr]);
    let listen = format!("cannot listen on {addr}");
    assert_refused("serve", &got, &[&listen, "in use", "--bind"]);
    assert_eq!(
        listing(dir.path()),
        Vec::<String>::new(),
        "no database created"
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_named_so_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = dir.path().join("notes.db");
    let bytes = b"camera notes, not a database at all; long enough to be read as a header\n";
    std::fs::write(&text, bytes).expect("write");
    let copy = dir.path().join("copy.db");
    for args in [
        vec!["emit", "--db", s(&text), "--type", "x"],
        vec!["stats", "--db", s(&text)],
        vec!["cleanup", "--db", s(&text)],
        vec!["check", "--db", s(&text)],
        vec!["backup", "--db", s(&text), "--to", s(&copy)],
    ] {
        let got = run_bin(&args);
        let mut needles = vec![s(&text), "not an SQLite file", "file is not a database"];
        needles.extend(HINT);
        assert_refused(args[0], &got, &needles);
        assert_eq!(listing(dir.path()), ["notes.db"], "{}", args[0]);
    }
    let got = run_via(&[], &["serve", "--db", s(&text), "--bind", "127.0.0.1:0"]);
    assert_refused("serve", &got, &["not an SQLite file"]);
    assert_eq!(
        std::fs::read(&text).expect("read"),
        bytes,
        "the file is unchanged"
    );
}

/// The copy fails after its file was created (the source is damaged, so the copy's
/// `quick_check` fails): the partial copy is removed.
#[test]
fn a_backup_that_fails_midway_leaves_no_destination() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = new_db(dir.path(), 3);
    scribble_over_events_table(&db);
    let copy = dir.path().join("copy.db");
    let (status, out, err) = run_bin(&["backup", "--db", s(&db), "--to", s(&copy)]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(!out.contains("backed up"), "{out}");
    assert!(
        err.contains("verify the backup"),
        "failed after the copy began: {err}"
    );
    // The source's -wal and -shm may stay (SQLite's read-only open of a WAL file creates
    // them); nothing of the copy may.
    let left: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|n| n.starts_with("copy.db"))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "the partial copy is gone: {err}"
    );
}

/// `check` and `stats` open read-only: they work on a file this user may not write, in a
/// directory it may write (SQLite creates the `-shm` there) and in one it may not (no
/// `-wal` and `-shm` left: read as immutable), and `check` leaves the file as it was.
#[test]
fn check_and_stats_work_on_a_read_only_file() {
    let Some(prefix) = unprivileged() else { return };
    for writable_dir in [true, false] {
        let dir = shared_dir(true);
        let db = new_db(dir.path(), 4);
        chmod(&db, 0o444);
        if !writable_dir {
            chmod(dir.path(), 0o555);
        }
        let before = std::fs::read(&db).expect("read");
        let mtime = std::fs::metadata(&db)
            .and_then(|m| m.modified())
            .expect("mtime");
        // The setup is real: this user cannot write the file.
        let got = run_via(&prefix, &["emit", "--db", s(&db), "--type", "x"]);
        assert_eq!(
            got.0.code(),
            Some(1),
            "writable by the test user: {}{}",
            got.1,
            got.2
        );
        let (status, out, err) = run_via(&prefix, &["check", "--db", s(&db)]);
        assert!(
            status.success(),
            "check (dir writable: {writable_dir}): {out}{err}"
        );
        let report: Value = serde_json::from_str(&out).expect("JSON report");
        assert_eq!(
            (report["ok"].as_bool(), report["pending"].as_i64()),
            (Some(true), Some(4))
        );
        let (status, out, err) = run_via(&prefix, &["stats", "--db", s(&db)]);
        assert!(
            status.success(),
            "stats (dir writable: {writable_dir}): {out}{err}"
        );
        let stats: Value = serde_json::from_str(&out).expect("stats JSON");
        assert_eq!(stats["pending"], 4, "{stats}");
        assert_eq!(
            std::fs::read(&db).expect("read"),
            before,
            "check changed the bytes"
        );
        let after = std::fs::metadata(&db)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(after, mtime, "check changed the mtime");
        chmod(dir.path(), 0o777); // so the temp dir can be removed when not root
    }
}

/// A missing directory, a directory this user may not write, a file it may not read and
/// one it may not write: four different messages, and nothing created.
#[test]
fn directory_and_permission_problems_have_messages_of_their_own() {
    let Some(prefix) = unprivileged() else { return };
    let serve = |db: &Path| -> (ExitStatus, String, String) {
        run_via(&prefix, &["serve", "--db", s(db), "--bind", "127.0.0.1:0"])
    };
    let locked = shared_dir(false);
    let no_dir = locked.path().join("missing").join("events.db");
    let got = serve(&no_dir);
    let missing = format!(
        "directory {} does not exist",
        locked.path().join("missing").display()
    );
    assert_refused("serve in a missing directory", &got, &[&missing, "--db"]);
    let missing_msg = got.2;

    let got = serve(&locked.path().join("events.db"));
    let dir_msg = format!("cannot write in directory {}", locked.path().display());
    assert_refused_with(
        2,
        "serve in a locked directory",
        &got,
        &[&dir_msg, "hub's user"],
    );
    let locked_msg = got.2;
    assert_eq!(listing(locked.path()), Vec::<String>::new());

    let open = shared_dir(true);
    let db = new_db(open.path(), 1);
    chmod(&db, 0o444);
    let got = serve(&db);
    assert_refused_with(
        2,
        "serve on a read-only file",
        &got,
        &["is read-only for this user", "hub's user"],
    );
    let read_only_msg = got.2;

    chmod(&db, 0o000);
    let got = run_via(&prefix, &["stats", "--db", s(&db)]);
    assert_refused(
        "stats of an unreadable file",
        &got,
        &["permission denied", s(&db)],
    );
    let denied_msg = got.2;

    let messages = [&missing_msg, &locked_msg, &read_only_msg, &denied_msg];
    for (i, a) in messages.iter().enumerate() {
        for b in &messages[i + 1..] {
            assert_ne!(a, b, "two problems, one message");
        }
    }
}
