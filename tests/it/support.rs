//! Test fixtures: a hub on an ephemeral loopback port over a temp-dir database, a raw-TCP
//! SSE client with a spec-following parser, a raw HTTP client, and the hub binary as a
//! child process. Timeouts here are hang guards, never performance checks.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use timelapse_events::{Config, Emitter, EventId, Hub, NewEvent};

#[path = "../../examples/common/sse.rs"]
mod sse;

/// `Emitter::emit` for tests, where a failed emit fails the test.
pub trait EmitOk {
    /// The stored event's id; panics with "emit" and the error otherwise.
    fn emit_ok(&self, event: NewEvent) -> EventId;
}

impl EmitOk for Emitter {
    fn emit_ok(&self, event: NewEvent) -> EventId {
        self.emit(event).expect("emit")
    }
}

/// Hang guard for anything that should happen "soon".
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = env_logger::builder().is_test(true).try_init();
    });
}

/// A hub on 127.0.0.1:0 storing into a fresh temp dir; shut down on drop.
pub struct TestHub {
    hub: Option<Hub>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestHub {
    pub fn start() -> TestHub {
        TestHub::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestHub {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            bind: ([127, 0, 0, 1], 0).into(),
            db_path: dir.path().join("events.db"),
            ..Config::default()
        };
        tweak(&mut config);
        let hub = Hub::start(config.clone()).expect("hub starts");
        TestHub {
            hub: Some(hub),
            dir,
            config,
        }
    }

    pub fn hub(&self) -> &Hub {
        self.hub.as_ref().expect("hub is running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.hub().addr()
    }

    pub fn emitter(&self) -> Emitter {
        self.hub().emitter()
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.db_path.clone()
    }

    /// Stops the hub and starts a new one on the same database (new port).
    pub fn restart(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown().expect("clean shutdown");
        }
        self.hub = Some(Hub::start(self.config.clone()).expect("hub restarts"));
    }

    pub fn shutdown(mut self) -> timelapse_events::Result<()> {
        self.stop()
    }

    /// Shuts the hub down but keeps the temp dir (and database) for inspection.
    pub fn stop(&mut self) -> timelapse_events::Result<()> {
        self.hub.take().map_or(Ok(()), Hub::shutdown)
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            // A second panic while a failed test unwinds would abort the whole binary.
            if std::thread::panicking() {
                drop(hub);
            } else {
                hub.shutdown().expect("clean shutdown");
            }
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `child`'s exit status, or `None` if it still runs after `timeout`.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
    /// The numeric seq of the cursor in `id:`.
    pub fn seq(&self) -> i64 {
        let id = self.id.as_deref().expect("event has an id");
        id.rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("cursor ends in a number")
    }
}

/// A raw-TCP SSE client: HTTP/1.1 chunked or HTTP/1.0 identity, parsed per the SSE spec.
pub struct SseClient {
    stream: TcpStream,
    raw: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The chunked-body decoder, once the head said `Transfer-Encoding: chunked`.
    chunks: Option<sse::Dechunker>,
    parser: sse::Parser,
    events: VecDeque<SseEvent>,
    pub comments: usize,
    pub ended: bool,
}

impl SseClient {
    pub fn connect(addr: SocketAddr, target: &str) -> SseClient {
        SseClient::connect_with(addr, target, &[], "HTTP/1.1")
    }

    pub fn resume(addr: SocketAddr, target: &str, last_id: &str) -> SseClient {
        SseClient::connect_with(addr, target, &[("Last-Event-ID", last_id)], "HTTP/1.1")
    }

    pub fn connect_with(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
        version: &str,
    ) -> SseClient {
        SseClient::open(addr, target, headers, version, WAIT)
            .unwrap_or_else(|e| panic!("GET {target} from {addr}: {e}"))
    }

    /// Like [`SseClient::connect_with`] (HTTP/1.1), but `None` instead of a panic when the
    /// connection is refused or closed, or no response head comes within `timeout`: for
    /// clients that follow a hub across crashes and restarts.
    pub fn try_connect(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Option<SseClient> {
        SseClient::open(addr, target, headers, "HTTP/1.1", timeout).ok()
    }

    /// Connects, sends the request and reads the response head, all within `timeout`.
    fn open(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
        version: &str,
        timeout: Duration,
    ) -> Result<SseClient, String> {
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).ok();
        let mut req =
            format!("GET {target} {version}\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        (&stream)
            .write_all(req.as_bytes())
            .map_err(|e| format!("send request: {e}"))?;
        let mut c = SseClient {
            stream,
            raw: Vec::new(),
            status: 0,
            headers: Vec::new(),
            chunks: None,
            parser: sse::Parser::default(),
            events: VecDeque::new(),
            comments: 0,
            ended: false,
        };
        let deadline = Instant::now() + timeout;
        let end = loop {
            if let Some(end) = find(&c.raw, b"\r\n\r\n") {
                break end + 4;
            }
            if !c.read_more(deadline) {
                return Err(format!("no response head within {timeout:?}"));
            }
        };
        let head = sse::Head::read(&mut &c.raw[..end]).map_err(|e| e.to_string())?;
        c.raw.drain(..end);
        c.status = head.status;
        c.chunks = head.chunked().then(sse::Dechunker::default);
        c.headers = head.headers;
        Ok(c)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads once; false on timeout or EOF.
    fn read_more(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok();
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.ended = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(_) => false,
        }
    }

    fn decode(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        let body = match &mut self.chunks {
            Some(chunks) => {
                let body = chunks.feed(&raw).expect("a valid chunked body");
                self.ended |= chunks.ended();
                body
            }
            None => raw,
        };
        for item in self.parser.feed(&body) {
            match item {
                sse::Item::Message(m) => self.events.push_back(SseEvent {
                    id: Some(m.id).filter(|id| !id.is_empty()),
                    event: Some(m.event).filter(|e| e != "message"),
                    data: m.data,
                }),
                sse::Item::Comment => self.comments += 1,
                sse::Item::Retry(_) => {}
            }
        }
    }

    /// The next event, or None after `timeout` (or when the stream ended).
    pub fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            self.decode();
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.ended || !self.read_more(deadline) {
                self.decode();
                return self.events.pop_front();
            }
        }
    }

    /// Exactly `n` events, panicking if they do not come within WAIT.
    pub fn take(&mut self, n: usize) -> Vec<SseEvent> {
        (0..n)
            .map(|i| {
                self.next_event(WAIT)
                    .unwrap_or_else(|| panic!("event {} of {n} did not arrive", i + 1))
            })
            .collect()
    }

    /// Waits until `n` comment lines in total were seen.
    pub fn wait_comments(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.comments < n {
            self.decode();
            if self.comments >= n {
                break;
            }
            if !self.read_more(deadline) {
                self.decode();
                return self.comments >= n;
            }
        }
        true
    }

    /// Reads until the server ends the stream; true if it did within `timeout`.
    pub fn wait_end(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.ended {
            if !self.read_more(deadline) && !self.ended {
                return false;
            }
            self.decode();
        }
        true
    }

    pub fn raw_stream(&self) -> &TcpStream {
        &self.stream
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The JSON body's `error` message, empty when it has none.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(addr, &bytes)
}

/// Sends raw bytes and parses the response (Content-Length, chunked, or until close).
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).ok();
    s.write_all(bytes).expect("send");
    read_response(&mut s)
}

pub fn read_response(s: &mut TcpStream) -> HttpResponse {
    let mut r = BufReader::new(s);
    let head = sse::Head::read(&mut r).expect("a response head");
    let mut body = Vec::new();
    if let Some(len) = head.header("Content-Length").and_then(|v| v.parse().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).expect("body");
    } else if head.chunked() {
        let mut chunks = sse::Dechunker::default();
        while !chunks.ended() {
            let bytes = r.fill_buf().expect("chunked body");
            assert!(!bytes.is_empty(), "connection closed in a chunked body");
            body.extend(chunks.feed(bytes).expect("a valid chunked body"));
            let n = bytes.len();
            r.consume(n);
        }
    } else {
        let _ = r.read_to_end(&mut body);
    }
    HttpResponse {
        status: head.status,
        headers: head.headers,
        body,
    }
}

/// Event streams the hub has open, from `GET /health`.
pub fn open_streams(addr: SocketAddr) -> i64 {
    http(addr, "GET", "/health", &[], b"").json()["streams"]
        .as_i64()
        .unwrap_or(-1)
}

/// The stream id of a hub's database, read from /api/state's cursor.
pub fn stream_id(addr: SocketAddr) -> String {
    let state = http(addr, "GET", "/api/state", &[], b"").json();
    let cursor = state["cursor"].as_str().expect("cursor").to_owned();
    cursor.split('-').next().expect("stream part").to_owned()
}

/// The hub's counters, from `GET /api/events/stats`.
pub fn hub_stats(addr: SocketAddr) -> serde_json::Value {
    http(addr, "GET", "/api/events/stats", &[], b"").json()
}

pub fn post_json(addr: SocketAddr, body: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    http(addr, "POST", "/api/events", &headers, body.as_bytes())
}

/// Another python3 process: `BEGIN IMMEDIATE`, then `sql` if given, then holds the write
/// lock on `db` for `hold_ms`. Returns once the lock is held; `None` without python3.
pub fn hold_write_lock(db: &Path, hold_ms: u64, sql: Option<&str>) -> Option<Child> {
    let script = format!(
        "import sqlite3,sys,time\n\
         c=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
         c.execute('BEGIN IMMEDIATE')\n\
         {}\
         print('locked',flush=True)\n\
         time.sleep({})\n\
         c.execute('COMMIT')\n",
        sql.map_or(String::new(), |q| format!("c.execute({q:?})\n")),
        hold_ms as f64 / 1000.0
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut()?)
        .read_line(&mut line)
        .ok()?;
    assert_eq!(line.trim(), "locked");
    Some(child)
}

/// A thread that sends each line of `pipe` (a child's stdout) to the returned channel.
pub fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// A thread that keeps all of `pipe` (a child's stderr, for failure messages); it ends
/// with the pipe.
pub fn collect(pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap_or_else(PoisonError::into_inner);
            s.push_str(&line);
            s.push('\n');
        }
    });
    (text, reader)
}

/// The first column of the one row that `sql` returns.
pub fn sql_value<T: rusqlite::types::FromSql>(conn: &rusqlite::Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Damages `db` as a bad disk would: scribbles over the first page of sse_events' b-tree.
pub fn scribble_over_events_table(db: &Path) {
    use std::io::{Seek, SeekFrom};
    let conn = rusqlite::Connection::open(db).expect("open");
    let root: i64 = sql_value(
        &conn,
        "SELECT rootpage FROM sqlite_master WHERE name = 'sse_events'",
    );
    let page_size: i64 = sql_value(&conn, "PRAGMA page_size");
    drop(conn);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .expect("open file");
    let at = u64::try_from((root - 1) * page_size).expect("offset");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&[0x0D, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        .expect("scribble");
    f.write_all(&[0xAB; 64]).expect("scribble");
}

/// A child process whose stdout lines arrive on a channel and whose stderr is collected;
/// killed on drop.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = lines_of(stdout);
        let (collected, stderr_reader) = collect(stderr);
        Proc {
            child,
            lines,
            stderr: collected,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// All of stderr, once the child has exited: waits for the reader to reach its end.
    pub fn stderr_to_end(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr()
    }

    /// The next stdout line, or None after `timeout` or at the end of the output.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for the exit, killing the child (and failing) after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        exit_within(&mut self.child, timeout).unwrap_or_else(|| {
            let _ = self.child.kill(); // it hung; the panic below says so
            panic!("child did not exit within {timeout:?}: {}", self.stderr());
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Best effort: it may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hub binary built by cargo for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_timelapse-events")
}

/// A loopback address that was free a moment ago: bound, read, released, so that a hub
/// can be started (and restarted in place) on it.
pub fn reserve_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// The hub binary running `serve` on an ephemeral port; killed on drop.
pub struct ChildHub {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl ChildHub {
    pub fn start(db: &Path, extra: &[&str]) -> ChildHub {
        ChildHub::start_on(db, "127.0.0.1:0", extra)
    }

    /// `serve` on a given address (e.g. a port reserved earlier, to restart in place).
    pub fn start_on(db: &Path, bind: &str, extra: &[&str]) -> ChildHub {
        ChildHub::start_env(db, bind, extra, &[])
    }

    /// `serve` on `bind` with `extra` flags and `env` variables set.
    pub fn start_env(db: &Path, bind: &str, extra: &[&str], env: &[(&str, &str)]) -> ChildHub {
        let mut args = vec!["--db".into(), db.into(), "--bind".into(), bind.into()];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        ChildHub::start_args(&args, env)
    }

    /// `serve` with exactly these arguments (no `--db` or `--bind` of its own).
    pub fn start_args(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> ChildHub {
        ChildHub::start_under(&[], args, env)
    }

    /// `serve` as [`ChildHub::start_args`], run by `wrapper` (e.g. [`Netns::run_in`]'s
    /// `ip netns exec <ns>`, which execs the hub: the child is the hub itself).
    pub fn start_under(
        wrapper: &[&str],
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
    ) -> ChildHub {
        let bind = "the configured address";
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin());
                cmd
            }
            None => Command::new(bin()),
        };
        // The caller's environment after the default, so that a test may ask for more log.
        let mut child = cmd
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hub");
        let (log, _reader) = collect(child.stderr.take().expect("stderr"));
        let listening = || {
            let log = log.lock().unwrap_or_else(PoisonError::into_inner);
            let rest = log.split("listening on http://").nth(1)?;
            rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
        };
        wait_until(WAIT, || listening().is_some());
        let Some(addr) = listening() else {
            // Never leave a half-started hub behind a failed test.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hub did not start on {bind}:\n{}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        };
        ChildHub { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        exit_within(&mut self.child, WAIT).expect("hub did not exit after SIGTERM")
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the hub binary with arguments and returns (status, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run binary");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET /api/sinks`: one entry per sink.
pub fn sinks_of(addr: SocketAddr) -> Vec<serde_json::Value> {
    let r = http(addr, "GET", "/api/sinks", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

/// True when a test that needs root or a missing tool must fail instead of skipping
/// (`TLE_REQUIRE_FAULTS=1`: CI runs as root and sets it).
pub fn required() -> bool {
    std::env::var("TLE_REQUIRE_FAULTS").is_ok_and(|v| v == "1")
}

/// Prints `SKIPPED: why`, or panics when `TLE_REQUIRE_FAULTS=1`.
pub fn skip(why: &str) {
    assert!(!required(), "TLE_REQUIRE_FAULTS=1 but {why}");
    eprintln!("SKIPPED: {why}");
}

/// Runs `ip` with `args`; true when it succeeded.
pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the `ip` tool (iproute2) is installed.
pub fn ip_tool() -> bool {
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace `ns` joined by a veth pair to this one ([`Netns::create`]: clients
/// in it reach a hub here at `host_ip`; setting their end down makes them vanish without a
/// FIN), or to a second namespace `host_ns` of its own ([`Netns::pair`]: nothing either
/// side sends, multicast included, reaches this machine's interfaces). Deleted on drop.
pub struct Netns {
    pub ns: String,
    /// The namespace of our end of the veth; `None`: this one.
    pub host_ns: Option<String>,
    pub host_if: String,
    pub peer_if: String,
    /// Our end's address.
    pub host_ip: String,
    /// The address of the end in `ns`.
    pub peer_ip: String,
}

impl Netns {
    /// A namespace joined to this one, at 10.251.<net>.0/30.
    pub fn create() -> Option<Netns> {
        let pid = std::process::id();
        let net = 16 + pid % 200; // 10.251.<net>.0/30, unlikely to collide with a real LAN
        Netns {
            ns: format!("tle-faults-{pid}"),
            host_ns: None,
            host_if: format!("tlef{pid}h"),
            peer_if: format!("tlef{pid}p"),
            host_ip: format!("10.251.{net}.1"),
            peer_ip: format!("10.251.{net}.2"),
        }
        .make()
    }

    /// Two namespaces of their own joined by a veth pair, `host_ns` at `host_ip` and `ns`
    /// at `peer_ip` (10.252.<n>.0/30); `tag` tells a test's pair from another's.
    pub fn pair(tag: &str) -> Option<Netns> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let net = 1 + n % 250;
        Netns {
            ns: format!("tle-{tag}-{pid}-{n}b"),
            host_ns: Some(format!("tle-{tag}-{pid}-{n}a")),
            host_if: format!("tlp{pid}x{n}a"),
            peer_if: format!("tlp{pid}x{n}b"),
            host_ip: format!("10.252.{net}.1"),
            peer_ip: format!("10.252.{net}.2"),
        }
        .make()
    }

    fn make(self) -> Option<Netns> {
        let (host_cidr, peer_cidr) = (
            format!("{}/30", self.host_ip),
            format!("{}/30", self.peer_ip),
        );
        let host_ns_made = self.host_ns.as_ref().is_none_or(|h| {
            ip(&["netns", "add", h]) && self.host_exec(&["link", "set", "lo", "up"])
        });
        let ok = host_ns_made
            && ip(&["netns", "add", &self.ns])
            && ip(&[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &self.peer_if,
            ])
            && ip(&["link", "set", &self.peer_if, "netns", &self.ns])
            && self
                .host_ns
                .as_ref()
                .is_none_or(|h| ip(&["link", "set", &self.host_if, "netns", h]))
            && self.host_exec(&["addr", "add", &host_cidr, "dev", &self.host_if])
            && self.host_exec(&["link", "set", &self.host_if, "up"])
            && self.exec(&["addr", "add", &peer_cidr, "dev", &self.peer_if])
            && self.exec(&["link", "set", &self.peer_if, "up"])
            && self.exec(&["link", "set", "lo", "up"]);
        ok.then_some(self) // on failure, drop deletes what was made
    }

    /// `ip <args>` inside `ns`.
    pub fn exec(&self, args: &[&str]) -> bool {
        let mut all = vec!["netns", "exec", &self.ns, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip <args>` on our end's side.
    pub fn host_exec(&self, args: &[&str]) -> bool {
        match &self.host_ns {
            Some(h) => {
                let mut all = vec!["netns", "exec", h, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            }
            None => ip(args),
        }
    }

    /// The words that run a program inside `ns`: `ip netns exec <ns>` (which execs it, so
    /// the child's pid is the program's).
    pub fn run_in(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.ns]
    }

    /// The words that run a program on our end's side (nothing for this namespace).
    pub fn run_on_host_side(&self) -> Vec<&str> {
        match &self.host_ns {
            Some(h) => vec!["ip", "netns", "exec", h],
            None => Vec::new(),
        }
    }

    /// Pulls the clients' cable: nothing from or to them passes any more.
    pub fn cut(&self) -> bool {
        self.exec(&["link", "set", &self.peer_if, "down"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the other.
        ip(&["netns", "del", &self.ns]);
        match &self.host_ns {
            Some(h) => {
                ip(&["netns", "del", h]);
            }
            None => {
                ip(&["link", "del", &self.host_if]);
            }
        }
    }
}
