//! [`PollerStatus`]: what the poller reports about itself, read by `/health`, stats and
//! metrics, and its heartbeat, read by the systemd watchdog pinger. Plain shared counters
//! and strings, so `http` and `hub` read them without knowing the poller.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The poller's health and counters; the lock is held only to copy a string.
pub(crate) struct PollerStatus {
    last_error: Mutex<Option<String>>,
    /// The error of the last commit that stored emits, if that failed (e.g. disk full).
    writes: Mutex<Option<String>>,
    pub(crate) dispatched: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// When the poller last went round its loop, in ms since `epoch` (monotonic: a Pi
    /// without a real-time clock jumps its wall clock at boot).
    beat_ms: AtomicU64,
    epoch: Instant,
}

impl Default for PollerStatus {
    fn default() -> Self {
        PollerStatus {
            last_error: Mutex::default(),
            writes: Mutex::default(),
            dispatched: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            beat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl PollerStatus {
    /// Records that the poller is alive: called each time round its loop, idle or not, and
    /// around its backoff waits.
    pub(crate) fn beat(&self) {
        self.beat_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// How long ago the poller last called [`PollerStatus::beat`] (or the status was made).
    pub(crate) fn since_beat(&self) -> Duration {
        let last = self.beat_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.elapsed_ms().saturating_sub(last))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

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
