//! `http://host[:port][/path]` parsing shared by the examples that talk to the hub over
//! plain HTTP (`tail`, `simulate_cameras --url`). Included with `#[path]`; no HTTP crate.

/// A parsed `http://` URL. An empty path (or `/`) means the hub's `/api/events`.
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses `url`; errors name the flag (`--url`) so they can be printed as they are.
pub fn parse(url: &str) -> Result<HttpUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must start with http:// (got {url:?})"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, port) = v6
                .split_once(']')
                .ok_or_else(|| format!("unclosed [ in --url {url:?}"))?;
            (host, port.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("bad port in --url {url:?}"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(format!("no host in --url {url:?}"));
    }
    let path = if path.is_empty() || path == "/" {
        "/api/events"
    } else {
        path
    };
    Ok(HttpUrl {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}
