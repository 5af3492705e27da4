//! Responses as values, and the one place where errors become HTTP statuses. No I/O:
//! `server` writes them.

use serde_json::{Value, json};

use crate::error::Error;

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
            message: message.into(),
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
            _ => {
                log::error!("{}", e.chain());
                HttpError::new(500, "internal error (see the hub's log)")
            }
        }
    }
}
