//! The door (`tle-door`): one thread that accepts every connection and keeps it, without a
//! thread of its own, until a whole request (head and body) has arrived within the limits;
//! only then does a worker see it. Idle keep-alive connections come back here between
//! requests. What the door refuses it answers itself (a JSON error, then a lingering close).
//!
//! - Places: at most `--max-conns` connections in all and `--max-conns-per-addr` per
//!   client address ([`PeerSlots`]); a connection over either gets a 503 and is closed at
//!   once, so a flood from one address costs an `accept` and a `close` each.
//! - Time: a head (and its body) must arrive within `--head-timeout` of the connection's
//!   first byte, or of its accept; an idle keep-alive connection closes after
//!   `--idle-timeout`.
//! - Size: [`wire`] limits (16 KiB of head, 100 headers, 64 KiB of body).
//! - Descriptors: with none left (EMFILE), the door closes a reserved one, accepts and at
//!   once closes the waiting connection, and reopens the reserve: the listen queue keeps
//!   moving and the accept path never wedges.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::RecvFlags;

use super::super::peers::{Full, PeerSlot, PeerSlots};
use super::super::reply::HttpError;
use super::render::render;
use super::wire::{self, Body, Chunked, Head, MAX_HEAD_BYTES, Parse, Refusal};
use crate::http::request::MAX_BODY_BYTES;

/// Most bytes buffered for one request: its head and a chunked body with its framing.
const MAX_REQUEST_BYTES: usize = MAX_HEAD_BYTES + 2 * MAX_BODY_BYTES;
/// After a refusal, the door reads and drops what the client still sends for this long
/// (at most [`LINGER_BYTES`]), so that the refusal is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;
/// Connections accepted per wake-up, so that reading the held ones goes on under a flood.
const ACCEPTS_PER_ROUND: usize = 256;
/// What `Hall::beat_ms` holds while the door sleeps in `poll` (see [`Hall::beat_ms`]).
pub(crate) const PARKED: u64 = u64::MAX;
/// How soon requests waiting for room in the workers' queue are offered again.
const WAITING_ROUND: Duration = Duration::from_millis(2);
/// A warning about refused connections at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A client connection, with its place among [`PeerSlots`] (given back when it drops).
pub(crate) struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: PeerSlot,
}

impl Conn {
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// A connection as the door would hand it on, for the stream writer's tests.
    #[cfg(test)]
    pub(crate) fn for_test(stream: TcpStream) -> Option<Conn> {
        let peer = stream.peer_addr().ok()?;
        let slot = crate::http::peers::PeerSlots::new(64, 64)
            .take(peer.ip())
            .ok()?;
        Some(Conn {
            stream,
            peer,
            _slot: slot,
        })
    }

    /// Whether the client has closed or reset the connection; bytes it sent meanwhile
    /// are read and dropped (nothing more is read from a connection that streams), at most
    /// [`LEFT_READ_BYTES`] a call, so a client that never stops sending cannot keep the
    /// caller here: the rest waits for the next call. Never blocks.
    pub(crate) fn left(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < LEFT_READ_BYTES {
            match rustix::net::recv(&self.stream, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((_, 0)) => return true,
                Ok((n, _)) => read += n,
                Err(rustix::io::Errno::AGAIN) => return false,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// The most [`Conn::left`] reads and drops in one call.
const LEFT_READ_BYTES: usize = 64 * 1024;

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// A whole request, for a worker.
pub(crate) struct Job {
    pub(crate) conn: Conn,
    pub(crate) head: Head,
    pub(crate) body: Vec<u8>,
    /// Bytes read past this request (the next pipelined one).
    pub(crate) rest: Vec<u8>,
}

/// The door's settings.
pub(crate) struct Rules {
    pub(crate) conns: Arc<PeerSlots>,
    pub(crate) head_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// What the door shares with the server.
pub(crate) struct Hall {
    /// Set by `Server::stop`: no more connections are taken; requests under way get
    /// until `stop_by_ms` to arrive.
    pub(crate) stopping: AtomicBool,
    pub(crate) stop_by_ms: AtomicU64,
    /// When the door last went round its loop, in ms since `epoch`; [`PARKED`] while it
    /// sleeps in `poll`, which returns as soon as anything is to be done (a connection,
    /// a byte, the bell, a deadline), so a parked door is never a wedged one and needs
    /// no wake-up of its own to beat.
    pub(crate) beat_ms: AtomicU64,
    pub(crate) epoch: Instant,
    /// Wakes the door: a byte written here.
    pub(crate) bell: UnixStream,
    /// Connections refused at the door (over a limit, malformed, too slow).
    pub(crate) refused: AtomicU64,
}

impl Hall {
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Wakes the door (a full bell has already woken it).
    pub(crate) fn ring(&self) {
        let _ = (&self.bell).write(&[1]);
    }
}

/// What a read found of the client's side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Got {
    /// It may send more.
    Open,
    /// It closed its sending side (FIN): what it sent is all there is.
    Ended,
    /// The connection is gone (reset).
    Reset,
}

enum Stage {
    /// Waiting for a head; `searched`: bytes already looked at for its blank line.
    Head {
        searched: usize,
    },
    /// Waiting for `len` bytes of body after the head.
    Length {
        head: Head,
        len: usize,
    },
    Chunked {
        head: Head,
        body: Chunked,
    },
    /// Refused: draining until the client stops or [`LINGER`] ends.
    Closing {
        drained: usize,
    },
}

struct Held {
    conn: Conn,
    buf: Vec<u8>,
    stage: Stage,
    /// Closed (after a 408 when part of a request came) at this instant.
    deadline: Instant,
    /// Some byte of the current request has arrived.
    started: bool,
}

/// Runs the door until `hall.stopping`. `jobs` goes to the workers; `back` brings kept-alive
/// connections (with any bytes read past their last request) home.
pub(crate) fn run(
    listener: &TcpListener,
    rules: &Rules,
    hall: &Hall,
    bell: &UnixStream,
    jobs: &Sender<Job>,
    back: &Receiver<(Conn, Vec<u8>)>,
) {
    let mut door = Door {
        rules,
        hall,
        jobs,
        held: Vec::new(),
        waiting: VecDeque::new(),
        reserve: File::open("/dev/null").ok(),
        quiet: Quiet::default(),
        chunk: vec![0; 8192],
    };
    let mut drain = [0u8; 64];
    let mut ready: Vec<bool> = Vec::new();
    loop {
        hall.beat_ms.store(hall.now_ms(), Ordering::Relaxed);
        let now = Instant::now();
        let stopping = hall.stopping.load(Ordering::SeqCst);
        if stopping {
            // Idle and refused connections close now; a request under way may finish.
            door.held
                .retain(|h| h.started && !matches!(h.stage, Stage::Closing { .. }));
            if (door.held.is_empty() && door.waiting.is_empty())
                || hall.now_ms() >= hall.stop_by_ms.load(Ordering::SeqCst)
            {
                break;
            }
        }
        for (conn, rest) in back.try_iter() {
            door.welcome(conn, rest, now + rules.idle_timeout);
        }
        door.queue_waiting(now);
        // Sleeps until the next deadline: a held connection's, the stop's, or soon when
        // requests wait for the workers; with none, until something happens.
        let stop_by = stopping.then(|| {
            let by = hall.stop_by_ms.load(Ordering::SeqCst);
            Duration::from_millis(by.saturating_sub(hall.now_ms()))
        });
        let wait = door
            .held
            .iter()
            .map(|h| h.deadline.saturating_duration_since(now))
            .chain(stop_by)
            .chain((!door.waiting.is_empty()).then_some(WAITING_ROUND))
            .min();
        // Rounded up a millisecond: a deadline is never polled for early and spun on.
        let timeout = wait.map(|wait| {
            let ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2) + 1;
            Timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            }
        });
        {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(door.held.len() + 2);
            let taking = if stopping {
                PollFlags::empty()
            } else {
                PollFlags::IN
            };
            fds.push(PollFd::new(listener, taking));
            fds.push(PollFd::new(bell, PollFlags::IN));
            fds.extend(
                door.held
                    .iter()
                    .map(|h| PollFd::new(&h.conn.stream, PollFlags::IN)),
            );
            hall.beat_ms.store(PARKED, Ordering::Relaxed);
            let polled = rustix::event::poll(&mut fds, timeout.as_ref());
            hall.beat_ms.store(hall.now_ms(), Ordering::Relaxed);
            match polled {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    log::error!("the HTTP door cannot poll: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            ready.clear();
            ready.extend(fds.iter().map(|f| !f.revents().is_empty()));
        }
        if ready[1] {
            while matches!((&*bell).read(&mut drain), Ok(n) if n > 0) {}
        }
        // Held connections first (their indices in `fds` match `held` as it was), then
        // the listener, whose newcomers are read next round or at once if data is there.
        let now = Instant::now();
        let held = std::mem::take(&mut door.held);
        for (h, &readable) in held.into_iter().zip(&ready[2..]) {
            let h = if readable { door.read(h, now) } else { Some(h) };
            if let Some(h) = h {
                door.expire(h, now);
            }
        }
        if ready[0] && !stopping {
            door.accept(listener, now);
        }
    }
    if !door.held.is_empty() {
        log::warn!(
            "{} requests still arriving at shutdown; closed unanswered",
            door.held.len()
        );
    }
}

struct Door<'a> {
    rules: &'a Rules,
    hall: &'a Hall,
    jobs: &'a Sender<Job>,
    held: Vec<Held>,
    /// Whole requests waiting for room in the workers' queue (a burst of them).
    waiting: VecDeque<(Job, Instant)>,
    /// A descriptor given up when the process has none left, to accept and close with.
    reserve: Option<File>,
    quiet: Quiet,
    /// Every read lands here first.
    chunk: Vec<u8>,
}

impl Door<'_> {
    fn accept(&mut self, listener: &TcpListener, now: Instant) {
        for _ in 0..ACCEPTS_PER_ROUND {
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        rustix::io::Errno::from_io_error(&e),
                        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
                    ) =>
                {
                    // Free a descriptor, take the waiting connection off the queue and
                    // close it, and keep the reserve for next time.
                    self.reserve = None;
                    let shed = listener.accept().is_ok();
                    self.reserve = File::open("/dev/null").ok();
                    self.hall.refused.fetch_add(1, Ordering::Relaxed);
                    self.quiet.warn(now, || {
                        format!("no file descriptors left ({e}); closing new connections (shed one: {shed})")
                    });
                    return;
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    self.quiet.warn(now, || format!("accept failed: {e}"));
                    return;
                }
            }
        }
    }

    /// A new connection: held if it has a place, else told so and closed.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        let slot = match self.rules.conns.take(peer.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                self.hall.refused.fetch_add(1, Ordering::Relaxed);
                let (per_peer, total) = self.rules.conns.limits();
                let message = match full {
                    Full::Peer => format!(
                        "too many connections from your address (at most {per_peer}, --max-conns-per-addr)"
                    ),
                    Full::All => format!("too many connections (at most {total}, --max-conns)"),
                };
                self.quiet
                    .warn(now, || format!("refusing {peer}: {message}"));
                let bytes = render(
                    HttpError::new(503, message)
                        .with_header("Retry-After", "5")
                        .into_reply(),
                    false,
                    false,
                    true,
                );
                // Best effort, never waiting: the client may not even read.
                let _ = stream.set_nonblocking(true);
                let _ = (&stream).write(&bytes);
                return;
            }
        };
        if let Err(e) = stream.set_nonblocking(true) {
            log::debug!("dropping {peer}: {e}");
            return;
        }
        log::debug!("connection from {peer}");
        self.held.push(Held {
            conn: Conn {
                stream,
                peer,
                _slot: slot,
            },
            buf: Vec::new(),
            stage: Stage::Head { searched: 0 },
            deadline: now + self.rules.head_timeout,
            started: false,
        });
    }

    /// A connection home from a worker, kept alive: its next request may already be in
    /// `rest`.
    fn welcome(&mut self, conn: Conn, rest: Vec<u8>, deadline: Instant) {
        if conn.stream.set_nonblocking(true).is_err() {
            return;
        }
        let h = Held {
            conn,
            started: !rest.is_empty(),
            buf: rest,
            stage: Stage::Head { searched: 0 },
            deadline,
        };
        let now = Instant::now();
        let h = if h.started {
            self.progress(h, now)
        } else {
            Some(h)
        };
        if let Some(h) = h {
            self.held.push(h);
        }
    }

    /// Reads what has arrived and moves the request on; `None`: the connection is done
    /// with here (handed to a worker, refused, or gone).
    fn read(&mut self, mut h: Held, now: Instant) -> Option<Held> {
        let mut chunk = std::mem::take(&mut self.chunk);
        let read = self.read_into(&mut h, &mut chunk, now);
        self.chunk = chunk;
        match (read, &h.stage) {
            (Got::Reset, _) | (Got::Ended, Stage::Closing { .. }) => None,
            (Got::Open, Stage::Closing { drained }) if *drained >= LINGER_BYTES => None,
            (Got::Open, Stage::Closing { .. }) => Some(h),
            (Got::Open, _) => self.progress(h, now),
            // The client has sent all it will (a half-close after its request, as
            // `HTTP/1.0` tools do): answer a whole request, drop a partial one.
            (Got::Ended, _) => {
                let _ = self.progress(h, now);
                None
            }
        }
    }

    /// Reads what `h`'s client has sent into its buffer, through `chunk` (one buffer for
    /// every read, never zeroed again).
    fn read_into(&self, h: &mut Held, chunk: &mut [u8], now: Instant) -> Got {
        loop {
            let room = match h.stage {
                Stage::Closing { drained } => LINGER_BYTES.saturating_sub(drained),
                _ => MAX_REQUEST_BYTES.saturating_sub(h.buf.len()),
            };
            if room == 0 {
                return Got::Open;
            }
            let want = room.min(chunk.len());
            match (&h.conn.stream).read(&mut chunk[..want]) {
                Ok(0) => return Got::Ended,
                Ok(n) => {
                    if let Stage::Closing { drained } = &mut h.stage {
                        *drained += n;
                        continue;
                    }
                    if !h.started {
                        h.started = true;
                        h.deadline = h.deadline.min(now + self.rules.head_timeout);
                    }
                    h.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Got::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Got::Reset,
            }
        }
    }

    /// Moves a request on with the bytes buffered.
    fn progress(&mut self, mut h: Held, now: Instant) -> Option<Held> {
        loop {
            match std::mem::replace(&mut h.stage, Stage::Closing { drained: 0 }) {
                Stage::Head { searched } => {
                    if !wire::has_blank_line(&h.buf, searched) && h.buf.len() <= MAX_HEAD_BYTES {
                        h.stage = Stage::Head {
                            searched: h.buf.len(),
                        };
                        return Some(h);
                    }
                    let head = match wire::parse_head(&h.buf) {
                        Parse::Partial => {
                            h.stage = Stage::Head {
                                searched: h.buf.len(),
                            };
                            return Some(h);
                        }
                        Parse::Done(head) => head,
                        Parse::Refused(r) => return self.refuse(h, &r, now),
                    };
                    let body = match wire::framing(&head) {
                        Ok(body) => body,
                        Err(r) => return self.refuse(h, &r, now),
                    };
                    if body != Body::None && head.expects_continue() && h.buf.len() == head.len {
                        let _ = (&h.conn.stream).write(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    h.stage = match body {
                        Body::None => Stage::Length { head, len: 0 },
                        Body::Length(len) => Stage::Length { head, len },
                        Body::Chunked => Stage::Chunked {
                            head,
                            body: Chunked::default(),
                        },
                    };
                }
                Stage::Length { head, len } => {
                    let end = head.len + len;
                    if h.buf.len() < end {
                        h.stage = Stage::Length { head, len };
                        return Some(h);
                    }
                    let rest = h.buf.split_off(end);
                    let body = h.buf.split_off(head.len);
                    return self.hand_over(h.conn, head, body, rest, now);
                }
                Stage::Chunked { head, mut body } => match body.feed(&h.buf[head.len..]) {
                    Ok(None) => {
                        h.stage = Stage::Chunked { head, body };
                        return Some(h);
                    }
                    Ok(Some(n)) => {
                        let rest = h.buf.split_off(head.len + n);
                        return self.hand_over(h.conn, head, body.body, rest, now);
                    }
                    Err(r) => return self.refuse(h, &r, now),
                },
                Stage::Closing { drained } => {
                    h.stage = Stage::Closing { drained };
                    return Some(h);
                }
            }
        }
    }

    fn hand_over(
        &mut self,
        conn: Conn,
        head: Head,
        body: Vec<u8>,
        rest: Vec<u8>,
        now: Instant,
    ) -> Option<Held> {
        log::debug!("{} {} from {}", head.method, head.target, conn.peer);
        let job = Job {
            conn,
            head,
            body,
            rest,
        };
        if self.waiting.is_empty() {
            match self.jobs.try_send(job) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return None,
                Err(TrySendError::Full(job)) => self.waiting.push_back((job, now)),
            }
        } else {
            self.waiting.push_back((job, now));
        }
        None
    }

    /// Queues the requests waiting for a place in the workers' queue, in order; one that
    /// waited a whole `--head-timeout` gets a 503.
    fn queue_waiting(&mut self, now: Instant) {
        while let Some((job, since)) = self.waiting.pop_front() {
            match self.jobs.try_send(job) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(job))
                    if now.duration_since(since) < self.rules.head_timeout =>
                {
                    self.waiting.push_front((job, since));
                    return;
                }
                Err(TrySendError::Full(job)) => {
                    let r = Refusal {
                        status: 503,
                        message: "the server is busy; retry later".into(),
                    };
                    let held = Held {
                        conn: job.conn,
                        buf: Vec::new(),
                        stage: Stage::Closing { drained: 0 },
                        deadline: now,
                        started: true,
                    };
                    if let Some(h) = self.refuse(held, &r, now) {
                        self.held.push(h);
                    }
                }
            }
        }
    }

    /// Answers `r` and keeps the connection a moment to drain (see [`LINGER`]).
    fn refuse(&mut self, mut h: Held, r: &Refusal, now: Instant) -> Option<Held> {
        self.hall.refused.fetch_add(1, Ordering::Relaxed);
        let peer = h.conn.peer;
        self.quiet.warn(now, || {
            format!("refusing a request from {peer}: {} {}", r.status, r.message)
        });
        let mut e = HttpError::new(r.status, r.message.clone());
        if r.status == 503 {
            e = e.with_header("Retry-After", "1");
        }
        let bytes = render(e.into_reply(), false, false, true);
        let _ = (&h.conn.stream).write(&bytes);
        let _ = h.conn.stream.shutdown(std::net::Shutdown::Write);
        h.buf = Vec::new();
        h.stage = Stage::Closing { drained: 0 };
        h.deadline = now + LINGER;
        Some(h)
    }

    /// Keeps `h` unless its time is up.
    fn expire(&mut self, h: Held, now: Instant) {
        if h.deadline > now {
            self.held.push(h);
            return;
        }
        match h.stage {
            Stage::Closing { .. } => {}
            _ if !h.started => log::debug!("closing idle connection from {}", h.conn.peer),
            _ => {
                let secs = self.rules.head_timeout.as_secs_f64();
                let r = Refusal {
                    status: 408,
                    message: format!("request not received within {secs} s"),
                };
                if let Some(h) = self.refuse(h, &r, now) {
                    self.held.push(h);
                }
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) || matches!(
        rustix::io::Errno::from_io_error(e),
        Some(
            rustix::io::Errno::PROTO
                | rustix::io::Errno::NOPROTOOPT
                | rustix::io::Errno::HOSTDOWN
                | rustix::io::Errno::NONET
        )
    )
}

/// A warning at most every [`WARN_EVERY`], with the count of those left unsaid.
#[derive(Default)]
struct Quiet {
    last: Option<Instant>,
    unsaid: u64,
}

impl Quiet {
    fn warn(&mut self, now: Instant, text: impl FnOnce() -> String) {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.unsaid += 1;
            return;
        }
        let unsaid = std::mem::take(&mut self.unsaid);
        if unsaid > 0 {
            log::warn!("{} ({unsaid} more like it since the last warning)", text());
        } else {
            log::warn!("{}", text());
        }
        self.last = Some(now);
    }
}
