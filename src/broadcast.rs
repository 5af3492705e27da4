//! Fan-out of dispatched frames to subscribers. The poller publishes; each stream thread
//! holds a [`Subscription`]. Knows nothing of HTTP.
//!
//! Every subscriber has its own bounded queue, filled without ever blocking: a subscriber
//! whose queue is full is cut off on the spot (its queue is closed, its stream ends, its
//! client resumes from its cursor), so a stuck client can never block the poller or other
//! clients, nor grow memory.
//!
//! The queue is a `Mutex<VecDeque>` with a `Condvar`, not a crossbeam channel: crossbeam's
//! `recv` spins and calls `sched_yield` about ten times before it sleeps, and with one
//! thread per stream on two cores those yields were the largest single cost of a delivery
//! (measured with perf: 16 % of the hub's CPU at 100 events/s to 10 clients). A
//! `VecDeque` also grows only as far as a subscriber lags, instead of allocating 1,024
//! slots per stream up front.
//!
//! Whoever learns that a subscriber's reader is gone ([`Queue::hang_up`]: the HTTP
//! server's departure watcher) wakes its waiting stream at once, so its place is free
//! without the stream having to look now and then.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sse::{Filter, Frame};

/// Frames a subscriber may have queued before it is cut off (about 1 s at 1,000 events/s).
pub(crate) const QUEUE_FRAMES: usize = 1024;

/// The subscriber map. Its one Mutex is held only to publish a batch (`try_send`s, which
/// never block), to subscribe, and to unsubscribe; never across I/O.
#[derive(Default)]
pub(crate) struct Broadcast {
    subs: Mutex<Subs>,
    cut_off: AtomicU64,
    published: AtomicI64,
}

#[derive(Default)]
struct Subs {
    map: HashMap<u64, Sub>,
    next_id: u64,
    closed: bool,
}

struct Sub {
    queue: Arc<Queue>,
    filter: Filter,
    info: Arc<SubInfo>,
}

/// One subscriber's bounded queue. The publisher pushes and closes; the stream pops.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Frame>>,
    closed: bool,
    /// The subscriber's reader is gone ([`Queue::hang_up`]).
    gone: bool,
}

/// Why [`Queue::recv_timeout`] returned no frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// Nothing arrived in time.
    Timeout,
    /// The queue was closed (cut off, or the broadcast closed) and is drained.
    Closed,
    /// The subscriber's reader is gone ([`Queue::hang_up`]); what is queued is not wanted.
    Gone,
}

enum Push {
    Queued,
    Full,
    Closed,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Each change is one push, pop or flag: a poisoned queue is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, frame: &Arc<Frame>) -> Push {
        let mut q = self.lock();
        if q.closed {
            return Push::Closed;
        }
        if q.items.len() >= QUEUE_FRAMES {
            return Push::Full;
        }
        q.items.push_back(frame.clone());
        drop(q);
        self.ready.notify_one();
        Push::Queued
    }

    /// Ends the queue: what is queued can still be taken, then `Disconnected`.
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Marks the subscriber's reader gone and wakes its waiting stream, which then gets
    /// [`RecvError::Gone`] at once. Called from another thread than the stream's.
    pub(crate) fn hang_up(&self) {
        self.lock().gone = true;
        self.ready.notify_all();
    }

    /// The next frame, waiting up to `timeout`.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<Arc<Frame>, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if q.gone {
                return Err(RecvError::Gone);
            }
            if let Some(f) = q.items.pop_front() {
                return Ok(f);
            }
            if q.closed {
                return Err(RecvError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout);
            }
            q = self
                .ready
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&self) -> Option<Arc<Frame>> {
        self.lock().items.pop_front()
    }

    /// Frames queued now, without waiting.
    pub(crate) fn try_iter(&self) -> impl Iterator<Item = Arc<Frame>> + '_ {
        std::iter::from_fn(|| self.try_recv())
    }
}

/// What stats report about one subscriber.
#[derive(Debug)]
pub(crate) struct SubInfo {
    pub(crate) peer: String,
    pub(crate) filter: Filter,
    /// Seq of the last frame its stream wrote.
    pub(crate) delivered: AtomicI64,
}

/// One subscriber's end: frames arrive on `rx` in stream order. Dropping it unsubscribes.
pub(crate) struct Subscription {
    id: u64,
    pub(crate) rx: Arc<Queue>,
    pub(crate) info: Arc<SubInfo>,
    broadcast: Arc<Broadcast>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.broadcast.lock().map.remove(&self.id);
    }
}

impl Broadcast {
    fn lock(&self) -> MutexGuard<'_, Subs> {
        // Every mutation of Subs is a single insert/remove/clear, so a panic elsewhere while
        // the lock was held cannot have left the map half-updated: keep using it.
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a subscriber for frames matching `filter`.
    ///
    /// # Errors
    /// [`Error::Closed`] once the hub is shutting down.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        filter: Filter,
        peer: String,
    ) -> Result<Subscription> {
        let queue = Arc::new(Queue::new());
        let info = Arc::new(SubInfo {
            peer,
            filter: filter.clone(),
            delivered: AtomicI64::new(0),
        });
        let mut subs = self.lock();
        if subs.closed {
            return Err(Error::Closed);
        }
        let id = subs.next_id;
        subs.next_id += 1;
        subs.map.insert(
            id,
            Sub {
                queue: queue.clone(),
                filter,
                info: info.clone(),
            },
        );
        Ok(Subscription {
            id,
            rx: queue,
            info,
            broadcast: self.clone(),
        })
    }

    /// Offers each frame, in order, to every subscriber whose filter matches; cuts off those
    /// whose queue is full.
    pub(crate) fn publish(&self, frames: &[Arc<Frame>]) {
        let Some(last) = frames.last() else { return };
        let mut subs = self.lock();
        let mut cut = 0;
        subs.map.retain(|_, sub| {
            for frame in frames.iter().filter(|f| sub.filter.matches_frame(f)) {
                match sub.queue.push(frame) {
                    Push::Queued => {}
                    Push::Full => {
                        log::info!(
                            "cutting off slow subscriber {} ({} frames queued); it will resume from its cursor",
                            sub.info.peer,
                            QUEUE_FRAMES
                        );
                        sub.queue.close();
                        cut += 1;
                        return false;
                    }
                    Push::Closed => return false,
                }
            }
            true
        });
        drop(subs);
        self.published.store(last.seq, Ordering::Release);
        if cut > 0 {
            self.cut_off.fetch_add(cut, Ordering::Relaxed);
        }
    }

    /// Ends every subscription (their queues drain, then report disconnected) and refuses
    /// new ones.
    pub(crate) fn close(&self) {
        let mut subs = self.lock();
        subs.closed = true;
        for sub in subs.map.values() {
            sub.queue.close();
        }
        subs.map.clear();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Subscribers cut off for being slow, since start.
    pub(crate) fn cut_off_total(&self) -> u64 {
        self.cut_off.load(Ordering::Relaxed)
    }

    /// Seq of the last published frame.
    pub(crate) fn published_seq(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// A snapshot of the subscribers, for stats.
    pub(crate) fn subscribers(&self) -> Vec<Arc<SubInfo>> {
        self.lock().map.values().map(|s| s.info.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn frame(seq: i64, t: &str, camera: i64) -> Arc<Frame> {
        let data = serde_json::json!({ "camera_id": camera });
        Frame::new(&Event::for_test(seq, t, "", data))
    }

    #[test]
    fn every_matching_subscriber_gets_frames_in_order() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let all = b.subscribe(Filter::default(), "a".into())?;
        let cam2 = b.subscribe(
            Filter {
                types: None,
                camera_id: Some(2),
                host: None,
            },
            "b".into(),
        )?;
        let frames: Vec<_> = (1..=6).map(|s| frame(s, "image_captured", s % 3)).collect();
        b.publish(&frames);
        let got: Vec<i64> = all.rx.try_iter().map(|f| f.seq).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
        let got: Vec<i64> = cam2.rx.try_iter().map(|f| f.seq).collect();
        assert_eq!(got, vec![2, 5]);
        assert_eq!(b.published_seq(), 6);
        Ok(())
    }

    #[test]
    fn a_full_subscriber_is_cut_off_and_others_continue() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let slow = b.subscribe(Filter::default(), "slow".into())?;
        let fast = b.subscribe(Filter::default(), "fast".into())?;
        for seq in 1..=(QUEUE_FRAMES as i64 + 10) {
            b.publish(&[frame(seq, "x", 1)]);
            while fast.rx.try_recv().is_some() {}
        }
        assert_eq!(b.cut_off_total(), 1);
        assert_eq!(
            slow.rx.try_iter().count(),
            QUEUE_FRAMES,
            "queued frames still drain"
        );
        assert!(
            slow.rx.recv_timeout(Duration::from_secs(1)).is_err(),
            "then it reports disconnected"
        );
        b.publish(&[frame(10_000, "x", 1)]);
        assert_eq!(fast.rx.try_recv().map(|f| f.seq), Some(10_000));
        Ok(())
    }

    #[test]
    fn close_ends_subscriptions_and_refuses_new_ones() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let s = b.subscribe(Filter::default(), "a".into())?;
        b.close();
        assert!(matches!(
            s.rx.recv_timeout(Duration::from_secs(1)),
            Err(RecvError::Closed)
        ));
        assert!(matches!(
            b.subscribe(Filter::default(), "b".into()),
            Err(Error::Closed)
        ));
        Ok(())
    }

    #[test]
    fn a_hang_up_wakes_a_waiting_stream_at_once() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let s = b.subscribe(Filter::default(), "a".into())?;
        b.publish(&[frame(1, "x", 1)]);
        let q = s.rx.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q.hang_up();
        });
        assert_eq!(s.rx.recv_timeout(Duration::ZERO).map(|f| f.seq), Ok(1));
        let t = Instant::now();
        assert_eq!(
            s.rx.recv_timeout(Duration::from_secs(30)).err(),
            Some(RecvError::Gone)
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "woken, not timed out"
        );
        let _ = waker.join();
        Ok(())
    }
}
