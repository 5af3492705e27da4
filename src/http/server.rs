//! The one wall around tiny_http: our own listener, tiny_http on top of it, the worker
//! threads (`tle-http-N`) that take requests, and every workaround tiny_http 0.12.0 needs.
//! The rest of `http/` sees only [`Request`] in and [`Answer`] out, in the spirit of
//! rouille's `start_server(addr, handler)`.
//!
//! tiny_http 0.12.0 faults handled here (measured; see the README's security notes):
//! - One `accept()` error (e.g. EMFILE) ends its accept thread for good, and under EMFILE
//!   its `try_clone().unwrap()` of a new socket panics (src/util/refined_tcp_stream.rs:18).
//!   We keep a clone of the listener: a worker that sees an accept error, or the liveness
//!   probe finding no answer, builds a new `tiny_http::Server` on the same socket.
//! - A request dropped with its body unread drains the body by allocating the *declared*
//!   length in one `vec!`: a `Content-Length: 100000000000000` aborts the process. Every
//!   request passes [`guard_body`] before anything can drop it.
//! - Each connection holds a pool thread for its life, and the pool leaves connections
//!   queued behind a busy thread (see [`pump`]). Every connection we move to a long-lived
//!   thread of ours nudges the pump.
//! - No receive timeout exists, and one on the listener would break `accept()`. We set
//!   TCP_NODELAY, a send timeout, TCP keepalive and TCP_USER_TIMEOUT on the listener
//!   (accepted sockets inherit them on Linux) and read slow bodies on threads of their own.
//! - `respond()` buffers about 8 KiB before sending: a long-lived response takes the raw
//!   writer instead ([`Answer::Takeover`]).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tiny_http::{HTTPVersion, Header, Response};

use super::reply::{HttpError, Reply};
use super::request::{MAX_BODY_BYTES, Request, too_large};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::thread::{Fatal, Group, join_thread, spawn_named};

/// What a handler makes of a request.
pub(crate) enum Answer {
    /// A complete response, written and flushed by the server.
    Reply(Reply),
    /// The connection leaves the server: the closure gets its raw writer (nothing has been
    /// written yet) and must hand it to a thread of its own.
    Takeover(Takeover),
}

/// See [`Answer::Takeover`].
pub(crate) type Takeover = Box<dyn FnOnce(Box<dyn Write + Send>) + Send>;

/// The request handler: runs on a worker, or on a body thread for a slow body.
pub(crate) type Handler = dyn Fn(&mut Request<'_>) -> Answer + Send + Sync;

/// Threads that read a slow request body or drain a refused one, at most. Each is small
/// (64-128 KiB of stack, a few KiB touched) and ends when its client sends or leaves.
const BODY_THREADS: usize = 64;
/// A declared body up to this size is drained, on a thread of its own, after the 413; a
/// larger one cannot be: tiny_http 0.12 would allocate its declared size at once.
const DRAIN_LIMIT_BYTES: usize = 256 * 1024 * 1024;
/// tiny_http reads bodies up to 1 KiB before we see the request; larger ones are read from
/// the socket, which a client can stall, so they are read off the workers.
const PREBUFFERED_BYTES: usize = 1024;
/// Abandoned connections tolerated before the hub asks to be restarted.
const MAX_ABANDONED: usize = 256;

/// With no request for this long, the pump checks that the server still answers.
const LIVENESS_IDLE: Duration = Duration::from_secs(1);
/// While checks keep succeeding with no request between them, each waits twice as long as
/// the one before, up to this: an idle hub then costs one check per 16 s, not one a second
/// (each is a loopback request: measured, a third of the hub's idle CPU with 100 streams).
const LIVENESS_IDLE_MAX: Duration = Duration::from_secs(16);
/// How long that check waits for an answer.
const LIVENESS_WAIT: Duration = Duration::from_millis(1500);
/// Pump connects tried before an unanswered check counts as a dead accept thread.
const LIVENESS_PUMPS: usize = 64;
/// The longest a working server goes without a worker taking a request: an idle one still
/// takes the pump's liveness check at least every [`LIVENESS_IDLE_MAX`], noticed within a
/// [`LIVENESS_IDLE`] tick and answered within [`LIVENESS_WAIT`]; 2 s of slack on top.
const ACCEPT_QUIET_MAX_MS: u64 = 16_000 + 1_000 + 1_500 + 2_000;
/// Pause before rebuilding the server after an accept error.
const REBUILD_PAUSE: Duration = Duration::from_millis(250);

/// The running server: listener, current tiny_http server, workers, pump, body threads.
pub(crate) struct Server {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<Result<()>>>,
    pump: Option<(Sender<()>, JoinHandle<Result<()>>)>,
    addr: SocketAddr,
}

struct Shared {
    listener: TcpListener,
    server: RwLock<Arc<tiny_http::Server>>,
    stopping: AtomicBool,
    workers: usize,
    handler: Box<Handler>,
    /// Slow bodies being read, refused bodies being drained.
    bodies: Arc<Group>,
    /// Connections given up on (see [`abandon`]); each holds a thread and two fds.
    abandoned: AtomicUsize,
    fatal: Fatal,
    /// Nudges the pump once per connection handed to a long-lived thread.
    pump: Sender<()>,
    /// When a worker last took a request, in ms since `epoch` (for the liveness probe).
    last_request_ms: AtomicU64,
    /// When a liveness check last went unanswered, in ms since `epoch` (0: never).
    unanswered_ms: AtomicU64,
    epoch: Instant,
}

/// A listener bound by [`Listener::bind`] and not yet served. Binding comes first in
/// `Hub::start`, so that `serve` finds a port in use before it touches the database.
pub(crate) struct Listener(TcpListener);

impl Listener {
    /// Binds `config.bind` with the socket options the server relies on (see [`bind`]).
    ///
    /// # Errors
    /// [`Error::Bind`]: the address is in use, not ours, or not allowed.
    pub(crate) fn bind(config: &Config) -> Result<Listener> {
        bind(config).map(Listener)
    }
}

/// Whether a [`Server`]'s accept path works, for another thread (the systemd watchdog
/// pinger, stopped before the server).
pub(crate) struct Liveness(Arc<Shared>);

impl Liveness {
    /// True while connections are being accepted and answered: a worker took a request
    /// (anyone's, or the pump's own liveness check) recently, and no check has gone
    /// unanswered since. False from an unanswered check until the next request is taken
    /// (a rebuilt accept thread answers the next check, a second later).
    pub(crate) fn alive(&self) -> bool {
        let s = &self.0;
        accept_alive(
            s.now_ms(),
            s.last_request_ms.load(Ordering::Relaxed),
            s.unanswered_ms.load(Ordering::Relaxed),
        )
    }
}

/// Whether the accept path works, from the times (ms since `epoch`) a worker last took a
/// request and a liveness check last went unanswered: no check unanswered since the last
/// request, and a request within [`ACCEPT_QUIET_MAX_MS`] (the pump's checks are requests,
/// so a pump that no longer checks counts as dead too).
fn accept_alive(now_ms: u64, last_request_ms: u64, unanswered_ms: u64) -> bool {
    unanswered_ms <= last_request_ms
        && now_ms.saturating_sub(last_request_ms) <= ACCEPT_QUIET_MAX_MS
}

impl Server {
    /// Starts tiny_http on `listener`, `config.http_workers` workers and the pump.
    /// `fatal` hears when hostile clients have tied up too much to go on.
    ///
    /// # Errors
    /// A thread cannot start.
    pub(crate) fn start(
        config: &Config,
        listener: Listener,
        handler: Box<Handler>,
        fatal: Fatal,
    ) -> Result<Server> {
        let Listener(listener) = listener;
        let addr = listener
            .local_addr()
            .map_err(crate::error::io("read the bound address"))?;
        let server = new_server(&listener)?;
        let (pump_tx, pump_rx) = bounded(1024);
        let shared = Arc::new(Shared {
            listener,
            server: RwLock::new(Arc::new(server)),
            stopping: AtomicBool::new(false),
            workers: config.http_workers,
            handler,
            bodies: Group::new("body", BODY_THREADS),
            abandoned: AtomicUsize::new(0),
            fatal,
            pump: pump_tx,
            last_request_ms: AtomicU64::new(0),
            unanswered_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let mut workers = Vec::new();
        for i in 0..config.http_workers {
            let shared = shared.clone();
            workers.push(spawn_named(&format!("http-{i}"), None, move || {
                worker(&shared);
                Ok(())
            })?);
        }
        let (pump_stop, stop_rx) = bounded::<()>(0);
        let pump_shared = shared.clone();
        let pump = spawn_named("pump", Some(64 * 1024), move || {
            pump(&pump_shared, loopback_of(addr), &pump_rx, &stop_rx);
            Ok(())
        })?;
        Ok(Server {
            shared,
            workers,
            pump: Some((pump_stop, pump)),
            addr,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A [`Liveness`] handle: whether this server still accepts, from another thread.
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness(self.shared.clone())
    }

    /// Stops taking requests, joins the workers and the pump, and waits until `deadline`
    /// for the body threads (an upload in progress is answered). Connections already taken
    /// over live on until their owners end them. Idempotent.
    pub(crate) fn stop(&mut self, deadline: Instant) -> Result<()> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let server = self.shared.current();
        // unblock() wakes one recv() per call (tiny_http 0.12 src/util/messages_queue.rs).
        for _ in 0..self.workers.len() {
            server.unblock();
        }
        let mut first = Ok(());
        if let Some((stop, pump)) = self.pump.take() {
            drop(stop);
            first = join_thread("pump", pump);
        }
        for w in self.workers.drain(..) {
            let r = join_thread("http worker", w);
            if first.is_ok() {
                first = r;
            }
        }
        let left = self.shared.bodies.wait(deadline);
        if left > 0 {
            log::warn!("{left} request bodies still being read at shutdown; left to their clients");
        }
        first
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn current(&self) -> Arc<tiny_http::Server> {
        // The lock only guards an Arc swap; a poisoned one still holds a valid server.
        self.server
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces `dead` with a server on a clone of the listener, unless another worker did.
    fn rebuild(&self, dead: &Arc<tiny_http::Server>) {
        let mut slot = self.server.write().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&slot, dead) || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(REBUILD_PAUSE);
        match new_server(&self.listener) {
            Ok(server) => {
                *slot = Arc::new(server);
                log::warn!("HTTP accept thread restarted on the same listener");
                // Move the other workers off the dead server.
                for _ in 0..self.workers {
                    dead.unblock();
                }
            }
            Err(e) => log::error!("cannot restart the HTTP accept thread: {}", e.chain()),
        }
    }

    /// The connection leaves tiny_http's pool for good or for long: have the pump replace
    /// the pool thread it holds. Full: enough probes are already on their way.
    fn nudge_pump(&self) {
        let _ = self.pump.try_send(());
    }
}

fn worker(shared: &Arc<Shared>) {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let server = shared.current();
        match server.recv() {
            Ok(rq) => {
                shared
                    .last_request_ms
                    .store(shared.now_ms(), Ordering::Relaxed);
                // A panic past the handler's own guard (tiny_http answers a dropped request
                // with a 500) is logged; the worker lives on.
                if catch_unwind(AssertUnwindSafe(|| take(rq, shared))).is_err() {
                    log::error!("a request panicked the server; it got a 500");
                }
            }
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if Arc::ptr_eq(&shared.current(), &server) && e.raw_os_error().is_some() {
                    // An accept() error: tiny_http's accept thread has ended.
                    log::error!("HTTP accept failed ({e}); restarting the accept thread");
                    shared.rebuild(&server);
                }
            }
        }
    }
}

/// A worker's request: refused if its body is too large, moved to a body thread if its
/// body may be slow, else answered here.
fn take(rq: tiny_http::Request, shared: &Arc<Shared>) {
    let Some(rq) = guard_body(rq, shared) else {
        return;
    };
    let streamed = match rq.body_length() {
        Some(n) => n > PREBUFFERED_BYTES,
        None => header(&rq, "Transfer-Encoding").is_some(),
    };
    if !streamed && header(&rq, "Expect").is_none() {
        return answer(rq, shared);
    }
    let Some(place) = shared.bodies.try_reserve() else {
        let e = HttpError::new(503, "too many uploads in progress")
            .with_header("Retry-After", "1")
            .with_header("Connection", "close");
        return abandon(rq, e.into_reply(), shared);
    };
    // A slow body holds its pool thread too.
    shared.nudge_pump();
    let shared = shared.clone();
    let spawned = place.spawn("body", 128 * 1024, move || {
        answer(rq, &shared);
        Ok(())
    });
    if let Err(e) = spawned {
        log::error!("{}", e.chain());
    }
}

/// Runs the handler and carries out its answer.
fn answer(mut rq: tiny_http::Request, shared: &Shared) {
    let view = Request::new(&rq.method().to_string(), rq.url()).with_peer(
        rq.remote_addr().copied(),
        *rq.http_version() == HTTPVersion(1, 0),
    );
    let view = rq.headers().iter().fold(view, |v, h| {
        v.with_header(h.field.as_str().as_str(), h.value.as_str())
    });
    let answer = {
        let mut view = view.with_body(rq.as_reader());
        // A panicking handler costs its request a 500 and a log line, nothing more.
        catch_unwind(AssertUnwindSafe(|| (shared.handler)(&mut view))).unwrap_or_else(|_| {
            log::error!("a request handler panicked; the request got a 500");
            Answer::Reply(HttpError::new(500, "internal error (see the hub's log)").into_reply())
        })
    };
    match answer {
        Answer::Reply(reply) => respond_logged(rq, reply),
        Answer::Takeover(start) => {
            let writer = rq.into_writer();
            shared.nudge_pump();
            start(writer);
        }
    }
}

fn response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut r = Response::from_data(reply.body).with_status_code(reply.status);
    let headers =
        std::iter::once(("Content-Type", reply.content_type.to_owned())).chain(reply.headers);
    for (name, value) in headers {
        // Values we build are ASCII without CR/LF; one that is not is dropped, not sent.
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            r.add_header(h);
        }
    }
    r
}

fn header<'a>(rq: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    rq.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Refuses a request whose declared body is over [`MAX_BODY_BYTES`], or whose length we
/// cannot trust, without ever letting tiny_http drain it on a worker (it would pin the
/// worker while the client trickles, and abort the process for an absurd length). Returns
/// the request when it is fine.
fn guard_body(rq: tiny_http::Request, shared: &Shared) -> Option<tiny_http::Request> {
    let refusal = match declared_length(rq.headers()) {
        Ok(Some(n)) if n > MAX_BODY_BYTES as u64 => too_large(),
        Ok(_) => return Some(rq),
        Err(why) => HttpError::new(400, why).with_header("Connection", "close"),
    };
    log::warn!(
        "refusing the body of {:?} ({} {}): {}",
        rq.remote_addr(),
        rq.method(),
        rq.url(),
        refusal.message
    );
    match rq.body_length() {
        // tiny_http read no length it could use (on 32-bit targets it parses into a
        // 32-bit usize and drops a longer one without a word), so it will not drain one:
        // nothing beyond its 1 KiB prebuffer can be read by dropping the request.
        None => respond_logged(rq, refusal.into_reply()),
        Some(n) if n <= PREBUFFERED_BYTES => respond_logged(rq, refusal.into_reply()),
        Some(n) if n <= DRAIN_LIMIT_BYTES => match shared.bodies.try_reserve() {
            Some(place) => {
                // Answer, then let the drop drain (or meet EOF) off the workers. Its
                // tiny_http pool thread waits as long: have the pump replace it.
                shared.nudge_pump();
                let reply = refusal.into_reply();
                let spawned = place.spawn("reject", 64 * 1024, move || {
                    respond_logged(rq, reply);
                    Ok(())
                });
                if let Err(e) = spawned {
                    log::error!("{}", e.chain());
                }
            }
            None => abandon(rq, refusal.into_reply(), shared),
        },
        Some(_) => abandon(rq, refusal.into_reply(), shared),
    }
    None
}

/// The body length a request declares, read by us as a `u64` from every
/// `Content-Length` header rather than trusted to tiny_http's `usize`.
///
/// # Errors
/// A message for a 400: a value that is not a plain number of bytes (or beyond `u64`),
/// or two headers that disagree.
fn declared_length(headers: &[Header]) -> std::result::Result<Option<u64>, &'static str> {
    let mut declared = None;
    for h in headers.iter().filter(|h| h.field.equiv("Content-Length")) {
        let text = h.value.as_str().trim();
        let n = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
            .ok_or("Content-Length is not a number of bytes this server can take")?;
        if declared.is_some_and(|d| d != n) {
            return Err("conflicting Content-Length headers");
        }
        declared = Some(n);
    }
    Ok(declared)
}

fn respond_logged(rq: tiny_http::Request, reply: Reply) {
    if let Err(e) = rq.respond(response(reply)) {
        log::debug!("response not delivered: {e}");
    }
}

/// Answers a request whose body is still unread without ever dropping it. tiny_http drains
/// an unread body when its request is dropped (allocating the declared length at once, and
/// waiting as long as the client trickles), so the only way to answer without that is to
/// take the connection out of its hands and keep it. This costs one tiny_http thread and
/// two sockets until the process ends; it is reached only for absurd declared lengths or
/// when every body thread is busy. See the README's security section.
fn abandon(rq: tiny_http::Request, reply: Reply, shared: &Shared) {
    let n = shared.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
    log::warn!(
        "abandoning the connection of {:?} ({n} so far): its unread body cannot be drained safely",
        rq.remote_addr()
    );
    let stream = rq.upgrade("close", response(reply));
    std::mem::forget(stream);
    shared.nudge_pump(); // its pool thread is gone for good: replace it
    if n == MAX_ABANDONED {
        // Measured: each costs one thread and two file descriptors, forever. Past this many
        // a client is attacking us; a restart (systemd: Restart=always) frees them all.
        shared.fatal.report(format!(
            "{n} connections abandoned for absurd or stalled request bodies; restarting to free their threads and sockets"
        ));
    }
}

/// Works around a race in tiny_http 0.12's connection thread pool (`util/task_pool.rs`):
/// `spawn` queues a new connection whenever a pool thread *counts* as idle, but in a burst
/// several connections are queued on the same idle thread, which then takes one event
/// stream for life; the rest stay accepted and never read until some connection closes
/// (measured: 4 of 50 simultaneous clients served). Every connection moved to a thread of
/// ours therefore nudges this thread, which opens and at once closes a connection to the
/// hub: when no pool thread is idle, tiny_http starts a new one for it, and that thread,
/// having read the empty connection to its end, takes the next queued connection. A probe
/// costs one loopback connect (tens of microseconds).
///
/// The same thread checks that the server still answers: after [`LIVENESS_IDLE`] without
/// a request, it asks for `/favicon.ico` itself; no answer means a new server is built on
/// the same listener.
fn pump(shared: &Shared, addr: SocketAddr, nudges: &Receiver<()>, stop: &Receiver<()>) {
    // How long without a request before the next check, and the last request it saw.
    let mut wait = LIVENESS_IDLE;
    let mut seen = shared.last_request_ms.load(Ordering::Relaxed);
    loop {
        let last = shared.last_request_ms.load(Ordering::Relaxed);
        if last != seen {
            // Traffic since the last check: the next one comes 1 s into the next silence.
            seen = last;
            wait = LIVENESS_IDLE;
        }
        select! {
            recv(nudges) -> n => {
                if n.is_err() {
                    return;
                }
                if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    log::debug!("pool pump probe failed: {e}");
                }
            }
            recv(stop) -> _ => return,
            default(LIVENESS_IDLE) => {
                let idle_ms = shared.now_ms().saturating_sub(shared.last_request_ms.load(Ordering::Relaxed));
                if u128::from(idle_ms) < wait.as_millis() {
                    continue;
                }
                let answered = answers(addr);
                // The check's own request counts as a request: it is not traffic.
                seen = shared.last_request_ms.load(Ordering::Relaxed);
                if answered == Probe::Yes {
                    wait = (wait * 2).min(LIVENESS_IDLE_MAX);
                    continue;
                }
                // Could not tell (no socket for us either): keep checking every second.
                wait = LIVENESS_IDLE;
                if answered == Probe::Unknown {
                    continue;
                }
                // Not alive until a worker takes a request again.
                shared.unanswered_ms.store(shared.now_ms().max(1), Ordering::Relaxed);
                // Starved pool threads look the same from outside: pump first (each
                // connect frees one queued connection), and only then conclude that the
                // accept thread is gone.
                for _ in 0..LIVENESS_PUMPS {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
                }
                if answers(addr) != Probe::No || shared.stopping.load(Ordering::SeqCst) {
                    continue;
                }
                log::error!("the HTTP server stopped answering; restarting its accept thread");
                shared.rebuild(&shared.current());
            }
        }
    }
}

/// What a liveness check found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Probe {
    Yes,
    No,
    /// We could not even open a socket: the fd shortage is ours too, and a rebuild would
    /// not help yet.
    Unknown,
}

/// Whether a request to ourselves is answered.
fn answers(addr: SocketAddr) -> Probe {
    use std::io::Read;
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            log::debug!("liveness probe could not connect: {e}");
            return Probe::Unknown;
        }
    };
    let mut buf = [0u8; 16];
    let answered = s
        .set_read_timeout(Some(LIVENESS_WAIT))
        .and_then(|()| s.write_all(b"GET /favicon.ico HTTP/1.0\r\n\r\n"))
        .and_then(|()| s.read(&mut buf));
    if matches!(answered, Ok(n) if n > 0) {
        Probe::Yes
    } else {
        Probe::No
    }
}

/// The address to reach our own listener at: loopback when bound to "any".
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

fn new_server(listener: &TcpListener) -> Result<tiny_http::Server> {
    let l = listener
        .try_clone()
        .map_err(crate::error::io("clone the listener"))?;
    tiny_http::Server::from_listener(l, None).map_err(|e| Error::Io {
        op: "start the HTTP server",
        source: std::io::Error::other(e.to_string()),
    })
}

/// Our own listener, with options accepted sockets inherit on Linux. Never SO_RCVTIMEO:
/// it makes accept() time out, which tiny_http treats as fatal.
fn bind(config: &Config) -> Result<TcpListener> {
    let addr = config.bind;
    let fail = |source| Error::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_tcp_nodelay(true).map_err(fail)?;
    socket
        .set_write_timeout(Some(config.send_timeout))
        .map_err(fail)?;
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket.set_tcp_keepalive(&keepalive).map_err(fail)?;
    // A peer that leaves data unacknowledged (gone without a FIN) or keeps its window shut
    // (stopped reading) this long is dropped by the kernel. Without it, tiny_http's thread
    // for that connection waits in read() for as long as the peer stays, after our stream
    // has already given up on it (measured: 100 such clients kept 200 threads).
    socket
        .set_tcp_user_timeout(Some(config.send_timeout))
        .map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_path_is_alive_only_with_recent_answered_requests() {
        let quiet = ACCEPT_QUIET_MAX_MS;
        // (now, last request, last unanswered check) → alive
        for (now, request, unanswered, alive) in [
            (0, 0, 0, true),                 // just started
            (quiet, 0, 0, true),             // idle, within the checks' longest gap
            (quiet + 1, 0, 0, false),        // no request, not even a check: pump gone
            (5_000, 3_000, 4_500, false),    // a check went unanswered since
            (5_000, 4_600, 4_500, true),     // ...and then a request was taken
            (quiet + 4_600, 4_600, 0, true), // long idle, last check answered
        ] {
            assert_eq!(
                accept_alive(now, request, unanswered),
                alive,
                "now {now}, request {request}, unanswered {unanswered}"
            );
        }
    }
}
