//! `GET /api/events`: one thread per stream (`tle-stream`), writing the response itself
//! through `Request::into_writer()`, because tiny_http's `respond()` buffers about 8 KiB
//! before sending anything. Every write is one `write_all` + `flush` of whole frames.
//!
//! A stream starts by catching up from SQLite (when the client has a cursor), then follows
//! its broadcast subscription. The handover is gap- and duplicate-free: the subscription is
//! taken *before* the last catch-up read, every event committed after that read is published
//! after it and so reaches the queue, and queued frames at or below the last seq written are
//! skipped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use tiny_http::{HTTPVersion, Request};

use super::Ctx;
use super::reply::{HttpError, Reply};
use crate::broadcast::Subscription;
use crate::error::Result;
use crate::event::Cursor;
use crate::hub::spawn_named;
use crate::sse::{self, Filter, Frame, Resume};
use crate::store::{Store, events};

/// Stream threads mostly wait on a channel; SQLite's back-fill needs the most stack.
const STREAM_STACK_BYTES: usize = 256 * 1024;
/// Rows read per back-fill query.
const REPLAY_PAGE_ROWS: usize = 500;
/// Most frames gathered into one write.
const MAX_FRAMES_PER_WRITE: usize = 256;

/// A counting gate: at most `max` holders at once.
pub(crate) struct Slots {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// One place in a [`Slots`]; given back on drop.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.freed.notify_all();
    }
}

impl Slots {
    pub(crate) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        // A counter: poisoning cannot leave it half-written.
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut used = self.lock();
        if *used >= self.max {
            return None;
        }
        *used += 1;
        Some(Slot(self.clone()))
    }

    pub(crate) fn in_use(&self) -> usize {
        *self.lock()
    }

    /// Waits until every slot is free or `deadline` passes; true if all are free.
    pub(crate) fn wait_idle(&self, deadline: Instant) -> bool {
        let mut used = self.lock();
        while *used > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// The stream threads: their slots (`--max-clients`) and join handles.
pub(crate) struct Streams {
    pub(crate) slots: Arc<Slots>,
    handles: Mutex<Vec<JoinHandle<Result<()>>>>,
}

impl Streams {
    pub(crate) fn new(max: usize) -> Arc<Streams> {
        Arc::new(Streams {
            slots: Slots::new(max),
            handles: Mutex::new(Vec::new()),
        })
    }

    fn keep(&self, handle: JoinHandle<Result<()>>) {
        // A Vec of handles: poisoning cannot leave it half-written.
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    /// Open streams right now.
    pub(crate) fn active(&self) -> usize {
        self.slots.in_use()
    }

    /// Waits (until `deadline`) for every stream to end, joins them, and returns how many
    /// were still running (they are left to end on their own when their write times out).
    pub(crate) fn wait(&self, deadline: Instant) -> usize {
        let all_done = self.slots.wait_idle(deadline);
        let handles =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(PoisonError::into_inner));
        let mut running = 0;
        for h in handles {
            // A stream gives its slot back as its last act, so once every slot is free the
            // threads are returning: join them, even if one is not marked finished yet.
            if all_done || h.is_finished() {
                if let Err(e) = crate::hub::join_thread("stream", h) {
                    log::warn!("{}", e.chain());
                }
            } else {
                running += 1;
            }
        }
        running
    }
}

/// What the stream thread needs from the request.
struct Plan {
    filter: Filter,
    named: bool,
    snapshot: bool,
    resume: Resume,
    http10: bool,
    peer: String,
    cors: Vec<(&'static str, String)>,
}

/// Answers `GET /api/events`: an error reply, or `None` when a stream thread took the request.
pub(super) fn open(
    rq: Request,
    ctx: &Ctx,
    query: &[(String, String)],
    cors: Vec<(&'static str, String)>,
) -> Option<(Request, std::result::Result<Reply, HttpError>)> {
    let filter = match sse::filter_from_query(query) {
        Ok(f) => f,
        Err(msg) => return Some((rq, Err(HttpError::new(400, msg)))),
    };
    let header = super::routes::header_value(&rq, "Last-Event-ID");
    let resume = sse::resume_from(header, sse::query_value(query, "last_event_id"));
    let Some(slot) = ctx.streams.slots.try_take() else {
        log::warn!(
            "refusing a stream: {} streams open (--max-clients)",
            ctx.config.max_clients
        );
        let e = HttpError::new(503, "too many event streams open; retry later")
            .with_header("Retry-After", "5");
        return Some((rq, Err(e)));
    };
    let plan = Plan {
        filter,
        named: sse::query_flag(query, "named"),
        snapshot: sse::query_flag(query, "snapshot"),
        resume,
        http10: *rq.http_version() == HTTPVersion(1, 0),
        peer: rq
            .remote_addr()
            .map_or_else(|| "?".into(), ToString::to_string),
        cors,
    };
    let writer = rq.into_writer();
    let (store, broadcast, heartbeat) = (
        ctx.store.clone(),
        ctx.broadcast.clone(),
        ctx.config.heartbeat_interval,
    );
    let cache = ctx.cache.clone();
    let send_timeout = ctx.config.send_timeout;
    let spawned = spawn_named("stream", Some(STREAM_STACK_BYTES), move || {
        let _slot = slot;
        let peer = plan.peer.clone();
        let mut out = Out::new(writer, plan.http10, send_timeout);
        match run(&mut out, &plan, &store, &broadcast, heartbeat, &cache) {
            Ok(End::Closed) => {
                log::debug!("stream to {peer} ended: hub shutting down");
                out.finish();
            }
            Ok(End::CutOff) => log::info!("stream to {peer} ended: too slow, cut off"),
            Err(e) => log::debug!("stream to {peer} ended: {e}"),
        }
        Ok(())
    });
    // The stream holds a tiny_http pool thread for its life: have the pump replace it.
    let _ = ctx.pump.try_send(()); // full: enough probes are already on their way
    match spawned {
        Ok(handle) => ctx.streams.keep(handle),
        // The writer went into the closure and was dropped with it; the client sees a
        // closed connection and retries.
        Err(e) => log::error!("{}", e.chain()),
    }
    None
}

enum Start {
    Live,
    Snapshot(Arc<crate::state::Snapshot>),
    After(i64),
    Reset(&'static str),
}

enum End {
    Closed,
    CutOff,
}

/// The response body writer: chunked for HTTP/1.1, raw for HTTP/1.0 (then `Connection:
/// close`). Every `send` is one write and one flush.
struct Out {
    w: Box<dyn Write + Send>,
    chunked: bool,
    buf: Vec<u8>,
    send_timeout: Duration,
}

impl Out {
    fn new(w: Box<dyn Write + Send>, http10: bool, send_timeout: Duration) -> Out {
        Out {
            w,
            chunked: !http10,
            buf: Vec::with_capacity(4096),
            send_timeout,
        }
    }

    fn head(&mut self, plan: &Plan) -> std::io::Result<()> {
        let mut head = String::from(if plan.http10 {
            "HTTP/1.0 200 OK\r\n"
        } else {
            "HTTP/1.1 200 OK\r\n"
        });
        head.push_str(
            "Content-Type: text/event-stream; charset=utf-8\r\n\
             Cache-Control: no-cache, no-transform\r\n\
             X-Accel-Buffering: no\r\n",
        );
        head.push_str(if plan.http10 {
            "Connection: close\r\n"
        } else {
            "Transfer-Encoding: chunked\r\n"
        });
        for (name, value) in &plan.cors {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.w.write_all(head.as_bytes())?;
        self.send(&sse::prelude())
    }

    fn send(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.buf.clear();
        if self.chunked {
            sse::push_chunk(&mut self.buf, payload);
        } else {
            self.buf.extend_from_slice(payload);
        }
        // SO_SNDTIMEO (inherited from the listener) bounds each write() call, but a peer
        // that takes a few bytes now and then would keep write_all going for ever
        // (measured: 12 s past a 5 s timeout). So the whole write has a deadline too.
        let deadline = std::time::Instant::now() + self.send_timeout;
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            match self.w.write(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if !rest.is_empty() && std::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client took no data for the send timeout",
                ));
            }
        }
        self.w.flush()
    }

    /// Ends the body cleanly (best effort: the client may be gone).
    fn finish(&mut self) {
        if self.chunked {
            let _ = self
                .w
                .write_all(sse::LAST_CHUNK)
                .and_then(|()| self.w.flush());
        }
    }
}

fn run(
    out: &mut Out,
    plan: &Plan,
    store: &Store,
    broadcast: &Arc<crate::broadcast::Broadcast>,
    heartbeat: Duration,
    cache: &crate::state::StateCache,
) -> Result<End, Box<dyn std::error::Error>> {
    let stream = store.stream();
    let head = |store: &Store| -> Result<i64> { events::head_seq(&*store.conn()?) };
    let start = match &plan.resume {
        // `?snapshot=1` without a cursor: the state, then everything after the cursor it
        // reflects (the same handover as a resume, so nothing is missed or doubled).
        Resume::Live if plan.snapshot => match cache.get() {
            Some(snap) => Start::Snapshot(snap),
            None => Start::Live,
        },
        Resume::Live => Start::Live,
        Resume::Malformed(raw) => {
            log::debug!("stream from {}: malformed cursor {raw:?}", plan.peer);
            Start::Reset("malformed cursor")
        }
        Resume::After(c) if c.stream != stream => Start::Reset("cursor is from another database"),
        Resume::After(c) => {
            let (h, pruned) = {
                let conn = store.conn()?;
                (events::head_seq(&conn)?, events::pruned_seq(&conn)?)
            };
            if c.seq > h {
                Start::Reset("cursor is ahead of this database")
            } else if c.seq < pruned {
                Start::Reset("events after this cursor were deleted by retention")
            } else {
                Start::After(c.seq)
            }
        }
    };
    let (sub, mut last_seq) = match start {
        // Subscribe before the response head goes out: once a client has its 200, every
        // event committed afterwards reaches it.
        Start::Live => {
            let sub = broadcast.subscribe(plan.filter.clone(), plan.peer.clone())?;
            let h = head(store)?;
            out.head(plan)?;
            (sub, h)
        }
        Start::Reset(reason) => {
            let sub = broadcast.subscribe(plan.filter.clone(), plan.peer.clone())?;
            let h = head(store)?;
            out.head(plan)?;
            out.send(&sse::reset_frame(Cursor { stream, seq: h }, reason))?;
            (sub, h)
        }
        Start::Snapshot(snap) => {
            out.head(plan)?;
            out.send(&sse::snapshot_frame(snap.cursor, &snap.body))?;
            resume_after(out, plan, store, broadcast, snap.cursor.seq)?
        }
        Start::After(seq) => {
            out.head(plan)?;
            resume_after(out, plan, store, broadcast, seq)?
        }
    };
    sub.info
        .delivered
        .store(last_seq, std::sync::atomic::Ordering::Relaxed);
    follow(out, plan, &sub, broadcast, heartbeat, &mut last_seq)
}

/// Catches up from SQLite, subscribes, and catches up once more: everything committed
/// before the last read is written here, everything after it is in the subscription.
/// The first pass runs unsubscribed so a long back-fill cannot overflow the queue.
fn resume_after(
    out: &mut Out,
    plan: &Plan,
    store: &Store,
    broadcast: &Arc<crate::broadcast::Broadcast>,
    seq: i64,
) -> Result<(Subscription, i64), Box<dyn std::error::Error>> {
    let seq = catch_up(out, plan, store, seq)?;
    let sub = broadcast.subscribe(plan.filter.clone(), plan.peer.clone())?;
    let last = catch_up(out, plan, store, seq)?;
    Ok((sub, last))
}

/// Writes every stored event after `after` that matches, page by page; returns the last seq
/// covered (the head at the final read, even if the filter matched nothing there).
fn catch_up(
    out: &mut Out,
    plan: &Plan,
    store: &Store,
    mut after: i64,
) -> Result<i64, Box<dyn std::error::Error>> {
    loop {
        let conn = store.conn()?;
        let upto = events::head_seq(&conn)?;
        let page = events::replay(&conn, store.stream(), after, upto, REPLAY_PAGE_ROWS)?;
        drop(conn);
        let full = page.len() == REPLAY_PAGE_ROWS;
        let mut buf = Vec::new();
        for e in &page {
            if plan.filter.matches(&e.event_type, e.camera_id()) {
                buf.extend_from_slice(sse::encode(e, plan.named).as_bytes());
            }
        }
        if !buf.is_empty() {
            out.send(&buf)?;
        }
        after = if full {
            page.last().map_or(upto, |e| e.cursor.seq)
        } else {
            upto
        };
        if !full {
            return Ok(after);
        }
    }
}

fn follow(
    out: &mut Out,
    plan: &Plan,
    sub: &Subscription,
    broadcast: &crate::broadcast::Broadcast,
    heartbeat: Duration,
    last_seq: &mut i64,
) -> Result<End, Box<dyn std::error::Error>> {
    let mut batch: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let first = match sub.rx.recv_timeout(heartbeat) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => {
                out.send(sse::HEARTBEAT)?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Ok(if broadcast.is_closed() {
                    End::Closed
                } else {
                    End::CutOff
                });
            }
        };
        batch.clear();
        let mut take = |f: &Frame, batch: &mut Vec<u8>| {
            if f.seq > *last_seq {
                batch.extend_from_slice(f.bytes(plan.named));
                *last_seq = f.seq;
            }
        };
        take(&first, &mut batch);
        for f in sub.rx.try_iter().take(MAX_FRAMES_PER_WRITE - 1) {
            take(&f, &mut batch);
        }
        if !batch.is_empty() {
            out.send(&batch)?;
            sub.info
                .delivered
                .store(*last_seq, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
