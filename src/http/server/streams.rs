//! The stream writer (`tle-streams`): one thread and one epoll set that write every
//! following event stream, so an open stream costs no thread of its own (issue #17).
//!
//! A stream's handler writes its head (and any catch-up) itself, then hands the connection
//! over with a [`Source`] ([`Client::follow`]). From then on the socket is non-blocking and
//! lives here: the source's broadcast queue *marks* it when frames arrive and the
//! publisher rings this thread once per batch (see `broadcast`), so a batch to 200 streams
//! costs one wake-up. Each marked stream gets what its source gives, one chunk and one
//! `write` per drain.
//!
//! Nothing here ever blocks on one socket, so a client that stops reading delays nobody:
//! - a write that cannot finish keeps the rest and waits for `EPOLLOUT`, and while bytes
//!   are pending the source is not drained; its queue fills and the publisher cuts it off
//!   at `broadcast::QUEUE_FRAMES`;
//! - a stream whose pending bytes have not all gone within `--send-timeout` is cut off.
//!
//! The client leaving (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`, or a read of 0) ends its
//! stream at once. Bytes a client sends are read and dropped: they are not leaving, and
//! left unread they would turn the final close into a reset. Heartbeats are due
//! `--heartbeat-interval` after a stream's last write; those due within the same slack (at
//! most 1 s) go out in one wake-up.
//!
//! Each connection is known by a token that is never reused, not by its descriptor's
//! number, and leaves the epoll set before it closes: a descriptor number reused by a later
//! connection can never be taken for an old one. The writer knows nothing of events or
//! broadcasts: a [`Source`] is bytes and an end.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};

use super::{Client, Conn};
use crate::bell::{Reader, Ready};
use crate::error::{Error, Result, io};
use crate::sse::{LAST_CHUNK, push_chunk};
use crate::thread::{Fatal, join_thread, spawn_critical};

/// The token of the writer's own bell (connections' start above it).
const BELL: u64 = 0;
/// Readiness events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;
/// Heartbeats due within this much of each other go out in one wake-up (less for a
/// heartbeat interval under 4 s: a quarter of it).
const HEARTBEAT_SLACK: Duration = Duration::from_secs(1);
/// A buffer that grew past this for a large write (a burst) is let go, not kept.
const KEPT_BUF_BYTES: usize = 16 * 1024;

/// What a following stream's bytes come from (the `http::stream` module's follower).
pub(crate) trait Source: Send {
    /// Where the writer takes this stream's frames from: the source attaches it to its
    /// queue, which marks it whenever it has something new.
    fn attach(&mut self, ready: Ready);
    /// Appends what is ready to send (whole SSE frames, not yet HTTP-framed) to `out`.
    fn fill(&mut self, out: &mut Vec<u8>) -> Fill;
    /// One heartbeat's bytes.
    fn heartbeat(&self) -> &'static [u8];
    /// The client, for the log.
    fn peer(&self) -> &str;
}

/// What [`Source::fill`] gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Bytes were appended (maybe none, if all were skipped): ask again once they are sent.
    Data,
    /// Nothing now: the source's queue marks the stream when there is.
    Empty,
    /// The stream is over.
    End(Ending),
}

/// Why a following stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The hub is shutting down: the body's last chunk is written.
    Closed,
    /// Its queue overflowed (the publisher cut it off); the client resumes from its cursor.
    CutOff,
    /// The client closed or reset the connection.
    Left,
    /// Its pending bytes did not all go within the send timeout.
    Stuck,
    /// A write failed.
    Failed,
}

/// The running writer, owned by the hub; [`StreamWriter::stop`] ends its thread (dropping
/// it does the same).
pub(crate) struct StreamWriter {
    writer: Arc<Writer>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// What the server holds of the writer: where it hands following streams.
pub(crate) struct WriterHandle(pub(crate) Arc<Writer>);

/// The writer's epoll set and inbox, shared by its thread, every publisher that rings it and
/// every handler that hands it a stream.
pub(crate) struct Writer {
    epoll: OwnedFd,
    /// An eventfd in the set under [`BELL`].
    bell: OwnedFd,
    /// Rung since the thread last emptied the inbox (a ring then costs no system call).
    rung: AtomicBool,
    stopping: AtomicBool,
    inbox: Mutex<Inbox>,
    heartbeat: Duration,
    send_timeout: Duration,
}

struct Inbox {
    next: u64,
    marks: Vec<u64>,
    adopted: Vec<Link>,
    /// False once the thread has ended: nothing more is adopted.
    running: bool,
}

/// One following stream, on the writer's thread.
struct Link {
    token: u64,
    conn: Conn,
    source: Box<dyn Source>,
    chunked: bool,
    /// Bytes framed and not yet all written; `sent` of them are.
    pending: Vec<u8>,
    sent: usize,
    last_write: Instant,
    /// When a write first could not finish (cleared once everything pending is sent).
    stuck_since: Option<Instant>,
    /// `EPOLLOUT` is in its interest set (while bytes are pending).
    out_armed: bool,
}

impl StreamWriter {
    /// Makes the epoll set and starts `tle-streams`; `fatal` hears if it dies.
    ///
    /// # Errors
    /// The epoll set or its bell cannot be made, or the thread cannot start.
    pub(crate) fn start(
        heartbeat: Duration,
        send_timeout: Duration,
        fatal: Fatal,
    ) -> Result<StreamWriter> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)
            .map_err(|e| io("make the stream writer's epoll set")(e.into()))?;
        let bell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| io("make the stream writer's bell")(e.into()))?;
        epoll::add(&epoll, &bell, EventData::new_u64(BELL), EventFlags::IN)
            .map_err(|e| io("add the stream writer's bell")(e.into()))?;
        let writer = Arc::new(Writer {
            epoll,
            bell,
            rung: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            inbox: Mutex::new(Inbox {
                next: BELL + 1,
                marks: Vec::new(),
                adopted: Vec::new(),
                running: true,
            }),
            heartbeat,
            send_timeout,
        });
        let shared = writer.clone();
        let thread = spawn_critical("streams", Some(fatal), move || {
            let ran = shared.run();
            // Streams handed over as it stopped close here: each holds a `Ready` that
            // holds this writer, so left in the inbox they would never be freed.
            let late = {
                let mut inbox = shared.lock();
                inbox.running = false;
                std::mem::take(&mut inbox.adopted)
            };
            drop(late);
            ran
        })?;
        Ok(StreamWriter {
            writer,
            thread: Some(thread),
        })
    }

    /// A handle for the server, which hands it following streams.
    pub(crate) fn handle(&self) -> WriterHandle {
        WriterHandle(self.writer.clone())
    }

    /// Ends the thread; streams still open are closed without a last chunk (their clients
    /// resume from their cursors).
    ///
    /// # Errors
    /// The thread failed or panicked.
    pub(crate) fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.writer.stopping.store(true, Ordering::SeqCst);
        self.writer.wake();
        join_thread("streams", thread)
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            log::error!("{}", e.chain());
        }
    }
}

impl Reader for Writer {
    fn mark(&self, token: u64) {
        self.lock().marks.push(token);
    }

    fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            self.wake();
        }
    }
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // Each change is one push or take: a poisoned inbox is still whole.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        // A full eventfd counter would still wake the thread; the write cannot block.
        let _ = rustix::io::write(&self.bell, &1u64.to_ne_bytes());
    }

    /// Takes over `conn` (its head already written) to write what `source` gives, each
    /// write one HTTP/1.1 chunk if `chunked`.
    ///
    /// # Errors
    /// [`Error::Closed`] once the writer has stopped, or the socket cannot be made
    /// non-blocking; the connection closes and its client retries.
    fn adopt(&self, conn: Conn, chunked: bool, source: Box<dyn Source>) -> Result<()> {
        conn.stream()
            .set_nonblocking(true)
            .map_err(io("make a stream's socket non-blocking"))?;
        let mut link = Link {
            token: 0,
            conn,
            source,
            chunked,
            pending: Vec::new(),
            sent: 0,
            last_write: Instant::now(),
            stuck_since: None,
            out_armed: false,
        };
        let mut inbox = self.lock();
        if !inbox.running || self.stopping.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        link.token = inbox.next;
        inbox.next += 1;
        inbox.adopted.push(link);
        drop(inbox);
        self.ring();
        Ok(())
    }

    fn run(self: &Arc<Self>) -> Result<()> {
        let mut links: HashMap<u64, Link> = HashMap::new();
        let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
        let mut scratch = Vec::new();
        let mut next_scan: Option<Instant> = None;
        loop {
            events.clear();
            let timeout = next_scan
                .map(|t| Timespec::try_from(t.saturating_duration_since(Instant::now())))
                .transpose()
                .unwrap_or(None);
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io("wait in the stream writer")(e.into())),
            }
            let now = Instant::now();
            for e in &events {
                let (token, flags) = (e.data.u64(), { e.flags });
                if token == BELL {
                    let _ = rustix::io::read(&self.bell, &mut [0u8; 8]);
                    continue;
                }
                let Some(link) = links.get_mut(&token) else {
                    continue;
                };
                let ended = if flags
                    .intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR)
                    || (flags.contains(EventFlags::IN) && link.conn.left())
                {
                    Some(Ending::Left)
                } else if flags.contains(EventFlags::OUT) {
                    self.pump(link, &mut scratch, now, &mut next_scan)
                } else {
                    None
                };
                if let Some(ending) = ended {
                    self.end(&mut links, token, ending);
                }
            }
            // A ring from here on wakes the next wait: nothing marked is missed.
            self.rung.store(false, Ordering::SeqCst);
            let (marks, adopted) = {
                let mut inbox = self.lock();
                (
                    std::mem::take(&mut inbox.marks),
                    std::mem::take(&mut inbox.adopted),
                )
            };
            for mut link in adopted {
                let token = link.token;
                let flags = EventFlags::IN | EventFlags::RDHUP;
                if let Err(e) = epoll::add(
                    &self.epoll,
                    link.conn.stream(),
                    EventData::new_u64(token),
                    flags,
                ) {
                    log::warn!(
                        "cannot take the stream to {} into the writer ({e}); it closes",
                        link.source.peer()
                    );
                    continue;
                }
                link.source.attach(Ready {
                    reader: self.clone(),
                    token,
                });
                let due = link.last_write + self.heartbeat;
                next_scan = Some(next_scan.map_or(due, |t| t.min(due)));
                links.insert(token, link);
            }
            for token in marks {
                let Some(link) = links.get_mut(&token) else {
                    continue;
                };
                if link.pending.is_empty()
                    && let Some(ending) = self.pump(link, &mut scratch, now, &mut next_scan)
                {
                    self.end(&mut links, token, ending);
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                let open = links.len();
                for token in links.keys().copied().collect::<Vec<_>>() {
                    self.end(&mut links, token, Ending::Closed);
                }
                if open > 0 {
                    log::debug!("stream writer stopped with {open} streams open");
                }
                return Ok(());
            }
            if links.is_empty() {
                next_scan = None;
            } else if next_scan.is_some_and(|t| now >= t) {
                next_scan = self.scan(&mut links, &mut scratch, Instant::now());
            }
        }
    }

    /// Writes what is pending, then what the source gives, until the socket is full or the
    /// source has nothing more. Returns the ending, if the stream is over. A write that
    /// cannot finish brings `next_scan` forward to its send deadline.
    fn pump(
        &self,
        link: &mut Link,
        scratch: &mut Vec<u8>,
        now: Instant,
        next_scan: &mut Option<Instant>,
    ) -> Option<Ending> {
        loop {
            while link.sent < link.pending.len() {
                match link.conn.stream().write(&link.pending[link.sent..]) {
                    Ok(0) => return Some(Ending::Failed),
                    Ok(n) => link.sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let due = *link.stuck_since.get_or_insert(now) + self.send_timeout;
                        *next_scan = Some(next_scan.map_or(due, |t| t.min(due)));
                        if !link.out_armed {
                            self.interest(link, true);
                        }
                        return None;
                    }
                    Err(e) => {
                        log::debug!("stream to {}: write failed: {e}", link.source.peer());
                        return Some(Ending::Failed);
                    }
                }
            }
            if !link.pending.is_empty() {
                link.pending.clear();
                link.sent = 0;
                release_if_large(&mut link.pending);
                link.last_write = now;
                link.stuck_since = None;
                if link.out_armed {
                    self.interest(link, false);
                }
            }
            scratch.clear();
            let fill = link.source.fill(scratch);
            frame(link.chunked, scratch, &mut link.pending);
            release_if_large(scratch);
            match fill {
                Fill::Data => {}
                Fill::Empty => return None,
                Fill::End(ending) => {
                    if ending == Ending::Closed && link.chunked {
                        link.pending.extend_from_slice(LAST_CHUNK);
                    }
                    // One try, best effort: the stream is over either way.
                    let _ = link.conn.stream().write(&link.pending[link.sent..]);
                    return Some(ending);
                }
            }
        }
    }

    /// Heartbeats the streams due within the slack and cuts off those stuck past the send
    /// timeout; returns when to look again.
    fn scan(
        &self,
        links: &mut HashMap<u64, Link>,
        scratch: &mut Vec<u8>,
        now: Instant,
    ) -> Option<Instant> {
        let slack = HEARTBEAT_SLACK.min(self.heartbeat / 4);
        let mut next: Option<Instant> = None;
        let mut ended = Vec::new();
        for (&token, link) in links.iter_mut() {
            if let Some(s) = link.stuck_since {
                let due = s + self.send_timeout;
                if now >= due {
                    ended.push((token, Ending::Stuck));
                    continue;
                }
                next = Some(next.map_or(due, |t| t.min(due)));
                continue;
            }
            if link.last_write + self.heartbeat <= now + slack {
                frame(link.chunked, link.source.heartbeat(), &mut link.pending);
                let mut stuck = None;
                if let Some(ending) = self.pump(link, scratch, now, &mut stuck) {
                    ended.push((token, ending));
                    continue;
                }
                // Sent: `last_write` is now. Not sent: the send timeout runs.
                link.last_write = now;
            }
            let due = match link.stuck_since {
                Some(s) => s + self.send_timeout,
                None => link.last_write + self.heartbeat,
            };
            next = Some(next.map_or(due, |t| t.min(due)));
        }
        for (token, ending) in ended {
            self.end(links, token, ending);
        }
        next
    }

    /// Adds or removes `EPOLLOUT` from a stream's interest set.
    fn interest(&self, link: &mut Link, out: bool) {
        let mut flags = EventFlags::IN | EventFlags::RDHUP;
        if out {
            flags |= EventFlags::OUT;
        }
        let token = link.token;
        // Fails only if the socket is not in the set, which cannot be while it is linked.
        if epoll::modify(
            &self.epoll,
            link.conn.stream(),
            EventData::new_u64(token),
            flags,
        )
        .is_ok()
        {
            link.out_armed = out;
        }
    }

    /// Takes a stream out of the set, then closes it.
    fn end(&self, links: &mut HashMap<u64, Link>, token: u64, ending: Ending) {
        let Some(link) = links.remove(&token) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, link.conn.stream());
        let peer = link.source.peer();
        match ending {
            Ending::Closed => log::debug!("stream to {peer} ended: hub shutting down"),
            Ending::CutOff => log::info!("stream to {peer} ended: too slow, cut off"),
            Ending::Left => log::debug!("stream to {peer} ended: the client left"),
            Ending::Stuck => log::info!(
                "stream to {peer} ended: it took no data for the send timeout ({:?}), cut off",
                self.send_timeout
            ),
            Ending::Failed => log::debug!("stream to {peer} ended: a write failed"),
        }
    }
}

/// Appends `payload` to `out` as the body carries it: one chunk, or raw for HTTP/1.0.
fn frame(chunked: bool, payload: &[u8], out: &mut Vec<u8>) {
    if chunked {
        push_chunk(out, payload);
    } else {
        out.extend_from_slice(payload);
    }
}

/// Lets a buffer's memory go once it has grown past [`KEPT_BUF_BYTES`].
fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > KEPT_BUF_BYTES {
        *buf = Vec::new();
    }
}

/// A connection taken over by a handler: written to directly until it is handed to the
/// writer.
pub(crate) struct Taken {
    conn: Conn,
    writer: Arc<Writer>,
}

impl Taken {
    pub(crate) fn new(conn: Conn, writer: Arc<Writer>) -> Taken {
        Taken { conn, writer }
    }
}

impl Write for Taken {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.conn.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.conn.flush()
    }
}

impl Client for Taken {
    fn follow(self: Box<Self>, source: Box<dyn Source>, chunked: bool) -> Result<()> {
        let Taken { conn, writer } = *self;
        writer.adopt(conn, chunked, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, Sender};
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A source that gives whatever the test puts in `data`, and says when it is dropped.
    struct Tap {
        data: Arc<Mutex<Vec<u8>>>,
        ready: Sender<Ready>,
        dropped: Sender<&'static str>,
        name: &'static str,
    }

    impl Source for Tap {
        fn attach(&mut self, ready: Ready) {
            let _ = self.ready.send(ready);
        }
        fn fill(&mut self, out: &mut Vec<u8>) -> Fill {
            let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
            if data.is_empty() {
                return Fill::Empty;
            }
            let n = data.len().min(64 * 1024);
            out.extend(data.drain(..n));
            Fill::Data
        }
        fn heartbeat(&self) -> &'static [u8] {
            b":\n"
        }
        fn peer(&self) -> &str {
            self.name
        }
    }

    impl Drop for Tap {
        fn drop(&mut self) {
            let _ = self.dropped.send(self.name);
        }
    }

    struct Stream {
        client: TcpStream,
        data: Arc<Mutex<Vec<u8>>>,
        ready: Ready,
    }

    impl Stream {
        fn send(&self, bytes: &[u8]) {
            self.data
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            self.ready.reader.mark(self.ready.token);
            self.ready.reader.ring();
        }

        /// Reads until `want` has arrived (HTTP/1.0 framing: raw bytes), within 10 s.
        fn expect(&mut self, want: &[u8]) {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            self.client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("a read timeout");
            while got.len() < want.len() {
                let n = self.client.read(&mut buf).expect("bytes within 10 s");
                assert!(n > 0, "closed after {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, want);
        }
    }

    fn adopt(
        writer: &Arc<Writer>,
        listener: &TcpListener,
        name: &'static str,
        dropped: &Sender<&'static str>,
    ) -> Stream {
        let client = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let conn = Conn::for_test(server).expect("a connection");
        let data = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let tap = Tap {
            data: data.clone(),
            ready: tx,
            dropped: dropped.clone(),
            name,
        };
        writer.adopt(conn, false, Box::new(tap)).expect("adopted");
        let ready = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("attached by the writer");
        Stream {
            client,
            data,
            ready,
        }
    }

    fn start(heartbeat: Duration, send_timeout: Duration) -> (StreamWriter, Receiver<String>) {
        let (fatal, failures) = Fatal::channel();
        let w = StreamWriter::start(heartbeat, send_timeout, fatal).expect("a writer");
        (w, failures)
    }

    #[test]
    fn a_client_that_stops_reading_is_cut_off_and_never_delays_another() {
        let (w, failures) = start(Duration::from_secs(60), Duration::from_secs(1));
        let writer = w.handle().0;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (dropped_tx, dropped) = crossbeam_channel::unbounded();
        let stuck = adopt(&writer, &listener, "stuck", &dropped_tx);
        let mut reader = adopt(&writer, &listener, "reader", &dropped_tx);
        // Far more than the socket buffers hold: the stuck one's writes cannot finish.
        stuck.send(&vec![b'x'; 32 * 1024 * 1024]);
        let t = Instant::now();
        for i in 0..20u8 {
            reader.send(&[b'a' + i]);
            reader.expect(&[b'a' + i]);
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the other stream waited: {:?}",
            t.elapsed()
        );
        assert_eq!(
            dropped.recv_timeout(Duration::from_secs(10)),
            Ok("stuck"),
            "cut off after the send timeout"
        );
        assert!(dropped.try_recv().is_err(), "the reader lives on");
        reader.send(b"still here");
        reader.expect(b"still here");
        w.stop().expect("stops cleanly");
        assert_eq!(dropped.recv_timeout(Duration::from_secs(5)), Ok("reader"));
        assert!(failures.try_recv().is_err());
        drop(stuck);
    }

    #[test]
    fn heartbeats_keep_coming_and_a_client_leaving_ends_its_stream_at_once() {
        let (w, _failures) = start(Duration::from_millis(200), Duration::from_secs(5));
        let writer = w.handle().0;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (dropped_tx, dropped) = crossbeam_channel::unbounded();
        let mut idle = adopt(&writer, &listener, "idle", &dropped_tx);
        let talker = adopt(&writer, &listener, "talker", &dropped_tx);
        for _ in 0..3 {
            idle.expect(b":\n");
        }
        // Bytes from a client are not leaving.
        (&talker.client)
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .expect("send");
        assert!(dropped.recv_timeout(Duration::from_millis(300)).is_err());
        let t = Instant::now();
        drop(talker);
        assert_eq!(dropped.recv_timeout(Duration::from_secs(5)), Ok("talker"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(idle);
        assert_eq!(dropped.recv_timeout(Duration::from_secs(5)), Ok("idle"));
        w.stop().expect("stops cleanly");
    }

    #[test]
    fn a_client_that_never_stops_sending_delays_no_other_stream() {
        let (w, _failures) = start(Duration::from_secs(60), Duration::from_secs(5));
        let writer = w.handle().0;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (dropped_tx, dropped) = crossbeam_channel::unbounded();
        let flooder = adopt(&writer, &listener, "flooder", &dropped_tx);
        let mut reader = adopt(&writer, &listener, "reader", &dropped_tx);
        let flood = flooder.client.try_clone().expect("a second handle");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flood = stop.clone();
        let flood = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            while !stop_flood.load(Ordering::SeqCst) {
                if (&flood).write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        for i in 0..20u8 {
            reader.send(&[b'a' + i]);
            reader.expect(&[b'a' + i]);
        }
        let took = t.elapsed();
        stop.store(true, Ordering::SeqCst);
        let _ = flood.join();
        assert!(
            took < Duration::from_secs(5),
            "the other stream waited {took:?}"
        );
        assert!(dropped.try_recv().is_err(), "sending is not leaving");
        w.stop().expect("stops cleanly");
        drop(flooder);
    }
}
