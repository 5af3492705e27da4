//! [`PollerStatus`]: what the poller reports about itself, read by `/health`, stats and
//! metrics. Plain shared counters and strings, so `http` reads them without knowing the
//! poller.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicU64;

/// The poller's health and counters; the lock is held only to copy a string.
#[derive(Default)]
pub(crate) struct PollerStatus {
    last_error: Mutex<Option<String>>,
    /// The error of the last commit that stored emits, if that failed (e.g. disk full).
    writes: Mutex<Option<String>>,
    pub(crate) dispatched: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl PollerStatus {
    /// The writer's last commit error, while its failure streak lasts.
    pub(crate) fn writes_failing(&self) -> Option<String> {
        self.writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The error of the current failure streak, if the last attempt failed.
    pub(crate) fn failing(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }

    pub(crate) fn set_writes(&self, failed: Option<String>) {
        *self.writes.lock().unwrap_or_else(PoisonError::into_inner) = failed;
    }
}
