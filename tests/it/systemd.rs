//! systemd's notify protocol, against a `NOTIFY_SOCKET` this test listens on: `READY=1`
//! once the port accepts connections, `WATCHDOG=1` pings that stop while the poller is
//! wedged in a busy wait and resume once it is free, and `STOPPING=1` on SIGTERM.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Proc, WAIT, bin, reserve_port};

/// The hub's watchdog timeout here: it pings every second.
const WATCHDOG: Duration = Duration::from_secs(2);
/// The poller's longest quiet while alive (its 2 s backoff plus a second), the pinger's
/// interval, and slack: by then a wedged poller has stopped the pings.
const PINGS_STOP_WITHIN: Duration = Duration::from_millis(5500);

struct Listener {
    socket: UnixDatagram,
}

impl Listener {
    /// The next message, or None after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Every message in the next `span`.
    fn during(&self, span: Duration) -> Vec<String> {
        let end = Instant::now() + span;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            if let Some(m) = self.next(left) {
                got.push(m);
            }
        }
        got
    }

    /// Waits for a message containing `what`; the ones before it are returned too.
    fn until(&self, what: &str, timeout: Duration) -> Option<Vec<String>> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let m = self.next(left.max(Duration::from_millis(1)))?;
            let done = m.lines().any(|l| l == what);
            got.push(m);
            if done {
                return Some(got);
            }
        }
        None
    }
}

fn pings(messages: &[String]) -> usize {
    messages
        .iter()
        .filter(|m| m.as_str() == "WATCHDOG=1")
        .count()
}

#[test]
fn ready_after_bind_watchdog_only_while_the_poller_lives_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let socket_path = dir.path().join("notify");
    let listener = Listener {
        socket: UnixDatagram::bind(&socket_path).expect("bind the notify socket"),
    };
    let addr = reserve_port();
    let mut hub = Proc::spawn(
        Command::new(bin())
            .arg("serve")
            .arg("--db")
            .arg(&db)
            .args(["--bind", &addr.to_string()])
            // Long enough that a dispatch waiting for our lock outlasts the test's wait.
            .args(["--busy-timeout-ms", "60000"])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info"),
    );

    let first = listener.next(WAIT).expect("a first notification");
    assert!(
        first.lines().next() == Some("READY=1"),
        "first message: {first:?}\n{}",
        hub.stderr()
    );
    // READY=1 promises a bound listener: the port accepts at once.
    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("READY=1 but {addr} refuses: {e}"));

    let alive = listener.during(Duration::from_millis(2500));
    assert!(pings(&alive) >= 2, "pings while healthy: {alive:?}");

    // Wedge the poller: hold the write lock and give it an event to store, so its
    // dispatch waits in SQLite's busy handler (60 s).
    let lock = rusqlite::Connection::open(&db).expect("open the database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    let mut post = TcpStream::connect(addr).expect("connect for POST");
    let body = r#"{"type":"wedge","data":{}}"#;
    write!(
        post,
        "POST /api/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send POST");
    let wedging = listener.during(PINGS_STOP_WITHIN);
    let wedged = listener.during(Duration::from_secs(3));
    assert_eq!(
        pings(&wedged),
        0,
        "pings went on while the poller was stuck (before: {wedging:?}, then: {wedged:?})\n{}",
        hub.stderr()
    );
    assert!(
        hub.stderr().contains("withholding systemd watchdog pings"),
        "{}",
        hub.stderr()
    );

    lock.execute_batch("COMMIT").expect("release the lock");
    let resumed = listener.during(Duration::from_secs(3));
    assert!(
        pings(&resumed) >= 1,
        "no ping after the lock was released: {resumed:?}\n{}",
        hub.stderr()
    );
    drop(post);

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(hub.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    listener
        .until("STOPPING=1", WAIT)
        .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM\n{}", hub.stderr()));
    let exit = hub.wait(WAIT);
    assert!(exit.success(), "{exit:?}\n{}", hub.stderr_to_end());
}
