//! HTTP/1.1 request framing as pure functions over bytes: where a request head ends and
//! what it says (parsed by `httparse` within our limits), how its body is framed (RFC 9112
//! §6), and an incremental decoder for a chunked body. No I/O: the door feeds it what it
//! has read, the tests feed it strings.

use super::super::request::MAX_BODY_BYTES;

/// Longest request head taken (request line and headers); longer gets 431.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines taken; more gets 431.
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) or trailer line in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    /// HTTP/1.0 (else 1.1).
    pub(crate) http10: bool,
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes the head took, its blank line included.
    pub(crate) len: usize,
}

impl Head {
    /// The first header called `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection may carry another request after this one.
    pub(crate) fn keep_alive(&self) -> bool {
        let says = |word: &str| {
            self.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("Connection"))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(word))
        };
        if self.http10 {
            says("keep-alive") && !says("close")
        } else {
            !says("close")
        }
    }

    /// `Expect: 100-continue`.
    pub(crate) fn expects_continue(&self) -> bool {
        self.header("Expect")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }
}

/// A request the door answers itself and then closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// No complete head yet (and not over the limit).
    Partial,
    Done(Head),
    Refused(Refusal),
}

/// Whether `buf` can hold a complete head: it has a blank line (`\n\n` or `\n\r\n`)
/// starting at or after `from` (the length already searched, minus the 2 bytes a blank
/// line can straddle). Cheap, so a head trickled in byte by byte is parsed once, not once
/// per byte.
pub(crate) fn has_blank_line(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    let tail = &buf[start.min(buf.len())..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Parses the head at the start of `buf`.
pub(crate) fn parse_head(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut rq = httparse::Request::new(&mut headers);
    match rq.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => Parse::Refused(refuse(
            431,
            format!("request head over {MAX_HEAD_BYTES} bytes"),
        )),
        Ok(httparse::Status::Partial) => Parse::Partial,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Parse::Refused(refuse(
            431,
            format!("request head over {MAX_HEAD_BYTES} bytes"),
        )),
        Ok(httparse::Status::Complete(len)) => {
            let (Some(method), Some(target), Some(version)) = (rq.method, rq.path, rq.version)
            else {
                return Parse::Refused(refuse(400, "incomplete request line"));
            };
            Parse::Done(Head {
                method: method.to_owned(),
                target: target.to_owned(),
                http10: version == 0,
                headers: rq
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                len,
            })
        }
        Err(httparse::Error::TooManyHeaders) => Parse::Refused(refuse(
            431,
            format!("more than {MAX_HEADERS} request headers"),
        )),
        Err(httparse::Error::Version) => {
            Parse::Refused(refuse(505, "only HTTP/1.0 and HTTP/1.1 are served"))
        }
        Err(e) => Parse::Refused(refuse(400, format!("malformed request head: {e}"))),
    }
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Length(usize),
    Chunked,
}

/// The body framing `head` declares (RFC 9112 §6.3), refusing what could be read two
/// ways: `Content-Length` with `Transfer-Encoding`, `Content-Length`s that disagree, a
/// length that is not a number, a coding other than `chunked`, and a declared length over
/// [`MAX_BODY_BYTES`] (413, before a byte of it is read).
pub(crate) fn framing(head: &Head) -> Result<Body, Refusal> {
    let named = |name: &'static str| {
        head.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let codings: Vec<&str> = named("Transfer-Encoding")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let lengths: Vec<&str> = named("Content-Length")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !codings.is_empty() || named("Transfer-Encoding").next().is_some() {
        if !lengths.is_empty() {
            return Err(refuse(400, "Content-Length with Transfer-Encoding"));
        }
        return match codings.as_slice() {
            [one] if one.eq_ignore_ascii_case("chunked") => Ok(Body::Chunked),
            _ => Err(refuse(501, "only the chunked transfer coding is accepted")),
        };
    }
    let mut declared: Option<u64> = None;
    for text in lengths {
        let n = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| refuse(400, "Content-Length is not a number of bytes"))?;
        if declared.is_some_and(|d| d != n) {
            return Err(refuse(400, "conflicting Content-Length headers"));
        }
        declared = Some(n);
    }
    match declared {
        None | Some(0) => Ok(Body::None),
        Some(n) if n > MAX_BODY_BYTES as u64 => {
            Err(refuse(413, format!("body over {MAX_BODY_BYTES} bytes")))
        }
        // At most MAX_BODY_BYTES, so it fits.
        Some(n) => Ok(Body::Length(usize::try_from(n).unwrap_or(MAX_BODY_BYTES))),
    }
}

/// Decodes a chunked body as its bytes arrive, keeping its place: each byte is looked at
/// once however the body is split.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    /// Decoded body so far.
    pub(crate) body: Vec<u8>,
    state: ChunkState,
    /// The line being read (chunk size or trailer).
    line: Vec<u8>,
    /// Bytes of the input consumed so far.
    pos: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

impl Chunked {
    /// Takes `input` (everything after the head read so far; the start is what earlier
    /// calls saw). `Ok(Some(n))`: the body ended after `n` bytes of `input`.
    ///
    /// # Errors
    /// A malformed chunk (400) or a body over [`MAX_BODY_BYTES`] (413).
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, Refusal> {
        while self.pos < input.len() {
            match self.state {
                ChunkState::Size | ChunkState::Trailer | ChunkState::DataEnd => {
                    let b = input[self.pos];
                    self.pos += 1;
                    if b != b'\n' {
                        if self.line.len() >= MAX_CHUNK_LINE {
                            return Err(refuse(400, "chunk line too long"));
                        }
                        self.line.push(b);
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = match self.state {
                        ChunkState::Size => match chunk_size(line)? {
                            0 => ChunkState::Trailer,
                            n if self.body.len() + n > MAX_BODY_BYTES => {
                                return Err(refuse(
                                    413,
                                    format!("body over {MAX_BODY_BYTES} bytes"),
                                ));
                            }
                            n => ChunkState::Data(n),
                        },
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => {
                            return Err(refuse(400, "chunk data longer than its size"));
                        }
                        // Trailer fields are read and dropped; a blank line ends them.
                        _ if line.is_empty() => ChunkState::Done,
                        _ => ChunkState::Trailer,
                    };
                    if self.state == ChunkState::Done {
                        return Ok(Some(self.pos));
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len() - self.pos);
                    self.body
                        .extend_from_slice(&input[self.pos..self.pos + take]);
                    self.pos += take;
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::Done => return Ok(Some(self.pos)),
            }
        }
        Ok(None)
    }
}

/// A chunk-size line's size (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<usize, Refusal> {
    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
    let hex = std::str::from_utf8(hex).unwrap_or_default().trim();
    if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(400, "malformed chunk size"));
    }
    usize::from_str_radix(hex, 16).map_err(|_| refuse(400, "malformed chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(text: &str) -> Head {
        match parse_head(text.as_bytes()) {
            Parse::Done(h) => h,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn refused(text: &[u8]) -> u16 {
        match parse_head(text) {
            Parse::Refused(r) => r.status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_head_parses_with_its_length_and_headers() {
        let text = "POST /api/events?x=1 HTTP/1.1\r\nHost: pi\r\nContent-Length: 2\r\n\r\n{}";
        let h = done(text);
        assert_eq!(
            (h.method.as_str(), h.target.as_str()),
            ("POST", "/api/events?x=1")
        );
        assert_eq!(h.len, text.len() - 2);
        assert_eq!(h.header("host"), Some("pi"));
        assert!(!h.http10 && h.keep_alive());
        assert_eq!(framing(&h), Ok(Body::Length(2)));
        let h = done("GET / HTTP/1.0\r\n\r\n");
        assert!(h.http10 && !h.keep_alive());
        assert!(done("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(!done("GET / HTTP/1.1\r\nConnection: x, close\r\n\r\n").keep_alive());
    }

    #[test]
    fn partial_heads_wait_and_the_blank_line_is_found_across_reads() {
        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..text.len() {
            assert_eq!(parse_head(&text[..cut]), Parse::Partial, "cut at {cut}");
            assert!(!has_blank_line(&text[..cut], 0));
        }
        // The blank line straddles the previous read's end.
        assert!(has_blank_line(text, text.len() - 1));
        assert!(has_blank_line(b"GET / HTTP/1.1\n\n", 15));
    }

    #[test]
    fn heads_over_the_limits_get_431() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(refused(&big), 431);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(refused(&big), 431);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(refused(many.as_bytes()), 431);
        assert_eq!(refused(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(refused(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), 400);
        assert_eq!(
            refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            400
        );
    }

    #[test]
    fn ambiguous_bodies_are_refused() {
        let framed = |headers: &str| framing(&done(&format!("POST / HTTP/1.1\r\n{headers}\r\n")));
        let status = |headers: &str| framed(headers).map_err(|r| r.status);
        assert_eq!(status(""), Ok(Body::None));
        assert_eq!(status("Content-Length: 0\r\n"), Ok(Body::None));
        assert_eq!(
            status("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(Body::Length(5))
        );
        assert_eq!(
            status("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(400)
        );
        assert_eq!(status("Content-Length: 5, 6\r\n"), Err(400));
        assert_eq!(status("Content-Length: -1\r\n"), Err(400));
        assert_eq!(status("Content-Length: 1e3\r\n"), Err(400));
        assert_eq!(
            status("Content-Length: 100000000000000000000000\r\n"),
            Err(400)
        );
        assert_eq!(status("Content-Length: 100000000000000\r\n"), Err(413));
        assert_eq!(status("Transfer-Encoding: chunked\r\n"), Ok(Body::Chunked));
        assert_eq!(
            status("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
            Err(400)
        );
        assert_eq!(status("Transfer-Encoding: gzip, chunked\r\n"), Err(501));
        assert_eq!(status("Transfer-Encoding: \r\n"), Err(501));
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = wire.len() - 4;
        for cut in 0..wire.len() {
            let mut c = Chunked::default();
            let early = c.feed(&wire[..cut]).expect("a valid prefix");
            assert!(early.is_none() || cut >= end, "cut at {cut}: {early:?}");
            let got = c.feed(wire).expect("valid");
            assert_eq!(got, Some(end), "cut at {cut}");
            assert_eq!(c.body, b"Wikipedia");
        }
        let bad = |wire: &[u8]| Chunked::default().feed(wire).map_err(|r| r.status);
        assert_eq!(bad(b"zz\r\n"), Err(400));
        assert_eq!(bad(b"3\r\nabcd\r\n"), Err(400));
        assert_eq!(bad(b"ffffffffff\r\n"), Err(400));
        assert_eq!(
            bad(format!("{:x}\r\n", MAX_BODY_BYTES + 1).as_bytes()),
            Err(413)
        );
    }
}
