//! The HTTP server, the one wall between the network and our handlers: our own listener,
//! the door (`tle-door`, [`door`]) that holds every connection until a whole request has
//! arrived within the limits, the workers (`tle-http-N`) that run the handler on it and
//! write the answer with tiny_http's response writer ([`render`]), and the stream writer
//! (`tle-streams`, [`streams`]) that writes every following event stream from one thread.
//! The rest of `http/` sees only [`Request`] in and [`Answer`] out, in the spirit of rouille's
//! `start_server(addr, handler)`.
//!
//! Why not tiny_http's own `Server` (0.12.0; measured, see the README's security notes):
//! it can only serve connections it accepted itself, and before our code sees a request it
//! has already given the connection a pool thread for its whole life, with no limit on
//! the head's size or line count and no timeout; one `accept()` error ends its accept
//! thread, and a refused request's body is drained by allocating its declared length. So
//! a LAN client could exhaust threads or descriptors with idle connections, make the hub
//! allocate without bound, or abort it. The door puts limits where tiny_http has none;
//! tiny_http stays the response writer (status line, `Date`, lengths).

use std::io::{Cursor, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

mod door;
mod render;
mod streams;
mod wire;

pub(crate) use door::Conn;
pub(crate) use render::EVERY_ANSWER;
pub(crate) use streams::{Ending, Fill, Source, StreamWriter, Writer, WriterHandle};

use self::door::{Hall, Job, Rules};
use self::render::render;
use super::peers::PeerSlots;
use super::reply::{HttpError, Reply};
use super::request::Request;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::thread::{Fatal, join_thread, spawn_named};

/// What a handler makes of a request.
pub(crate) enum Answer {
    /// A complete response, written and flushed by the server.
    Reply(Reply),
    /// The connection leaves the server: the closure gets it (nothing has been written
    /// yet) and must hand it to a thread of its own.
    Takeover(Takeover),
}

/// A connection taken over by a handler: written to (blocking, for the head and any
/// catch-up), then handed to the stream writer.
pub(crate) trait Client: Write + Send {
    /// Hands the connection to `tle-streams`, which from then on writes what `source`
    /// gives, each write one HTTP/1.1 chunk if `chunked`, until the source or the client
    /// ends it.
    ///
    /// # Errors
    /// The writer has stopped (the hub is shutting down): the connection closes.
    fn follow(self: Box<Self>, source: Box<dyn Source>, chunked: bool) -> Result<()>;
}

/// See [`Answer::Takeover`].
pub(crate) type Takeover = Box<dyn FnOnce(Box<dyn Client>) + Send>;

/// The request handler: runs on a worker.
pub(crate) type Handler = dyn Fn(&mut Request<'_>) -> Answer + Send + Sync;

/// Requests waiting for a worker; more are refused at the door with a 503.
const QUEUED_REQUESTS: usize = 256;
/// The accept path counts as wedged when the door has not gone round its loop for this
/// long, or a queued request has waited this long for a worker.
const WEDGED_MS: u64 = 5_000;

/// The running server: door, workers.
pub(crate) struct Server {
    shared: Arc<Shared>,
    door: Option<JoinHandle<Result<()>>>,
    workers: Vec<JoinHandle<Result<()>>>,
    addr: SocketAddr,
}

struct Shared {
    hall: Arc<Hall>,
    handler: Box<Handler>,
    /// Kept-alive connections on their way back to the door.
    back: Sender<(Conn, Vec<u8>)>,
    /// Requests waiting for a worker (their length tells a wedged pool).
    jobs: Receiver<Job>,
    /// When a worker last took a request, in ms since the hall's epoch.
    taken_ms: AtomicU64,
    /// Where taken-over connections go to follow their stream.
    writer: Arc<Writer>,
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

    /// The address it is bound to (the port chosen, for port 0).
    ///
    /// # Errors
    /// The socket cannot say (it always can once bound).
    pub(crate) fn addr(&self) -> Result<SocketAddr> {
        self.0
            .local_addr()
            .map_err(crate::error::io("read the bound address"))
    }
}

/// Whether a [`Server`]'s accept path works, for another thread (the systemd watchdog
/// pinger, stopped before the server).
pub(crate) struct Liveness(Arc<Shared>);

impl Liveness {
    /// True while the door goes round its loop and the workers take what it queues.
    pub(crate) fn alive(&self) -> bool {
        let s = &self.0;
        accept_alive(
            s.hall.now_ms(),
            s.hall.beat_ms.load(Ordering::Relaxed),
            s.taken_ms.load(Ordering::Relaxed),
            s.jobs.is_empty(),
        )
    }
}

/// Whether the accept path works: the door sleeps in `poll` ([`door::PARKED`]) or beat
/// within [`WEDGED_MS`], and no request has waited that long for a worker (queued ones,
/// and no worker has taken one since).
fn accept_alive(now_ms: u64, beat_ms: u64, taken_ms: u64, queue_empty: bool) -> bool {
    (beat_ms == door::PARKED || now_ms.saturating_sub(beat_ms) <= WEDGED_MS)
        && (queue_empty || now_ms.saturating_sub(taken_ms) <= WEDGED_MS)
}

impl Server {
    /// Starts the door and `config.http_workers` workers on `listener`, with at most
    /// `config.max_conns` connections (fewer if the process has fewer descriptors).
    /// `fatal` hears when the door dies. Taken-over connections follow their streams on
    /// `writer`.
    ///
    /// # Errors
    /// A thread cannot start, or the listener cannot be set up.
    pub(crate) fn start(
        config: &Config,
        listener: Listener,
        handler: Box<Handler>,
        fatal: Fatal,
        writer: Arc<Writer>,
    ) -> Result<Server> {
        let Listener(listener) = listener;
        let addr = listener
            .local_addr()
            .map_err(crate::error::io("read the bound address"))?;
        listener
            .set_nonblocking(true)
            .map_err(crate::error::io("set the listener non-blocking"))?;
        let (bell, ear) = UnixStream::pair().map_err(crate::error::io("make the door's bell"))?;
        for s in [&bell, &ear] {
            s.set_nonblocking(true)
                .map_err(crate::error::io("make the door's bell"))?;
        }
        let hall = Arc::new(Hall {
            stopping: AtomicBool::new(false),
            stop_by_ms: AtomicU64::new(0),
            beat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            bell,
            refused: AtomicU64::new(0),
        });
        let rules = Rules {
            conns: PeerSlots::new(
                config.max_conns_per_addr,
                conns_within_fd_budget(config.max_conns),
            ),
            head_timeout: config.head_timeout,
            idle_timeout: config.idle_timeout,
        };
        let (jobs_tx, jobs_rx) = bounded(QUEUED_REQUESTS);
        let (back_tx, back_rx) = unbounded();
        let shared = Arc::new(Shared {
            hall: hall.clone(),
            handler,
            back: back_tx,
            jobs: jobs_rx.clone(),
            taken_ms: AtomicU64::new(0),
            writer,
        });
        let door = spawn_named("door", Some(256 * 1024), move || {
            let ran = catch_unwind(AssertUnwindSafe(|| {
                door::run(&listener, &rules, &hall, &ear, &jobs_tx, &back_rx);
            }));
            if let Err(panic) = ran {
                let what = crate::thread::panic_text(&*panic);
                fatal.report(format!("the HTTP door panicked: {what}"));
            }
            Ok(())
        })?;
        let mut workers = Vec::new();
        for i in 0..config.http_workers {
            let (shared, jobs) = (shared.clone(), jobs_rx.clone());
            workers.push(spawn_named(&format!("http-{i}"), None, move || {
                worker(&shared, &jobs);
                Ok(())
            })?);
        }
        Ok(Server {
            shared,
            door: Some(door),
            workers,
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

    /// Stops taking connections: the door closes the idle ones it holds and gives
    /// requests under way until `deadline` to arrive (an upload in progress is answered);
    /// the workers answer what was queued and end. Connections already taken over live on
    /// until their owners end them. Idempotent.
    pub(crate) fn stop(&mut self, deadline: Instant) -> Result<()> {
        let hall = &self.shared.hall;
        let left = deadline.saturating_duration_since(Instant::now());
        let by = hall
            .now_ms()
            .saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
        hall.stop_by_ms.store(by, Ordering::SeqCst);
        hall.stopping.store(true, Ordering::SeqCst);
        self.shared.hall.ring();
        let mut first = Ok(());
        if let Some(door) = self.door.take() {
            first = join_thread("door", door);
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

/// `wanted` connections, or fewer if the process's descriptor limit cannot hold them
/// beside the database's and the hub's own (a reserve of 64).
fn conns_within_fd_budget(wanted: usize) -> usize {
    let soft = crate::limits::fd_limit();
    let budget = usize::try_from(soft.saturating_sub(64))
        .unwrap_or(usize::MAX)
        .max(16);
    if wanted > budget {
        log::warn!(
            "--max-conns {wanted} is more than {soft} file descriptors allow; taking {budget}"
        );
        return budget;
    }
    wanted
}

fn worker(shared: &Shared, jobs: &Receiver<Job>) {
    // The door's sender drops when it stops: the queue is answered, then this ends.
    while let Ok(job) = jobs.recv() {
        shared
            .taken_ms
            .store(shared.hall.now_ms(), Ordering::Relaxed);
        // A panic past the handler's own guard is logged; the worker lives on.
        if catch_unwind(AssertUnwindSafe(|| serve(job, shared))).is_err() {
            log::error!("a request panicked the server; its connection closed");
        }
    }
}

/// Runs the handler on a request and carries out its answer.
fn serve(job: Job, shared: &Shared) {
    let Job {
        mut conn,
        head,
        body,
        rest,
    } = job;
    if let Err(e) = conn.stream().set_nonblocking(false) {
        log::debug!("dropping {}: {e}", conn.peer());
        return;
    }
    let view = Request::new(&head.method, &head.target).with_peer(Some(conn.peer()), head.http10);
    let view = head
        .headers
        .iter()
        .fold(view, |v, (name, value)| v.with_header(name, value));
    let answer = {
        let mut view = view.with_body(Cursor::new(body));
        // A panicking handler costs its request a 500 and a log line, nothing more.
        catch_unwind(AssertUnwindSafe(|| (shared.handler)(&mut view))).unwrap_or_else(|_| {
            log::error!("a request handler panicked; the request got a 500");
            Answer::Reply(HttpError::new(500, "internal error (see the hub's log)").into_reply())
        })
    };
    match answer {
        Answer::Reply(reply) => {
            let close = !head.keep_alive()
                || shared.hall.stopping.load(Ordering::SeqCst)
                || reply.headers.iter().any(|(k, v)| {
                    k.eq_ignore_ascii_case("Connection") && v.eq_ignore_ascii_case("close")
                });
            let bytes = render(reply, head.http10, head.method == "HEAD", close);
            if let Err(e) = conn.write_all(&bytes).and_then(|()| conn.flush()) {
                log::debug!("response to {} not delivered: {e}", conn.peer());
                return;
            }
            if close {
                let _ = conn.stream().shutdown(std::net::Shutdown::Write);
                return;
            }
            if shared.back.send((conn, rest)).is_ok() {
                shared.hall.ring();
            }
        }
        Answer::Takeover(start) => {
            start(Box::new(streams::Taken::new(conn, shared.writer.clone())))
        }
    }
}

/// Our own listener, with options accepted sockets inherit on Linux.
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
    // (stopped reading) this long is dropped by the kernel.
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
    fn the_accept_path_is_alive_while_the_door_beats_and_workers_take_requests() {
        let w = WEDGED_MS;
        // (now, door beat, last taken, queue empty) → alive
        for (now, beat, taken, empty, alive) in [
            (0, 0, 0, true, true),
            (w, 0, 0, true, true),
            (w + 1, 0, 0, true, false), // the door stopped going round
            (w + 1, door::PARKED, 0, true, true), // it sleeps in poll: nothing to do
            (w + 100, w + 50, 0, true, true), // idle: nothing queued
            (w + 100, w + 50, 0, false, false), // queued, no worker took any for long
            (w + 100, w + 50, 200, false, true), // queued, a worker took one recently
        ] {
            assert_eq!(
                accept_alive(now, beat, taken, empty),
                alive,
                "now {now}, beat {beat}, taken {taken}, empty {empty}"
            );
        }
    }
}
