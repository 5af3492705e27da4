//! [`Bell`]: the poller rings it after each dispatched batch; each listener (a sink, the
//! checkpointer) holds a channel of one place, so rings coalesce and a ring that comes
//! while a listener is busy wakes it as soon as it waits. Imports nothing of ours.

use std::sync::{Mutex, PoisonError};

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
