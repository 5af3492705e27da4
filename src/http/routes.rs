//! Routing and the small handlers: a [`Request`] in, an [`Answer`] out, no socket in sight
//! (so every route is tested in memory below). Runs on the HTTP workers, or on a body
//! thread for a slow upload; an event stream is handed to a thread of its own.

use serde::Deserialize;
use serde_json::{Value, json};

use super::ctx::Ctx;
use super::dashboard;
use super::guard;
use super::images;
use super::reply::{HttpError, Reply};
use super::request::Request;
use super::server::Answer;
use super::stream;
use crate::config::Config;
use crate::error::{QUOTE_CHARS, clip, quote};
use crate::event::{NewEvent, Priority};
use crate::store::{self, events};

const PATHS: [&str; 10] = [
    "/",
    "/api/events",
    "/api/hosts",
    "/api/history",
    "/health",
    "/favicon.ico",
    "/dashboard-worker.js",
    "/dashboard.js",
    "/dashboard.css",
    "/login",
];

/// Routes that answer with the hub's data: with `--read-token`, each needs it (or the
/// write token). `/health` (counts only, for monitors), `/favicon.ico`, preflights and
/// `/login` stay open; every route, these too, passes the `Host` check first.
const READS: [&str; 11] = [
    "/",
    "/api/events",
    "/api/hosts",
    "/api/history",
    "/api/state",
    "/api/events/stats",
    "/api/sinks",
    "/metrics",
    "/dashboard-worker.js",
    "/dashboard.js",
    "/dashboard.css",
];

/// Where a camera's own routes start (`DELETE /api/cameras/<id>`).
const CAMERAS_PREFIX: &str = "/api/cameras/";

/// How long the dashboard's read cookie lasts: a wall-mounted tablet should not ask
/// every week (browsers cap it at 400 days anyway).
const READ_COOKIE_SECS: u32 = 365 * 24 * 3600;

type Handled = Result<Reply, HttpError>;

/// Routes one request.
pub(super) fn handle(rq: &mut Request<'_>, ctx: &Ctx) -> Answer {
    let cors = cors_headers(rq, ctx);
    log::debug!("{} {} from {}", rq.method, rq.target, rq.peer_text());
    let path = rq.path.clone();
    // The image route exists only with `--images-dir`; its path has the camera's id.
    let image_route = ctx.config.images_dir.is_some() && images::is_route(&path);
    let read = matches!(rq.method.as_str(), "GET" | "HEAD")
        && (READS.contains(&path.as_str()) || image_route);
    let result = if let Err(e) = check_host(rq, ctx) {
        Err(e)
    } else if read && !read_allowed(rq, &ctx.config) {
        if path == "/" {
            Ok(dashboard::login(401, None))
        } else {
            Err(HttpError::new(
                401,
                "reading needs the read token: send Authorization: Bearer <token>, \
                 or log in on the dashboard",
            )
            .with_header("WWW-Authenticate", "Bearer"))
        }
    } else {
        match (rq.method.as_str(), path.as_str()) {
            ("GET", "/api/events") => match stream::open(rq, ctx, cors.clone()) {
                Ok(takeover) => return Answer::Takeover(takeover),
                Err(e) => Err(e),
            },
            ("POST", "/api/events") => post_event(rq, ctx),
            ("POST", "/login") => login(rq, ctx),
            ("OPTIONS", p) if PATHS.contains(&p) || p.starts_with(CAMERAS_PREFIX) => {
                Ok(preflight(rq, ctx, p))
            }
            ("DELETE", p) if p.starts_with(CAMERAS_PREFIX) => forget_camera(rq, ctx, p),
            ("GET" | "HEAD", "/health") => health(ctx),
            ("GET" | "HEAD", "/api/state") => Ok(state(rq, ctx)),
            ("GET" | "HEAD", "/api/history") => history(rq, ctx),
            ("GET" | "HEAD", "/api/events/stats") => stats(ctx),
            ("GET" | "HEAD", "/metrics") => metrics(ctx),
            ("GET" | "HEAD", "/api/sinks") => Ok(sinks(ctx)),
            ("GET" | "HEAD", "/api/hosts") => Ok(hosts(ctx)),
            ("GET" | "HEAD", _) if image_route => Ok(images::latest(rq, ctx)),
            (method, _) if image_route => Err(HttpError::new(
                405,
                format!(
                    "method {} not allowed on /api/cameras/<id>/latest",
                    quote(method)
                ),
            )
            .with_header("Allow", "GET, HEAD")),
            ("GET" | "HEAD", "/") => Ok(dashboard::page(rq, ctx.config.images_dir.is_some())),
            ("GET" | "HEAD", "/dashboard-worker.js") => Ok(dashboard::worker(rq)),
            ("GET" | "HEAD", "/dashboard.js") => Ok(dashboard::script(rq)),
            ("GET" | "HEAD", "/dashboard.css") => Ok(dashboard::style(rq)),
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
        }
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

/// The `Host` check (see [`guard`]): `421 Misdirected Request` unless the request names
/// this hub. A request with no `Host` at all passes only for `GET /favicon.ico` from
/// loopback: the server's own liveness probe.
fn check_host(rq: &Request<'_>, ctx: &Ctx) -> Result<(), HttpError> {
    let bound = match ctx.bound.get() {
        Some(addr) => *addr,
        None if ctx.config.bind.port() != 0 => ctx.config.bind,
        None => {
            return Err(HttpError::new(503, "starting").with_header("Retry-After", "1"));
        }
    };
    let hosts: Vec<&str> = rq.headers_named("Host").collect();
    let host = match hosts.as_slice() {
        [] if matches!(rq.method.as_str(), "GET" | "HEAD")
            && rq.path == "/favicon.ico"
            && rq.peer.is_some_and(|p| p.ip().is_loopback()) =>
        {
            return Ok(());
        }
        [] => {
            return Err(HttpError::new(
                421,
                "misdirected request: no Host header; send the name or address you reach \
                 the hub at, e.g. Host: 127.0.0.1:PORT",
            ));
        }
        [host] => *host,
        _ => {
            return Err(HttpError::new(
                421,
                "misdirected request: several Host headers",
            ));
        }
    };
    let beyond_loopback = !ctx.config.is_loopback();
    let allows = |machine: &crate::host::Names| {
        guard::host_allowed(
            host,
            &guard::Names {
                bound,
                beyond_loopback,
                machine: &machine.names,
                addrs: &machine.addrs,
                allowed: &ctx.config.allowed_hosts,
            },
        )
    };
    if allows(&ctx.machine.names())
        || (beyond_loopback && ctx.machine.reread().is_some_and(|m| allows(&m)))
    {
        return Ok(());
    }
    let shown: String = host.chars().take(100).collect();
    Err(HttpError::new(
        421,
        format!(
            "misdirected request: this hub does not answer to Host `{shown}`; start it \
             with --allowed-host NAME to add a name"
        ),
    ))
}

/// Whether the request may read: no `--read-token`, or it carries that token or the write
/// token, as a Bearer header or the dashboard's cookie.
fn read_allowed(rq: &Request<'_>, config: &Config) -> bool {
    let Some(read) = &config.read_token else {
        return true;
    };
    let cookie = guard::cookie(rq.headers_named("Cookie"), guard::READ_COOKIE);
    [guard::bearer(rq.header("Authorization")), cookie.as_deref()]
        .into_iter()
        .flatten()
        .any(|given| grants_read(given, read, config.token.as_deref()))
}

/// Whether `given` is the read token or the write token (both compared in full, in
/// constant time).
fn grants_read(given: &str, read: &str, write: Option<&str>) -> bool {
    let is_read = guard::constant_time_eq(given.as_bytes(), read.as_bytes());
    let is_write = write.is_some_and(|w| guard::constant_time_eq(given.as_bytes(), w.as_bytes()));
    is_read | is_write
}

/// `403` for a write sent by another site's page (see [`guard::cross_site_write`]).
fn refuse_cross_site(rq: &Request<'_>, ctx: &Ctx) -> Result<(), HttpError> {
    match guard::cross_site_write(
        rq.header("Origin"),
        rq.header("Sec-Fetch-Site"),
        rq.header("Host"),
        &ctx.config.cors_origins,
    ) {
        Some(why) => Err(HttpError::new(403, why)),
        None => Ok(()),
    }
}

/// `POST /login`: the dashboard's form (`token=...`, form-encoded). The read or write
/// token sets the read cookie and goes back to `/` (`303`); a wrong one gets the form
/// again (`401`).
fn login(rq: &mut Request<'_>, ctx: &Ctx) -> Handled {
    let Some(read) = &ctx.config.read_token else {
        return Err(HttpError::new(404, "no read token is set: reads are open"));
    };
    refuse_cross_site(rq, ctx)?;
    let content_type = rq.header("Content-Type").unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(HttpError::new(
            415,
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let body = rq.read_body()?;
    let given = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !grants_read(&given, read, ctx.config.token.as_deref()) {
        log::info!("wrong read token from {}", rq.peer_text());
        return Ok(dashboard::login(401, Some("That is not the hub's token.")));
    }
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={READ_COOKIE_SECS}",
        guard::READ_COOKIE,
        guard::cookie_value(&given)
    );
    Ok(Reply::empty(303)
        .with_header("Location", "/")
        .with_header("Set-Cookie", cookie)
        .with_header("Cache-Control", "no-store"))
}

fn allowed(path: &str) -> &'static str {
    match path {
        "/api/events" => "GET, POST, OPTIONS",
        "/login" => "POST, OPTIONS",
        p if p.starts_with(CAMERAS_PREFIX) => "GET, HEAD, DELETE, OPTIONS",
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

/// Refusals come in this order: `415` for any type but JSON (what a page's *simple*
/// cross-site POST, sent without a preflight, always gets: forms, `text/plain`, no type),
/// `403` for another site's page, then `401`/`403` for the token.
fn post_event(rq: &mut Request<'_>, ctx: &Ctx) -> Handled {
    let content_type = rq.header("Content-Type").unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(HttpError::new(415, "Content-Type must be application/json"));
    }
    refuse_cross_site(rq, ctx)?;
    authorize(rq, &ctx.config)?;
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
            let given = guard::bearer(rq.header("Authorization")).unwrap_or("");
            if guard::constant_time_eq(given.as_bytes(), token.as_bytes()) {
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

fn cors_headers(rq: &Request<'_>, ctx: &Ctx) -> Vec<(&'static str, String)> {
    match rq.header("Origin") {
        Some(origin) if ctx.config.cors_origins.iter().any(|o| o == origin) => vec![
            ("Access-Control-Allow-Origin", origin.to_owned()),
            ("Vary", "Origin".to_owned()),
        ],
        _ => Vec::new(),
    }
}

fn preflight(rq: &Request<'_>, ctx: &Ctx, path: &str) -> Reply {
    let mut r = Reply::empty(204);
    let methods = if path.starts_with(CAMERAS_PREFIX) {
        allowed(path)
    } else {
        "GET, POST, OPTIONS"
    };
    if path.starts_with(CAMERAS_PREFIX) {
        r = r.with_header("Allow", methods);
    }
    if !cors_headers(rq, ctx).is_empty() {
        r = r
            .with_header("Access-Control-Allow-Methods", methods)
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
    let host = match host_param(rq) {
        Ok(h) => h,
        Err(e) => return e.into_reply(),
    };
    let etag = match host {
        Some(h) => format!("\"{};host={h}\"", snap.etag.trim_matches('"')),
        None => snap.etag.clone(),
    };
    let fresh = rq
        .header("If-None-Match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let reply = if fresh {
        Reply::empty(304)
    } else {
        match host {
            Some(h) => Reply::json(200, &state_of_host(&snap.body, h, &ctx.config.this_host())),
            None => Reply::bytes(200, "application/json", snap.body.as_bytes().to_vec()),
        }
    };
    reply
        .with_header("ETag", etag)
        .with_header("Cache-Control", "no-cache")
}

/// `?host=NAME`, when given: `400` unless 1 to 64 characters of a host name.
fn host_param<'r>(rq: &'r Request<'_>) -> Result<Option<&'r str>, HttpError> {
    let host = rq.query_value("host").map(str::trim);
    if let Some(h) = host
        && (h.is_empty()
            || h.len() > 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(HttpError::new(
            400,
            "host: 1 to 64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    Ok(host)
}

/// The cameras of the current state, in `/api/state`'s order (this host's, then the
/// others'), as (host, camera id): `None` for this host's.
fn state_cameras(ctx: &Ctx) -> Result<Vec<(Option<String>, i64)>, HttpError> {
    let snap = ctx.cache.get().ok_or_else(|| {
        HttpError::new(503, "state not loaded yet").with_header("Retry-After", "1")
    })?;
    let doc: Value = serde_json::from_str(&snap.body).unwrap_or_else(|_| json!({}));
    let cams = doc.get("cameras").and_then(Value::as_array);
    Ok(cams
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let id = c.get("camera_id").and_then(Value::as_i64)?;
            let host = c.get("host").and_then(Value::as_str).map(str::to_owned);
            Some((host, id))
        })
        .collect())
}

/// `GET /api/history`: each camera of the state's captures per hour (24) and day (30),
/// oldest first, and in all; `?camera_id=N` and `?host=NAME` narrow it. Reads only the
/// counters (`capture_history`, by primary key), never the events.
fn history(rq: &Request<'_>, ctx: &Ctx) -> Handled {
    let host = host_param(rq)?;
    let camera_id = match rq.query_value("camera_id").map(str::trim) {
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| HttpError::new(400, "camera_id: an integer"))?,
        ),
        None => None,
    };
    let local = ctx.config.this_host();
    let cameras: Vec<(Option<String>, i64)> = state_cameras(ctx)?
        .into_iter()
        .filter(|(h, id)| {
            let host_ok = match (host, h) {
                (None, _) => true,
                (Some(want), Some(h)) => want == h,
                (Some(want), None) => want == local,
            };
            host_ok && camera_id.is_none_or(|want| want == *id)
        })
        .collect();
    let window = crate::history::Window::at(crate::state::now_ms());
    let conn = ctx.store.conn()?;
    let mut list = Vec::with_capacity(cameras.len());
    for (h, id) in cameras {
        let rows = store::history::camera(&conn, h.as_deref().unwrap_or(""), id)?;
        let (hourly, daily, total) = window.camera(&rows);
        let mut entry = json!({"camera_id": id, "hourly": hourly, "daily": daily, "total": total});
        if let (Some(h), Value::Object(m)) = (h, &mut entry) {
            m.insert("host".into(), Value::String(h));
        }
        list.push(entry);
    }
    drop(conn);
    let mut doc = window.head();
    doc.insert("cameras".into(), Value::from(list));
    Ok(Reply::json(200, &Value::Object(doc)).with_header("Cache-Control", "no-cache"))
}

/// `DELETE /api/cameras/<id>[?host=NAME]`: forgets a camera of the current state by
/// emitting `camera_forgotten` (source `dashboard`), whose fold removes it and its rows.
/// Guarded as `POST /api/events` is: another site's page gets `403`, then the token.
fn forget_camera(rq: &Request<'_>, ctx: &Ctx, path: &str) -> Handled {
    let no_path = || HttpError::new(404, format!("no such path: {}", quote(path)));
    let id: i64 = path
        .strip_prefix(CAMERAS_PREFIX)
        .and_then(|s| s.parse().ok())
        .ok_or_else(no_path)?;
    refuse_cross_site(rq, ctx)?;
    authorize(rq, &ctx.config)?;
    let local = ctx.config.this_host();
    let host = host_param(rq)?.filter(|h| *h != local).map(str::to_owned);
    if !state_cameras(ctx)?.contains(&(host.clone(), id)) {
        return Err(HttpError::new(
            404,
            match &host {
                Some(h) => format!("no camera {id} of host {h} in the state"),
                None => format!("no camera {id} in the state"),
            },
        ));
    }
    let mut forgotten = json!({"camera_id": id});
    if let (Some(h), Value::Object(m)) = (&host, &mut forgotten) {
        m.insert("host".into(), Value::String(h.clone()));
    }
    let event =
        NewEvent::new(crate::state::CAMERA_FORGOTTEN, forgotten.clone()).with_source("dashboard");
    let row = ctx.emitter.emit(event)?;
    // The hub's emit returns once dispatched, so the row has its place in the stream.
    let conn = ctx.store.conn()?;
    let cursor = events::cursor_of(&conn, ctx.store.log_id(), row)?;
    drop(conn);
    log::info!(
        "forgot camera {id}{} from {}",
        host.as_deref()
            .map(|h| format!(" of {h}"))
            .unwrap_or_default(),
        rq.peer_text()
    );
    Ok(Reply::json(
        200,
        &json!({"forgotten": forgotten, "id": cursor.map(|c| c.to_string())}),
    ))
}

/// The state document narrowed to one camera host's cameras (and, for this host, its
/// timelapses): `/api/state?host=NAME`, decoded from the shared snapshot.
fn state_of_host(body: &str, host: &str, local: &str) -> Value {
    let mut doc: Value = serde_json::from_str(body).unwrap_or_else(|_| json!({}));
    let ours = host == local;
    if let Some(cams) = doc.get_mut("cameras").and_then(Value::as_array_mut) {
        cams.retain(|c| match c.get("host").and_then(Value::as_str) {
            Some(h) => h == host,
            None => ours,
        });
    }
    if !ours && let Some(t) = doc.get_mut("timelapses") {
        *t = json!([]);
    }
    doc
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
    let sinks: Vec<Value> = ctx.sinks.iter().map(|s| s.to_json()).collect();
    body.insert("sinks".into(), Value::from(sinks));
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
    let text = text + &crate::sink::render_metrics(&ctx.sinks);
    Ok(Reply::bytes(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        text.into_bytes(),
    ))
}

/// `GET /api/sinks`: each outbound sink's target (no secrets), cursor, lag and counts.
fn sinks(ctx: &Ctx) -> Reply {
    let list: Vec<Value> = ctx.sinks.iter().map(|s| s.to_json()).collect();
    Reply::json(200, &Value::from(list))
}

/// This hub's host and, with the fleet ingest, every other host it has heard.
fn hosts(ctx: &Ctx) -> Reply {
    let others: Vec<Value> = ctx.fleet.as_ref().map_or_else(Vec::new, |f| {
        f.hosts()
            .into_iter()
            .map(|(host, h)| {
                json!({
                    "host": host,
                    "online": h.online,
                    "last_heard_at": h.last_heard_at,
                    "events": h.events,
                })
            })
            .collect()
    });
    let fleet = ctx.fleet.as_ref().map(|f| {
        json!({
            "connected": f.connected.load(std::sync::atomic::Ordering::Relaxed),
            "stored": f.stored.load(std::sync::atomic::Ordering::Relaxed),
            "duplicates": f.duplicates.load(std::sync::atomic::Ordering::Relaxed),
            "ignored": f.ignored.load(std::sync::atomic::Ordering::Relaxed),
        })
    });
    Reply::json(
        200,
        &json!({"host": ctx.config.this_host(), "fleet": fleet, "hosts": others}),
    )
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
            bound: std::sync::OnceLock::new(),
            machine: crate::host::Machine::read(),
            sinks: Arc::default(),
            fleet: None,
        };
        let bound = std::net::SocketAddr::from(([127, 0, 0, 1], 8080));
        ctx.bound.set(bound).expect("set once");
        ctx.cache.publish(&State::default(), ctx.store.log_id(), 1);
        Fixture { ctx, _dir: dir }
    }

    /// Answers `rq`, sent to `localhost:8080` unless it names a `Host` of its own.
    fn reply(ctx: &Ctx, rq: Request<'_>) -> Reply {
        let mut rq = match rq.header("Host") {
            Some(_) => rq,
            None => rq.with_header("Host", "localhost:8080"),
        };
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
            ("GET", "/api/sinks", 200, json, ""),
            ("GET", "/api/history", 200, json, "Cache-Control"),
            ("HEAD", "/api/history", 200, json, "Cache-Control"),
            ("GET", "/api/history?camera_id=x", 400, json, ""),
            ("GET", "/api/history?host=a%20b", 400, json, ""),
            ("PUT", "/api/history", 405, json, "Allow"),
            ("OPTIONS", "/api/events", 204, text, ""),
            ("OPTIONS", "/api/cameras/1", 204, text, "Allow"),
            ("DELETE", "/api/cameras/1", 404, json, ""),
            ("DELETE", "/api/cameras/x", 404, json, ""),
            ("DELETE", "/api/cameras", 404, json, ""),
            ("GET", "/api/cameras/1", 404, json, ""),
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
    fn state_narrows_to_one_host_and_refuses_a_bad_name() {
        let f = fixture(|c| c.host_name = Some("shed".into()));
        let mut state = State::default();
        let mut theirs = crate::event::Event::for_test(
            1,
            "image_captured",
            "2026-12-01T10:00:00.000Z",
            json!({"camera_id": 1}),
        );
        theirs.host = Some("garden".into());
        let ours = crate::event::Event::for_test(
            2,
            "image_captured",
            "2026-12-01T10:00:01.000Z",
            json!({"camera_id": 1, "timelapse_id": 3}),
        );
        state.apply(&theirs);
        state.apply(&ours);
        f.ctx.cache.publish(&state, f.ctx.store.log_id(), 2);
        let hosts_of = |target: &str| -> (Vec<Value>, usize) {
            let v = json_of(&reply(&f.ctx, Request::new("GET", target)));
            let cams = v["cameras"].as_array().cloned().unwrap_or_default();
            let hosts = cams.iter().map(|c| c["host"].clone()).collect();
            (hosts, v["timelapses"].as_array().map_or(0, Vec::len))
        };
        assert_eq!(
            hosts_of("/api/state"),
            (vec![Value::Null, json!("garden")], 1)
        );
        assert_eq!(
            hosts_of("/api/state?host=garden"),
            (vec![json!("garden")], 0)
        );
        assert_eq!(hosts_of("/api/state?host=shed"), (vec![Value::Null], 1));
        assert_eq!(hosts_of("/api/state?host=nobody"), (vec![], 0));
        let all = reply(&f.ctx, Request::new("GET", "/api/state"));
        let one = reply(&f.ctx, Request::new("GET", "/api/state?host=garden"));
        assert_ne!(header(&all, "ETag"), header(&one, "ETag"), "a tag per view");
        for bad in [
            "/api/state?host=",
            "/api/state?host=a%22b",
            "/api/state?host=a/b",
        ] {
            let r = reply(&f.ctx, Request::new("GET", bad));
            assert_eq!(r.status, 400, "{bad}");
            assert!(json_of(&r)["error"].is_string(), "{bad}");
        }
        let hosts = json_of(&reply(&f.ctx, Request::new("GET", "/api/hosts")));
        assert_eq!(hosts, json!({"host": "shed", "fleet": null, "hosts": []}));
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

    /// A taken-over connection in memory; what it is handed to follow goes to the test.
    struct Piped(
        std::io::PipeWriter,
        crossbeam_channel::Sender<Box<dyn crate::http::server::Source>>,
    );

    impl std::io::Write for Piped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }

    impl crate::http::server::Client for Piped {
        fn follow(
            self: Box<Self>,
            source: Box<dyn crate::http::server::Source>,
            _chunked: bool,
        ) -> crate::error::Result<()> {
            self.1.send(source).map_err(|_| crate::error::Error::Closed)
        }
    }

    #[test]
    fn every_route_refuses_a_host_that_is_not_the_hub_with_421() {
        let f = fixture(|_| {});
        let loopback = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)));
        for target in PATHS.iter().chain(&READS).chain(&["/nope"]) {
            for method in ["GET", "POST", "OPTIONS"] {
                for host in [
                    Some("evil.example:8080"),
                    Some(""),
                    Some("localhost:9"),
                    None,
                ] {
                    let rq = Request::new(method, target).with_peer(loopback, false);
                    let rq = match host {
                        Some(h) => rq.with_header("Host", h),
                        None if *target == "/favicon.ico" && method == "GET" => continue,
                        None => rq.with_header("X-No-Host", "1"),
                    };
                    let mut rq = rq;
                    let what = format!("{method} {target} Host {host:?}");
                    let r = match handle(&mut rq, &f.ctx) {
                        Answer::Reply(r) => r,
                        Answer::Takeover(_) => panic!("{what} took the connection"),
                    };
                    assert_eq!(r.status, 421, "{what}");
                    let text = json_of(&r)["error"].as_str().unwrap_or_default().to_owned();
                    assert!(text.starts_with("misdirected request"), "{what}: {text}");
                }
            }
        }
        // The liveness probe: no Host, from loopback, for the icon only.
        let mut probe = Request::new("GET", "/favicon.ico").with_peer(loopback, true);
        let Answer::Reply(r) = handle(&mut probe, &f.ctx) else {
            panic!("the probe took the connection");
        };
        assert_eq!(r.status, 204);
        let far = Some(std::net::SocketAddr::from(([192, 168, 1, 9], 40000)));
        let mut probe = Request::new("GET", "/favicon.ico").with_peer(far, true);
        let Answer::Reply(r) = handle(&mut probe, &f.ctx) else {
            panic!("the probe took the connection");
        };
        assert_eq!(r.status, 421, "no Host from the LAN");
    }

    #[test]
    fn reads_need_the_read_token_or_the_write_token_and_writes_never_the_read_one() {
        let f = fixture(|c| {
            c.read_token = Some("r34d".into());
            c.token = Some("wr1te".into());
        });
        let get = |target: &str, auth: Option<(&str, &str)>| {
            let rq = Request::new("GET", target);
            reply(
                &f.ctx,
                match auth {
                    Some((k, v)) => rq.with_header(k, v),
                    None => rq,
                },
            )
        };
        for target in [
            "/api/state",
            "/api/events/stats",
            "/api/sinks",
            "/metrics",
            "/dashboard.js",
        ] {
            let r = get(target, None);
            assert_eq!(
                (r.status, header(&r, "WWW-Authenticate")),
                (401, Some("Bearer")),
                "{target}"
            );
            assert!(
                json_of(&r)["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("read token")
            );
            for auth in [
                ("Authorization", "Bearer r34d"),
                ("Authorization", "Bearer wr1te"),
                ("Cookie", "tle_read=r34d"),
            ] {
                assert_eq!(
                    get(target, Some(auth)).status,
                    200,
                    "{target} with {auth:?}"
                );
            }
            for auth in [
                ("Authorization", "Bearer r34"),
                ("Cookie", "tle_read=wrong"),
                ("Cookie", "other=r34d"),
            ] {
                assert_eq!(
                    get(target, Some(auth)).status,
                    401,
                    "{target} with {auth:?}"
                );
            }
        }
        let page = get("/", None);
        assert_eq!(
            (page.status, page.content_type),
            (401, "text/html; charset=utf-8")
        );
        assert!(String::from_utf8_lossy(&page.body).contains("action=\"/login\""));
        assert_eq!(get("/health", None).status, 200, "health stays open");
        let post = |auth: &str| {
            let rq = Request::new("POST", "/api/events")
                .with_header("Content-Type", "application/json")
                .with_header("Authorization", auth)
                .with_body(&br#"{"type":"a","data":{}}"#[..]);
            reply(&f.ctx, rq).status
        };
        assert_eq!((post("Bearer r34d"), post("Bearer wr1te")), (401, 201));
        let login = |body: &'static str| {
            let rq = Request::new("POST", "/login")
                .with_header("Content-Type", "application/x-www-form-urlencoded")
                .with_header("Origin", "http://localhost:8080")
                .with_body(body.as_bytes());
            reply(&f.ctx, rq)
        };
        let ok = login("token=r34d");
        assert_eq!((ok.status, header(&ok, "Location")), (303, Some("/")));
        let cookie = header(&ok, "Set-Cookie").unwrap_or_default();
        assert!(
            cookie.starts_with("tle_read=r34d; HttpOnly; SameSite=Strict; Path=/"),
            "{cookie}"
        );
        let wrong = login("token=r34");
        assert_eq!((wrong.status, header(&wrong, "Set-Cookie")), (401, None));
        assert!(String::from_utf8_lossy(&wrong.body).contains("not the hub's token"));
        let open = fixture(|_| {});
        let r = reply(&open.ctx, Request::new("POST", "/login"));
        assert_eq!(r.status, 404, "no read token, no login");
    }

    #[test]
    fn the_page_allows_only_its_own_files_and_no_framing() {
        let f = fixture(|_| {});
        let r = reply(&f.ctx, Request::new("GET", "/"));
        let csp = header(&r, "Content-Security-Policy").unwrap_or_default();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{part} in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(header(&r, "X-Frame-Options"), Some("DENY"));
        let page = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            !page.contains("<script>") && !page.contains("<style>") && !page.contains(" style=")
        );
        assert_eq!(
            reply(&f.ctx, Request::new("GET", "/dashboard.css")).content_type,
            "text/css; charset=utf-8"
        );
    }

    #[test]
    fn the_image_route_exists_only_with_an_images_dir_and_needs_the_read_token() {
        let off = fixture(|_| {});
        let r = reply(&off.ctx, Request::new("GET", "/api/cameras/1/latest"));
        assert_eq!(r.status, 404);
        assert!(
            json_of(&r)["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("no such path")
        );
        let page = reply(&off.ctx, Request::new("GET", "/"));
        assert!(!String::from_utf8_lossy(&page.body).contains("data-images"));
        let images = tempfile::tempdir().expect("images dir");
        let on = fixture(|c| {
            c.images_dir = Some(images.path().canonicalize().expect("canonical"));
            c.read_token = Some("r34d".into());
        });
        let get = |target: &str| Request::new("GET", target);
        let r = reply(&on.ctx, get("/api/cameras/1/latest"));
        assert_eq!(
            (r.status, header(&r, "WWW-Authenticate")),
            (401, Some("Bearer"))
        );
        let auth = |rq: Request<'static>| rq.with_header("Authorization", "Bearer r34d");
        for target in [
            "/api/cameras/1/latest",
            "/api/cameras/1/latest?seq=3",
            "/api/cameras/x/latest",
            "/api/cameras/1/latest?host=garden",
        ] {
            let r = reply(&on.ctx, auth(get(target)));
            assert_eq!(
                (r.status, json_of(&r)),
                (404, json!({"error": "no image"})),
                "{target}"
            );
        }
        let r = reply(&on.ctx, auth(Request::new("POST", "/api/cameras/1/latest")));
        assert_eq!((r.status, header(&r, "Allow")), (405, Some("GET, HEAD")));
        let with = reply(&on.ctx, auth(get("/")));
        let plain = reply(&off.ctx, get("/"));
        assert!(String::from_utf8_lossy(&with.body).contains("<body data-images=\"on\">"));
        assert_ne!(
            header(&with, "ETag"),
            header(&plain, "ETag"),
            "a tag per variant"
        );
        let csp = header(&with, "Content-Security-Policy").unwrap_or_default();
        assert!(csp.contains("img-src 'self' data:"), "{csp}");
    }

    #[test]
    fn a_local_cameras_image_is_served_to_get_and_head_with_its_tag() {
        let images = tempfile::tempdir().expect("images dir");
        let dir = images.path().canonicalize().expect("canonical");
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 0xFF, 0xD9];
        std::fs::write(dir.join("a.jpg"), jpeg).expect("write");
        let f = fixture(|c| c.images_dir = Some(dir.clone()));
        let mut state = State::default();
        let capture = |seq, camera| {
            crate::event::Event::for_test(
                seq,
                crate::state::IMAGE_CAPTURED,
                "2026-12-01T10:00:00.000Z",
                json!({"camera_id": camera, "file_name": "a.jpg"}),
            )
        };
        state.apply(&capture(7, 3));
        let mut theirs = capture(8, 4);
        theirs.host = Some("garden".into());
        state.apply(&theirs);
        f.ctx.cache.publish(&state, f.ctx.store.log_id(), 2);
        let r = reply(&f.ctx, Request::new("GET", "/api/cameras/3/latest?seq=7"));
        assert_eq!(
            (r.status, r.content_type, &r.body[..]),
            (200, "image/jpeg", &jpeg[..])
        );
        assert_eq!(header(&r, "Cache-Control"), Some("no-cache"));
        assert_eq!(header(&r, "X-Content-Type-Options"), Some("nosniff"));
        let tag = header(&r, "ETag").unwrap_or_default().to_owned();
        let head = reply(&f.ctx, Request::new("HEAD", "/api/cameras/3/latest"));
        assert_eq!(
            (head.status, header(&head, "ETag")),
            (200, Some(tag.as_str()))
        );
        let rq = Request::new("GET", "/api/cameras/3/latest").with_header("If-None-Match", &tag);
        let r = reply(&f.ctx, rq);
        assert_eq!((r.status, r.body.len()), (304, 0));
        let r = reply(&f.ctx, Request::new("GET", "/api/cameras/4/latest"));
        assert_eq!(
            (r.status, json_of(&r)),
            (404, json!({"error": "no image"})),
            "not ours"
        );
    }

    #[test]
    fn cross_site_posts_get_403_and_simple_ones_still_415() {
        let f = fixture(|c| c.cors_origins = vec!["http://pi.local:3000".into()]);
        let post = |ct: &str, extra: (&str, &str)| {
            let rq = Request::new("POST", "/api/events")
                .with_header("Content-Type", ct)
                .with_header(extra.0, extra.1)
                .with_body(&br#"{"type":"a","data":{}}"#[..]);
            reply(&f.ctx, rq).status
        };
        let json = "application/json";
        assert_eq!(post(json, ("Origin", "http://evil.example")), 403);
        assert_eq!(post(json, ("Sec-Fetch-Site", "cross-site")), 403);
        assert_eq!(post(json, ("Origin", "http://localhost:8080")), 201);
        assert_eq!(post(json, ("Origin", "http://pi.local:3000")), 201);
        assert_eq!(post("text/plain", ("Origin", "http://evil.example")), 415);
    }

    #[test]
    fn a_stream_takes_the_connection_writes_its_head_and_ends_with_the_hub() {
        let f = fixture(|c| c.max_clients = 1);
        let mut rq = Request::new("GET", "/api/events?types=a").with_header("Host", "[::1]:8080");
        let Answer::Takeover(start) = handle(&mut rq, &f.ctx) else {
            panic!("a stream takes the connection");
        };
        let (mut wire, writer) = std::io::pipe().expect("a pipe");
        let (tx, followed) = crossbeam_channel::unbounded();
        start(Box::new(Piped(writer, tx)));
        // A live stream is handed to the writer at once, its head written: the pipe closed.
        let mut text = String::new();
        wire.read_to_string(&mut text)
            .expect("the head and prelude");
        let mut source = followed
            .recv_timeout(Duration::from_secs(10))
            .expect("handed to the writer");
        // Its one place is taken: the next stream is refused.
        let r = reply(&f.ctx, Request::new("GET", "/api/events"));
        assert_eq!((r.status, header(&r, "Retry-After")), (503, Some("5")));
        let r = reply(&f.ctx, Request::new("GET", "/api/events?camera_id=x"));
        assert_eq!(r.status, 400);
        // Closing the broadcast ends it (the writer then writes the last chunk); dropping
        // the source gives its place back.
        f.ctx.broadcast.close();
        let mut rest = Vec::new();
        assert_eq!(
            source.fill(&mut rest),
            crate::http::server::Fill::End(crate::http::server::Ending::Closed)
        );
        assert!(rest.is_empty());
        assert_eq!(f.ctx.streams.active(), 1);
        drop(source);
        assert_eq!(
            f.ctx.streams.wait(Instant::now() + Duration::from_secs(10)),
            0
        );
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/event-stream; charset=utf-8\r\n"));
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(text.contains("retry: 2000\n: connected\n"), "{text}");
    }
}
