//! A [`Reply`] as the bytes of an HTTP/1.x response, by tiny_http's response writer
//! (`Response::raw_print`: status line, `Date`, `Content-Length`). The one module that
//! knows tiny_http.

use tiny_http::{HTTPVersion, Header, Response};

use super::super::reply::Reply;

/// Headers on every answer, streams included.
pub(crate) const EVERY_ANSWER: [(&str, &str); 1] = [("X-Content-Type-Options", "nosniff")];

/// The response to send for `reply`. `close`: the connection ends after it (said in a
/// `Connection: close`); `head`: a HEAD request (no body).
pub(crate) fn render(reply: Reply, http10: bool, head: bool, close: bool) -> Vec<u8> {
    let mut r = Response::from_data(reply.body).with_status_code(reply.status);
    let fixed = EVERY_ANSWER.iter().map(|&(k, v)| (k, v.to_owned()));
    let headers = std::iter::once(("Content-Type", reply.content_type.to_owned()))
        .chain(
            reply
                .headers
                .into_iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("Connection")),
        )
        .chain(fixed);
    for (name, value) in headers {
        // Values we build are ASCII without CR/LF; one that is not is dropped, not sent.
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            r.add_header(h);
        }
    }
    let version = if http10 {
        HTTPVersion(1, 0)
    } else {
        HTTPVersion(1, 1)
    };
    let mut out = Vec::with_capacity(256);
    // Writing into a Vec cannot fail.
    let _ = r.raw_print(&mut out, version, &[], head, None);
    if close {
        // tiny_http drops a `Connection` header given to it (its own server adds one).
        let at = out
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(0, |i| i + 2);
        out.splice(at..at, b"Connection: close\r\n".iter().copied());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_renders_with_length_nosniff_and_its_connection_choice() {
        let reply = Reply::bytes(201, "application/json", b"{}".to_vec())
            .with_header("Location", "/x")
            .with_header("Connection", "close");
        let text = String::from_utf8(render(reply, false, false, false)).expect("text");
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 2\r\n"), "{text}");
        assert!(
            text.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nLocation: /x\r\n"), "{text}");
        // Whether the connection closes is the server's call, not the reply's.
        assert!(!text.contains("Connection:"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        let text = String::from_utf8(render(Reply::empty(204), true, true, true)).expect("text");
        assert!(text.starts_with("HTTP/1.0 204"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    }
}
