//! Plain event data: what producers hand in (`NewEvent`), what the poller dispatches
//! (`Event`), priorities, ids and stream cursors. No I/O here.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result, quote};

/// Longest accepted event type, in bytes (the SQL CHECK agrees).
pub const MAX_TYPE_BYTES: usize = 64;
/// Longest accepted `source`, in bytes (the SQL CHECK agrees).
pub const MAX_SOURCE_BYTES: usize = 64;
/// Largest accepted `event_data`, serialised, in bytes.
pub const MAX_DATA_BYTES: usize = 32 * 1024;

/// The row id SQLite gave an event (`sse_events.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Dispatch priority: pending events are dispatched highest first, then oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Background information.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Status changes someone should see soon.
    High,
    /// Dispatched before everything else.
    Critical,
}

impl Priority {
    /// The value stored in `sse_events.priority` (matches the SQL CHECK).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl FromStr for Priority {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            "critical" => Ok(Priority::Critical),
            other => Err(Error::Invalid {
                field: "priority",
                reason: format!("{} is not one of low, normal, high, critical", quote(other)),
            }),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event a producer wants stored: type, JSON object payload, priority and source.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Event type, e.g. `image_captured`.
    pub event_type: String,
    /// The payload; must be a JSON object.
    pub data: Value,
    /// Dispatch priority. Defaults to `normal`.
    pub priority: Priority,
    /// Who produced it. Defaults to `system`.
    pub source: String,
}

impl NewEvent {
    /// A custom event with normal priority and source `system`. Checked by [`NewEvent::validate`]
    /// when emitted.
    #[must_use]
    pub fn new(event_type: impl Into<String>, data: Value) -> NewEvent {
        NewEvent {
            event_type: event_type.into(),
            data,
            priority: Priority::Normal,
            source: "system".to_owned(),
        }
    }

    /// A camera stored a frame.
    #[must_use]
    pub fn image_captured(
        camera_id: i64,
        timelapse_id: i64,
        image_count: i64,
        day_number: i64,
    ) -> NewEvent {
        NewEvent::new(
            "image_captured",
            json!({"camera_id": camera_id, "timelapse_id": timelapse_id,
                   "image_count": image_count, "day_number": day_number}),
        )
        .with_source(format!("camera-{camera_id}"))
    }

    /// A camera went online/offline or its health changed. High priority.
    #[must_use]
    pub fn camera_status_changed(camera_id: i64, status: &str, health_status: &str) -> NewEvent {
        NewEvent::new(
            "camera_status_changed",
            json!({"camera_id": camera_id, "status": status, "health_status": health_status}),
        )
        .with_priority(Priority::High)
        .with_source(format!("camera-{camera_id}"))
    }

    /// A timelapse started, paused, resumed, completed...
    #[must_use]
    pub fn timelapse_status_changed(camera_id: i64, timelapse_id: i64, status: &str) -> NewEvent {
        NewEvent::new(
            "timelapse_status_changed",
            json!({"camera_id": camera_id, "timelapse_id": timelapse_id, "status": status}),
        )
        .with_source(format!("camera-{camera_id}"))
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> NewEvent {
        self.priority = priority;
        self
    }

    /// Sets the source.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> NewEvent {
        self.source = source.into();
        self
    }

    /// Adds (or replaces) one field of the payload; a non-object payload is left alone
    /// (validation refuses it anyway).
    #[must_use]
    pub fn with_field(mut self, key: &str, value: Value) -> NewEvent {
        if let Value::Object(map) = &mut self.data {
            map.insert(key.to_owned(), value);
        }
        self
    }

    /// Checks everything the SQL CHECK constraints check, with a message a producer can act
    /// on, and returns the payload serialised.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field.
    pub fn validate(&self) -> Result<String> {
        validate_type(&self.event_type)?;
        validate_source(&self.source)?;
        let Value::Object(_) = &self.data else {
            return Err(Error::Invalid {
                field: "data",
                reason: format!("must be a JSON object, not {}", json_kind(&self.data)),
            });
        };
        let text = self.data.to_string();
        if text.len() > MAX_DATA_BYTES {
            return Err(Error::Invalid {
                field: "data",
                reason: format!(
                    "{} bytes is over the {MAX_DATA_BYTES}-byte limit",
                    text.len()
                ),
            });
        }
        Ok(text)
    }
}

/// Checks an event type: 1..=64 of `A-Z a-z 0-9 _ . : -`.
///
/// # Errors
/// [`Error::Invalid`] with field `type`.
pub fn validate_type(t: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::Invalid {
            field: "type",
            reason,
        })
    };
    if t.is_empty() {
        return bad("must not be empty".into());
    }
    if t.len() > MAX_TYPE_BYTES {
        return bad(format!(
            "{} bytes is over the {MAX_TYPE_BYTES}-byte limit",
            t.len()
        ));
    }
    if let Some(c) = t.chars().find(|c| !is_type_char(*c)) {
        return bad(format!(
            "character {:?} not allowed; use letters, digits and _ . : -",
            c
        ));
    }
    Ok(())
}

fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn validate_source(s: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::Invalid {
            field: "source",
            reason,
        })
    };
    if s.is_empty() {
        return bad("must not be empty".into());
    }
    if s.len() > MAX_SOURCE_BYTES {
        return bad(format!(
            "{} bytes is over the {MAX_SOURCE_BYTES}-byte limit",
            s.len()
        ));
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A dispatched event, as every subscriber sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its place in the stream.
    pub cursor: Cursor,
    /// Row id in `sse_events`.
    pub id: EventId,
    /// Event type.
    pub event_type: String,
    /// The JSON object payload.
    pub data: Map<String, Value>,
    /// Priority it was stored with.
    pub priority: Priority,
    /// Producer name.
    pub source: String,
    /// `created_at`: UTC, `YYYY-MM-DDTHH:MM:SS.sssZ`.
    pub created_at: String,
    /// The camera host it came from (`origin_host`): `None` for this hub's own events.
    pub host: Option<String>,
}

impl Event {
    /// `data.camera_id` when it is an integer (or a string holding one).
    pub fn camera_id(&self) -> Option<i64> {
        match self.data.get("camera_id")? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The JSON envelope sent to clients: `{"id","type","data","priority","source","timestamp"}`,
    /// and `"host"` for an event from another camera host (a single host's stream looks as
    /// it always did).
    pub fn envelope(&self) -> Value {
        let mut v = json!({
            "id": self.id.0,
            "type": self.event_type,
            "data": self.data,
            "priority": self.priority.as_str(),
            "source": self.source,
            "timestamp": self.created_at,
        });
        if let (Some(host), Value::Object(m)) = (&self.host, &mut v) {
            m.insert("host".into(), Value::String(host.clone()));
        }
        v
    }
}

#[cfg(test)]
impl Event {
    /// A dispatched event for unit tests: row id = `seq`, log id 1, normal priority, source
    /// `t`, created at `at`. `data` must be a JSON object.
    pub(crate) fn for_test(seq: i64, event_type: &str, at: &str, data: Value) -> Event {
        let Value::Object(data) = data else {
            panic!("test event data must be an object: {data}")
        };
        Event {
            cursor: Cursor { log_id: 1, seq },
            id: EventId(seq),
            event_type: event_type.into(),
            data,
            priority: Priority::Normal,
            source: "t".into(),
            created_at: at.into(),
            host: None,
        }
    }
}

/// A position in one database's event log: `<log id>-<seq>`, e.g. `9f2c01ab-42`.
///
/// `seq` increases along the log; `log_id` is random per database file (`hub_meta`'s
/// `stream_id`), so a cursor from another or a recreated database is told apart from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The database's random id.
    pub log_id: u32,
    /// Dispatch sequence number (0 = before the first event).
    pub seq: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{}", self.log_id, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Cursor> {
        let bad = || Error::Invalid {
            field: "cursor",
            reason: "expected <8 hex digits>-<number>".into(),
        };
        let (log_id, seq) = s.trim().split_once('-').ok_or_else(bad)?;
        if log_id.len() != 8 || !log_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        if seq.is_empty() || seq.len() > 19 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Cursor {
            log_id: u32::from_str_radix(log_id, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_follow_the_sql_check() {
        for ok in ["image_captured", "a", "x.y:z-1", &"t".repeat(64)] {
            assert!(validate_type(ok).is_ok(), "{ok} should pass");
        }
        for bad in [
            "",
            "a b",
            "a\nb",
            "évent",
            "a/b",
            &"t".repeat(65),
            "a\r",
            "{}",
        ] {
            assert!(validate_type(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn payload_must_be_an_object() {
        assert!(NewEvent::new("x", json!([1])).validate().is_err());
        assert!(NewEvent::new("x", json!("s")).validate().is_err());
        assert_eq!(
            NewEvent::new("x", json!({})).validate().ok().as_deref(),
            Some("{}")
        );
    }

    #[test]
    fn priorities_round_trip_and_order() {
        for p in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ] {
            assert_eq!(p.as_str().parse::<Priority>().ok(), Some(p));
        }
        assert!(Priority::Critical > Priority::Low);
        assert!("urgent".parse::<Priority>().is_err());
        let long = "u".repeat(60_000);
        let said = long.parse::<Priority>().err().map(|e| e.to_string());
        let want = format!(
            "invalid event `priority`: `{}…` (60000 bytes) is not one of low, normal, high, critical",
            "u".repeat(64)
        );
        assert_eq!(said, Some(want));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            log_id: 0x9f2c01ab,
            seq: 42,
        };
        assert_eq!(c.to_string(), "9f2c01ab-42");
        assert_eq!("9f2c01ab-42".parse::<Cursor>().ok(), Some(c));
        for bad in [
            "",
            "42",
            "xyz-1",
            "9f2c01ab-",
            "9f2c01ab--1",
            "9f2c01ab-1x",
            "9f2c01a-1",
            "9f2c01ab-99999999999999999999",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn typed_helpers_fill_the_documented_fields() {
        let e = NewEvent::image_captured(3, 7, 120, 2);
        assert_eq!(e.event_type, "image_captured");
        assert_eq!(
            e.data,
            json!({"camera_id": 3, "timelapse_id": 7, "image_count": 120, "day_number": 2})
        );
        let s = NewEvent::camera_status_changed(3, "offline", "unhealthy");
        assert_eq!(s.priority, Priority::High);
        assert_eq!(s.data["health_status"], "unhealthy");
        let t = NewEvent::timelapse_status_changed(3, 7, "paused");
        assert_eq!(t.data["status"], "paused");
    }
}
