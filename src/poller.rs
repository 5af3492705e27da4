//! The poller thread (`tle-poller`): the only code that moves events from "stored" to
//! "dispatched", and the writer of the hub's own events. It wakes on an emit from this
//! process, on a nudge from the WAL watcher, or every `poll_interval` to check
//! `PRAGMA data_version` (a couple of microseconds, no table read) for commits from other
//! processes; only then does it read. In one IMMEDIATE transaction it stores the emits that
//! are waiting, takes a batch of pending rows (those among them), gives each its stream
//! position and marks it dispatched; then it publishes the batch, encoded once, and answers
//! the emitters. One commit per event instead of two (a writer's and a dispatcher's), and
//! one thread hand-off fewer (measured: see docs/performance.md).
//!
//! No transaction or statement is held open between polls: an open read would pin the WAL
//! and stop checkpoints (measured: 4 MB to 183 MB over 20k commits).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError, never, select};
use rusqlite::Connection;

use crate::broadcast::Broadcast;
use crate::emitter::{self, Job};
use crate::error::Result;
use crate::event::{Event, NewEvent, Priority};
use crate::metrics::Metrics;
use crate::sse::Frame;
use crate::state::{self, State, StateCache, parse_utc_ms};
use crate::store::events;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// At most one dispatch every this long for a nudge whose commit is not visible yet.
const SPECULATIVE_EVERY: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the poller reports to `/health` and stats; shared, lock held only to copy a string.
/// `writes` is the writer's: the error of its last commit, if that failed (e.g. disk full).
#[derive(Default)]
pub(crate) struct PollerStatus {
    last_error: Mutex<Option<String>>,
    pub(crate) writes: Mutex<Option<String>>,
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

    fn set_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }
}

pub(crate) struct Poller {
    pub(crate) conn: Connection,
    pub(crate) stream: u32,
    pub(crate) broadcast: Arc<Broadcast>,
    /// Emits from this process (the hub's [`crate::Emitter`]s).
    pub(crate) jobs: Receiver<Job>,
    /// Dropped with the poller: emits still waiting then fail with `Closed`.
    pub(crate) _alive: crossbeam_channel::Sender<()>,
    pub(crate) wake: Receiver<()>,
    pub(crate) stop: Receiver<()>,
    pub(crate) poll_interval: Duration,
    pub(crate) batch_rows: usize,
    pub(crate) status: Arc<PollerStatus>,
    pub(crate) cache: Arc<StateCache>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) watchdog: Watchdog,
    /// The projection as loaded at start.
    pub(crate) state: State,
    /// How long a dispatch waits for another connection's write lock.
    pub(crate) busy_timeout: Duration,
}

/// The camera dead-man's switch: a camera silent for 3× its learned capture interval (and
/// at least `floor`) gets a `camera_stale` event; `camera_recovered` when it reports again.
/// Runs on the poller thread, which owns the state it reads.
pub(crate) struct Watchdog {
    pub(crate) floor: Duration,
    /// Cameras with a stale/recovered event emitted but not yet folded into the state.
    pub(crate) asked: std::collections::HashSet<i64>,
    pub(crate) last_check: Instant,
    /// Its events, stored by the poller's next step.
    pub(crate) queued: Vec<Job>,
    /// The answers to those, by camera.
    pub(crate) waiting: Vec<(i64, Receiver<Result<Vec<crate::EventId>>>)>,
}

impl Watchdog {
    fn tick(&self) -> Duration {
        (self.floor / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Emits `camera_stale` for cameras overdue now.
    fn check(&mut self, state: &State, now_ms: i64) {
        self.last_check = Instant::now();
        for cam in state.cameras.values() {
            if cam.stale || self.asked.contains(&cam.camera_id) {
                continue;
            }
            // A camera known to be offline, or whose timelapse is paused or done, is not
            // expected to capture.
            if cam.status.as_deref() == Some("offline")
                || !matches!(cam.timelapse_status.as_deref(), None | Some("running"))
            {
                continue;
            }
            let (Some(interval), Some(last)) = (
                cam.capture_interval_ms,
                cam.last_capture_at.as_deref().and_then(parse_utc_ms),
            ) else {
                continue;
            };
            let limit_ms = (3.0 * interval).max(self.floor.as_millis() as f64);
            let silent_ms = (now_ms - last) as f64;
            if silent_ms > limit_ms {
                let event = NewEvent::new(
                    state::CAMERA_STALE,
                    serde_json::json!({
                        "camera_id": cam.camera_id,
                        "silent_secs": (silent_ms / 10.0).round() / 100.0,
                        "expected_interval_secs": (interval / 10.0).round() / 100.0,
                    }),
                )
                .with_priority(Priority::High)
                .with_source("watchdog");
                self.send(cam.camera_id, event);
            }
        }
    }

    /// After a batch: a stale camera that reported again gets `camera_recovered`.
    fn recoveries(&mut self, state: &State, batch: &[Event], now_ms: i64) {
        for e in batch {
            if e.event_type == state::CAMERA_STALE || e.event_type == state::CAMERA_RECOVERED {
                if let Some(id) = e.camera_id() {
                    self.asked.remove(&id);
                }
                continue;
            }
            if e.event_type != state::IMAGE_CAPTURED {
                continue;
            }
            let Some(id) = e.camera_id() else { continue };
            let Some(cam) = state.cameras.get(&id) else {
                continue;
            };
            if cam.stale && !self.asked.contains(&id) {
                let silent = cam
                    .last_capture_at
                    .as_deref()
                    .and_then(parse_utc_ms)
                    .map(|t| now_ms - t);
                let event = NewEvent::new(
                    state::CAMERA_RECOVERED,
                    serde_json::json!({"camera_id": id, "silent_secs": silent.map(|ms| ms as f64 / 1000.0)}),
                )
                .with_priority(Priority::High)
                .with_source("watchdog");
                self.send(id, event);
            }
        }
    }

    /// Queues `event` for the poller's next step (the poller is the hub's writer, so it
    /// cannot wait for an emit of its own).
    fn send(&mut self, camera_id: i64, event: NewEvent) {
        log::info!("watchdog: {} for camera {camera_id}", event.event_type);
        match Job::new(vec![event]) {
            Ok((job, answer)) => {
                self.asked.insert(camera_id);
                self.queued.push(job);
                self.waiting.push((camera_id, answer));
            }
            Err(e) => log::warn!("watchdog event refused: {}", e.chain()),
        }
    }

    /// After a step: a camera whose event was not stored is asked about again later.
    fn answered(&mut self) {
        let asked = &mut self.asked;
        self.waiting
            .retain(|(camera_id, answer)| match answer.try_recv() {
                Ok(Ok(_)) => false,
                Ok(Err(e)) => {
                    log::warn!("watchdog could not store its event: {}", e.chain());
                    asked.remove(camera_id);
                    false
                }
                Err(TryRecvError::Empty) => true,
                Err(TryRecvError::Disconnected) => {
                    asked.remove(camera_id);
                    false
                }
            });
    }
}

impl Poller {
    /// Runs until `stop` is dropped, then stores and answers the emits already queued.
    /// Database errors are logged, reported through [`PollerStatus`] and retried with
    /// backoff; nothing stored is lost, since rows stay pending until a dispatch commits,
    /// and an emit is acknowledged only after its commit.
    pub(crate) fn run(mut self) -> Result<()> {
        crate::store::set_busy_limit(self.busy_timeout);
        let mut head = events::head_seq(&self.conn)?;
        // Hub::start loaded the state and published version 1 before serving requests.
        let mut state = std::mem::take(&mut self.state);
        let mut state_version: u64 = 1;
        let mut version = events::data_version(&self.conn)?;
        let mut pending = true; // whatever was left undispatched before start
        let mut backoff = BACKOFF_MIN;
        let mut speculated = Instant::now();
        // A nudge arrived within SPECULATIVE_EVERY of the last speculative dispatch.
        let mut deferred = false;
        let mut group: Vec<Job> = Vec::with_capacity(64);
        loop {
            emitter::take_queued(&self.jobs, &mut group);
            if !pending && group.is_empty() {
                // A nudge (the WAL watcher's, on another process's writes) means "dispatch
                // now". The dispatch transaction is IMMEDIATE, so if the nudge came while
                // the other process was still finishing its commit, it waits for that
                // commit (the fast busy handler retries every 50 µs) and sees its rows.
                //
                // The watcher also reports our own commits, which never move our own
                // connection's data_version. So a nudge whose commit is already visible
                // (data_version moved) dispatches at once, and one that is not may start
                // such a waiting dispatch at most every SPECULATIVE_EVERY (measured: a
                // write transaction for every nudge at 1,000 events/s, p99 141 ms).
                // A nudge the rate limit held back is not dropped: it runs when the
                // limit allows (2 ms later at most), not at the next backstop poll.
                let timeout = if deferred {
                    SPECULATIVE_EVERY.saturating_sub(speculated.elapsed())
                } else {
                    self.poll_interval
                };
                let nudged = select! {
                    recv(self.jobs) -> job => {
                        match job {
                            Ok(job) => group.push(job),
                            // Every emitter is gone (the hub is stopping): stop listening.
                            Err(_) => self.jobs = never(),
                        }
                        false
                    },
                    recv(self.wake) -> msg => {
                        // No watcher (or it ended): polling alone, and never a busy loop
                        // on a disconnected channel.
                        if msg.is_err() {
                            self.wake = never();
                        }
                        msg.is_ok()
                    },
                    recv(self.stop) -> _ => break,
                    default(timeout) => deferred,
                };
                match events::data_version(&self.conn) {
                    Ok(v) if v != version => {
                        version = v;
                        pending = true;
                    }
                    Ok(_) if nudged && speculated.elapsed() >= SPECULATIVE_EVERY => {
                        speculated = Instant::now();
                        pending = true;
                    }
                    Ok(_) if nudged => deferred = true,
                    Ok(_) => {}
                    Err(_) => pending = true, // let the step report it
                }
                emitter::take_queued(&self.jobs, &mut group);
            }
            if self.watchdog.last_check.elapsed() >= self.watchdog.tick() {
                self.watchdog.check(&state, state::now_ms());
            }
            group.append(&mut self.watchdog.queued);
            if !pending && group.is_empty() {
                continue;
            }
            let outcome = self.drain(&mut head, &mut state, &mut state_version, &mut group);
            // The step took the write lock, so it saw every commit a held-back nudge was
            // about (a commit in progress holds that lock until it is visible).
            deferred = false;
            self.watchdog.answered();
            match outcome {
                Ok(true) => {
                    pending = false;
                    backoff = BACKOFF_MIN;
                    if self.status.failing().is_some() {
                        log::info!("poller recovered");
                        self.status.set_error(None);
                    }
                }
                Ok(false) => break, // stopping
                Err(e) => {
                    pending = true;
                    self.status.errors.fetch_add(1, Ordering::Relaxed);
                    let text = e.chain();
                    if self.status.failing().is_none() {
                        log::error!("poller: {text}; retrying with backoff");
                    } else {
                        log::debug!("poller still failing: {text}");
                    }
                    self.status.set_error(Some(text));
                    // The seq counter may be stale if a commit's outcome is unknown: re-read.
                    if let Ok(h) = events::head_seq(&self.conn) {
                        head = h;
                    }
                    // An emit ends the wait: its caller is waiting, and its attempt waits
                    // for a lock held elsewhere by itself (busy timeout).
                    select! {
                        recv(self.jobs) -> job => match job {
                            Ok(job) => group.push(job),
                            Err(_) => self.jobs = never(),
                        },
                        recv(self.stop) -> _ => break,
                        default(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        // Every emit queued before the stop is stored and answered (and dispatched, so
        // streams still open get it before the broadcast closes). Only those: a capture
        // thread that keeps emitting cannot hold the shutdown open; its later emits fail
        // with `Closed` once this thread has dropped the queue.
        let mut left = self.jobs.len();
        loop {
            while left > 0 && emitter::rows(&group) < emitter::MAX_GROUP_ROWS {
                match self.jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
                left -= 1;
            }
            if group.is_empty() {
                break;
            }
            if let Err(e) = self.step(&mut head, &mut state, &mut state_version, &mut group) {
                log::error!("poller at shutdown: {}", e.chain());
            }
        }
        log::debug!("poller stopped at seq {head}");
        Ok(())
    }

    /// Steps until no batch is full and no emit waits. Returns false if asked to stop
    /// between steps.
    fn drain(
        &mut self,
        head: &mut i64,
        state: &mut State,
        version: &mut u64,
        group: &mut Vec<Job>,
    ) -> Result<bool> {
        loop {
            let full = self.step(head, state, version, group)?;
            emitter::take_queued(&self.jobs, group);
            if !full && group.is_empty() {
                return Ok(true);
            }
            if matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return Ok(false);
            }
        }
    }

    /// One transaction: stores `group` (and empties it, answering every job), dispatches
    /// a batch, publishes it. Returns true when the batch was full (more may be pending).
    fn step(
        &mut self,
        head: &mut i64,
        state: &mut State,
        version: &mut u64,
        group: &mut Vec<Job>,
    ) -> Result<bool> {
        let started = Instant::now();
        // The batch has room for every new row, so an emit is dispatched in its own commit
        // unless a backlog of higher priority is ahead of it.
        let limit = self.batch_rows + emitter::rows(group);
        let outcome = {
            let inserts = emitter::inserts(group);
            events::store_and_dispatch(&mut self.conn, &inserts, self.stream, head, limit, state)
        };
        let (stored, batch) = match outcome {
            Ok(done) => done,
            Err(e) => {
                if !group.is_empty() {
                    let copy = emitter::clone_error(&e.chain(), e.is_busy(), e.is_disk_full());
                    let failed = emitter::answer(group, Err(copy), Some(&self.metrics));
                    self.set_writes(failed);
                }
                return Err(e);
            }
        };
        // Answer first: an emitting thread then prepares its next event while this one is
        // published, and the next step takes a larger group.
        if !group.is_empty() {
            let failed = emitter::answer(group, Ok(stored), Some(&self.metrics));
            self.set_writes(failed);
        }
        if batch.state_changed {
            *version += 1;
            self.cache.publish(state, self.stream, *version);
        }
        if !batch.events.is_empty() {
            // Counted before they are published, so a client that has an event sees it in
            // /metrics and stats too.
            let now = state::now_ms();
            for e in &batch.events {
                let created = parse_utc_ms(&e.created_at).unwrap_or(now);
                self.metrics.dispatched(&e.event_type, now - created);
            }
            self.status
                .dispatched
                .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
            let frames: Vec<Arc<Frame>> = batch.events.iter().map(Frame::new).collect();
            self.broadcast.publish(&frames);
            self.watchdog.recoveries(state, &batch.events, now);
            log::debug!(
                "dispatched {} events up to seq {} in {:?}",
                batch.events.len(),
                head,
                started.elapsed()
            );
        }
        if batch.rejected > 0 {
            self.status
                .rejected
                .fetch_add(batch.rejected as u64, Ordering::Relaxed);
        }
        Ok(batch.events.len() + batch.rejected >= limit)
    }

    /// For `/health`: the error of the last step that stored events, if it failed.
    fn set_writes(&self, failed: Option<String>) {
        *self
            .status
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = failed;
    }
}
