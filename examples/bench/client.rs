//! One benchmark SSE client: a raw `TcpStream`, and the response-head reader, chunked-transfer
//! decoder and SSE parser of examples/common/sse.rs, run on a thread of its own. It records,
//! for every event, which producer sequence number `n` it carried and how long after its emit
//! timestamp `t` (unix nanoseconds, taken by the producer just before it stored the event) the
//! bytes arrived.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sse;

/// How often a blocked read wakes to look at the stop flag and the deadline.
const READ_SLICE: Duration = Duration::from_millis(100);
/// Largest response head accepted before giving up (a hub bug, not a client limit).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What a client is asked to do.
pub struct Spec {
    pub addr: SocketAddr,
    /// Request target, e.g. `/api/events?last_event_id=1a2b3c4d-0`.
    pub target: String,
    /// Producer sequence numbers run from 0 to `expect - 1`.
    pub expect: u64,
    /// Set by the benchmark when the client should hang up.
    pub stop: Arc<AtomicBool>,
    /// Hang guard: the client gives up at this instant whatever happens.
    pub deadline: Instant,
    /// Counters the benchmark watches while the client runs.
    pub progress: Arc<Progress>,
}

/// Live counters shared with the benchmark thread.
#[derive(Default)]
pub struct Progress {
    /// Clients that got `200` and the stream prelude.
    pub served: AtomicU64,
    /// Clients that received every expected event.
    pub complete: AtomicU64,
    /// Clients whose thread has ended.
    pub ended: AtomicU64,
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub served: bool,
    /// Connect to prelude received.
    pub served_after: Duration,
    /// Latency in nanoseconds of every first delivery of an expected event.
    pub latencies_ns: Vec<i64>,
    pub distinct: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Events whose `n` is outside `0..expect` or whose data did not parse.
    pub unexpected: u64,
    /// Comment lines (heartbeats and the prelude's comment).
    pub comments: u64,
    /// Longest silence between two reads after the prelude.
    pub max_gap: Duration,
    /// The server ended the stream (last chunk or EOF) before we hung up.
    pub ended_by_server: bool,
    pub error: Option<String>,
}

/// The producer's `{"n": …, "t": …}`, found wherever it sits in an event's data: the hub
/// wraps what was stored in its envelope (`{"id": …, "data": {"n": …}}`), a peer such as
/// nchan passes on the POSTed body as it is (`{"type": …, "data": {"n": …}}`).
fn payload(v: &serde_json::Value) -> Option<(u64, i64)> {
    let object = v.as_object()?;
    if let (Some(n), Some(t)) = (object.get("n"), object.get("t")) {
        return Some((n.as_u64()?, t.as_i64()?));
    }
    object.values().find_map(payload)
}

/// Runs one client to the end; never panics on what the server sends.
pub fn run(spec: &Spec) -> Seen {
    let mut seen = Seen::default();
    if let Err(e) = stream(spec, &mut seen) {
        seen.error = Some(e);
    }
    spec.progress.ended.fetch_add(1, Ordering::SeqCst);
    seen
}

fn stream(spec: &Spec, seen: &mut Seen) -> Result<(), String> {
    let started = Instant::now();
    let mut sock = TcpStream::connect_timeout(&spec.addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_nodelay(true).ok();
    sock.set_read_timeout(Some(READ_SLICE))
        .map_err(|e| format!("set read timeout: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        spec.target, spec.addr
    );
    sock.write_all(request.as_bytes())
        .map_err(|e| format!("send request: {e}"))?;

    let mut parser = Parser::new(spec.expect);
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_read: Option<Instant> = None;
    loop {
        if spec.stop.load(Ordering::Relaxed) || Instant::now() >= spec.deadline {
            break;
        }
        let n = match sock.read(&mut buf) {
            Ok(0) => {
                seen.ended_by_server = true;
                break;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(format!("read: {e}")),
        };
        let now = Instant::now();
        let now_ns = unix_nanos();
        if let Some(prev) = last_read {
            seen.max_gap = seen.max_gap.max(now - prev);
        }
        parser.feed(&buf[..n], now_ns, seen)?;
        if parser.prelude_seen && !seen.served {
            seen.served = true;
            seen.served_after = now - started;
            spec.progress.served.fetch_add(1, Ordering::SeqCst);
        }
        if seen.served {
            last_read = Some(now);
        }
        if parser.ended {
            seen.ended_by_server = true;
            break;
        }
        if spec.expect > 0 && seen.distinct == spec.expect && !parser.complete_reported {
            parser.complete_reported = true;
            spec.progress.complete.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// Unix time in nanoseconds (the clock producers stamp events with).
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Incremental response parser: head, then chunked (or identity) body, then SSE lines.
struct Parser {
    raw: Vec<u8>,
    head_done: bool,
    /// The chunked-body decoder, once the head said `Transfer-Encoding: chunked`.
    chunks: Option<sse::Dechunker>,
    sse: sse::Parser,
    prelude_seen: bool,
    ended: bool,
    complete_reported: bool,
    seen_n: Vec<bool>,
    max_n: Option<u64>,
}

impl Parser {
    fn new(expect: u64) -> Parser {
        Parser {
            raw: Vec::with_capacity(16 * 1024),
            head_done: false,
            chunks: None,
            sse: sse::Parser::default(),
            prelude_seen: false,
            ended: false,
            complete_reported: false,
            seen_n: vec![false; usize::try_from(expect).unwrap_or(0)],
            max_n: None,
        }
    }

    fn feed(&mut self, bytes: &[u8], now_ns: i64, seen: &mut Seen) -> Result<(), String> {
        self.raw.extend_from_slice(bytes);
        if !self.head_done {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                if self.raw.len() > MAX_HEAD_BYTES {
                    return Err("response head too long".into());
                }
                return Ok(());
            };
            let head = sse::Head::read(&mut &self.raw[..end + 4]).map_err(|e| e.to_string())?;
            self.raw.drain(..end + 4);
            if head.status != 200 {
                return Err(format!("status {}", head.status));
            }
            self.chunks = head.chunked().then(sse::Dechunker::default);
            self.head_done = true;
        }
        let raw = std::mem::take(&mut self.raw);
        let body = match &mut self.chunks {
            Some(chunks) => {
                let body = chunks.feed(&raw)?;
                self.ended = chunks.ended();
                body
            }
            None => raw,
        };
        for item in self.sse.feed(&body) {
            match item {
                sse::Item::Message(m) => self.event(&m.data, now_ns, seen),
                sse::Item::Comment => {
                    seen.comments += 1;
                    self.prelude_seen = true;
                }
                // `retry:` opens the prelude.
                sse::Item::Retry(_) => self.prelude_seen = true,
            }
        }
        Ok(())
    }

    fn event(&mut self, data: &str, now_ns: i64, seen: &mut Seen) {
        let Some((n, t)) = serde_json::from_str::<serde_json::Value>(data)
            .ok()
            .as_ref()
            .and_then(payload)
        else {
            seen.unexpected += 1;
            return;
        };
        let Some(slot) = usize::try_from(n).ok().and_then(|i| self.seen_n.get_mut(i)) else {
            seen.unexpected += 1;
            return;
        };
        if *slot {
            seen.duplicated += 1;
            return;
        }
        *slot = true;
        seen.distinct += 1;
        if self.max_n.is_some_and(|m| n < m) {
            seen.out_of_order += 1;
        }
        self.max_n = Some(self.max_n.map_or(n, |m| m.max(n)));
        seen.latencies_ns.push(now_ns - t);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_anywhere_parse_to_the_same_events() {
        let frame =
            |n: u64| format!("id: 0000abcd-{n}\ndata: {{\"data\":{{\"n\":{n},\"t\":0}}}}\n\n");
        let body = format!("retry: 2000\n: connected\n\n{}{}:\n", frame(0), frame(1));
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.as_bytes().chunks(7) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        for split in [1, 3, 64, wire.len()] {
            let mut p = Parser::new(2);
            let mut seen = Seen::default();
            for part in wire.chunks(split) {
                p.feed(part, 5, &mut seen).expect("valid stream");
            }
            assert!(p.prelude_seen && p.ended, "split {split}");
            assert_eq!((seen.distinct, seen.duplicated, seen.comments), (2, 0, 2));
            assert_eq!(seen.latencies_ns, vec![5, 5]);
        }
    }

    #[test]
    fn a_peer_s_identity_body_with_the_posted_json_parses() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n\
            id: 1:0\ndata: {\"type\":\"bench\",\"data\":{\"n\":0,\"t\":2}}\n\n\
            event: ping\n\nid: 1:1\ndata: {\"type\":\"bench\",\"data\":{\"n\":1,\"t\":3}}\n\n";
        let mut p = Parser::new(2);
        let mut seen = Seen::default();
        p.feed(wire, 5, &mut seen).expect("valid stream");
        assert!(p.prelude_seen);
        assert_eq!((seen.distinct, seen.unexpected, seen.comments), (2, 0, 1));
        assert_eq!(seen.latencies_ns, vec![3, 2]);
    }
}
