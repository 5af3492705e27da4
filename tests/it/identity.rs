//! Issue 13, the database's identity: one hub per file (a second `serve` exits 2 and the
//! first goes on), a file deleted or replaced under a hub that is taking POSTs (nothing
//! acknowledged after that, `/health` 503, `serve` exits 1 for systemd to restart it), and
//! a database this user cannot write refused at start (exit 2).
//!
//! Real files, the real binary as a child process, loopback only. Each test prints what it
//! measured. The read-only case runs the hub as `nobody` when the tests run as root (root
//! writes any file whatever its mode), and says it skipped when it cannot.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{run_via, unprivileged};
use crate::support::{
    ChildHub, Proc, SseClient, TestHub, WAIT, bin, http, post_json, run_bin, sql_value, stream_id,
    wait_until,
};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `serve` on `db` run to its end (killed, failing the test, if it serves instead):
/// (exit code, stderr, how long it ran).
fn serve_to_end(db: &Path) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut p = Proc::spawn(
        Command::new(bin())
            .args(["serve", "--bind", "127.0.0.1:0", "--db"])
            .arg(db),
    );
    let status = p.wait(WAIT);
    (status.code(), p.stderr_to_end(), started.elapsed())
}

/// A POST that never panics: the status, or None when the hub is gone (refused, reset).
fn try_post(addr: SocketAddr, n: usize) -> Option<(u16, String)> {
    let body = format!(r#"{{"type":"post","data":{{"n":{n}}}}}"#);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "POST /api/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut text = Vec::new();
    s.read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split("\r\n\r\n").nth(1)?.to_owned()))
}

/// One POST: its payload number, when it was started, and what came back.
struct Posted {
    n: usize,
    started: Instant,
    answer: Option<(u16, String)>,
}

/// What a hub taking POSTs did when its file was taken away from it.
struct Lost {
    posts: Vec<Posted>,
    /// When the deletion or rename had returned.
    at: Instant,
    exit_code: Option<i32>,
    exited_after: Duration,
    log: String,
}

impl Lost {
    /// The payload numbers of the POSTs answered 201.
    fn acknowledged(&self) -> BTreeSet<i64> {
        self.posts
            .iter()
            .filter(|p| matches!(p.answer, Some((201, _))))
            .map(|p| i64::try_from(p.n).expect("small"))
            .collect()
    }

    /// POSTs started once the file was gone, and how many of them were answered 201.
    fn after(&self) -> (usize, usize, usize) {
        let after: Vec<&Posted> = self.posts.iter().filter(|p| p.started > self.at).collect();
        let acked = after
            .iter()
            .filter(|p| matches!(p.answer, Some((201, _))))
            .count();
        let refused = after
            .iter()
            .filter(|p| matches!(p.answer, Some((503, _))))
            .count();
        (after.len(), acked, refused)
    }

    /// From the loss to the first answer that was not a 201 to a POST begun after it.
    fn noticed_after(&self) -> Option<Duration> {
        self.posts
            .iter()
            .filter(|p| p.started > self.at && p.answer.is_some())
            .find(|p| !matches!(p.answer, Some((201, _))))
            .map(|p| p.started.saturating_duration_since(self.at))
    }
}

/// Runs a hub on `db`, POSTs to it from two threads, and after 300 ms calls `take` (which
/// deletes or replaces the file), then waits for the hub to exit. A hard link to the file
/// the hub opened (`kept`) keeps it readable afterwards.
fn post_while(db: &Path, kept: &Path, take: impl FnOnce()) -> Lost {
    let mut hub = ChildHub::start(db, &[]);
    std::fs::hard_link(db, kept).expect("hard link to the hub's file");
    let addr = hub.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let posts = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posters: Vec<_> = (0..2)
        .map(|_| {
            let (stop, posts, next) = (stop.clone(), posts.clone(), next.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    let answer = try_post(addr, n);
                    let gone = answer.is_none();
                    posts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Posted { n, started, answer });
                    if gone {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    // Until the hub has acknowledged a POST (300 ms at least): under qemu on a loaded
    // machine 300 ms alone were once not enough for the first answer.
    std::thread::sleep(Duration::from_millis(300));
    wait_until(WAIT, || {
        posts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|p| matches!(p.answer, Some((201, _))))
    });
    take();
    let at = Instant::now();
    let mut exit = None;
    wait_until(WAIT, || {
        exit = hub.child.try_wait().ok().flatten();
        exit.is_some()
    });
    let exited_after = at.elapsed();
    // A few more attempts against the gone hub, then stop.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        p.join().expect("poster thread");
    }
    let log = hub.log();
    if exit.is_none() {
        let _ = hub.child.kill(); // it hung: the assertion below fails with its log
    }
    let posts = std::mem::take(&mut *posts.lock().unwrap_or_else(PoisonError::into_inner));
    Lost {
        posts,
        at,
        exit_code: exit.and_then(|e| e.code()),
        exited_after,
        log,
    }
}

/// The `data.n` of every `post` event stored in `db`.
fn stored_posts(db: &Path) -> BTreeSet<i64> {
    let conn = rusqlite::Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT json_extract(event_data, '$.n') FROM sse_events WHERE event_type = 'post'")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

/// The assertions a deleted and a replaced file share.
fn assert_nothing_acknowledged_after(what: &str, lost: &Lost, kept: &Path, needle: &str) {
    let acked = lost.acknowledged();
    let (after, acked_after, refused_after) = lost.after();
    let noticed = lost.noticed_after();
    println!(
        "{what}: {} POSTs, {} acknowledged, all before; noticed {:?} µs after (first POST \
         begun after it not acknowledged); serve exited {:?} after {} ms; POSTs begun \
         after: {after}, acknowledged: {acked_after}, answered 503: {refused_after}",
        lost.posts.len(),
        acked.len(),
        noticed.map(|d| d.as_micros()),
        lost.exit_code,
        lost.exited_after.as_millis(),
    );
    assert_eq!(
        lost.exit_code,
        Some(1),
        "{what}: serve exits 1:\n{}",
        lost.log
    );
    assert!(
        lost.exited_after < Duration::from_secs(3),
        "{what}: exited only after {:?}",
        lost.exited_after
    );
    assert!(!acked.is_empty(), "{what}: no POST was acknowledged before");
    assert!(after > 0, "{what}: no POST was begun after");
    assert_eq!(acked_after, 0, "{what}: POSTs acknowledged after the loss");
    // Answers to POSTs begun after: 503 with a JSON error from the hub, or none (the
    // connection closed as the hub exited); never a 500.
    let (mut refused, mut unanswered) = (0, 0);
    for p in lost.posts.iter().filter(|p| p.started > lost.at) {
        match &p.answer {
            Some((503, body)) => {
                let error: Value = serde_json::from_str(body).expect("a JSON error body");
                assert!(error["error"].as_str().is_some(), "{body}");
                refused += 1;
            }
            Some((status, body)) => panic!("{what}: POST {} got {status}: {body}", p.n),
            None => unanswered += 1,
        }
    }
    println!("{what}: POSTs begun after the loss: {refused} answered 503, {unanswered} unanswered");
    // Every acknowledged event is in the file it was acknowledged into.
    let in_kept = stored_posts(kept);
    let missing: Vec<_> = acked.difference(&in_kept).collect();
    assert!(
        missing.is_empty(),
        "{what}: acknowledged, not stored: {missing:?}"
    );
    assert!(
        lost.log.contains(needle),
        "{what}: log lacks {needle:?}:\n{}",
        lost.log
    );
    assert!(!lost.log.contains("panicked"), "{}", lost.log);
}

/// Two hubs on one file: the second exits 2 naming the file, the lock and the first's pid
/// (also through a symlink to the file); the first keeps serving, every external INSERT
/// reaches its client, and the subcommands that take no lock keep working.
#[test]
fn a_second_serve_on_one_database_exits_2_and_the_first_serves_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let hub = ChildHub::start(&db, &[]);
    let mut client = SseClient::connect(hub.addr, "/api/events");
    let real = std::fs::canonicalize(&db).expect("canonical path");
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &link).expect("symlink");

    // Another process inserts while the second hubs try to start.
    const INSERTS: i64 = 100;
    let inserter = {
        let db = db.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).expect("open");
            conn.busy_timeout(Duration::from_secs(5)).expect("timeout");
            for n in 0..INSERTS {
                conn.execute(
                    "INSERT INTO sse_events (event_type, event_data) \
                     VALUES ('external', json_object('n', ?1))",
                    [n],
                )
                .expect("insert");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for path in [&db, &link] {
        let (code, err, took) = serve_to_end(path);
        println!(
            "second serve on {} exited {code:?} after {} ms: {}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
            took.as_millis(),
            err.lines().next().unwrap_or("")
        );
        assert_eq!(code, Some(2), "{err}");
        let pid = format!("pid {}", hub.child.id());
        let lock = format!("{}.lock", real.display());
        for needle in [s(&real), &lock, &pid, "in use by another hub", "--db"] {
            assert!(err.contains(needle), "`{needle}` missing from: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    inserter.join().expect("inserter");

    // The subcommands that take no lock work while the hub runs.
    let (status, out, err) = run_bin(&["emit", "--db", s(&db), "--type", "external"]);
    assert!(status.success(), "emit: {err}");
    let emitted: i64 = out.trim().parse().expect("emit prints the id");
    for args in [
        vec!["stats", "--db", s(&db)],
        vec!["check", "--db", s(&db)],
        vec![
            "backup",
            "--db",
            s(&db),
            "--to",
            s(&dir.path().join("copy.db")),
        ],
    ] {
        let (status, _, err) = run_bin(&args);
        assert!(status.success(), "{}: {err}", args[0]);
    }

    let got: Vec<Value> = client
        .take(usize::try_from(INSERTS).expect("small") + 1)
        .iter()
        .map(|e| e.json())
        .collect();
    let ns: Vec<i64> = got[..got.len() - 1]
        .iter()
        .map(|e| e["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(
        ns,
        (0..INSERTS).collect::<Vec<_>>(),
        "in insert order, once each"
    );
    assert_eq!(
        got[got.len() - 1]["id"],
        emitted,
        "the emit subcommand's event"
    );
    assert!(
        client.next_event(Duration::from_millis(200)).is_none(),
        "one copy each"
    );
    let health = http(hub.addr, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(
        hub.child.id() > 0 && !hub.log().contains("fatal"),
        "{}",
        hub.log()
    );
    println!(
        "first hub delivered {}/{} external events to its client and is healthy",
        got.len(),
        INSERTS + 1
    );
    let status = hub.terminate();
    assert!(status.success(), "the first hub stops cleanly");
}

/// The database file deleted (unlinked; a hard link keeps it readable for the test) under
/// a hub taking POSTs: no POST begun after the deletion is acknowledged, every one
/// acknowledged before is in that file, serve exits 1, and a restart on the path serves a
/// fresh database.
#[test]
fn a_database_deleted_under_a_posting_hub_acknowledges_nothing_more_and_serve_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let kept = dir.path().join("kept.db");
    let lost = post_while(&db, &kept, || {
        std::fs::remove_file(&db).expect("delete the database");
    });
    assert_nothing_acknowledged_after("deleted", &lost, &kept, "was deleted");
    // What systemd does next: a hub on the path, which is a new, empty database.
    let hub = ChildHub::start(&db, &[]);
    let conn = rusqlite::Connection::open(&db).expect("open");
    let rows: i64 = sql_value(&conn, "SELECT count(*) FROM sse_events");
    assert_eq!(rows, 0, "a fresh file");
    let r = post_json(hub.addr, r#"{"type":"post","data":{"n":-1}}"#, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(hub.terminate().success());
}

/// Another database moved over the file under a hub taking POSTs: as for a deletion, and
/// the new file is left whole (its check passes: the old hub's WAL was not paired with it)
/// with none of the old hub's events in it.
#[test]
fn a_database_replaced_under_a_posting_hub_acknowledges_nothing_more_and_serve_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let kept = dir.path().join("kept.db");
    let other = dir.path().join("other.db");
    let (status, _, err) = run_bin(&["emit", "--create", "--db", s(&other), "--type", "other"]);
    assert!(status.success(), "{err}");
    let lost = post_while(&db, &kept, || {
        std::fs::rename(&other, &db).expect("move another database over it");
    });
    assert_nothing_acknowledged_after("replaced", &lost, &kept, "was replaced");
    let (status, out, err) = run_bin(&["check", "--db", s(&db)]);
    assert!(status.success(), "the new file is whole: {out}{err}");
    let report: Value = serde_json::from_str(&out).expect("check JSON");
    assert_eq!(
        report["pending"], 1,
        "only the other database's event: {report}"
    );
    assert_eq!(
        stored_posts(&db),
        BTreeSet::new(),
        "old hub's events in the new file"
    );
    let hub = ChildHub::start(&db, &[]);
    // From the start of the new file's stream: its one event, replayed.
    let cursor = format!("{}-0", stream_id(hub.addr));
    let mut client = SseClient::resume(hub.addr, "/api/events", &cursor);
    let first = client.next_event(WAIT).expect("the new file's event");
    assert_eq!(
        first.json()["type"],
        "other",
        "the new file's event is served"
    );
    assert!(hub.terminate().success());
}

/// In process, where nothing stops the hub after the loss: `/health` and POST answer 503
/// with a reason (and no path), and `Hub::failures` reports it, within a second.
#[test]
fn a_lost_database_file_makes_health_and_post_answer_503_with_a_reason() {
    let mut hub = TestHub::start();
    let first = post_json(hub.addr(), r#"{"type":"post","data":{"n":0}}"#, &[]);
    assert_eq!(first.status, 201, "{}", first.text());
    let failures = hub.hub().failures();
    std::fs::remove_file(hub.db_path()).expect("delete the database");
    let at = Instant::now();
    let health = http(hub.addr(), "GET", "/health", &[], b"");
    let health_ms = at.elapsed().as_millis();
    let reported = failures.recv_timeout(Duration::from_secs(1));
    let reported_ms = at.elapsed().as_millis();
    assert!(reported.is_ok(), "no failure reported within 1 s");
    let post = post_json(hub.addr(), r#"{"type":"post","data":{"n":1}}"#, &[]);
    let body = health.json();
    println!(
        "deleted database: /health {} after {health_ms} ms ({}), failure reported after \
         {reported_ms} ms (idle poller), then POST {} {}",
        health.status,
        body["database"],
        post.status,
        post.text()
    );
    assert_eq!(health.status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert!(
        body["database"]
            .as_str()
            .is_some_and(|d| d.contains("deleted")),
        "{body}"
    );
    assert!(
        !body.to_string().contains(s(&hub.db_path())),
        "a path in {body}"
    );
    assert_eq!(post.status, 503, "{}", post.text());
    assert!(!post.error().is_empty() && !post.text().contains(s(&hub.db_path())));
    let health = http(hub.addr(), "GET", "/health", &[], b"").json();
    assert!(
        health["poller"]
            .as_str()
            .is_some_and(|p| p.contains("deleted")),
        "{health}"
    );
    let stopped = hub.stop();
    assert!(
        stopped.as_ref().is_err_and(|e| e.is_identity_lost()),
        "shutdown reports the loss: {stopped:?}"
    );
}

/// A database this user may not write is refused by `serve` at start with exit 2: its
/// `-wal` and `-shm` read-only for it (left by another user), or a directory where they
/// cannot be created. Until now the first case started and answered POST with 500.
#[test]
fn a_database_this_user_cannot_write_is_refused_at_start_with_exit_2() {
    let Some(prefix) = unprivileged() else {
        println!("SKIPPED: running as root and cannot run the hub as another user");
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    };
    let dir = tempfile::tempdir().expect("temp dir");
    chmod(dir.path(), 0o777);
    let db = dir.path().join("events.db");
    let (status, _, err) = run_bin(&["emit", "--create", "--db", s(&db), "--type", "seed"]);
    assert!(status.success(), "{err}");
    chmod(&db, 0o666);
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let shm = PathBuf::from(format!("{}-shm", db.display()));
    for p in [&wal, &shm] {
        std::fs::write(p, b"").expect("an empty sidecar");
        chmod(p, 0o444);
    }
    let before = std::fs::read(&db).expect("read");
    let started = Instant::now();
    let (status, out, err) = run_via(&prefix, &["serve", "--db", s(&db), "--bind", "127.0.0.1:0"]);
    println!(
        "serve with a read-only -wal/-shm: exit {:?} after {} ms: {}",
        status.code(),
        started.elapsed().as_millis(),
        err.lines().next().unwrap_or("")
    );
    assert_eq!(status.code(), Some(2), "{out}{err}");
    let needle = format!("{}-wal or {}-shm is read-only", db.display(), db.display());
    for n in [needle.as_str(), "hub's user"] {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    assert_eq!(
        std::fs::read(&db).expect("read"),
        before,
        "the file is unchanged"
    );

    // A directory where the -wal and -shm cannot be created.
    for p in [&wal, &shm] {
        std::fs::remove_file(p).expect("remove sidecar");
    }
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    let inner = locked.join("events.db");
    std::fs::copy(&db, &inner).expect("copy");
    chmod(&inner, 0o666);
    chmod(&locked, 0o555);
    let started = Instant::now();
    let (status, out, err) = run_via(
        &prefix,
        &["serve", "--db", s(&inner), "--bind", "127.0.0.1:0"],
    );
    println!(
        "serve in a read-only directory: exit {:?} after {} ms: {}",
        status.code(),
        started.elapsed().as_millis(),
        err.lines().next().unwrap_or("")
    );
    assert_eq!(status.code(), Some(2), "{out}{err}");
    let needle = format!("cannot write in directory {}", locked.display());
    assert!(err.contains(&needle), "{err}");
    chmod(&locked, 0o777); // so the temp dir can be removed when not root

    // The same file is fine for a user who may write it (the test's own).
    let hub = ChildHub::start(&db, &[]);
    let r = post_json(hub.addr, r#"{"type":"post","data":{"n":0}}"#, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(hub.terminate().success());
}
