//! `GET /` and `GET /dashboard-worker.js`: the dashboard, two self-contained files compiled
//! into the binary (no CDN, no build step, no file system access).
//!
//! The worker script is a separate URL because a `SharedWorker` is shared by the tabs that
//! create it from the *same* URL: one made from a `blob:` URL is private to its page, so
//! eight tabs would open eight streams. The page also loads it as a classic script, to run
//! the same connection code itself where `SharedWorker` is missing (Chrome on Android).

use std::sync::OnceLock;

use super::reply::Reply;
use super::request::Request;

const PAGE: &str = include_str!("dashboard.html");
const WORKER: &str = include_str!("dashboard-worker.js");

/// FNV-1a of a compiled-in file: changes exactly when the binary ships different bytes.
fn tag_of(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

/// Serves a compiled-in file with an `ETag`; `no-cache` so a browser revalidates (a cheap
/// 304) and never runs a page from an older binary against a newer hub.
fn asset(rq: &Request<'_>, tag: &str, content_type: &'static str, body: &'static str) -> Reply {
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

pub(super) fn page(rq: &Request<'_>) -> Reply {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| tag_of(PAGE));
    asset(rq, tag, "text/html; charset=utf-8", PAGE)
}

pub(super) fn worker(rq: &Request<'_>) -> Reply {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| tag_of(WORKER));
    asset(rq, tag, "text/javascript; charset=utf-8", WORKER)
}
