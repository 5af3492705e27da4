//! A stop signal for the examples' threads (Ctrl-C, `--events` reached, stdout gone):
//! dropping the channel's sender wakes every sleeper at once, and an open connection handed
//! to `watch` is shut down so a blocked read returns. Included with `#[path]`.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Ctrl-C: sets the flag, wakes a backoff sleep, and shuts the open connection down so a
/// blocked read returns at once.
pub struct Stop {
    stopped: AtomicBool,
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
    current: Mutex<Option<TcpStream>>,
}

impl Stop {
    pub fn new() -> Stop {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Stop {
            stopped: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
            current: Mutex::new(None),
        }
    }

    pub fn trigger(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Options replaced in one step: poisoning cannot leave them half-written.
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let current = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(stream) = current {
            // Already closed is fine: the reader is ending anyway.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn is_set(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Makes `trigger` shut `stream` down; shuts it at once if the stop came first.
    pub fn watch(&self, stream: &TcpStream) -> io::Result<()> {
        let clone = stream.try_clone()?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(clone);
        if self.is_set() {
            let _ = stream.shutdown(Shutdown::Both); // see trigger
        }
        Ok(())
    }

    /// Sleeps for `d` unless stopped first; true when stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        match self.rx.recv_timeout(d) {
            Err(RecvTimeoutError::Timeout) => self.is_set(),
            // Nobody sends, so anything else means the sender was dropped.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        }
    }
}
