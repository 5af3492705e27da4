//! An event stream as a client reads it: the WHATWG HTML standard's "interpreting an event
//! stream", and the HTTP/1.1 response head and chunked transfer coding that carry the hub's
//! streams. The one
//! copy for the examples, the integration tests and src/sse.rs's property test, each of
//! which includes this file with `#[path]`; so it uses std only.

use std::io::{self, BufRead, Read};

/// What one line of an event stream amounts to, when it amounts to something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A blank line ended a message that had at least one `data:` line.
    Message(Message),
    /// A line starting with `:` (the hub's prelude and heartbeats).
    Comment,
    /// A `retry:` field made of ASCII digits: the reconnection time in milliseconds.
    Retry(u64),
}

/// A dispatched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The last event ID string at dispatch: empty until an `id:` field set it.
    pub id: String,
    /// The `event:` field, `message` when there was none.
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
}

/// An incremental event-stream parser: feed it the body's bytes in pieces of any size.
/// Lines end in CRLF, LF or CR; a line is decoded as UTF-8 with replacement characters.
#[derive(Debug, Default)]
pub struct Parser {
    /// The line read so far, not yet ended.
    partial: Vec<u8>,
    /// The last byte fed was a CR: an LF first in the next piece ends no further line.
    after_cr: bool,
    data: String,
    event: String,
    /// The last event ID buffer, set by `id:`; it outlives each message.
    id_buffer: String,
    /// The last event ID string, set from the buffer at each dispatch.
    last_id: String,
}

impl Parser {
    /// Feeds the next bytes of the body; returns what the lines they end amount to.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            bytes = bytes.strip_prefix(b"\n").unwrap_or(bytes);
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.partial.extend_from_slice(&bytes[..end]);
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                match bytes.strip_prefix(b"\n") {
                    Some(rest) => bytes = rest,
                    None => self.after_cr = bytes.is_empty(),
                }
            }
            let mut line = std::mem::take(&mut self.partial);
            items.extend(self.line(&String::from_utf8_lossy(&line)));
            line.clear();
            self.partial = line; // keeps its allocation for the next line
        }
        self.partial.extend_from_slice(bytes);
        items
    }

    /// Interprets one line, without its line end.
    pub fn line(&mut self, line: &str) -> Option<Item> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return Some(Item::Comment);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event),
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                return value.parse().ok().map(Item::Retry);
            }
            _ => {} // unknown fields are ignored
        }
        None
    }

    fn dispatch(&mut self) -> Option<Item> {
        self.last_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return None; // no `data:` line since the last blank line
        }
        data.pop(); // the LF after the last data line
        Some(Item::Message(Message {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        }))
    }

    /// The last event ID string: what a reconnecting client sends as `Last-Event-ID`.
    pub fn last_id(&self) -> &str {
        &self.last_id
    }

    /// Bytes of the line not yet ended (for a client that caps line length).
    pub fn partial_bytes(&self) -> usize {
        self.partial.len()
    }
}

/// Every message of a complete stream, as `(last event ID, event type, data)`.
pub fn parse(stream: &str) -> Vec<(String, String, String)> {
    messages(Parser::default().feed(stream.as_bytes()))
}

/// The messages among `items`, as `(last event ID, event type, data)`.
pub fn messages(items: Vec<Item>) -> Vec<(String, String, String)> {
    items
        .into_iter()
        .filter_map(|item| match item {
            Item::Message(m) => Some((m.id, m.event, m.data)),
            _ => None,
        })
        .collect()
}

/// Longest chunk-size line accepted.
const MAX_CHUNK_LINE_BYTES: usize = 8 * 1024;

/// An incremental decoder of HTTP/1.1's chunked transfer coding. A chunk's bytes come out as
/// soon as they arrive, not once the whole chunk is in.
#[derive(Debug, Default)]
pub struct Dechunker {
    /// A chunk-size line (or the CRLF after a chunk) read so far.
    line: Vec<u8>,
    /// Bytes left in the current chunk.
    left: usize,
    /// A chunk's closing CRLF is still to be read.
    crlf: bool,
    ended: bool,
}

impl Dechunker {
    /// Decodes the next bytes of a chunked body and returns the payload they hold. Bytes
    /// after the last chunk are ignored, and so are chunk extensions and trailers.
    ///
    /// # Errors
    /// A size that is not hex, a chunk not followed by CRLF, or an overlong size line.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while !bytes.is_empty() && !self.ended {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                out.extend_from_slice(&bytes[..n]);
                (self.left, bytes) = (self.left - n, &bytes[n..]);
                self.crlf = self.left == 0;
                continue;
            }
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(bytes);
                if self.line.len() > MAX_CHUNK_LINE_BYTES {
                    return Err("chunk-size line too long".into());
                }
                break;
            };
            self.line.extend_from_slice(&bytes[..nl]);
            bytes = &bytes[nl + 1..];
            let line = std::mem::take(&mut self.line);
            let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line));
            if std::mem::take(&mut self.crlf) {
                if !text.is_empty() {
                    return Err("chunk not followed by CRLF".into());
                }
                continue;
            }
            // A size may carry `;extensions`, which mean nothing here.
            let size = text.split(';').next().unwrap_or("").trim();
            self.left =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {text:?}"))?;
            self.ended = self.left == 0;
        }
        Ok(out)
    }

    /// Whether the last chunk (size 0) came: the server ended the body cleanly.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// Longest response-head line accepted.
const MAX_HEAD_LINE_BYTES: usize = 8 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 100;

/// A response's status and headers.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// Names and values as sent, trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Reads a response head up to and including its blank line; lines end in CRLF or LF.
    ///
    /// # Errors
    /// The connection's, or: a line over 8 KiB or ended by EOF, a head that is not UTF-8, a
    /// status line without a status code, over 100 headers.
    pub fn read(r: &mut impl BufRead) -> io::Result<Head> {
        let status_line = read_line(r)?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid("the answer is not HTTP"))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                return Ok(Head { status, headers });
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            if headers.len() > MAX_HEADERS {
                return Err(invalid("over 100 response headers"));
            }
        }
    }

    /// A header by name, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the body comes in the chunked transfer coding.
    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

/// One CRLF- or LF-terminated line of a response head, without its terminator.
fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.take(MAX_HEAD_LINE_BYTES as u64)
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without ending the stream",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("response head is not UTF-8"))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut Parser, text: &str) -> Vec<(String, String, String)> {
        messages(p.feed(text.as_bytes()))
    }

    #[test]
    fn parser_follows_the_whatwg_rules() {
        let mut p = Parser::default();
        let got = feed(
            &mut p,
            "retry: 2000\n: connected\n\nid: a-1\ndata: {}\n\n:\n\
             id: a-2\nevent: reset\ndata: x\ndata:y\n\nid\n\ndata: z\n\n",
        );
        assert_eq!(
            got,
            vec![
                ("a-1".into(), "message".into(), "{}".into()),
                ("a-2".into(), "reset".into(), "x\ny".into()),
                // `id` alone empties the id, which then sticks to later messages.
                ("".into(), "message".into(), "z".into()),
            ]
        );
    }

    #[test]
    fn lines_end_in_crlf_lf_or_cr_even_split_between_pieces() {
        let wire = b"retry: 5\r\n:\r\rid: 1\0x\rid: 7\r\ndata: a\r\r\ndata\n\nid: 8\ndata: b";
        for split in 1..wire.len() {
            let mut p = Parser::default();
            let mut items = p.feed(&wire[..split]);
            items.extend(p.feed(&wire[split..]));
            let message = |id: &str, data: &str| {
                let (id, event, data) = (id.into(), "message".into(), data.into());
                Item::Message(Message { id, event, data })
            };
            let want = [
                Item::Retry(5),
                Item::Comment,
                message("7", "a"),
                message("7", ""),
            ];
            assert_eq!(items, want, "split at {split}");
            // The unfinished message's `id: 8` is not the last event ID yet.
            assert_eq!((p.last_id(), p.partial_bytes()), ("7", 7), "split {split}");
        }
        assert_eq!(parse("data: x\n"), vec![], "no blank line, no message");
    }

    #[test]
    fn chunked_bodies_decode_across_chunks() {
        let raw = b"5\r\nid: a\r\n3;ext=1\r\n\n\nd\r\n0\r\n\r\n";
        for split in 1..raw.len() {
            let mut d = Dechunker::default();
            let mut out = d.feed(&raw[..split]).unwrap_or_default();
            out.extend(d.feed(&raw[split..]).unwrap_or_default());
            assert_eq!(String::from_utf8_lossy(&out), "id: a\n\nd");
            assert!(d.ended(), "split {split}");
        }
        let bad = Dechunker::default().feed(b"2\r\nabc\r\n");
        assert_eq!(bad, Err("chunk not followed by CRLF".into()));
    }
}
