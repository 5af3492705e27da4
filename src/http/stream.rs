//! `GET /api/events`: one thread per stream (`tle-stream`), writing the whole response
//! itself to the connection the server hands over (an `Answer::Takeover`). Every write is
//! one `write_all` + `flush` of whole frames.
//!
//! A stream starts by catching up from SQLite (when the client has a cursor), then follows
//! its broadcast subscription. The handover is gap- and duplicate-free: the subscription is
//! taken *before* the last catch-up read, every event committed after that read is published
//! after it and so reaches the queue, and queued frames at or below the last seq written are
//! skipped.
//!
//! A following stream sleeps until a frame arrives, its next heartbeat is due, or its
//! client leaves: the server's departure watcher (`tle-departures`) hangs up its queue
//! then, so its place is free at once. Without the watcher it asks every [`LEFT_CHECK`].

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::peers::Full;
use super::reply::HttpError;
use super::request::Request;
use super::server::{Client, EVERY_ANSWER, Takeover};
use crate::broadcast::{Broadcast, RecvError, Subscription};
use crate::error::{Result, io};
use crate::event::Cursor;
use crate::sse::{self, Filter, Frame, Resume};
use crate::state::StateCache;
use crate::store::{Store, events};

/// Stream threads mostly wait on a channel; SQLite's back-fill needs the most stack.
const STREAM_STACK_BYTES: usize = 256 * 1024;
/// Rows read per back-fill query.
const REPLAY_PAGE_ROWS: usize = 500;
/// Without a departure watcher, a stream with nothing to send checks this often whether
/// its client has left.
const LEFT_CHECK: Duration = Duration::from_millis(500);
/// Most frames gathered into one write.
const MAX_FRAMES_PER_WRITE: usize = 256;
/// A stream's buffers start empty and grow to what it writes at once (a heartbeat, a few
/// frames); after a larger write (a back-fill page, a burst) they are let go rather than
/// kept for the stream's life. Two 4 KiB buffers allocated up front cost an idle stream
/// about 8 of its 27 KiB of RSS (500 streams: 22.0 MiB, 18.0 MiB without them).
const KEPT_BUF_BYTES: usize = 16 * 1024;

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

/// Answers `GET /api/events`: a refusal, or the takeover that starts the stream's thread
/// (`tle-stream`) once the server hands over the connection.
pub(super) fn open(
    rq: &Request<'_>,
    ctx: &Ctx,
    cors: Vec<(&'static str, String)>,
) -> std::result::Result<Takeover, HttpError> {
    let filter = filter_from_query(&rq.query, &ctx.config.this_host())
        .map_err(|msg| HttpError::new(400, msg))?;
    let resume = sse::resume_from(rq.header("Last-Event-ID"), rq.query_value("last_event_id"));
    let peer_place = match rq.peer.map(|p| ctx.stream_peers.take(p.ip())) {
        None => None,
        Some(Ok(place)) => Some(place),
        Some(Err(Full::Peer | Full::All)) => {
            let (per_peer, _) = ctx.stream_peers.limits();
            log::warn!(
                "refusing a stream from {}: {per_peer} open from that address (--max-streams-per-addr)",
                rq.peer_text()
            );
            return Err(HttpError::new(
                429,
                format!(
                    "too many event streams from your address (at most {per_peer}); retry later"
                ),
            )
            .with_header("Retry-After", "5"));
        }
    };
    let Some(place) = ctx.streams.try_reserve() else {
        log::warn!(
            "refusing a stream: {} streams open (--max-clients)",
            ctx.config.max_clients
        );
        return Err(
            HttpError::new(503, "too many event streams open; retry later")
                .with_header("Retry-After", "5"),
        );
    };
    let plan = Plan {
        filter,
        named: rq.query_flag("named"),
        snapshot: rq.query_flag("snapshot"),
        resume,
        http10: rq.http10,
        peer: rq.peer_text(),
        cors,
    };
    let (store, broadcast, cache) = (ctx.store.clone(), ctx.broadcast.clone(), ctx.cache.clone());
    let (heartbeat, send_timeout) = (ctx.config.heartbeat_interval, ctx.config.send_timeout);
    Ok(Box::new(move |writer| {
        let spawned = place.spawn("stream", STREAM_STACK_BYTES, move || {
            let _peer_place = peer_place;
            let peer = plan.peer.clone();
            let mut out = Out::new(writer, plan.http10, send_timeout);
            match run(&mut out, &plan, &store, &broadcast, heartbeat, &cache) {
                Ok(End::Closed) => {
                    log::debug!("stream to {peer} ended: hub shutting down");
                    out.finish();
                }
                Ok(End::CutOff) => log::info!("stream to {peer} ended: too slow, cut off"),
                Ok(End::Left) => log::debug!("stream to {peer} ended: the client left"),
                Err(e) => log::debug!("stream to {peer} ended: {}", e.chain()),
            }
            Ok(())
        });
        // The writer went into the closure and was dropped with it; the client sees a
        // closed connection and retries.
        if let Err(e) = spawned {
            log::error!("{}", e.chain());
        }
    }))
}

/// Builds a filter from query pairs: `?types=a,b` (or `type`), `?camera_id=N` and
/// `?host=NAME` (`local` is this host's own name).
///
/// # Errors
/// A message for a 400: an event type that cannot exist, or a camera id that is no number.
pub(super) fn filter_from_query(
    pairs: &[(String, String)],
    local: &str,
) -> std::result::Result<Filter, String> {
    let mut filter = Filter::default();
    for (k, v) in pairs {
        match k.as_str() {
            "types" | "type" => {
                let mut types: Vec<String> = filter.types.take().unwrap_or_default();
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    crate::event::validate_type(t).map_err(|e| format!("types: {e}"))?;
                    types.push(t.to_owned());
                }
                if types.len() > 64 {
                    return Err("types: at most 64 types".into());
                }
                filter.types = Some(types);
            }
            "camera_id" => {
                let id = v.trim().parse::<i64>().map_err(|_| {
                    format!("camera_id: {} is not an integer", crate::error::quote(v))
                })?;
                filter.camera_id = Some(id);
            }
            "host" => {
                let h = v.trim();
                if h.is_empty() || h.len() > 64 {
                    return Err("host: 1 to 64 characters".into());
                }
                filter.host = Some((h != local).then(|| h.to_owned()));
            }
            _ => {}
        }
    }
    Ok(filter)
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
    /// The client closed its end; its place is free at once, not at the next write.
    Left,
}

/// The response body writer: chunked for HTTP/1.1, raw for HTTP/1.0 (then `Connection:
/// close`). Every `send` is one write and one flush.
struct Out {
    w: Box<dyn Client>,
    chunked: bool,
    buf: Vec<u8>,
    send_timeout: Duration,
}

impl Out {
    fn new(w: Box<dyn Client>, http10: bool, send_timeout: Duration) -> Out {
        Out {
            w,
            chunked: !http10,
            buf: Vec::new(),
            send_timeout,
        }
    }

    fn head(&mut self, plan: &Plan) -> Result<()> {
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
        for (name, value) in EVERY_ANSWER {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(if plan.http10 {
            "Connection: close\r\n"
        } else {
            "Transfer-Encoding: chunked\r\n"
        });
        for (name, value) in &plan.cors {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.w
            .write_all(head.as_bytes())
            .map_err(io("write the stream head"))?;
        self.send(&sse::prelude())
    }

    fn send(&mut self, payload: &[u8]) -> Result<()> {
        let sent = self.write_frames(payload);
        release_if_large(&mut self.buf);
        sent.map_err(io("write to the client"))
    }

    fn write_frames(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.buf.clear();
        if self.chunked {
            sse::push_chunk(&mut self.buf, payload);
        } else {
            self.buf.extend_from_slice(payload);
        }
        // SO_SNDTIMEO (inherited from the listener) bounds each write() call, but a peer
        // that takes a few bytes now and then would keep write_all going for ever
        // (measured: 12 s past a 5 s timeout). So the whole write has a deadline too.
        let deadline = Instant::now() + self.send_timeout;
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            match self.w.write(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if !rest.is_empty() && Instant::now() >= deadline {
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
    broadcast: &Arc<Broadcast>,
    heartbeat: Duration,
    cache: &StateCache,
) -> Result<End> {
    let log_id = store.log_id();
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
        Resume::After(c) if c.log_id != log_id => Start::Reset("cursor is from another database"),
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
            out.send(&sse::reset_frame(Cursor { log_id, seq: h }, reason))?;
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
    broadcast: &Arc<Broadcast>,
    seq: i64,
) -> Result<(Subscription, i64)> {
    let seq = catch_up(out, plan, store, seq)?;
    let sub = broadcast.subscribe(plan.filter.clone(), plan.peer.clone())?;
    let last = catch_up(out, plan, store, seq)?;
    Ok((sub, last))
}

/// Writes every stored event after `after` that matches, page by page; returns the last seq
/// covered (the head at the final read, even if the filter matched nothing there).
fn catch_up(out: &mut Out, plan: &Plan, store: &Store, mut after: i64) -> Result<i64> {
    loop {
        let conn = store.conn()?;
        let upto = events::head_seq(&conn)?;
        let page = events::replay(&conn, store.log_id(), after, upto, REPLAY_PAGE_ROWS)?;
        drop(conn);
        let full = page.len() == REPLAY_PAGE_ROWS;
        let mut buf = Vec::new();
        for e in &page {
            if plan.filter.matches_event(e) {
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
    broadcast: &Broadcast,
    heartbeat: Duration,
    last_seq: &mut i64,
) -> Result<End> {
    let mut batch: Vec<u8> = Vec::new();
    let mut last_write = Instant::now();
    let queue = sub.rx.clone();
    let check = if out.w.on_leave(Box::new(move || queue.hang_up())) {
        heartbeat
    } else {
        LEFT_CHECK
    };
    loop {
        let quiet = heartbeat.saturating_sub(last_write.elapsed());
        let first = match sub.rx.recv_timeout(quiet.min(check)) {
            Ok(f) => f,
            Err(RecvError::Gone) => return Ok(End::Left),
            Err(RecvError::Timeout) => {
                // Also drops what the client sent meanwhile (pipelined bytes left unread
                // would turn the final close into a reset).
                if out.w.left() {
                    return Ok(End::Left);
                }
                if last_write.elapsed() >= heartbeat {
                    out.send(sse::HEARTBEAT)?;
                    last_write = Instant::now();
                }
                continue;
            }
            Err(RecvError::Closed) => {
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
            last_write = Instant::now();
            sub.info
                .delivered
                .store(*last_seq, std::sync::atomic::Ordering::Relaxed);
        }
        release_if_large(&mut batch);
    }
}

/// Lets a buffer's memory go once it has grown past [`KEPT_BUF_BYTES`].
fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > KEPT_BUF_BYTES {
        *buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::split_target;

    fn filter_from_query_here(pairs: &[(String, String)]) -> std::result::Result<Filter, String> {
        filter_from_query(pairs, "here")
    }

    #[test]
    fn filters_come_from_the_decoded_query() {
        let (_, q) = split_target(
            "/api/events?types=image_captured%2Ccamera_status_changed&camera_id=%203&x",
        );
        let f = filter_from_query_here(&q).unwrap_or_default();
        assert_eq!(
            f.types.as_deref(),
            Some(
                &[
                    "image_captured".to_owned(),
                    "camera_status_changed".to_owned()
                ][..]
            )
        );
        assert_eq!(f.camera_id, Some(3));
    }

    #[test]
    fn filters_reject_impossible_values() {
        let q = |s: &str| split_target(s).1;
        assert!(filter_from_query_here(&q("/?camera_id=abc")).is_err());
        assert!(filter_from_query_here(&q("/?types=a%0Ab")).is_err());
        let f = filter_from_query_here(&q("/?types=a")).unwrap_or_default();
        assert!(f.matches("a", None, None));
        assert!(!f.matches("b", None, None));
        let c = Filter {
            types: None,
            camera_id: Some(2),
            host: None,
        };
        assert!(c.matches("x", Some(2), None));
        assert!(!c.matches("x", Some(3), None));
        assert!(!c.matches("x", None, None));
        assert!(filter_from_query_here(&q("/?host=")).is_err());
    }

    #[test]
    fn a_host_filter_names_this_host_or_another() {
        let q = |s: &str| split_target(s).1;
        let ours = filter_from_query_here(&q("/?host=here")).unwrap_or_default();
        assert_eq!(ours.host, Some(None));
        assert!(ours.matches("x", Some(1), None));
        assert!(!ours.matches("x", Some(1), Some("garden")));
        let garden = filter_from_query_here(&q("/?host=garden&camera_id=1")).unwrap_or_default();
        assert!(garden.matches("x", Some(1), Some("garden")));
        assert!(!garden.matches("x", Some(1), None));
        assert!(!garden.matches("x", Some(1), Some("window")));
    }
}
