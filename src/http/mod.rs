//! The HTTP server: our own listener, tiny_http on top of it, and the worker threads
//! (`tle-http-N`) that take requests, route them and answer. Event streams are handed to
//! threads of their own (see [`stream`]), so a worker is never held by a client.
//!
//! tiny_http 0.12.0 faults we work around here (measured; see the README's security notes):
//! - One `accept()` error (e.g. EMFILE) ends its accept thread for good. We keep a clone of
//!   the listener; when a worker sees that error it builds a new `tiny_http::Server` on the
//!   same socket (after a pause, since the cause is usually a short fd shortage), so the
//!   port is never lost.
//! - A request dropped with its body unread drains the body by allocating the *declared*
//!   length in one `vec!`: a `Content-Length: 100000000000000` aborts the process. Every
//!   request passes [`routes::guard_body`] before anything can drop it.
//! - No receive timeout exists, and one on the listener would break `accept()`. We set
//!   TCP_NODELAY, a send timeout and TCP keepalive on the listener (accepted sockets inherit
//!   them on Linux) and keep slow bodies off the workers.

mod dashboard;
mod reply;
mod routes;
pub(crate) mod stream;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::broadcast::Broadcast;
use crate::config::Config;
use crate::emitter::Emitter;
use crate::error::{Error, Result};
use crate::hub::{join_thread, spawn_named};
use crate::poller::PollerStatus;
use crate::store::Store;

pub(crate) use stream::Streams;

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

/// Pause before rebuilding the server after an accept error.
const REBUILD_PAUSE: Duration = Duration::from_millis(250);

/// Everything a request handler may use. Cheap to share: all handles.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) emitter: Emitter,
    pub(crate) broadcast: Arc<Broadcast>,
    pub(crate) poller: Arc<PollerStatus>,
    pub(crate) streams: Arc<Streams>,
    pub(crate) body_threads: Arc<stream::Slots>,
    pub(crate) cache: Arc<crate::state::StateCache>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) fatal: crate::hub::Fatal,
    /// Connections given up on (see `routes::abandon`); each holds a thread and two fds.
    pub(crate) abandoned: std::sync::atomic::AtomicUsize,
    /// Nudges the pool pump (see [`pump`]) once per connection handed to a long-lived
    /// thread (a stream, a slow body, a refusal being drained) or abandoned.
    pub(crate) pump: Sender<()>,
}

/// The running server: listener, current tiny_http server and workers.
pub(crate) struct HttpServer {
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
    /// When a worker last took a request, in ms since `epoch` (for the liveness probe).
    last_request_ms: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl HttpServer {
    /// Binds, starts tiny_http and the workers, and the pump that `pump_rx` nudges.
    pub(crate) fn start(ctx: Arc<Ctx>, pump_rx: Receiver<()>) -> Result<HttpServer> {
        let listener = bind(&ctx.config)?;
        let addr = listener
            .local_addr()
            .map_err(crate::error::io("read the bound address"))?;
        let server = new_server(&listener)?;
        let shared = Arc::new(Shared {
            listener,
            server: RwLock::new(Arc::new(server)),
            stopping: AtomicBool::new(false),
            workers: ctx.config.http_workers,
            last_request_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let mut workers = Vec::new();
        for i in 0..ctx.config.http_workers {
            let (shared, ctx) = (shared.clone(), ctx.clone());
            workers.push(spawn_named(&format!("http-{i}"), None, move || {
                worker(&shared, &ctx);
                Ok(())
            })?);
        }
        let (pump_stop, stop_rx) = bounded::<()>(0);
        let pump_shared = shared.clone();
        let pump = spawn_named("pump", Some(64 * 1024), move || {
            pump(&pump_shared, loopback_of(addr), &pump_rx, &stop_rx);
            Ok(())
        })?;
        Ok(HttpServer {
            shared,
            workers,
            pump: Some((pump_stop, pump)),
            addr,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests and joins the workers (streams live on until the broadcast
    /// closes). Idempotent.
    pub(crate) fn stop(&mut self) -> Result<()> {
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
        first
    }
}

impl Shared {
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
}

fn worker(shared: &Shared, ctx: &Ctx) {
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
                // A panic in a handler becomes a 500 (tiny_http answers a dropped request)
                // and a log line; the worker lives on.
                let outcome = catch_unwind(AssertUnwindSafe(|| routes::handle(rq, ctx)));
                if outcome.is_err() {
                    log::error!("a request handler panicked; the request got a 500");
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

/// Works around a race in tiny_http 0.12's connection thread pool (`util/task_pool.rs`):
/// `spawn` queues a new connection whenever a pool thread *counts* as idle, but in a burst
/// several connections are queued on the same idle thread, which then takes one event
/// stream for life; the rest stay accepted and never read until some connection closes
/// (measured: 4 of 50 simultaneous clients served). Every event stream therefore nudges
/// this thread, which opens and at once closes a connection to the hub: when no pool thread
/// is idle, tiny_http starts a new one for it, and that thread, having read the empty
/// connection to its end, takes the next queued connection. A stream start so replaces
/// the pool thread it took. A probe costs one loopback connect (tens of microseconds).
///
/// The same thread checks that the server still answers. tiny_http's accept thread can die
/// without telling anyone: under EMFILE its `try_clone().unwrap()` of a new socket panics
/// (tiny_http 0.12 src/util/refined_tcp_stream.rs:18). So after [`LIVENESS_IDLE`] without a
/// request, the pump asks for `/favicon.ico` itself; no answer means a new server is built
/// on the same listener.
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
                if answered == Answer::Yes {
                    wait = (wait * 2).min(LIVENESS_IDLE_MAX);
                    continue;
                }
                // Could not tell (no socket for us either): keep checking every second.
                wait = LIVENESS_IDLE;
                if answered == Answer::Unknown {
                    continue;
                }
                // Starved pool threads look the same from outside: pump first (each
                // connect frees one queued connection), and only then conclude that the
                // accept thread is gone.
                for _ in 0..LIVENESS_PUMPS {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
                }
                if answers(addr) != Answer::No || shared.stopping.load(Ordering::SeqCst) {
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
enum Answer {
    Yes,
    No,
    /// We could not even open a socket: the fd shortage is ours too, and a rebuild would
    /// not help yet.
    Unknown,
}

/// Whether a request to ourselves is answered.
fn answers(addr: SocketAddr) -> Answer {
    use std::io::{Read, Write};
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            log::debug!("liveness probe could not connect: {e}");
            return Answer::Unknown;
        }
    };
    let mut buf = [0u8; 16];
    let answered = s
        .set_read_timeout(Some(LIVENESS_WAIT))
        .and_then(|()| s.write_all(b"GET /favicon.ico HTTP/1.0\r\n\r\n"))
        .and_then(|()| s.read(&mut buf));
    if matches!(answered, Ok(n) if n > 0) {
        Answer::Yes
    } else {
        Answer::No
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
