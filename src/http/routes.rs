//! Routing and the small handlers. Runs on the HTTP workers; anything that may wait on a
//! client (a slow body, a stream) is handed to a thread of its own.

use std::io::Read;

use serde::Deserialize;
use serde_json::{Value, json};
use tiny_http::{Method, Request};

use super::Ctx;
use super::reply::{HttpError, Reply};
use super::stream;
use crate::event::{NewEvent, Priority};
use crate::hub::spawn_named;
use crate::sse;
use crate::store::events;

/// Largest request body accepted (`POST /api/events`).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// A declared body up to this size is drained, on a thread of its own, after the 413; a
/// larger one cannot be: tiny_http 0.12 would allocate its declared size at once.
const DRAIN_LIMIT_BYTES: usize = 256 * 1024 * 1024;
/// tiny_http reads bodies up to 1 KiB before we see the request; larger ones are read from
/// the socket, which a client can stall, so they are read off the workers.
const PREBUFFERED_BYTES: usize = 1024;
/// Abandoned connections tolerated before the hub asks to be restarted.
const MAX_ABANDONED: usize = 256;

const PATHS: [&str; 5] = [
    "/",
    "/api/events",
    "/health",
    "/favicon.ico",
    "/dashboard-worker.js",
];

type Handled = Result<Reply, HttpError>;

pub(super) fn handle(rq: Request, ctx: &Ctx) {
    let Some(rq) = guard_body(rq, ctx) else {
        return;
    };
    let target = rq.url().to_owned();
    let (path, query) = sse::split_target(&target);
    let cors = cors_headers(&rq, ctx);
    let method = rq.method().clone();
    log::debug!("{method} {target} from {:?}", rq.remote_addr());
    let result = match (&method, path.as_ref()) {
        (Method::Get, "/api/events") => match stream::open(rq, ctx, &query, cors.clone()) {
            None => return,
            Some((rq, result)) => return respond(rq, result, &cors),
        },
        (Method::Post, "/api/events") => {
            if needs_body_thread(&rq) {
                return post_on_thread(rq, ctx, cors);
            }
            let mut rq = rq;
            let r = post_event(&mut rq, ctx);
            return respond(rq, r, &cors);
        }
        (Method::Options, p) if PATHS.contains(&p) => Ok(preflight(&rq, ctx)),
        (Method::Get | Method::Head, "/health") => health(ctx),
        (Method::Get | Method::Head, "/api/state") => Ok(state(&rq, ctx)),
        (Method::Get | Method::Head, "/api/events/stats") => stats(ctx),
        (Method::Get | Method::Head, "/metrics") => metrics(ctx),
        (Method::Get | Method::Head, "/") => Ok(crate::http::dashboard::page(&rq)),
        (Method::Get | Method::Head, "/dashboard-worker.js") => {
            Ok(crate::http::dashboard::worker(&rq))
        }
        (Method::Get | Method::Head, "/favicon.ico") => Ok(Reply::empty(204)),
        (_, p) if PATHS.contains(&p) => Err(HttpError::new(
            405,
            format!("method {method} not allowed on {p}"),
        )
        .with_header("Allow", allowed(p))),
        _ => Err(HttpError::new(
            404,
            format!(
                "no such path: {}",
                path.chars().take(200).collect::<String>()
            ),
        )),
    };
    respond(rq, result, &cors);
}

fn allowed(path: &str) -> &'static str {
    match path {
        "/api/events" => "GET, POST, OPTIONS",
        _ => "GET, HEAD, OPTIONS",
    }
}

fn respond(rq: Request, result: Handled, cors: &[(&'static str, String)]) {
    let mut reply = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                log::warn!(
                    "{} {} -> {}: {}",
                    rq.method(),
                    rq.url(),
                    e.status,
                    e.message
                );
            } else {
                log::debug!(
                    "{} {} -> {}: {}",
                    rq.method(),
                    rq.url(),
                    e.status,
                    e.message
                );
            }
            e.into_reply()
        }
    };
    reply.headers.extend(cors.iter().cloned());
    if let Err(e) = rq.respond(reply.into_response()) {
        log::debug!("response not delivered: {e}");
    }
}

/// Looks up a request header (case-insensitive name).
pub(crate) fn header_value<'a>(rq: &'a Request, name: &str) -> Option<&'a str> {
    rq.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Refuses a request whose declared body is over [`MAX_BODY_BYTES`] without ever letting
/// tiny_http drain it on a worker (it would pin the worker while the client trickles, and
/// abort the process for an absurd length). Returns the request when it is fine.
pub(super) fn guard_body(rq: Request, ctx: &Ctx) -> Option<Request> {
    let declared = match rq.body_length() {
        Some(n) if n > MAX_BODY_BYTES => n,
        _ => return Some(rq),
    };
    log::warn!(
        "refusing a {declared}-byte body from {:?} ({} {})",
        rq.remote_addr(),
        rq.method(),
        rq.url()
    );
    let too_large = || {
        HttpError::new(413, format!("body over {MAX_BODY_BYTES} bytes"))
            .with_header("Connection", "close")
            .into_reply()
            .into_response()
    };
    if declared <= DRAIN_LIMIT_BYTES
        && let Some(slot) = ctx.body_threads.try_take()
    {
        // Answer, then let the drop drain (or meet EOF) off the workers. Its tiny_http
        // pool thread waits as long: have the pump replace it.
        let _ = ctx.pump.try_send(());
        let spawned = spawn_named("reject", Some(64 * 1024), move || {
            let _slot = slot;
            let _ = rq.respond(too_large());
            Ok(())
        });
        if let Err(e) = spawned {
            log::error!("{}", e.chain());
        }
        return None;
    }
    abandon(rq, too_large(), ctx);
    None
}

/// Answers a request whose body is still unread without ever dropping it. tiny_http drains
/// an unread body when its request is dropped (allocating the declared length at once, and
/// waiting as long as the client trickles), so the only way to answer without that is to
/// take the connection out of its hands and keep it. This costs one tiny_http thread and
/// two sockets until the process ends; it is reached only for absurd declared lengths or
/// when every body thread is busy. See the README's security section.
fn abandon(rq: Request, response: tiny_http::Response<std::io::Cursor<Vec<u8>>>, ctx: &Ctx) {
    let n = ctx
        .abandoned
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    log::warn!(
        "abandoning the connection of {:?} ({n} so far): its unread body cannot be drained safely",
        rq.remote_addr()
    );
    let stream = rq.upgrade("close", response);
    std::mem::forget(stream);
    let _ = ctx.pump.try_send(()); // its pool thread is gone for good: replace it
    if n == MAX_ABANDONED {
        // Measured: each costs one thread and two file descriptors, forever. Past this many
        // a client is attacking us; a restart (systemd: Restart=always) frees them all.
        ctx.fatal.report(format!(
            "{n} connections abandoned for absurd or stalled request bodies; restarting to free their threads and sockets"
        ));
    }
}

fn needs_body_thread(rq: &Request) -> bool {
    let streamed = match rq.body_length() {
        Some(n) => n > PREBUFFERED_BYTES,
        None => header_value(rq, "Transfer-Encoding").is_some(),
    };
    streamed || header_value(rq, "Expect").is_some()
}

fn post_on_thread(rq: Request, ctx: &Ctx, cors: Vec<(&'static str, String)>) {
    let Some(slot) = ctx.body_threads.try_take() else {
        let e = HttpError::new(503, "too many uploads in progress")
            .with_header("Retry-After", "1")
            .with_header("Connection", "close");
        return abandon(rq, e.into_reply().into_response(), ctx);
    };
    let (config, emitter) = (ctx.config.clone(), ctx.emitter.clone());
    let _ = ctx.pump.try_send(()); // a slow body holds its pool thread too
    let spawned = spawn_named("body", Some(128 * 1024), move || {
        let _slot = slot;
        let mut rq = rq;
        let r = post_with(&mut rq, &config, &emitter);
        respond(rq, r, &cors);
        Ok(())
    });
    if let Err(e) = spawned {
        log::error!("{}", e.chain());
    }
}

fn post_event(rq: &mut Request, ctx: &Ctx) -> Handled {
    post_with(rq, &ctx.config, &ctx.emitter)
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

fn post_with(rq: &mut Request, config: &crate::Config, emitter: &crate::Emitter) -> Handled {
    authorize(rq, config)?;
    let content_type = header_value(rq, "Content-Type").unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(HttpError::new(415, "Content-Type must be application/json"));
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| HttpError::new(400, format!("cannot read body: {e}")))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(
            HttpError::new(413, format!("body over {MAX_BODY_BYTES} bytes"))
                .with_header("Connection", "close"),
        );
    }
    let parsed: PostBody = serde_json::from_slice(&body)
        .map_err(|e| HttpError::new(400, format!("invalid JSON body: {e}")))?;
    let mut event = NewEvent::new(parsed.event_type, parsed.data);
    if let Some(p) = parsed.priority {
        event.priority = p.parse::<Priority>()?;
    }
    if let Some(s) = parsed.source {
        event.source = s;
    } else {
        event.source = "http".to_owned();
    }
    let event_type = event.event_type.clone();
    let id = emitter.emit(event)?;
    log::debug!("stored event {id} ({event_type}) from HTTP");
    Ok(Reply::json(201, &json!({"id": id.0, "type": event_type})))
}

fn authorize(rq: &Request, config: &crate::Config) -> Result<(), HttpError> {
    match &config.token {
        Some(token) => {
            let given = header_value(rq, "Authorization")
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

fn cors_headers(rq: &Request, ctx: &Ctx) -> Vec<(&'static str, String)> {
    match header_value(rq, "Origin") {
        Some(origin) if ctx.config.cors_origins.iter().any(|o| o == origin) => vec![
            ("Access-Control-Allow-Origin", origin.to_owned()),
            ("Vary", "Origin".to_owned()),
        ],
        _ => Vec::new(),
    }
}

fn preflight(rq: &Request, ctx: &Ctx) -> Reply {
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
    let counts = ctx.store.conn().and_then(|c| events::counts(&c));
    let poller = ctx.poller.failing();
    let writes = ctx.poller.writes_failing();
    let healthy = counts.is_ok() && poller.is_none() && writes.is_none();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "database": counts.as_ref().err().map_or_else(|| "ok".to_owned(), ToString::to_string),
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
fn state(rq: &Request, ctx: &Ctx) -> Reply {
    let Some(snap) = ctx.cache.get() else {
        return HttpError::new(503, "state not loaded yet")
            .with_header("Retry-After", "1")
            .into_reply();
    };
    let fresh = header_value(rq, "If-None-Match")
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
    let mut body = crate::store::maintenance::stats(&conn, ctx.store.path())?;
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
    body.insert(
        "rejected_rows".into(),
        ctx.poller
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
    let used = crate::store::maintenance::used_bytes(&conn)?;
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
                ctx.poller.errors.load(Relaxed),
            ),
            (
                "tle_rows_rejected_total",
                "Rows the poller could not read as events and skipped.",
                ctx.poller.rejected.load(Relaxed),
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
