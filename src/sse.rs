//! Pure SSE pieces: event frames, the stream prelude, heartbeats and resets, HTTP chunk
//! framing, what a stream subscribes to ([`Filter`]) and where it resumes (`Last-Event-ID`).
//! No I/O: `http::stream` does the writing, `http::request` the query parsing.

use std::sync::Arc;

use serde_json::json;

use crate::error::quote;
use crate::event::{Cursor, Event};

/// Browser reconnect delay announced in the prelude, in milliseconds.
pub(crate) const RETRY_MS: u64 = 2000;

/// A bare comment line: keeps proxies and NAT tables from timing out, and lets us notice a
/// vanished peer. Deliberately not `: keepalive` + blank line, which some clients (httpx-sse
/// 0.4) surface as an empty message once an id has been seen.
pub(crate) const HEARTBEAT: &[u8] = b":\n";

/// One dispatched event, encoded once for every subscriber (shared as `Arc<Frame>`).
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) seq: i64,
    pub(crate) event_type: String,
    pub(crate) camera_id: Option<i64>,
    /// The camera host it came from (`None`: this one).
    pub(crate) host: Option<String>,
    /// `id:` + `data:` lines.
    pub(crate) plain: Box<[u8]>,
    /// The same with an `event: <type>` line, for `?named=1`.
    pub(crate) named: Box<[u8]>,
}

/// One event's frame: `id:`, optionally `event: <type>`, and one `data:` line. serde_json
/// writes compact JSON, where strings escape `\n` and `\r`, so the data is always one line.
pub(crate) fn encode(event: &Event, named: bool) -> String {
    let data = event.envelope().to_string();
    encode_with(event, named, &data)
}

fn encode_with(event: &Event, named: bool, data: &str) -> String {
    let id = event.cursor;
    if named {
        format!("id: {id}\nevent: {}\ndata: {data}\n\n", event.event_type)
    } else {
        format!("id: {id}\ndata: {data}\n\n")
    }
}

impl Frame {
    /// Encodes both variants once; every subscriber shares them.
    pub(crate) fn new(event: &Event) -> Arc<Frame> {
        let data = event.envelope().to_string();
        let plain = encode_with(event, false, &data);
        let named = encode_with(event, true, &data);
        Arc::new(Frame {
            seq: event.cursor.seq,
            event_type: event.event_type.clone(),
            camera_id: event.camera_id(),
            host: event.host.clone(),
            plain: plain.into_bytes().into_boxed_slice(),
            named: named.into_bytes().into_boxed_slice(),
        })
    }

    pub(crate) fn bytes(&self, named: bool) -> &[u8] {
        if named { &self.named } else { &self.plain }
    }
}

/// The first bytes of every stream: a reconnect delay and a comment, so that browsers fire
/// `open` at once. No blank line after them: httpx-sse 0.4 turns a blank line that follows
/// a `retry:` into an empty `message` event (the spec says it dispatches nothing).
pub(crate) fn prelude() -> Vec<u8> {
    format!("retry: {RETRY_MS}\n: connected\n").into_bytes()
}

/// An in-band `reset`: the client's cursor cannot be resumed; what follows is live from
/// `head`. Carries `id: head`, so the client's next reconnect resumes from there.
pub(crate) fn reset_frame(head: Cursor, reason: &str) -> Vec<u8> {
    let data = json!({"reason": reason, "cursor": head.to_string()});
    format!("id: {head}\nevent: reset\ndata: {data}\n\n").into_bytes()
}

/// A named `snapshot` frame carrying the state at `cursor`.
pub(crate) fn snapshot_frame(cursor: Cursor, state_json: &str) -> Vec<u8> {
    format!("id: {cursor}\nevent: snapshot\ndata: {state_json}\n\n").into_bytes()
}

/// Appends `payload` as one HTTP/1.1 chunk.
pub(crate) fn push_chunk(out: &mut Vec<u8>, payload: &[u8]) {
    if payload.is_empty() {
        return; // an empty chunk would end the body
    }
    out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The chunk that ends a chunked body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What a stream subscribes to: `?types=a,b` and `?camera_id=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub(crate) types: Option<Vec<String>>,
    pub(crate) camera_id: Option<i64>,
    /// One camera host's events: `Some(None)` this host's own, `Some(Some(name))` another's.
    pub(crate) host: Option<Option<String>>,
}

impl Filter {
    pub(crate) fn matches(
        &self,
        event_type: &str,
        camera_id: Option<i64>,
        host: Option<&str>,
    ) -> bool {
        if let Some(types) = &self.types
            && !types.iter().any(|t| t == event_type)
        {
            return false;
        }
        if let Some(want) = &self.host
            && want.as_deref() != host
        {
            return false;
        }
        match self.camera_id {
            Some(want) => camera_id == Some(want),
            None => true,
        }
    }

    pub(crate) fn matches_event(&self, e: &Event) -> bool {
        self.matches(&e.event_type, e.camera_id(), e.host.as_deref())
    }

    pub(crate) fn matches_frame(&self, f: &Frame) -> bool {
        self.matches(&f.event_type, f.camera_id, f.host.as_deref())
    }

    /// The filter as stats show it; `host` only when the stream asked for one, so that a
    /// single host's stats read as they always did.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let mut v = json!({"types": self.types, "camera_id": self.camera_id});
        if let (Some(host), serde_json::Value::Object(m)) = (&self.host, &mut v) {
            // This host's own: its name is not known here, and `"local"` says what it means.
            m.insert("host".into(), json!(host.as_deref().unwrap_or("local")));
        }
        v
    }
}

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// No cursor: live events only.
    Live,
    /// Resume after this cursor (still to be checked against the database).
    After(Cursor),
    /// The client sent something that is not a cursor (quoted, for the log: a short
    /// prefix of it): reset, then live.
    Malformed(String),
}

/// `Last-Event-ID` header first (what `EventSource` sends on its own reconnects), then the
/// `last_event_id` query parameter (for a fresh page that remembers its place).
pub(crate) fn resume_from(header: Option<&str>, query: Option<&str>) -> Resume {
    match header.or(query).map(str::trim) {
        None | Some("") => Resume::Live,
        Some(raw) => match raw.parse::<Cursor>() {
            Ok(c) => Resume::After(c),
            Err(_) => Resume::Malformed(quote(raw)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, Priority};

    fn event(t: &str, data: serde_json::Value) -> Event {
        Event {
            cursor: Cursor {
                log_id: 0xabcdef01,
                seq: 7,
            },
            id: EventId(3),
            priority: Priority::High,
            source: "camera-1".into(),
            ..Event::for_test(7, t, "2026-11-26T10:00:00.123Z", data)
        }
    }

    #[test]
    fn frames_are_one_data_line_even_with_newlines_in_payload() {
        let f = Frame::new(&event(
            "image_captured",
            json!({"camera_id": 4, "note": "a\nb\r\nc"}),
        ));
        let text = std::str::from_utf8(&f.plain).unwrap_or_default();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        assert_eq!(lines[0], "id: abcdef01-7");
        assert!(lines[1].starts_with("data: {"));
        assert_eq!((lines[2], lines[3]), ("", ""));
        let v: serde_json::Value = serde_json::from_str(&lines[1][6..]).unwrap_or_default();
        assert_eq!(v["type"], "image_captured");
        assert_eq!(v["id"], 3);
        assert_eq!(v["data"]["note"], "a\nb\r\nc");
        assert_eq!(v["priority"], "high");
        assert_eq!(v["timestamp"], "2026-11-26T10:00:00.123Z");
        assert_eq!(f.camera_id, Some(4));
        let named = std::str::from_utf8(&f.named).unwrap_or_default();
        assert!(named.starts_with("id: abcdef01-7\nevent: image_captured\ndata: {"));
    }

    #[test]
    fn chunks_frame_payloads_and_skip_empty_ones() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello");
        push_chunk(&mut out, b"");
        push_chunk(&mut out, &[b'x'; 26]);
        let expected = format!("5\r\nhello\r\n1a\r\n{}\r\n", "x".repeat(26));
        assert_eq!(String::from_utf8_lossy(&out), expected);
    }

    #[test]
    fn resume_prefers_the_header_and_flags_garbage() {
        let c = Cursor { log_id: 1, seq: 5 };
        assert_eq!(
            resume_from(Some("00000001-5"), Some("00000001-9")),
            Resume::After(c)
        );
        assert_eq!(resume_from(None, Some("00000001-5")), Resume::After(c));
        assert_eq!(resume_from(None, None), Resume::Live);
        assert_eq!(resume_from(Some(" "), None), Resume::Live);
        assert!(matches!(
            resume_from(Some("DROP TABLE"), None),
            Resume::Malformed(_)
        ));
        assert!(matches!(
            resume_from(Some("42"), None),
            Resume::Malformed(_)
        ));
        let huge = "9".repeat(100_000);
        let Resume::Malformed(quoted) = resume_from(Some(&huge), None) else {
            panic!("100,000 digits are no cursor")
        };
        assert_eq!(quoted, format!("`{}…` (100000 bytes)", "9".repeat(64)));
    }

    #[test]
    fn reset_frames_carry_the_head_as_id() {
        let f = reset_frame(Cursor { log_id: 2, seq: 10 }, "stale cursor");
        let text = String::from_utf8_lossy(&f);
        assert!(
            text.starts_with("id: 00000002-10\nevent: reset\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("\n\n"));
    }
}

/// Property tests: any event survives the trip through our encoder and the parser written
/// from the SSE specification that the tests and examples share; the query, cursor and validation parsers never panic and
/// agree with the SQL CHECKs.
/// The WHATWG event-stream parser the integration tests and examples use too.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../examples/common/sse.rs"]
mod spec;

#[cfg(test)]
mod props {
    use super::*;
    use crate::event::{EventId, Priority, validate_type};
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".*", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_event_round_trips_through_a_spec_parser(
            t in "[A-Za-z0-9_.:-]{1,64}",
            data in prop::collection::btree_map(".*", arb_json(), 0..5),
            source in "[^\u{0}]{1,20}",
            seq in 0i64..i64::MAX,
            stream in any::<u32>(),
            named in any::<bool>(),
            heartbeats in 0usize..3,
        ) {
            let data: Map<String, Value> = data.into_iter().collect();
            let event = Event {
                cursor: Cursor { log_id: stream, seq },
                id: EventId(seq),
                event_type: t.clone(),
                data: data.clone(),
                priority: Priority::Low,
                source,
                created_at: "2026-11-26T10:00:00.000Z".into(),
                host: None,
            };
            let frame = Frame::new(&event);
            let mut wire = String::from_utf8(prelude()).unwrap_or_default();
            for _ in 0..heartbeats {
                wire.push_str(std::str::from_utf8(HEARTBEAT).unwrap_or_default());
            }
            wire.push_str(std::str::from_utf8(frame.bytes(named)).unwrap_or_default());
            let parsed = spec::parse(&wire);
            prop_assert_eq!(parsed.len(), 1, "exactly one event from {:?}", wire);
            let (id, kind, payload) = &parsed[0];
            prop_assert_eq!(id, &event.cursor.to_string());
            prop_assert_eq!(kind, if named { &t } else { "message" });
            let v: Value = serde_json::from_str(payload).unwrap_or_default();
            prop_assert_eq!(&v["data"], &Value::Object(data));
            prop_assert_eq!(&v["type"], &Value::String(t));
            prop_assert_eq!(id.parse::<Cursor>().ok(), Some(event.cursor));
        }

        #[test]
        fn cursor_parsers_never_panic(target in ".*", header in proptest::option::of(".*")) {
            let _ = resume_from(header.as_deref(), Some(&target));
            let _ = target.parse::<Cursor>();
        }

        #[test]
        fn accepted_types_are_exactly_the_check_constraint(t in ".{0,70}") {
            let ok = !t.is_empty() && t.len() <= 64
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
            prop_assert_eq!(validate_type(&t).is_ok(), ok);
        }
    }
}
