//! `GET /api/events`: the handler that starts a stream, and [`Following`], the source the
//! stream writer (`tle-streams`, in `server`) follows once it has caught up.
//!
//! A stream starts by catching up from SQLite (when the client has a cursor), then follows
//! its broadcast subscription. The handover is gap- and duplicate-free: the subscription is
//! taken *before* the last catch-up read, every event committed after that read is published
//! after it and so reaches the queue, and queued frames at or below the last seq written are
//! skipped.
//!
//! A live stream (no cursor) needs no catch-up: the worker that took the request writes its
//! head and hands it to the writer at once. A resume or a snapshot catches up on a
//! short-lived thread of its own (`tle-stream`: SQLite reads are blocking and a back-fill
//! can be long), which hands it over and ends. Either way an open stream costs no thread.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::peers::{Full, PeerSlot};
use super::reply::HttpError;
use super::request::Request;
use super::server::{Client, EVERY_ANSWER, Ending, Fill, Source, Takeover};
use crate::bell::Ready;
use crate::broadcast::{Broadcast, Subscription};
use crate::error::{Result, io};
use crate::event::Cursor;
use crate::sse::{self, Filter, Resume};
use crate::state::StateCache;
use crate::store::{Store, events};
use crate::thread::{Group, Reserved};

/// A catch-up thread's stack: SQLite's back-fill needs the most.
const STREAM_STACK_BYTES: usize = 256 * 1024;
/// Rows read per back-fill query.
const REPLAY_PAGE_ROWS: usize = 500;
/// Most frames gathered into one write.
const MAX_FRAMES_PER_WRITE: usize = 256;

/// What a stream needs from the request.
struct Plan {
    filter: Filter,
    named: bool,
    snapshot: bool,
    resume: Resume,
    http10: bool,
    peer: String,
    cors: Vec<(&'static str, String)>,
}

/// A stream on its way to the writer: its plan, its places and the handles it reads from.
struct Opening {
    plan: Plan,
    places: Places,
    store: Store,
    broadcast: Arc<Broadcast>,
    cache: Arc<StateCache>,
    send_timeout: Duration,
}

/// The places a stream holds for its life (`--max-clients`, `--max-streams-per-addr`).
struct Places {
    _total: Reserved,
    _peer: Option<PeerSlot>,
}

/// Answers `GET /api/events`: a refusal, or the takeover that starts the stream once the
/// server hands over the connection.
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
    let opening = Opening {
        plan: Plan {
            filter,
            named: rq.query_flag("named"),
            snapshot: rq.query_flag("snapshot"),
            resume,
            http10: rq.http10,
            peer: rq.peer_text(),
            cors,
        },
        places: Places {
            _total: place,
            _peer: peer_place,
        },
        store: ctx.store.clone(),
        broadcast: ctx.broadcast.clone(),
        cache: ctx.cache.clone(),
        send_timeout: ctx.config.send_timeout,
    };
    let group = ctx.streams.clone();
    Ok(Box::new(move |client| opening.begin(client, &group)))
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

impl Start {
    /// Whether the stream reads SQLite before it follows (then on a thread of its own).
    fn catches_up(&self) -> bool {
        matches!(self, Start::Snapshot(_) | Start::After(_))
    }
}

/// The response head and any catch-up, written straight to the connection (blocking,
/// within the send timeout): chunked for HTTP/1.1, raw for HTTP/1.0 (then `Connection:
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
        self.buf.clear();
        if self.chunked {
            sse::push_chunk(&mut self.buf, payload);
        } else {
            self.buf.extend_from_slice(payload);
        }
        write_within(&mut *self.w, &self.buf, self.send_timeout).map_err(io("write to the client"))
    }
}

/// Writes all of `buf` and flushes. SO_SNDTIMEO (inherited from the listener) bounds each
/// write() call, but a peer that takes a few bytes now and then would keep write_all going
/// for ever (measured: 12 s past a 5 s timeout). So the whole write has a deadline too.
fn write_within(w: &mut dyn Write, buf: &[u8], send_timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + send_timeout;
    let mut rest = buf;
    while !rest.is_empty() {
        match w.write(rest) {
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
    w.flush()
}

impl Opening {
    /// Starts the stream on `client`: at once on this worker when it needs no catch-up,
    /// else on a `tle-stream` thread kept by `group`.
    fn begin(self, client: Box<dyn Client>, group: &Group) {
        let peer = self.plan.peer.clone();
        let start = match self.start() {
            Ok(start) => start,
            Err(e) => {
                log::debug!("stream to {peer} not started: {}", e.chain());
                return;
            }
        };
        if !start.catches_up() {
            if let Err(e) = self.follow(client, start) {
                log::debug!("stream to {peer} ended: {}", e.chain());
            }
            return;
        }
        let spawned = group.spawn("stream", STREAM_STACK_BYTES, move || {
            if let Err(e) = self.follow(client, start) {
                log::debug!("stream to {peer} ended: {}", e.chain());
            }
            Ok(())
        });
        // The connection went into the closure and was dropped with it; the client sees a
        // closed connection and retries.
        if let Err(e) = spawned {
            log::error!("{}", e.chain());
        }
    }

    /// Where the stream starts, from its cursor (or `?snapshot=1`).
    fn start(&self) -> Result<Start> {
        let plan = &self.plan;
        let log_id = self.store.log_id();
        Ok(match &plan.resume {
            // `?snapshot=1` without a cursor: the state, then everything after the cursor
            // it reflects (the same handover as a resume, so nothing is missed or doubled).
            Resume::Live if plan.snapshot => match self.cache.get() {
                Some(snap) => Start::Snapshot(snap),
                None => Start::Live,
            },
            Resume::Live => Start::Live,
            Resume::Malformed(raw) => {
                log::debug!("stream from {}: malformed cursor {raw:?}", plan.peer);
                Start::Reset("malformed cursor")
            }
            Resume::After(c) if c.log_id != log_id => {
                Start::Reset("cursor is from another database")
            }
            Resume::After(c) => {
                let (h, pruned) = {
                    let conn = self.store.conn()?;
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
        })
    }

    /// Writes the head (and catches up), then hands the connection to the writer.
    fn follow(self, client: Box<dyn Client>, start: Start) -> Result<()> {
        let Opening {
            plan,
            places,
            store,
            broadcast,
            send_timeout,
            ..
        } = self;
        let mut out = Out::new(client, plan.http10, send_timeout);
        let head = |store: &Store| -> Result<i64> { events::head_seq(&*store.conn()?) };
        let (sub, last_seq) = match start {
            // Subscribe before the response head goes out: once a client has its 200,
            // every event committed afterwards reaches it.
            Start::Live => {
                let sub = broadcast.subscribe(plan.filter.clone(), plan.peer.clone())?;
                let h = head(&store)?;
                out.head(&plan)?;
                (sub, h)
            }
            Start::Reset(reason) => {
                let sub = broadcast.subscribe(plan.filter.clone(), plan.peer.clone())?;
                let h = head(&store)?;
                out.head(&plan)?;
                let cursor = Cursor {
                    log_id: store.log_id(),
                    seq: h,
                };
                out.send(&sse::reset_frame(cursor, reason))?;
                (sub, h)
            }
            Start::Snapshot(snap) => {
                out.head(&plan)?;
                out.send(&sse::snapshot_frame(snap.cursor, &snap.body))?;
                resume_after(&mut out, &plan, &store, &broadcast, snap.cursor.seq)?
            }
            Start::After(seq) => {
                out.head(&plan)?;
                resume_after(&mut out, &plan, &store, &broadcast, seq)?
            }
        };
        sub.info
            .delivered
            .store(last_seq, std::sync::atomic::Ordering::Relaxed);
        let chunked = out.chunked;
        out.w.follow(
            Box::new(Following {
                sub,
                broadcast,
                named: plan.named,
                last_seq,
                peer: plan.peer,
                _places: places,
            }),
            chunked,
        )
    }
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

/// A stream that has caught up: what the writer follows. It holds the stream's places and
/// its subscription, so both go when the writer drops it.
struct Following {
    sub: Subscription,
    broadcast: Arc<Broadcast>,
    named: bool,
    /// The last seq handed to the writer: queued frames at or below it are skipped.
    last_seq: i64,
    peer: String,
    _places: Places,
}

impl Source for Following {
    fn attach(&mut self, ready: Ready) {
        self.sub.rx.attach(ready);
    }

    fn fill(&mut self, out: &mut Vec<u8>) -> Fill {
        let (named, last_seq) = (self.named, &mut self.last_seq);
        let drained = self.sub.rx.drain(MAX_FRAMES_PER_WRITE, |f| {
            if f.seq > *last_seq {
                out.extend_from_slice(f.bytes(named));
                *last_seq = f.seq;
            }
        });
        if !out.is_empty() {
            self.sub
                .info
                .delivered
                .store(self.last_seq, std::sync::atomic::Ordering::Relaxed);
        }
        if drained.more || !out.is_empty() {
            return Fill::Data;
        }
        if !drained.closed {
            return Fill::Empty;
        }
        Fill::End(if self.broadcast.is_closed() {
            Ending::Closed
        } else {
            Ending::CutOff
        })
    }

    fn heartbeat(&self) -> &'static [u8] {
        sse::HEARTBEAT
    }

    fn peer(&self) -> &str {
        &self.peer
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
