//! [`Request`]: what a handler sees of an HTTP request, as plain data (the server builds it
//! from what the door read; tests build it in memory), and the request target's parsing: the
//! percent-decoded path and the query pairs.

use std::io::Read;
use std::net::SocketAddr;

use super::reply::HttpError;

/// Largest request body accepted (`POST /api/events`). The server refuses a larger
/// declared length before any handler runs.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// One request, as a handler sees it.
pub(crate) struct Request<'a> {
    /// `GET`, `POST`... as sent.
    pub(crate) method: String,
    /// The request target as sent (path and query), for logs.
    pub(crate) target: String,
    /// The percent-decoded path (a `+` stays a `+`).
    pub(crate) path: String,
    /// Decoded query pairs, in order.
    pub(crate) query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// The client's address, when the socket knows it.
    pub(crate) peer: Option<SocketAddr>,
    /// An HTTP/1.0 request (streams then end with the connection, not a last chunk).
    pub(crate) http10: bool,
    body: Box<dyn Read + 'a>,
}

impl<'a> Request<'a> {
    /// A request for `target`; add headers and a body with the `with_` methods.
    pub(crate) fn new(method: &str, target: &str) -> Request<'a> {
        let (path, query) = split_target(target);
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            path,
            query,
            headers: Vec::new(),
            peer: None,
            http10: false,
            body: Box::new(std::io::empty()),
        }
    }

    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Request<'a> {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn with_body(mut self, body: impl Read + 'a) -> Request<'a> {
        self.body = Box::new(body);
        self
    }

    pub(crate) fn with_peer(mut self, peer: Option<SocketAddr>, http10: bool) -> Request<'a> {
        self.peer = peer;
        self.http10 = http10;
        self
    }

    /// The first header called `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header called `name` (case-insensitive), in order.
    pub(crate) fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `key`.
    pub(crate) fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True for `1`, `true`, `yes` (and a bare `?named`).
    pub(crate) fn query_flag(&self, key: &str) -> bool {
        matches!(self.query_value(key), Some("" | "1" | "true" | "yes"))
    }

    /// The client's address in words, for logs and stats.
    pub(crate) fn peer_text(&self) -> String {
        self.peer.map_or_else(|| "?".into(), |p| p.to_string())
    }

    /// Reads the whole body, at most [`MAX_BODY_BYTES`].
    ///
    /// # Errors
    /// 413 for a longer body, 400 when it cannot be read.
    pub(crate) fn read_body(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        self.body
            .as_mut()
            .take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| HttpError::new(400, format!("cannot read body: {e}")))?;
        if body.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        Ok(body)
    }
}

/// The 413 for a body over [`MAX_BODY_BYTES`]; the connection closes after it.
pub(crate) fn too_large() -> HttpError {
    HttpError::new(413, format!("body over {MAX_BODY_BYTES} bytes"))
        .with_header("Connection", "close")
}

/// Splits a request target into its decoded path and query pairs. The path is
/// percent-decoded only; the query as `application/x-www-form-urlencoded` (`+` is a
/// space there). Invalid escapes stay as written; invalid UTF-8 is replaced.
pub(crate) fn split_target(target: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    let pairs = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (path, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn query_strings_are_percent_decoded() {
        let (path, q) = split_target(
            "/api/events?types=image_captured%2Ccamera_status_changed&camera_id=%203&x",
        );
        assert_eq!(path, "/api/events");
        let rq = Request::new("GET", "/?a=1");
        assert_eq!(rq.query_value("a"), Some("1"));
        assert_eq!(
            q,
            [
                ("types", "image_captured,camera_status_changed"),
                ("camera_id", " 3"),
                ("x", "")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        for (raw, want) in [
            ("a%20b", "a b"),
            ("%zz", "%zz"),
            ("%", "%"),
            ("%4", "%4"),
            ("a+b", "a b"),
            ("%C3%A9", "é"),
            ("%FF", "\u{fffd}"),
        ] {
            let (_, q) = split_target(&format!("/?v={raw}"));
            assert_eq!(q[0].1, want, "{raw}");
        }
    }

    /// `+` means a space only in a form-encoded query, never in the path.
    #[test]
    fn a_plus_in_the_path_stays_a_plus() {
        let (path, q) = split_target("/files/a+b%20c?name=a+b");
        assert_eq!(path, "/files/a+b c");
        assert_eq!(q, [("name".to_owned(), "a b".to_owned())]);
    }

    #[test]
    fn bodies_are_read_up_to_the_limit() {
        let ok = vec![b'x'; MAX_BODY_BYTES];
        let mut rq = Request::new("POST", "/").with_body(&ok[..]);
        assert_eq!(rq.read_body().map(|b| b.len()).ok(), Some(MAX_BODY_BYTES));
        let big = vec![b'x'; MAX_BODY_BYTES + 1];
        let mut rq = Request::new("POST", "/").with_body(&big[..]);
        assert_eq!(rq.read_body().err().map(|e| e.status), Some(413));
    }

    proptest! {
        #[test]
        fn targets_never_panic_and_encoding_round_trips(target in ".*", s in ".*") {
            let _ = split_target(&target);
            let encoded: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
            let (path, q) = split_target(&format!("{encoded}?k={encoded}"));
            prop_assert_eq!(&path, &s);
            prop_assert_eq!(&q[0].1, &s);
        }
    }
}
