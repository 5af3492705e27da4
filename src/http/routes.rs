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
        .map_err(|e| HttpError::new(400, format!("invalid JSON body: {e}")))?;
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
    let counts = ctx.store.conn().and_then(|c| events::counts(&c));
    let poller = ctx.status.failing();
    let writes = ctx.status.writes_failing();
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
