//! Routing and the small handlers: a [`Request`] in, an [`Answer`] out, no socket in sight
//! (so every route is tested in memory below). Runs on the HTTP workers, or on a body
//! thread for a slow upload; an event stream is handed to a thread of its own.

use serde::Deserialize;
use serde_json::{Value, json};

use super::ctx::Ctx;
use super::dashboard;
use super::reply::{HttpError, Reply};
use super::request::Request;
use super::server::Answer;
use super::stream;
use crate::config::Config;
use crate::error::{QUOTE_CHARS, clip, quote};
use crate::event::{NewEvent, Priority};
use crate::store::{self, events};

const PATHS: [&str; 5] = [
    "/",
    "/api/events",
    "/health",
    "/favicon.ico",
    "/dashboard-worker.js",
];

type Handled = Result<Reply, HttpError>;

/// Routes one request.
pub(super) fn handle(rq: &mut Request<'_>, ctx: &Ctx) -> Answer {
    let cors = cors_headers(rq, ctx);
    log::debug!("{} {} from {}", rq.method, rq.target, rq.peer_text());
    let path = rq.path.clone();
    let result = match (rq.method.as_str(), path.as_str()) {
        ("GET", "/api/events") => match stream::open(rq, ctx, cors.clone()) {
            Ok(takeover) => return Answer::Takeover(takeover),
            Err(e) => Err(e),
        },
        ("POST", "/api/events") => post_event(rq, ctx),
        ("OPTIONS", p) if PATHS.contains(&p) => Ok(preflight(rq, ctx)),
        ("GET" | "HEAD", "/health") => health(ctx),
        ("GET" | "HEAD", "/api/state") => Ok(state(rq, ctx)),
        ("GET" | "HEAD", "/api/events/stats") => stats(ctx),
        ("GET" | "HEAD", "/metrics") => metrics(ctx),
        ("GET" | "HEAD", "/") => Ok(dashboard::page(rq)),
        ("GET" | "HEAD", "/dashboard-worker.js") => Ok(dashboard::worker(rq)),
        ("GET" | "HEAD", "/favicon.ico") => Ok(Reply::empty(204)),
        (method, p) if PATHS.contains(&p) => Err(HttpError::new(
            405,
            format!("method {} not allowed on {p}", quote(method)),
        )
        .with_header("Allow", allowed(p))),
        _ => Err(HttpError::new(
            404,
            format!("no such path: {}", quote(&path)),
        )),
    };
    let mut reply = result.unwrap_or_else(|e| {
        if e.status >= 500 {
            log::warn!("{} {} -> {}: {}", rq.method, rq.target, e.status, e.message);
        } else {
            log::debug!("{} {} -> {}: {}", rq.method, rq.target, e.status, e.message);
        }
        e.into_reply()
    });
    reply.headers.extend(cors);
    Answer::Reply(reply)
}

fn allowed(path: &str) -> &'static str {
    match path {
        "/api/events" => "GET, POST, OPTIONS",
        _ => "GET, HEAD, OPTIONS",
    }
}

/// `POST /api/events` body. `event_type`/`event_data` are accepted as the table's names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    #[serde(rename = "type", alias = "event_type")]
    event_type: String,
    #[serde(alias = "event_data")]
    data: Value,
    priority: Option<String>,
    source: Option<String>,
}

fn post_event(rq: &mut Request<'_>, ctx: &Ctx) -> Handled {
    authorize(rq, &ctx.config)?;
    let content_type = rq.header("Content-Type").unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(HttpError::new(415, "Content-Type must be application/json"));
    }
    let body = rq.read_body()?;
    let parsed: PostBody = serde_json::from_slice(&body)
        // serde_json's message may quote the input (an unknown field's name, whole).
        .map_err(|e| {
            let e = clip(e.to_string(), 2 * QUOTE_CHARS);
            HttpError::new(400, format!("invalid JSON body: {e}"))
        })?;
    let mut event = NewEvent::new(parsed.event_type, parsed.data);
    if let Some(p) = parsed.priority {
        event.priority = p.parse::<Priority>()?;
    }
    event.source = parsed.source.unwrap_or_else(|| "http".to_owned());
    let event_type = event.event_type.clone();
    let id = ctx.emitter.emit(event)?;
    log::debug!("stored event {id} ({event_type}) from HTTP");
    Ok(Reply::json(201, &json!({"id": id.0, "type": event_type})))
}

fn authorize(rq: &Request<'_>, config: &Config) -> Result<(), HttpError> {
    match &config.token {
        Some(token) => {
            let given = rq
                .header("Authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(HttpError::new(401, "missing or wrong bearer token")
                    .with_header("WWW-Authenticate", "Bearer"))
            }
        }
        None if !config.is_loopback() => Err(HttpError::new(
            403,
            "posting events is off: the hub listens beyond loopback without a token; \
             start it with --token <secret> (or TIMELAPSE_EVENTS_TOKEN) and send \
             Authorization: Bearer <secret>",
        )),
        None => Ok(()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cors_headers(rq: &Request<'_>, ctx: &Ctx) -> Vec<(&'static str, String)> {
    match rq.header("Origin") {
        Some(origin) if ctx.config.cors_origins.iter().any(|o| o == origin) => vec![
            ("Access-Control-Allow-Origin", origin.to_owned()),
            ("Vary", "Origin".to_owned()),
        ],
        _ => Vec::new(),
    }
}

fn preflight(rq: &Request<'_>, ctx: &Ctx) -> Reply {
    let mut r = Reply::empty(204);
    if !cors_headers(rq, ctx).is_empty() {
        r = r
            .with_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            .with_header(
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, Last-Event-ID",
            )
            .with_header("Access-Control-Max-Age", "600");
    }
    r
}

fn health(ctx: &Ctx) -> Handled {
    // A deleted or replaced file first: the pool's connections still read the old one.
    let counts = ctx
        .store
        .verify_identity()
        .and_then(|()| ctx.store.conn())
        .and_then(|c| events::counts(&c));
    let poller = ctx.status.failing();
    let writes = ctx.status.writes_failing();
    let healthy = counts.is_ok() && poller.is_none() && writes.is_none();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "database": counts.as_ref().err().map_or_else(
            || "ok".to_owned(),
            |e| e.identity_reason().map_or_else(|| e.to_string(), str::to_owned),
        ),
        "poller": poller.as_deref().unwrap_or("ok"),
        // The last step that stored emits, if it failed: e.g. "... (disk full)".
        "writes": writes.as_deref().unwrap_or("ok"),
        "dispatched": counts.as_ref().map(|c| c.dispatched).ok(),
        "pending": counts.as_ref().map(|c| c.pending).ok(),
        "streams": ctx.streams.active(),
    });
    Ok(Reply::json(if healthy { 200 } else { 503 }, &body))
}

/// `GET /api/state`: the cached encoded state; `304` when the client's ETag is current.
fn state(rq: &Request<'_>, ctx: &Ctx) -> Reply {
    let Some(snap) = ctx.cache.get() else {
        return HttpError::new(503, "state not loaded yet")
            .with_header("Retry-After", "1")
            .into_reply();
    };
    let fresh = rq
        .header("If-None-Match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == snap.etag));
    let reply = if fresh {
        Reply::empty(304)
    } else {
        Reply::bytes(200, "application/json", snap.body.as_bytes().to_vec())
    };
    reply
        .with_header("ETag", snap.etag.clone())
        .with_header("Cache-Control", "no-cache")
}

/// `GET /api/events/stats`: computed on every request from indexes and kept counters.
fn stats(ctx: &Ctx) -> Handled {
    let conn = ctx.store.conn()?;
    let mut body = store::maintenance::stats(&conn, ctx.store.path())?;
    drop(conn);
    let head = ctx.broadcast.published_seq();
    let subscribers: Vec<Value> = ctx
        .broadcast
        .subscribers()
        .iter()
        .map(|s| {
            let delivered = s.delivered.load(std::sync::atomic::Ordering::Relaxed);
            json!({
                "peer": s.peer,
                "filter": s.filter.describe(),
                "delivered_seq": delivered,
                "lag": (head - delivered).max(0),
            })
        })
        .collect();
    body.insert("subscribers".into(), Value::from(subscribers));
    body.insert("streams".into(), ctx.streams.active().into());
    body.insert("cut_off_slow".into(), ctx.broadcast.cut_off_total().into());
    let not_folded = ctx
        .metrics
        .not_folded_totals()
        .map(|(r, n)| (r.to_owned(), n.into()));
    body.insert(
        "not_folded".into(),
        Value::Object(not_folded.into_iter().collect()),
    );
    body.insert(
        "rejected_rows".into(),
        ctx.status
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed)
            .into(),
    );
    Ok(Reply::json(200, &Value::Object(body)))
}

/// `GET /metrics`: Prometheus text format.
fn metrics(ctx: &Ctx) -> Handled {
    use std::sync::atomic::Ordering::Relaxed;
    let conn = ctx.store.conn()?;
    let used = store::maintenance::used_bytes(&conn)?;
    let counts = events::counts(&conn)?;
    drop(conn);
    let file_bytes = std::fs::metadata(ctx.store.path()).map_or(0, |m| m.len());
    let text = ctx.metrics.render(
        &[
            (
                "tle_subscribers_cut_off_total",
                "Streams cut off for being too slow.",
                ctx.broadcast.cut_off_total(),
            ),
            (
                "tle_poller_errors_total",
                "Poller rounds that failed (retried with backoff).",
                ctx.status.errors.load(Relaxed),
            ),
            (
                "tle_rows_rejected_total",
                "Rows the poller could not read as events and skipped.",
                ctx.status.rejected.load(Relaxed),
            ),
        ],
        &[
            (
                "tle_subscribers",
                "Open event streams.",
                ctx.streams.active() as f64,
            ),
            (
                "tle_events_pending",
                "Stored events not yet dispatched.",
                counts.pending as f64,
            ),
            (
                "tle_events_retained",
                "Dispatched events still stored.",
                counts.dispatched as f64,
            ),
            (
                "tle_db_file_bytes",
                "Size of the database file.",
                file_bytes as f64,
            ),
            (
                "tle_db_used_bytes",
                "Bytes of the database in use (pages minus free pages).",
                used as f64,
            ),
        ],
    );
    Ok(Reply::bytes(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        text.into_bytes(),
    ))
}

/// Every route answered in memory: a real database in a temp dir, no socket.
#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::emitter::Emitter;
    use crate::state::State;
    use crate::store::Store;

    struct Fixture {
        ctx: Ctx,
        _dir: tempfile::TempDir,
    }

    fn fixture(tweak: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            db_path: dir.path().join("events.db"),
            ..Config::default()
        };
        tweak(&mut config);
        let store = Store::open(&config.db_path, config.synchronous, config.busy_timeout)
            .expect("open the store");
        let emitter = Emitter::open(&config.db_path).expect("an emitter of its own");
        let ctx = Ctx {
            streams: crate::http::streams(&config),
            stream_peers: crate::http::stream_peers(&config),
            config,
            store,
            emitter,
            broadcast: Arc::default(),
            status: Arc::default(),
            cache: Arc::default(),
            metrics: Arc::default(),
        };
        ctx.cache.publish(&State::default(), ctx.store.log_id(), 1);
        Fixture { ctx, _dir: dir }
    }

    fn reply(ctx: &Ctx, rq: Request<'_>) -> Reply {
        let mut rq = rq;
        match handle(&mut rq, ctx) {
            Answer::Reply(r) => r,
            Answer::Takeover(_) => panic!("{} {} took the connection", rq.method, rq.target),
        }
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json_of(r: &Reply) -> Value {
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
    }

    #[test]
    fn each_route_answers_with_its_status_type_and_headers() {
        let f = fixture(|_| {});
        let (html, js) = ("text/html; charset=utf-8", "text/javascript; charset=utf-8");
        let (json, text) = ("application/json", "text/plain; charset=utf-8");
        let prom = "text/plain; version=0.0.4; charset=utf-8";
        for (method, target, status, content_type, must_have) in [
            ("GET", "/", 200, html, "ETag"),
            ("HEAD", "/", 200, html, "ETag"),
            ("GET", "/dashboard-worker.js", 200, js, "ETag"),
            ("GET", "/favicon.ico", 204, text, ""),
            ("GET", "/health", 200, json, ""),
            ("HEAD", "/health", 200, json, ""),
            ("GET", "/api/state", 200, json, "ETag"),
            ("GET", "/api/events/stats", 200, json, ""),
            ("GET", "/metrics", 200, prom, ""),
            ("OPTIONS", "/api/events", 204, text, ""),
            ("PUT", "/health", 405, json, "Allow"),
            ("DELETE", "/api/events", 405, json, "Allow"),
            ("HEAD", "/api/events", 405, json, "Allow"),
            ("GET", "/nope", 404, json, ""),
            ("POST", "/api/state", 404, json, ""),
        ] {
            let r = reply(&f.ctx, Request::new(method, target));
            let what = format!("{method} {target}");
            assert_eq!(r.status, status, "{what}");
            assert_eq!(r.content_type, content_type, "{what}");
            if !must_have.is_empty() {
                assert!(header(&r, must_have).is_some(), "{what} has no {must_have}");
            }
            if status >= 400 {
                assert!(json_of(&r)["error"].is_string(), "{what}: JSON error body");
            }
        }
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let f = fixture(|_| {});
        let r = reply(&f.ctx, Request::new("PUT", "/health"));
        assert_eq!(json_of(&r)["error"], "method `PUT` not allowed on /health");
        assert_eq!(header(&r, "Allow"), Some("GET, HEAD, OPTIONS"));
        let r = reply(&f.ctx, Request::new("DELETE", "/api/events"));
        assert_eq!(header(&r, "Allow"), Some("GET, POST, OPTIONS"));
        let r = reply(&f.ctx, Request::new("GET", "/a%20b+c"));
        assert_eq!(json_of(&r)["error"], "no such path: `/a b+c`");
        let long = format!("/{}", "x".repeat(1000));
        let r = reply(&f.ctx, Request::new("GET", &long));
        let text = json_of(&r)["error"].as_str().unwrap_or_default().to_owned();
        let want = format!("no such path: `/{}…` (1001 bytes)", "x".repeat(63));
        assert_eq!(text, want, "quoted at most 64 chars");
    }

    #[test]
    fn health_stats_and_state_report_the_hub() {
        let f = fixture(|_| {});
        let r = reply(&f.ctx, Request::new("GET", "/health"));
        let v = json_of(&r);
        assert_eq!(v["status"], "ok");
        assert_eq!(
            (v["dispatched"].as_i64(), v["pending"].as_i64()),
            (Some(0), Some(0))
        );
        assert_eq!(v["streams"], 0);
        f.ctx.status.set_error(Some("poller: disk on fire".into()));
        let r = reply(&f.ctx, Request::new("GET", "/health"));
        assert_eq!(r.status, 503);
        assert_eq!(json_of(&r)["poller"], "poller: disk on fire");
        let stats = json_of(&reply(&f.ctx, Request::new("GET", "/api/events/stats")));
        assert_eq!(stats["subscribers"], json!([]));
        assert_eq!(stats["rejected_rows"], 0);
        let state = reply(&f.ctx, Request::new("GET", "/api/state"));
        let cursor = format!("{:08x}-0", f.ctx.store.log_id());
        assert_eq!(json_of(&state)["cursor"], cursor);
        let tag = header(&state, "ETag").unwrap_or_default().to_owned();
        let again = Request::new("GET", "/api/state").with_header("If-None-Match", &tag);
        let r = reply(&f.ctx, again);
        assert_eq!((r.status, r.body.len()), (304, 0));
        let metrics = reply(&f.ctx, Request::new("GET", "/metrics"));
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        assert!(text.contains("tle_subscribers 0"), "{text}");
    }

    #[test]
    fn posts_are_stored_or_refused_with_a_reason() {
        let f = fixture(|_| {});
        let post = |body: &'static str, ct: &str| {
            Request::new("POST", "/api/events")
                .with_header("Content-Type", ct)
                .with_body(body.as_bytes())
        };
        let json = "application/json";
        let r = reply(
            &f.ctx,
            post(r#"{"type":"image_captured","data":{"camera_id":1}}"#, json),
        );
        assert_eq!(r.status, 201);
        let v = json_of(&r);
        assert_eq!(v["type"], "image_captured");
        assert!(v["id"].as_i64().is_some_and(|id| id > 0), "{v}");
        for (body, ct, status, says) in [
            (
                r#"{"type":"a","data":{}}"#,
                "text/plain",
                415,
                "Content-Type",
            ),
            (r#"{"type":"a","data":{}}"#, "", 415, "Content-Type"),
            ("{not json", json, 400, "invalid JSON body"),
            (
                r#"{"type":"a","data":{},"x":1}"#,
                json,
                400,
                "unknown field",
            ),
            (r#"{"type":"a b","data":{}}"#, json, 400, "type"),
            (
                r#"{"type":"a","data":{},"priority":"urgent"}"#,
                json,
                400,
                "priority",
            ),
        ] {
            let r = reply(&f.ctx, post(body, ct));
            assert_eq!(r.status, status, "{body} as {ct:?}");
            let text = json_of(&r)["error"].as_str().unwrap_or_default().to_owned();
            assert!(text.contains(says), "{body}: {text}");
        }
        let big = vec![b' '; crate::http::request::MAX_BODY_BYTES + 1];
        let rq = Request::new("POST", "/api/events")
            .with_header("Content-Type", json)
            .with_body(&big[..]);
        let r = reply(&f.ctx, rq);
        assert_eq!((r.status, header(&r, "Connection")), (413, Some("close")));
    }

    #[test]
    fn posting_needs_the_token_and_off_loopback_a_token_at_all() {
        let f = fixture(|c| c.token = Some("s3cret".into()));
        let post = |auth: Option<&str>| {
            let rq = Request::new("POST", "/api/events")
                .with_header("Content-Type", "application/json")
                .with_body(&br#"{"type":"a","data":{}}"#[..]);
            match auth {
                Some(a) => rq.with_header("Authorization", a),
                None => rq,
            }
        };
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Bearer s3cre"),
        ] {
            let r = reply(&f.ctx, post(auth));
            assert_eq!(r.status, 401, "{auth:?}");
            assert_eq!(header(&r, "WWW-Authenticate"), Some("Bearer"));
        }
        assert_eq!(reply(&f.ctx, post(Some("Bearer s3cret"))).status, 201);
        let open_lan = fixture(|c| c.bind = ([0, 0, 0, 0], 8080).into());
        let r = reply(&open_lan.ctx, post(None));
        assert_eq!(r.status, 403);
        assert!(
            json_of(&r)["error"]
                .as_str()
                .unwrap_or_default()
                .contains("--token")
        );
    }

    #[test]
    fn cors_headers_go_only_to_listed_origins() {
        let f = fixture(|c| c.cors_origins = vec!["http://pi.local:3000".into()]);
        let ask = |origin: &str| {
            reply(
                &f.ctx,
                Request::new("OPTIONS", "/api/events").with_header("Origin", origin),
            )
        };
        let r = ask("http://pi.local:3000");
        assert_eq!(
            header(&r, "Access-Control-Allow-Origin"),
            Some("http://pi.local:3000")
        );
        assert_eq!(header(&r, "Vary"), Some("Origin"));
        assert!(header(&r, "Access-Control-Allow-Methods").is_some());
        let r = ask("http://evil.example");
        assert_eq!(header(&r, "Access-Control-Allow-Origin"), None);
        assert_eq!(header(&r, "Access-Control-Allow-Methods"), None);
        let refused = Request::new("GET", "/nope").with_header("Origin", "http://pi.local:3000");
        let r = reply(&f.ctx, refused);
        assert_eq!((r.status, header(&r, "Vary")), (404, Some("Origin")));
    }

    /// A taken-over connection in memory: its client never leaves.
    struct Piped(std::io::PipeWriter);

    impl std::io::Write for Piped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }

    impl crate::http::server::Client for Piped {
        fn left(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_stream_takes_the_connection_writes_its_head_and_ends_with_the_hub() {
        let f = fixture(|c| c.max_clients = 1);
        let mut rq = Request::new("GET", "/api/events?types=a");
        let Answer::Takeover(start) = handle(&mut rq, &f.ctx) else {
            panic!("a stream takes the connection");
        };
        let (mut wire, writer) = std::io::pipe().expect("a pipe");
        start(Box::new(Piped(writer)));
        let mut text = String::new();
        let mut buf = [0u8; 256];
        while !text.contains(": connected") {
            let n = wire.read(&mut buf).expect("the head and prelude");
            assert!(n > 0, "the stream ended early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Its one place is taken: the next stream is refused.
        let r = reply(&f.ctx, Request::new("GET", "/api/events"));
        assert_eq!((r.status, header(&r, "Retry-After")), (503, Some("5")));
        let r = reply(&f.ctx, Request::new("GET", "/api/events?camera_id=x"));
        assert_eq!(r.status, 400);
        f.ctx.broadcast.close();
        wire.read_to_string(&mut text).expect("the stream ends");
        assert_eq!(
            f.ctx.streams.wait(Instant::now() + Duration::from_secs(10)),
            0
        );
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/event-stream; charset=utf-8\r\n"));
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(text.contains("retry: 2000\n: connected\n"), "{text}");
        assert!(
            text.ends_with("0\r\n\r\n"),
            "ends with the last chunk: {text:?}"
        );
    }
}
