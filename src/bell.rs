//! [`Bell`]: the poller rings it after each dispatched batch; each listener (a sink, the
//! checkpointer) holds a channel of one place, so rings coalesce and a ring that comes
//! while a listener is busy wakes it as soon as it waits. And [`Reader`]: how a thread that
//! serves many broadcast subscribers at once (the stream writer) is told which of them have
//! something to take. Imports nothing of ours.

use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// One ring reaches every listener; ringing never blocks.
#[derive(Debug, Default)]
pub(crate) struct Bell {
    listeners: Mutex<Vec<Sender<()>>>,
}

impl Bell {
    /// A new listener: its receiver has a message whenever the bell rang since it last read.
    pub(crate) fn listen(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Rings: a full channel already has its ring; a listener that went away is dropped.
    pub(crate) fn ring(&self) {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners.retain(|tx| !matches!(tx.try_send(()), Err(TrySendError::Disconnected(()))));
    }
}

/// A reader of many subscribers' queues: the publisher `mark`s each subscriber that has
/// something new (no system call), then `ring`s once per published batch.
pub(crate) trait Reader: Send + Sync {
    /// Notes that subscriber `token` has something to take.
    fn mark(&self, token: u64);
    /// Wakes the reader for what was marked (cheap when it is already awake).
    fn ring(&self);
}

/// One subscriber's place with its [`Reader`].
#[derive(Clone)]
pub(crate) struct Ready {
    pub(crate) reader: Arc<dyn Reader>,
    pub(crate) token: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_coalesce_reach_every_listener_and_forget_the_gone() {
        let bell = Bell::default();
        let (a, b) = (bell.listen(), bell.listen());
        bell.ring();
        bell.ring();
        assert_eq!((a.try_iter().count(), b.try_iter().count()), (1, 1));
        drop(b);
        bell.ring();
        assert_eq!(a.try_iter().count(), 1);
        assert_eq!(bell.listeners.lock().map(|l| l.len()).unwrap_or(0), 1);
    }
}
