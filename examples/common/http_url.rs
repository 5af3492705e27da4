//! `--url` for the examples that talk to the hub over plain HTTP (`tail`, `simulate_cameras
//! --url`), parsed by the `http` crate that ureq re-exports. Included with `#[path]`.

use ureq::http::Uri;
use ureq::http::uri::PathAndQuery;

/// Parses `url`: `http://` only (no TLS here), and no path (or `/`) means the hub's
/// `/api/events`. Errors name the flag (`--url`) so they can be printed as they are.
pub fn parse(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url must start with http:// (got {url:?})"));
    }
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("no host in --url {url:?}"));
    }
    // `http` reads an out-of-range port as none: anything after the host is a bad port.
    if uri.port_u16().is_none() && uri.authority().is_some_and(|a| a.as_str() != host) {
        return Err(format!("bad port in --url {url:?}"));
    }
    if uri.path() != "/" || uri.query().is_some() {
        return Ok(uri);
    }
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(PathAndQuery::from_static("/api/events"));
    Uri::from_parts(parts).map_err(|e| format!("bad --url {url:?}: {e}"))
}
