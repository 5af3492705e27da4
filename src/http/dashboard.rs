//! `GET /`: the dashboard, one self-contained page compiled into the binary.

use std::sync::OnceLock;

use tiny_http::Request;

use super::reply::Reply;
use super::routes::header_value;

const PAGE: &str = include_str!("dashboard.html");

fn etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| {
        // FNV-1a of the page: changes exactly when the binary ships a different page.
        let hash = PAGE.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("\"{hash:016x}\"")
    })
}

pub(super) fn page(rq: &Request) -> Reply {
    let tag = etag();
    if header_value(rq, "If-None-Match").is_some_and(|v| v.split(',').any(|t| t.trim() == tag)) {
        return Reply::empty(304)
            .with_header("ETag", tag)
            .with_header("Cache-Control", "no-cache");
    }
    Reply::bytes(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec())
        .with_header("ETag", tag)
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Content-Type-Options", "nosniff")
}
