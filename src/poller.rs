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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError, never, select};
use rusqlite::Connection;

use crate::broadcast::Broadcast;
use crate::emitter::{self, Intake, Job};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sse::Frame;
use crate::state::{self, Limits, NotFolded, State, StateCache, parse_utc_ms};
use crate::status::PollerStatus;
use crate::store::identity::{self, FileId};
use crate::store::{self, Store, events};
use crate::watchdog::Watchdog;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// At most one dispatch every this long for a nudge whose commit is not visible yet.
const SPECULATIVE_EVERY: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// At most one warning this often about events over the state's limits.
const OVER_LIMIT_WARN_EVERY: Duration = Duration::from_secs(60);
/// How often an idle poller checks that the database file is still at its path (one
/// `stat`) when nothing watches the file; every commit checks too, before anything is
/// acknowledged or published, and so does every nudge of the watcher (which also watches
/// the database file for being removed, renamed or replaced).
const IDENTITY_EVERY: Duration = Duration::from_millis(250);
/// The same, when the watcher watches the file.
const WATCHED_IDENTITY_EVERY: Duration = Duration::from_secs(2);

/// The longest a live poller goes without [`PollerStatus::beat`]: its idle wait or its
/// longest backoff, plus a second for the step between two beats. Longer means it is stuck
/// (in practice: a busy wait for another connection's write lock).
pub(crate) fn max_quiet(poll_interval: Duration) -> Duration {
    poll_interval.max(BACKOFF_MAX) + Duration::from_secs(1)
}

/// What the poller publishes to: the broadcast, its own status, the state cache and the
/// metrics. `Hub` makes them and shares the same handles with the HTTP side.
#[derive(Clone, Default)]
pub(crate) struct Outputs {
    pub(crate) broadcast: Arc<Broadcast>,
    /// Rung after each dispatched batch: the sinks and the checkpointer wait on it.
    pub(crate) dispatched: Arc<crate::bell::Bell>,
    pub(crate) status: Arc<PollerStatus>,
    pub(crate) cache: Arc<StateCache>,
    pub(crate) metrics: Arc<Metrics>,
}

/// How the poller paces itself (from [`crate::Config`]).
pub(crate) struct Pace {
    /// The `data_version` check interval when nothing wakes it.
    pub(crate) poll_interval: Duration,
    /// Whether the WAL watcher runs (it nudges the poller on every change to the database's
    /// files, its removal included): the idle identity check is then a backstop.
    pub(crate) watched: bool,
    /// Most pending rows dispatched in one transaction.
    pub(crate) batch_rows: usize,
    /// The watchdog's floor (see [`Watchdog::new`]).
    pub(crate) stale_floor: Duration,
    /// What the state holds at most.
    pub(crate) limits: Limits,
}

/// Warns about events over the state's limits once when they start, then at most every
/// [`OVER_LIMIT_WARN_EVERY`] (with the count since the last warning): never once per event,
/// as a flood of names is exactly when a log line per event would hurt.
#[derive(Default)]
struct OverLimitWarning {
    last: Option<Instant>,
    since: NotFolded,
}

impl OverLimitWarning {
    /// Adds `n`; returns the warning to log now, if one is due.
    fn note(&mut self, n: NotFolded, now: Instant, limits: Limits) -> Option<String> {
        self.since.camera_cap += n.camera_cap;
        self.since.event_type_cap += n.event_type_cap;
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= OVER_LIMIT_WARN_EVERY);
        if !due || !self.since.any() {
            return None;
        }
        let first = self.last.is_none();
        self.last = Some(now);
        let since = std::mem::take(&mut self.since);
        Some(format!(
            "{} events about cameras beyond --max-cameras ({}) and {} events of types beyond \
             --max-event-types ({}) were {}not folded into the state (they are stored and \
             streamed; see not_folded in /api/events/stats); next warning in {}s at the soonest",
            since.camera_cap,
            limits.max_cameras,
            since.event_type_cap,
            limits.max_event_types,
            if first { "" } else { "since the last warning " },
            OVER_LIMIT_WARN_EVERY.as_secs()
        ))
    }
}

/// The poller thread's state: its connection, its wake-up channels, and what it carries from
/// one step to the next.
pub(crate) struct Poller {
    conn: Connection,
    log_id: u32,
    out: Outputs,
    /// Emits from this process (the hub's [`crate::Emitter`]s).
    jobs: Receiver<Job>,
    /// Dropped with the poller: emits still waiting then fail with `Closed`.
    _alive: crossbeam_channel::Sender<()>,
    wake: Receiver<()>,
    stop: Receiver<()>,
    poll_interval: Duration,
    /// How often an idle poller checks the database file's identity.
    identity_every: Duration,
    batch_rows: usize,
    /// How long a dispatch waits for another connection's write lock.
    busy_timeout: Duration,
    watchdog: Watchdog,
    /// The seq of the last dispatched event.
    head: i64,
    /// The projection, and the version of it last published to the cache.
    state: State,
    state_version: u64,
    /// `PRAGMA data_version` at the last check.
    data_version: i64,
    over_limit: OverLimitWarning,
    /// Emits taken from the queue, to be stored by the next step.
    group: Vec<Job>,
    /// The database's path and the file opened there, checked after every commit.
    db_path: PathBuf,
    identity: FileId,
    /// When the identity was last checked.
    identity_checked: Instant,
}

impl Poller {
    /// Opens the poller's own connection (its `PRAGMA data_version` is per connection),
    /// loads the state and publishes it as version 1, so that `/api/state` has an answer
    /// before the first request is served.
    ///
    /// # Errors
    /// The connection cannot be opened or configured, or the state cannot be read.
    pub(crate) fn open(
        store: &Store,
        pace: &Pace,
        out: Outputs,
        intake: Intake,
        wake: Receiver<()>,
        stop: Receiver<()>,
    ) -> Result<Poller> {
        let mut conn = store.dedicated()?;
        events::disable_autocheckpoint(&conn)?;
        store::fast_busy_handler(&conn)?;
        let state = store::state_rows::load(&mut conn, pace.limits)?;
        out.cache.publish(&state, store.log_id(), 1);
        let head = events::head_seq(&conn)?;
        let data_version = events::data_version(&conn)?;
        Ok(Poller {
            conn,
            log_id: store.log_id(),
            out,
            jobs: intake.rx,
            _alive: intake.alive,
            wake,
            stop,
            poll_interval: pace.poll_interval,
            identity_every: if pace.watched {
                WATCHED_IDENTITY_EVERY
            } else {
                IDENTITY_EVERY
            },
            batch_rows: pace.batch_rows,
            busy_timeout: store.busy_timeout(),
            watchdog: Watchdog::new(pace.stale_floor),
            head,
            state,
            state_version: 1,
            data_version,
            over_limit: OverLimitWarning::default(),
            group: Vec::with_capacity(64),
            db_path: store.path().to_owned(),
            identity: store.identity(),
            identity_checked: Instant::now(),
        })
    }

    /// Runs until `stop` is dropped, then stores and answers the emits already queued.
    /// Database errors are logged, reported through [`PollerStatus`] and retried with
    /// backoff; nothing stored is lost, since rows stay pending until a dispatch commits,
    /// and an emit is acknowledged only after its commit.
    pub(crate) fn run(mut self) -> Result<()> {
        store::set_busy_limit(self.busy_timeout);
        let mut pending = true; // whatever was left undispatched before start
        let mut backoff = BACKOFF_MIN;
        let mut speculated = Instant::now();
        // A nudge arrived within SPECULATIVE_EVERY of the last speculative dispatch.
        let mut deferred = false;
        // The step is for a nudge whose commit was not visible: it dispatches only if, once
        // it holds the write lock, another connection has committed.
        let mut speculative = false;
        loop {
            // Idle or busy, each round is a beat; a step stuck in a busy wait is not.
            self.out.status.beat();
            emitter::take_queued(&self.jobs, &mut self.group);
            if !pending && self.group.is_empty() {
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
                // That dispatch reads nothing unless data_version moved by the time it
                // holds the lock: the nudge of our own commit costs BEGIN, one pragma and
                // ROLLBACK (measured with 200 events from another process: 426 full
                // dispatch transactions before; 201 after, beside 208 such probes).
                // Idle, it sleeps until the backstop check, the identity check or the
                // watchdog's next deadline, whichever is first.
                let timeout = if deferred {
                    SPECULATIVE_EVERY.saturating_sub(speculated.elapsed())
                } else {
                    self.poll_interval
                        .min(self.identity_every)
                        .min(self.watchdog.due(&self.state, crate::state::now_ms()))
                };
                let nudged = select! {
                    recv(self.jobs) -> job => {
                        match job {
                            Ok(job) => self.group.push(job),
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
                    Ok(v) if v != self.data_version => {
                        self.data_version = v;
                        pending = true;
                    }
                    Ok(_) if nudged && speculated.elapsed() >= SPECULATIVE_EVERY => {
                        speculated = Instant::now();
                        pending = true;
                        speculative = true;
                    }
                    Ok(_) if nudged => deferred = true,
                    Ok(_) => {}
                    Err(_) => pending = true, // let the step report it
                }
                emitter::take_queued(&self.jobs, &mut self.group);
                if (nudged || self.identity_checked.elapsed() >= self.identity_every)
                    && let Err(e) = self.verify_identity()
                {
                    return Err(self.lost(e));
                }
            }
            self.watchdog.poll(&self.state, &mut self.group);
            if !pending && self.group.is_empty() {
                continue;
            }
            let outcome = self.drain(std::mem::take(&mut speculative));
            // Back from the database, whatever it said: not stuck.
            self.out.status.beat();
            // The step took the write lock, so it saw every commit a held-back nudge was
            // about (a commit in progress holds that lock until it is visible).
            deferred = false;
            self.watchdog.answered();
            let status = &self.out.status;
            match outcome {
                Ok(true) => {
                    pending = false;
                    backoff = BACKOFF_MIN;
                    if status.failing().is_some() {
                        log::info!("poller recovered");
                        status.set_error(None);
                    }
                }
                Ok(false) => break, // stopping
                // Not retried: every commit from now on would go into a file nobody opens.
                Err(e) if e.is_identity_lost() => return Err(self.lost(e)),
                Err(e) => {
                    pending = true;
                    status.errors.fetch_add(1, Ordering::Relaxed);
                    let text = e.chain();
                    if status.failing().is_none() {
                        log::error!("poller: {text}; retrying with backoff");
                    } else {
                        log::debug!("poller still failing: {text}");
                    }
                    status.set_error(Some(text));
                    // The seq counter may be stale if a commit's outcome is unknown: re-read.
                    if let Ok(h) = events::head_seq(&self.conn) {
                        self.head = h;
                    }
                    // An emit ends the wait: its caller is waiting, and its attempt waits
                    // for a lock held elsewhere by itself (busy timeout).
                    select! {
                        recv(self.jobs) -> job => match job {
                            Ok(job) => self.group.push(job),
                            Err(_) => self.jobs = never(),
                        },
                        recv(self.stop) -> _ => break,
                        default(backoff) => {}
                    }
                    // Retrying with backoff is alive.
                    status.beat();
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
            while left > 0 && emitter::rows(&self.group) < emitter::MAX_GROUP_ROWS {
                match self.jobs.try_recv() {
                    Ok(job) => self.group.push(job),
                    Err(_) => break,
                }
                left -= 1;
            }
            if self.group.is_empty() {
                break;
            }
            if let Err(e) = self.step(false) {
                log::error!("poller at shutdown: {}", e.chain());
            }
        }
        log::debug!("poller stopped at seq {}", self.head);
        Ok(())
    }

    /// One `stat`: is the file at the database's path still the one this hub opened?
    fn verify_identity(&mut self) -> Result<()> {
        self.identity_checked = Instant::now();
        identity::verify(&self.db_path, self.identity)
    }

    /// Reports a lost database file (deleted or replaced) and gives the error back for the
    /// thread to end with: `/health` shows it until the hub stops, and the emits still
    /// queued are never stored (they fail with `Closed` when the queue drops with this
    /// thread).
    fn lost(&self, e: Error) -> Error {
        log::error!("poller: {}", e.chain());
        let reason = e.identity_reason().unwrap_or("the database file is gone");
        self.out.status.set_error(Some(reason.to_owned()));
        self.out.status.set_writes(Some(reason.to_owned()));
        e
    }

    /// Steps until no batch is full and no emit waits. Returns false if asked to stop
    /// between steps. `speculative`: the first step dispatches only if another connection
    /// has committed since the last (see [`events::store_and_dispatch`]).
    fn drain(&mut self, mut speculative: bool) -> Result<bool> {
        loop {
            let full = self.step(std::mem::take(&mut speculative))?;
            // A long backlog is many quick steps: each one is progress.
            self.out.status.beat();
            emitter::take_queued(&self.jobs, &mut self.group);
            if !full && self.group.is_empty() {
                return Ok(true);
            }
            if matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return Ok(false);
            }
        }
    }

    /// One transaction: stores the group (and empties it, answering every job), dispatches
    /// a batch, publishes it. Returns true when the batch was full (more may be pending).
    /// `speculative` with no emits waiting: only if `data_version` moved.
    fn step(&mut self, speculative: bool) -> Result<bool> {
        let started = Instant::now();
        // The batch has room for every new row, so an emit is dispatched in its own commit
        // unless a backlog of higher priority is ahead of it.
        let limit = self.batch_rows + emitter::rows(&self.group);
        let outcome = {
            let inserts = emitter::inserts(&self.group);
            events::store_and_dispatch(
                &mut self.conn,
                &inserts,
                self.log_id,
                &mut self.head,
                limit,
                &mut self.state,
                speculative.then_some(self.data_version),
            )
        };
        // Committed, but perhaps into a file deleted or replaced meanwhile: then nothing of
        // this step is acknowledged or published (one stat per transaction).
        let outcome = match outcome {
            // Nothing committed by anyone else: nothing was read, stored or committed.
            Ok(None) => return Ok(false),
            Ok(Some(done)) => self.verify_identity().map(|()| done),
            Err(e) => Err(e),
        };
        let out = &self.out;
        let (stored, batch) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let e = e.into_shared();
                if !self.group.is_empty() {
                    let failed =
                        emitter::answer(&mut self.group, Err(e.clone()), Some(&out.metrics));
                    out.status.set_writes(failed);
                }
                return Err(Error::Shared(e));
            }
        };
        // Answer first: an emitting thread then prepares its next event while this one is
        // published, and the next step takes a larger group.
        if !self.group.is_empty() {
            let failed = emitter::answer(&mut self.group, Ok(stored), Some(&out.metrics));
            out.status.set_writes(failed);
        }
        // Every commit up to here has been read: only a later one needs a dispatch.
        self.data_version = batch.data_version;
        if batch.state_changed {
            self.state_version += 1;
            out.cache
                .publish(&self.state, self.log_id, self.state_version);
        }
        if !batch.events.is_empty() {
            // Counted before they are published, so a client that has an event sees it in
            // /metrics and stats too.
            let now = state::now_ms();
            for e in &batch.events {
                let created = parse_utc_ms(&e.created_at).unwrap_or(now);
                out.metrics.dispatched(&e.event_type, now - created);
            }
            out.status
                .dispatched
                .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
            let frames: Vec<Arc<Frame>> = batch.events.iter().map(Frame::new).collect();
            out.broadcast.publish(&frames);
            out.dispatched.ring();
            self.watchdog.recoveries(&self.state, &batch.events, now);
            log::debug!(
                "dispatched {} events up to seq {} in {:?}",
                batch.events.len(),
                self.head,
                started.elapsed()
            );
        }
        let nf = batch.not_folded;
        if nf.any() {
            out.metrics.not_folded([nf.camera_cap, nf.event_type_cap]);
            log::debug!(
                "{} events over --max-cameras, {} over --max-event-types in this batch",
                nf.camera_cap,
                nf.event_type_cap
            );
            if let Some(w) = self.over_limit.note(nf, Instant::now(), self.state.limits) {
                log::warn!("{w}");
            }
        }
        if batch.rejected > 0 {
            out.status
                .rejected
                .fetch_add(batch.rejected as u64, Ordering::Relaxed);
        }
        Ok(batch.events.len() + batch.rejected >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_limit_warnings_come_once_then_at_most_once_a_minute() {
        let mut w = OverLimitWarning::default();
        let limits = Limits::new(64, 256);
        let t0 = Instant::now();
        let cams = |n| NotFolded {
            camera_cap: n,
            ..NotFolded::default()
        };
        assert_eq!(w.note(NotFolded::default(), t0, limits), None);
        let first = w.note(cams(3), t0, limits).unwrap_or_default();
        assert!(
            first.starts_with("3 events about cameras beyond --max-cameras (64)"),
            "{first}"
        );
        for s in 1..60 {
            assert_eq!(w.note(cams(1), t0 + Duration::from_secs(s), limits), None);
        }
        let later = w
            .note(cams(1), t0 + OVER_LIMIT_WARN_EVERY, limits)
            .unwrap_or_default();
        assert!(later.starts_with("60 events about cameras"), "{later}");
        assert!(later.contains("since the last warning"), "{later}");
        // Quiet afterwards: nothing more to say, however long it has been.
        assert_eq!(
            w.note(
                NotFolded::default(),
                t0 + 10 * OVER_LIMIT_WARN_EVERY,
                limits
            ),
            None
        );
    }
}
