//! `GET /`, `/dashboard.css`, `/dashboard.js` and `/dashboard-worker.js`: the dashboard,
//! four self-contained files compiled into the binary (no CDN, no build step, no file
//! system access); and the read-token login form that `GET /` serves in its place while
//! `--read-token` is set and the browser has no cookie yet.
//!
//! The page carries no inline script or style, so its Content-Security-Policy allows only
//! this hub's own files, and no other site may frame it (clickjacking).
//!
//! The worker script is a separate URL because a `SharedWorker` is shared by the tabs that
//! create it from the *same* URL: one made from a `blob:` URL is private to its page, so
//! eight tabs would open eight streams. The page also loads it as a classic script, to run
//! the same connection code itself where `SharedWorker` is missing (Chrome on Android).

use std::sync::OnceLock;

use super::reply::Reply;
use super::request::Request;

const PAGE: &str = include_str!("dashboard.html");
const STYLE: &str = include_str!("dashboard.css");
const SCRIPT: &str = include_str!("dashboard.js");
const WORKER: &str = include_str!("dashboard-worker.js");

/// What the page may load: its own script, style and worker files, `fetch` and
/// `EventSource` to this hub, the cameras' latest images from this hub and the empty
/// `data:` icon; nothing inline, no plugin, no other site, and no framing by anyone.
pub(super) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; worker-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The login form: no script or style at all (only the empty `data:` icon); it posts to
/// this hub only.
const LOGIN_CSP: &str = "default-src 'none'; img-src data:; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The login form; `{message}` is a fixed sentence of ours (never request text).
const LOGIN: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Log in · timelapse-events</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="data:,">
</head>
<body>
<h1>Timelapse cameras</h1>
<p>This hub needs its read token to show the dashboard. It is asked for once: the
browser keeps it in a cookie for this hub.</p>
<p id="login-message" role="alert">{message}</p>
<form id="login" method="post" action="/login">
<label>Token <input id="token" name="token" type="password" autocomplete="current-password" required autofocus></label>
<button type="submit">Open the dashboard</button>
</form>
</body>
</html>
"#;

/// FNV-1a of a compiled-in file: changes exactly when the binary ships different bytes.
fn tag_of(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

/// Serves a compiled-in file with an `ETag`; `no-cache` so a browser revalidates (a cheap
/// 304) and never runs a page from an older binary against a newer hub.
fn asset(rq: &Request<'_>, tag: &str, content_type: &'static str, body: &str) -> Reply {
    if rq
        .header("If-None-Match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        return Reply::empty(304)
            .with_header("ETag", tag)
            .with_header("Cache-Control", "no-cache");
    }
    Reply::bytes(200, content_type, body.as_bytes().to_vec())
        .with_header("ETag", tag)
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Content-Type-Options", "nosniff")
}

/// No site may show our pages in a frame: CSP `frame-ancestors` for today's browsers,
/// `X-Frame-Options` for older ones.
fn unframed(reply: Reply, csp: &'static str) -> Reply {
    reply
        .with_header("Content-Security-Policy", csp)
        .with_header("X-Frame-Options", "DENY")
}

/// The page; with `images` (`--images-dir`) its `<body data-images="on">` tells the
/// script to show each camera's latest image. Each variant has its own tag.
pub(super) fn page(rq: &Request<'_>, images: bool) -> Reply {
    static PLAIN: OnceLock<String> = OnceLock::new();
    static WITH_IMAGES: OnceLock<(String, String)> = OnceLock::new();
    let (body, tag) = if images {
        let (body, tag) = WITH_IMAGES.get_or_init(|| {
            let body = PAGE.replacen("<body>", "<body data-images=\"on\">", 1);
            let tag = tag_of(&body);
            (body, tag)
        });
        (body.as_str(), tag)
    } else {
        (PAGE, PLAIN.get_or_init(|| tag_of(PAGE)))
    };
    unframed(asset(rq, tag, "text/html; charset=utf-8", body), PAGE_CSP)
}

pub(super) fn style(rq: &Request<'_>) -> Reply {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| tag_of(STYLE));
    asset(rq, tag, "text/css; charset=utf-8", STYLE)
}

pub(super) fn script(rq: &Request<'_>) -> Reply {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| tag_of(SCRIPT));
    asset(rq, tag, "text/javascript; charset=utf-8", SCRIPT)
}

/// The login form, in place of the page (`401`: not yet allowed), with `message` (e.g.
/// after a wrong token). Never cached: after the login, `/` must be asked for again.
pub(super) fn login(status: u16, message: Option<&'static str>) -> Reply {
    let body = LOGIN.replace("{message}", message.unwrap_or(""));
    let reply = Reply::bytes(status, "text/html; charset=utf-8", body.into_bytes())
        .with_header("Cache-Control", "no-store");
    unframed(reply, LOGIN_CSP)
}

pub(super) fn worker(rq: &Request<'_>) -> Reply {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| tag_of(WORKER));
    asset(rq, tag, "text/javascript; charset=utf-8", WORKER)
}
