//! Fan-out of dispatched frames to subscribers. The poller publishes; the stream writer
//! reads every following stream's [`Subscription`]. Knows nothing of HTTP.
//!
//! Every subscriber has its own bounded queue, filled without ever blocking: a subscriber
//! whose queue is full is cut off on the spot (its queue is closed, its stream ends, its
//! client resumes from its cursor), so a stuck client can never block the poller or other
//! clients, nor grow memory.
//!
//! A queue wakes nobody by itself: once it has a reader ([`Queue::attach`], a
//! [`Ready`]), the first frame after each drain (or its closing) *marks* it for that reader,
//! and `publish` rings each reader once per batch. So one batch to 200 streams costs the
//! writer one wake-up, not 200 (a `Condvar` per stream, one thread each, cost a wake-up
//! per event per client: the largest single gap to nginx + nchan, issue #17). A
//! `VecDeque` grows only as far as a subscriber lags, instead of allocating 1,024 slots
//! per stream up front.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::bell::{Reader, Ready};
use crate::error::{Error, Result};
use crate::sse::{Filter, Frame};

/// Frames a subscriber may have queued before it is cut off (about 1 s at 1,000 events/s).
pub(crate) const QUEUE_FRAMES: usize = 1024;

/// The subscriber map. Its one Mutex is held only to publish a batch (pushes, which never
/// block), to subscribe, and to unsubscribe; never across I/O.
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

/// One subscriber's bounded queue. The publisher pushes and closes; the reader drains.
#[derive(Default)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Frame>>,
    closed: bool,
    /// Who drains it, once attached.
    ready: Option<Ready>,
    /// Marked for the reader since its last drain.
    marked: bool,
}

impl QueueState {
    /// Marks the queue for its reader, once per drain; returns the reader to ring.
    fn mark(&mut self) -> Option<Arc<dyn Reader>> {
        if self.marked {
            return None;
        }
        let ready = self.ready.as_ref()?;
        self.marked = true;
        ready.reader.mark(ready.token);
        Some(ready.reader.clone())
    }
}

enum Push {
    Queued,
    /// Queued, and the queue was marked for this reader: ring it after the batch.
    Marked(Arc<dyn Reader>),
    Full,
    Closed,
}

/// What [`Queue::drain`] left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Frames are still queued (it stopped at `max`): drain again.
    pub(crate) more: bool,
    /// The queue was closed (cut off, or the broadcast closed) and is empty.
    pub(crate) closed: bool,
}

/// Rings each distinct reader once.
fn ring_once(rings: &mut Vec<Arc<dyn Reader>>, reader: Arc<dyn Reader>) {
    if !rings.iter().any(|r| Arc::ptr_eq(r, &reader)) {
        rings.push(reader);
    }
}

impl Queue {
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
        match q.mark() {
            Some(reader) => Push::Marked(reader),
            None => Push::Queued,
        }
    }

    /// Ends the queue: what is queued can still be drained, then it reports closed. Returns
    /// the reader to ring, if it was not marked yet.
    fn close(&self) -> Option<Arc<dyn Reader>> {
        let mut q = self.lock();
        q.closed = true;
        q.mark()
    }

    /// Gives the queue its reader. If it already holds frames or has closed, the reader is
    /// marked and rung at once; from then on, the first push after each drain marks it.
    pub(crate) fn attach(&self, ready: Ready) {
        let mut q = self.lock();
        q.ready = Some(ready);
        q.marked = false;
        if q.items.is_empty() && !q.closed {
            return;
        }
        let reader = q.mark();
        drop(q);
        if let Some(reader) = reader {
            reader.ring();
        }
    }

    /// Takes up to `max` frames, in order, handing each to `take`. The next push marks the
    /// queue for its reader again.
    pub(crate) fn drain(&self, max: usize, mut take: impl FnMut(&Frame)) -> Drained {
        let mut q = self.lock();
        q.marked = false;
        for _ in 0..max {
            let Some(f) = q.items.pop_front() else { break };
            take(&f);
        }
        Drained {
            more: !q.items.is_empty(),
            closed: q.closed && q.items.is_empty(),
        }
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
        let queue = Arc::new(Queue::default());
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
    /// whose queue is full; then rings each reader that was marked, once.
    pub(crate) fn publish(&self, frames: &[Arc<Frame>]) {
        let Some(last) = frames.last() else { return };
        let mut rings = Vec::new();
        let mut subs = self.lock();
        let mut cut = 0;
        subs.map.retain(|_, sub| {
            for frame in frames.iter().filter(|f| sub.filter.matches_frame(f)) {
                match sub.queue.push(frame) {
                    Push::Queued => {}
                    Push::Marked(reader) => ring_once(&mut rings, reader),
                    Push::Full => {
                        log::info!(
                            "cutting off slow subscriber {} ({} frames queued); it will resume from its cursor",
                            sub.info.peer,
                            QUEUE_FRAMES
                        );
                        if let Some(reader) = sub.queue.close() {
                            ring_once(&mut rings, reader);
                        }
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
        for reader in rings {
            reader.ring();
        }
    }

    /// Ends every subscription (their queues drain, then report closed; their readers are
    /// rung) and refuses new ones.
    pub(crate) fn close(&self) {
        let mut rings = Vec::new();
        let mut subs = self.lock();
        subs.closed = true;
        for sub in subs.map.values() {
            if let Some(reader) = sub.queue.close() {
                ring_once(&mut rings, reader);
            }
        }
        subs.map.clear();
        drop(subs);
        for reader in rings {
            reader.ring();
        }
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

    fn seqs(q: &Queue) -> Vec<i64> {
        let mut got = Vec::new();
        q.drain(usize::MAX, |f| got.push(f.seq));
        got
    }

    /// A reader that records its marks and counts its rings.
    #[derive(Default)]
    struct Log {
        marks: Mutex<Vec<u64>>,
        rings: AtomicU64,
    }

    impl Reader for Log {
        fn mark(&self, token: u64) {
            self.marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(token);
        }
        fn ring(&self) {
            self.rings.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Log {
        fn take(&self) -> (Vec<u64>, u64) {
            let mut marks =
                std::mem::take(&mut *self.marks.lock().unwrap_or_else(PoisonError::into_inner));
            marks.sort_unstable(); // subscribers are marked in the map's order
            (marks, self.rings.swap(0, Ordering::SeqCst))
        }
    }

    fn ready(log: &Arc<Log>, token: u64) -> Ready {
        Ready {
            reader: log.clone(),
            token,
        }
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
        assert_eq!(seqs(&all.rx), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs(&cam2.rx), vec![2, 5]);
        assert_eq!(b.published_seq(), 6);
        Ok(())
    }

    #[test]
    fn a_batch_marks_each_subscriber_once_and_rings_its_reader_once() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let log = Arc::new(Log::default());
        let subs: Vec<_> = (0..3)
            .map(|_| b.subscribe(Filter::default(), "x".into()))
            .collect::<Result<_>>()?;
        for (token, s) in (10..).zip(&subs) {
            s.rx.attach(ready(&log, token));
        }
        assert_eq!(log.take(), (vec![], 0), "an empty queue marks nobody");
        let frames: Vec<_> = (1..=5).map(|s| frame(s, "x", 1)).collect();
        b.publish(&frames);
        assert_eq!(log.take(), (vec![10, 11, 12], 1));
        // Not drained yet: a second batch marks nobody and rings nobody.
        b.publish(&[frame(6, "x", 1)]);
        assert_eq!(log.take(), (vec![], 0));
        // A drain re-arms the mark; the queue kept every frame in order.
        let d = subs[1].rx.drain(4, |_| {});
        assert_eq!(
            d,
            Drained {
                more: true,
                closed: false
            }
        );
        assert_eq!(seqs(&subs[1].rx), vec![5, 6]);
        b.publish(&[frame(7, "x", 1)]);
        assert_eq!(log.take(), (vec![11], 1));
        Ok(())
    }

    #[test]
    fn attaching_a_reader_to_a_queue_that_holds_frames_marks_it_at_once() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let log = Arc::new(Log::default());
        let s = b.subscribe(Filter::default(), "x".into())?;
        b.publish(&[frame(1, "x", 1)]);
        s.rx.attach(ready(&log, 7));
        assert_eq!(log.take(), (vec![7], 1));
        assert_eq!(seqs(&s.rx), vec![1]);
        Ok(())
    }

    #[test]
    fn a_full_subscriber_is_cut_off_its_reader_told_and_others_continue() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let log = Arc::new(Log::default());
        let slow = b.subscribe(Filter::default(), "slow".into())?;
        let fast = b.subscribe(Filter::default(), "fast".into())?;
        slow.rx.attach(ready(&log, 1));
        for seq in 1..=(QUEUE_FRAMES as i64 + 10) {
            b.publish(&[frame(seq, "x", 1)]);
            fast.rx.drain(usize::MAX, |_| {});
        }
        assert_eq!(b.cut_off_total(), 1);
        // Marked by the first frame; the cut-off found it marked still.
        assert_eq!(log.take().0, vec![1]);
        let mut n = 0;
        let d = slow.rx.drain(usize::MAX, |_| n += 1);
        assert_eq!(n, QUEUE_FRAMES, "queued frames still drain");
        assert!(d.closed, "then it reports closed");
        b.publish(&[frame(10_000, "x", 1)]);
        assert_eq!(seqs(&fast.rx), vec![10_000]);
        Ok(())
    }

    #[test]
    fn close_ends_subscriptions_rings_their_readers_and_refuses_new_ones() -> Result<()> {
        let b = Arc::new(Broadcast::default());
        let log = Arc::new(Log::default());
        let s = b.subscribe(Filter::default(), "a".into())?;
        s.rx.attach(ready(&log, 3));
        b.close();
        assert_eq!(log.take(), (vec![3], 1));
        assert!(s.rx.drain(usize::MAX, |_| {}).closed);
        assert!(matches!(
            b.subscribe(Filter::default(), "b".into()),
            Err(Error::Closed)
        ));
        Ok(())
    }
}
