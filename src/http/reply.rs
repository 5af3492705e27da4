//! Responses as values, and the one place where errors become HTTP statuses. No I/O:
//! `server` writes them.

use serde_json::{Value, json};

use crate::error::{Error, clip};

/// Longest error message in a response body, in characters: the last guard against a
/// message that quotes client input without [`crate::error::quote`].
const MAX_MESSAGE_CHARS: usize = 256;

/// A complete, small response.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type,
            body,
            headers: Vec::new(),
        }
    }

    pub(crate) fn empty(status: u16) -> Reply {
        Reply::bytes(status, "text/plain; charset=utf-8", Vec::new())
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// A refusal: status plus a message for the JSON `{"error": ...}` body.
#[derive(Debug)]
pub(crate) struct HttpError {
    pub(crate) status: u16,
    pub(crate) message: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl HttpError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: clip(message.into(), MAX_MESSAGE_CHARS),
            headers: Vec::new(),
        }
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> HttpError {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn into_reply(self) -> Reply {
        let mut r = Reply::json(self.status, &json!({"error": self.message}));
        r.headers = self.headers;
        r
    }
}

/// The one mapping from hub errors to statuses. Bodies never carry SQL or file paths:
/// 5xx details go to the log.
impl From<Error> for HttpError {
    fn from(e: Error) -> HttpError {
        match &e {
            Error::Invalid { .. } => HttpError::new(400, e.to_string()),
            _ if e.is_busy() => {
                log::warn!("{}", e.chain());
                HttpError::new(503, "database is busy; retry shortly")
                    .with_header("Retry-After", "1")
            }
            _ if e.is_disk_full() => {
                log::error!("{}", e.chain());
                HttpError::new(507, "disk full: event not stored")
            }
            Error::Closed => {
                HttpError::new(503, "hub is shutting down").with_header("Retry-After", "2")
            }
            _ if e.is_identity_lost() => {
                log::error!("{}", e.chain());
                let reason = e.identity_reason().unwrap_or("database file lost");
                HttpError::new(503, format!("{reason}; event not stored"))
                    .with_header("Retry-After", "5")
            }
            // A write the database refused for a reason outside this request (read-only,
            // an I/O error, a damaged file): the service is unavailable, not broken.
            _ if e.is_unavailable() => {
                log::error!("{}", e.chain());
                HttpError::new(503, "database unavailable (see the hub's log)")
                    .with_header("Retry-After", "5")
            }
            _ => {
                log::error!("{}", e.chain());
                HttpError::new(500, "internal error (see the hub's log)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DbFileProblem;
    use std::sync::Arc;

    fn db_error(code: i32) -> Error {
        Error::Db {
            op: "insert event",
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    fn lost(problem: DbFileProblem) -> Error {
        Error::DbFile {
            path: "/var/lib/timelapse-events/events.db".into(),
            problem,
            source: None,
        }
    }

    #[test]
    fn errors_map_to_statuses_without_internals() {
        use rusqlite::ffi::{
            SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_CONSTRAINT, SQLITE_CORRUPT, SQLITE_FULL,
            SQLITE_IOERR, SQLITE_IOERR_FSYNC, SQLITE_LOCKED, SQLITE_READONLY,
            SQLITE_READONLY_CANTINIT,
        };
        let invalid = Error::Invalid {
            field: "type",
            reason: "empty".into(),
        };
        let busy = "database is busy; retry shortly";
        let full = "disk full: event not stored";
        let unavailable = "database unavailable (see the hub's log)";
        let internal = "internal error (see the hub's log)";
        let deleted = "the database file was deleted under the hub; it is restarting; \
                       event not stored";
        let replaced = "the database file was replaced under the hub; it is restarting; \
                        event not stored";
        let shared = Error::Shared(Arc::new(db_error(SQLITE_FULL)));
        let shared_lost = Error::Shared(Arc::new(lost(DbFileProblem::Deleted)));
        for (e, status, retry, message) in [
            (invalid, 400, None, "invalid event `type`: empty"),
            (db_error(SQLITE_BUSY), 503, Some("1"), busy),
            (db_error(SQLITE_LOCKED), 503, Some("1"), busy),
            (db_error(SQLITE_FULL), 507, None, full),
            (shared, 507, None, full),
            (Error::Closed, 503, Some("2"), "hub is shutting down"),
            (db_error(SQLITE_READONLY), 503, Some("5"), unavailable),
            (
                db_error(SQLITE_READONLY_CANTINIT),
                503,
                Some("5"),
                unavailable,
            ),
            (db_error(SQLITE_IOERR), 503, Some("5"), unavailable),
            (db_error(SQLITE_IOERR_FSYNC), 503, Some("5"), unavailable),
            (db_error(SQLITE_CANTOPEN), 503, Some("5"), unavailable),
            (db_error(SQLITE_CORRUPT), 503, Some("5"), unavailable),
            (lost(DbFileProblem::Deleted), 503, Some("5"), deleted),
            (lost(DbFileProblem::Replaced), 503, Some("5"), replaced),
            (shared_lost, 503, Some("5"), deleted),
            // A CHECK the hub's own validation should have caught first: a bug.
            (db_error(SQLITE_CONSTRAINT), 500, None, internal),
        ] {
            let h = HttpError::from(e);
            let retry_after = h
                .headers
                .iter()
                .find(|(k, _)| *k == "Retry-After")
                .map(|(_, v)| v.as_str());
            assert_eq!((h.status, retry_after), (status, retry), "{message}");
            let body: Value = serde_json::from_slice(&h.into_reply().body).unwrap_or_default();
            assert_eq!(body["error"], message);
            assert!(!body.to_string().contains("/var/lib"), "a path in {body}");
        }
    }

    #[test]
    fn a_long_message_is_clipped() {
        let h = HttpError::new(400, format!("camera_id: `{}`", "7".repeat(1 << 20)));
        assert!(h.message.starts_with("camera_id: `777"), "{}", h.message);
        assert!(h.message.ends_with("… (1048589 bytes)"), "{}", h.message);
        assert!(h.into_reply().body.len() < 1024);
    }
}
