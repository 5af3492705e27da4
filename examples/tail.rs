//! `tail -f` for a timelapse-events hub: follows `GET /api/events` and prints one line per
//! event, `<cursor> <type> <data>`. It speaks HTTP over a plain `TcpStream`, so that Ctrl-C
//! can shut the socket down and end a blocked read at once (a ureq body reader offers no
//! such handle); examples/common/sse.rs (std only) decodes the chunked body and parses the
//! events by the WHATWG rules, and examples/common/http_url.rs reads `--url`.
//!
//! It behaves like a browser's `EventSource`, which is what makes it a useful model for
//! any client: when the connection drops or the hub restarts it reconnects after the
//! server's `retry:` delay (jittered, doubled after each failed attempt, capped), sending
//! `Last-Event-ID` so the hub replays exactly what was missed. A cursor the hub cannot
//! resume (say the database was replaced) gets an in-band `reset` frame, which is printed.
//!
//! ```text
//! cargo run --release --example tail
//! cargo run --release --example tail -- --types image_captured --camera-id 2
//! cargo run --release --example tail -- --url http://pi.local:8080/api/events
//! ```
//!
//! Events and resets go to stdout; connection notices go to stderr. Ctrl-C exits 0.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/http_url.rs"]
mod http_url;
#[allow(dead_code)] // the incremental Parser, Dechunker and Head only
#[path = "common/sse.rs"]
mod sse;
#[path = "common/stop.rs"]
mod stop;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use cli::BoxError;
use stop::Stop;

/// Reconnect delay until the server sends `retry:` (what browsers use).
const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// Longest wait between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// What a query value keeps unencoded: letters, digits, `-._~` and `,`.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b',');
/// Longest SSE line accepted (the hub's events are at most ~33 KiB).
const MAX_EVENT_LINE_BYTES: usize = 1024 * 1024;

/// Follow a timelapse-events hub's event stream and print each event on one line.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// The stream to follow.
    #[arg(long, default_value = "http://127.0.0.1:8080/api/events")]
    url: String,
    /// Only these event types, comma-separated (e.g. image_captured,camera_status_changed).
    #[arg(long)]
    types: Option<String>,
    /// Only events whose data has this camera_id.
    #[arg(long)]
    camera_id: Option<i64>,
    /// Start after this cursor (replaying what came since), as a reconnecting client would.
    #[arg(long)]
    last_event_id: Option<String>,
    /// Reconnect when nothing, not even a heartbeat, arrives for this many seconds. Keep it
    /// above the hub's --heartbeat-secs (15 by default).
    #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Speak HTTP/1.0: the hub then sends a plain body and closes the connection at the end.
    #[arg(long)]
    http10: bool,
}

fn main() -> ExitCode {
    let args = Args::parse(); // exits 2 with a usage message on bad flags
    cli::exit(run(&args))
}

fn run(args: &Args) -> Result<(), BoxError> {
    let target = Target::parse(&args.url, args.types.as_deref(), args.camera_id)?;
    let stop = Arc::new(Stop::new());
    let on_signal = stop.clone();
    ctrlc::set_handler(move || on_signal.trigger())
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;

    let mut session = Session {
        last_id: args.last_event_id.clone().unwrap_or_default(),
        retry: DEFAULT_RETRY,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        http10: args.http10,
        delivered: false,
    };
    let mut rng = fastrand::Rng::new(); // seeded from the OS
    let mut failures: u32 = 0;
    loop {
        session.delivered = false;
        let outcome = follow(&target, &mut session, &stop);
        if stop.is_set() {
            break;
        }
        let (reason, at_least) = match outcome {
            Ok(()) => ("the hub ended the stream".to_owned(), Duration::ZERO),
            Err(Dropped::Refused {
                status,
                retry_after,
                message,
            }) => (format!("the hub answered {status}: {message}"), retry_after),
            Err(Dropped::Fatal(e)) => return Err(e),
            Err(Dropped::Io(e)) => (e, Duration::ZERO),
        };
        // A connection that delivered something was healthy: start the backoff over.
        failures = if session.delivered { 0 } else { failures + 1 };
        let delay = backoff(session.retry, failures, &mut rng).max(at_least);
        let resume = if session.last_id.is_empty() {
            String::new()
        } else {
            format!(", resuming after {}", session.last_id)
        };
        eprintln!(
            "tail: {reason}; reconnecting in {:.1} s{resume}",
            delay.as_secs_f64()
        );
        if stop.sleep(delay) {
            break;
        }
    }
    eprintln!("tail: stopped");
    Ok(())
}

/// The `retry:` delay, doubled per failed attempt in a row, capped, with "equal jitter"
/// (half fixed, half random) so that many clients of a restarted hub do not all come back
/// in the same millisecond.
fn backoff(retry: Duration, failures: u32, rng: &mut fastrand::Rng) -> Duration {
    let full = retry
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(MAX_BACKOFF);
    full / 2 + full.mul_f64(0.5 * rng.f64())
}

/// What survives from one connection to the next, as in `EventSource`.
struct Session {
    /// The last event ID string: sent as `Last-Event-ID` (not when empty).
    last_id: String,
    /// The reconnection time, set by the server's `retry:` field.
    retry: Duration,
    idle_timeout: Duration,
    http10: bool,
    /// Whether the current connection delivered an event.
    delivered: bool,
}

/// Why a connection ended, other than cleanly.
enum Dropped {
    /// The hub answered but not with a stream; worth retrying (503, 5xx).
    Refused {
        status: u16,
        retry_after: Duration,
        message: String,
    },
    /// Retrying cannot help (a 4xx, not an event stream).
    Fatal(BoxError),
    /// Connect, read or write failed, or the stream was malformed.
    Io(String),
}

impl From<io::Error> for Dropped {
    fn from(e: io::Error) -> Dropped {
        Dropped::Io(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                "no data, not even a heartbeat, for the idle timeout".to_owned()
            }
            _ => e.to_string(),
        })
    }
}

/// One connection: request, response head, then events until the stream ends.
fn follow(target: &Target, session: &mut Session, stop: &Stop) -> Result<(), Dropped> {
    let stream = target.connect()?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(session.idle_timeout))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    stop.watch(&stream)?;
    let mut request = format!(
        "GET {} HTTP/1.{}\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        target.path,
        if session.http10 { 0 } else { 1 },
        target.host_header()
    );
    if !session.last_id.is_empty() {
        request.push_str(&format!("Last-Event-ID: {}\r\n", session.last_id));
    }
    request.push_str("\r\n");
    (&stream).write_all(request.as_bytes())?;

    let mut reader = BufReader::new(&stream);
    let head = sse::Head::read(&mut reader)?;
    if head.status != 200 {
        let retry_after = head
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let message = error_message(&mut reader, &head);
        return Err(if head.status == 503 || head.status >= 500 {
            Dropped::Refused {
                status: head.status,
                retry_after,
                message,
            }
        } else {
            Dropped::Fatal(format!("{} answered {}: {message}", target.url, head.status).into())
        });
    }
    let content_type = head.header("content-type").unwrap_or("");
    if !content_type.starts_with("text/event-stream") {
        return Err(Dropped::Fatal(
            format!(
                "{} is not an event stream (Content-Type {content_type:?})",
                target.url
            )
            .into(),
        ));
    }
    let resume = if session.last_id.is_empty() {
        String::new()
    } else {
        format!(" (resuming after {})", session.last_id)
    };
    eprintln!("tail: connected to {}{resume}", target.url);

    // HTTP/1.1 answers are chunked; an HTTP/1.0 (identity) body runs until the close.
    let mut chunks = head.chunked().then(sse::Dechunker::default);
    let mut parser = sse::Parser::default();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return match chunks {
                Some(_) => Err(Dropped::Io("connection closed mid-stream".into())),
                None => Ok(()), // an identity body ends with the connection
            };
        }
        let body = match &mut chunks {
            Some(chunks) => chunks.feed(&buf[..n]).map_err(Dropped::Io)?,
            None => buf[..n].to_vec(),
        };
        for item in parser.feed(&body) {
            match item {
                sse::Item::Comment => {}
                sse::Item::Retry(ms) => session.retry = Duration::from_millis(ms),
                sse::Item::Message(m) => {
                    session.last_id.clone_from(&m.id);
                    session.delivered = true;
                    if print(&m).is_err() {
                        // stdout is gone (e.g. piped into `head`): nobody is reading.
                        stop.trigger();
                        return Ok(());
                    }
                }
            }
        }
        if chunks.as_ref().is_some_and(sse::Dechunker::ended) {
            return Ok(()); // the last chunk: the hub ended the stream cleanly
        }
        if parser.partial_bytes() > MAX_EVENT_LINE_BYTES {
            return Err(Dropped::Io("an SSE line over 1 MiB".into()));
        }
    }
}

/// Prints one dispatched message as one line.
fn print(m: &sse::Message) -> io::Result<()> {
    let cursor = if m.id.is_empty() { "-" } else { &m.id };
    let parsed: Option<Value> = serde_json::from_str(&m.data).ok();
    let line = if m.event == "reset" {
        // data: {"reason": ..., "cursor": ...}; the frame's id is the new cursor too.
        let reason = parsed
            .as_ref()
            .and_then(|v| v["reason"].as_str())
            .unwrap_or("no reason given");
        format!(
            "--- reset by the hub: {reason}; following live from {cursor} \
             (events before it were not replayed)\n"
        )
    } else {
        match parsed {
            // The hub's envelope: {"id","type","data","priority","source","timestamp"}.
            Some(Value::Object(envelope)) if envelope.contains_key("type") => {
                let kind = envelope["type"].as_str().unwrap_or(&m.event);
                let data = envelope.get("data").unwrap_or(&Value::Null);
                format!("{cursor} {kind} {data}\n")
            }
            _ => format!("{cursor} {} {}\n", m.event, m.data.replace('\n', "\\n")),
        }
    };
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

/// The body of a refused request: the hub's `{"error": ...}`, or the raw text.
fn error_message(reader: &mut impl BufRead, head: &sse::Head) -> String {
    let mut body = Vec::new();
    let limit = head
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(4096)
        .min(4096);
    // Best effort: the status alone says enough if the body cannot be read.
    let _ = reader.take(limit).read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned())
}

/// Where to connect and what to ask for.
struct Target {
    url: String,
    host: String,
    port: u16,
    /// Path and query, filters included.
    path: String,
}

impl Target {
    fn parse(url: &str, types: Option<&str>, camera_id: Option<i64>) -> Result<Target, BoxError> {
        let uri = http_url::parse(url)?;
        // An IPv6 host comes in brackets; connect() wants the bare address.
        let host = uri.host().unwrap_or_default();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let mut path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut add = |key: &str, value: &str| {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(key);
            path.push('=');
            path.extend(utf8_percent_encode(value, QUERY_VALUE));
        };
        if let Some(types) = types {
            add("types", types);
        }
        if let Some(id) = camera_id {
            add("camera_id", &id.to_string());
        }
        Ok(Target {
            url: url.to_owned(),
            host,
            port,
            path,
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_doubled_and_capped() {
        let mut rng = fastrand::Rng::with_seed(42);
        let retry = Duration::from_secs(2);
        for (failures, full) in [(0, 2), (1, 2), (2, 4), (3, 8), (9, 30)] {
            let d = backoff(retry, failures, &mut rng);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn targets_carry_filters() {
        let t = Target::parse("http://pi:9000", Some("a,b c"), Some(3)).ok();
        let t = t.map(|t| (t.host, t.port, t.path));
        assert_eq!(
            t,
            Some((
                "pi".into(),
                9000,
                "/api/events?types=a,b%20c&camera_id=3".into()
            ))
        );
        assert!(Target::parse("https://pi", None, None).is_err());
    }
}
