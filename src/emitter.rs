//! In-process producers: [`Emitter`], a cheap handle that capture threads clone, and the one
//! writer thread (`tle-writer`) behind it that commits their events in groups.
//!
//! SQLite has one writer at a time. Rather than many threads fighting for its lock (measured
//! here: two threads committing single rows were slower than one, and unfair), every emit is
//! queued, in arrival order, to one thread that takes whatever is waiting (up to
//! [`MAX_GROUP_ROWS`]) and commits it in one transaction. One fsync then covers the group,
//! which is what makes `--synchronous full` affordable on an SD card.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, select};
use rusqlite::Connection;

use crate::config::Synchronous;
use crate::error::{Error, Result};
use crate::event::{EventId, NewEvent};
use crate::hub::{Fatal, join_thread, spawn_critical};
use crate::metrics::Metrics;
use crate::poller::PollerStatus;
use crate::store::{Store, events};

/// Most events committed in one transaction.
pub const MAX_GROUP_ROWS: usize = 1024;
/// Emits that may wait for the writer before `emit` blocks.
const QUEUE_JOBS: usize = 8192;

/// One caller's events (one for `emit`, many for `emit_batch`), committed all or none.
struct Job {
    events: Vec<(NewEvent, String)>,
    reply: Sender<Result<Vec<EventId>>>,
}

/// A cheap, cloneable handle for producing events from any thread.
///
/// `emit` returns once the event is committed to SQLite (durably, as the `synchronous`
/// setting defines it). It takes no lock: it queues to the writer thread and waits for its
/// answer on a channel of its own. Clones share one writer.
///
/// ```no_run
/// use timelapse_events::{Emitter, NewEvent};
/// let emitter = Emitter::open("timelapse-events.db")?;
/// let id = emitter.emit(NewEvent::image_captured(1, 7, 120, 2))?;
/// println!("stored as {id}");
/// # Ok::<(), timelapse_events::Error>(())
/// ```
#[derive(Clone)]
pub struct Emitter {
    tx: Sender<Job>,
    // Set for an emitter made by `open`: the last clone dropped stops its writer thread.
    _owner: Option<Arc<Writer>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").finish_non_exhaustive()
    }
}

impl Emitter {
    /// An emitter of its own for another process writing into a hub's database file: it
    /// opens (and if need be creates) the database and starts a writer thread, which stops
    /// when the last clone is dropped. The hub picks the events up within its poll interval.
    ///
    /// # Errors
    /// The database cannot be opened or migrated, or the thread cannot start.
    pub fn open(db_path: impl AsRef<Path>) -> Result<Emitter> {
        Emitter::open_with(db_path, Synchronous::Normal)
    }

    /// [`Emitter::open`] with a `synchronous` setting.
    ///
    /// # Errors
    /// As [`Emitter::open`].
    pub fn open_with(db_path: impl AsRef<Path>, synchronous: Synchronous) -> Result<Emitter> {
        let store = Store::open(db_path.as_ref(), synchronous, Duration::from_secs(5))?;
        let (writer, emitter) = Writer::start(&store, None, None, None, None)?;
        Ok(Emitter {
            _owner: Some(Arc::new(writer)),
            ..emitter
        })
    }

    /// Stores one event and returns its row id once it is committed.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad type, payload, or source (nothing is stored);
    /// [`Error::Db`] when SQLite refused (e.g. busy timeout or disk full; see
    /// [`Error::is_busy`], [`Error::is_disk_full`]); [`Error::Closed`] after shutdown.
    pub fn emit(&self, event: NewEvent) -> Result<EventId> {
        let ids = self.submit(vec![event])?;
        ids.first().copied().ok_or(Error::Closed)
    }

    /// Stores several events in one transaction, all or none, and returns their row ids
    /// in order. The way to produce bursts fast: one commit (and with `synchronous=full`,
    /// one fsync) covers the whole batch.
    ///
    /// # Errors
    /// As [`Emitter::emit`]; an invalid event fails the whole batch before anything is
    /// stored.
    pub fn emit_batch(&self, events: Vec<NewEvent>) -> Result<Vec<EventId>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(events)
    }

    fn submit(&self, events: Vec<NewEvent>) -> Result<Vec<EventId>> {
        let events = events
            .into_iter()
            .map(|e| e.validate().map(|data| (e, data)))
            .collect::<Result<Vec<_>>>()?;
        let (reply, answer) = bounded(1);
        self.tx
            .send(Job { events, reply })
            .map_err(|_| Error::Closed)?;
        // The writer answers every job it takes; a dropped reply means it stopped first.
        answer.recv().map_err(|_| Error::Closed)?
    }
}

/// The writer thread and the means to stop it.
pub(crate) struct Writer {
    stop: Mutex<Option<Sender<()>>>,
    handle: Mutex<Option<JoinHandle<Result<()>>>>,
}

impl Writer {
    /// Starts `tle-writer` on a dedicated connection. After each commit it nudges `wake`
    /// (the poller), if given.
    pub(crate) fn start(
        store: &Store,
        wake: Option<Sender<()>>,
        metrics: Option<Arc<Metrics>>,
        fatal: Option<Fatal>,
        status: Option<Arc<PollerStatus>>,
    ) -> Result<(Writer, Emitter)> {
        let conn = store.dedicated()?;
        if wake.is_some() {
            // Inside a hub, the poller checkpoints after publishing; keep fsyncs of
            // checkpoints off the emit path (measured: 26,000 → 47,000 rows/s raw).
            events::disable_autocheckpoint(&conn)?;
        }
        crate::store::fast_busy_handler(&conn)?;
        let busy_limit = store.busy_timeout();
        let (tx, rx) = bounded::<Job>(QUEUE_JOBS);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let handle = spawn_critical("writer", fatal, move || {
            crate::store::set_busy_limit(busy_limit);
            writer_loop(
                conn,
                &rx,
                &stop_rx,
                wake.as_ref(),
                metrics.as_deref(),
                status.as_deref(),
            );
            Ok(())
        })?;
        Ok((
            Writer {
                stop: Mutex::new(Some(stop_tx)),
                handle: Mutex::new(Some(handle)),
            },
            Emitter { tx, _owner: None },
        ))
    }

    /// Commits what is queued, answers it, and ends the thread. Idempotent.
    pub(crate) fn stop(&self) -> Result<()> {
        // Poisoning cannot leave these Options half-written: take() is the only mutation.
        drop(
            self.stop
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        handle.map_or(Ok(()), |h| join_thread("writer", h))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("{}", e.chain());
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: &Receiver<Job>,
    stop: &Receiver<()>,
    wake: Option<&Sender<()>>,
    metrics: Option<&Metrics>,
    status: Option<&PollerStatus>,
) {
    let mut group: Vec<Job> = Vec::with_capacity(64);
    let rows = |group: &[Job]| group.iter().map(|j| j.events.len()).sum::<usize>();
    loop {
        let stopping = select! {
            recv(rx) -> job => match job {
                Ok(job) => { group.push(job); false }
                Err(_) => true, // every Emitter is gone
            },
            recv(stop) -> _ => true,
        };
        while rows(&group) < MAX_GROUP_ROWS {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, &mut group, metrics, status);
            if let Some(wake) = wake {
                // Full means a wake-up is already pending; that one covers us.
                let _ = wake.try_send(());
            }
        }
        if stopping {
            // Drain what was queued before the stop so every accepted emit is answered.
            while let Ok(job) = rx.try_recv() {
                group.push(job);
                if rows(&group) >= MAX_GROUP_ROWS {
                    commit_group(&mut conn, &mut group, metrics, status);
                }
            }
            if !group.is_empty() {
                commit_group(&mut conn, &mut group, metrics, status);
            }
            log::debug!("writer stopped");
            return;
        }
    }
}

fn commit_group(
    conn: &mut Connection,
    group: &mut Vec<Job>,
    metrics: Option<&Metrics>,
    status: Option<&PollerStatus>,
) {
    let inserts: Vec<Vec<events::Insert<'_>>> = group
        .iter()
        .map(|j| {
            j.events
                .iter()
                .map(|(event, data)| events::Insert { event, data })
                .collect()
        })
        .collect();
    let outcome = events::insert_groups(conn, &inserts);
    drop(inserts);
    if let Some(status) = status {
        // For /health: a failing commit (disk full, a lock held elsewhere) is news.
        let now = outcome.as_ref().err().map(Error::to_string);
        *status.writes.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }
    match outcome {
        Ok(results) => {
            for (job, result) in group.drain(..).zip(results) {
                if result.is_ok() {
                    for (event, _) in &job.events {
                        log::debug!("stored an event ({})", event.event_type);
                        if let Some(m) = metrics {
                            m.emitted(&event.event_type);
                        }
                    }
                }
                // The emitter may have given up waiting (its thread ended): nothing to tell.
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            let n: usize = group.iter().map(|j| j.events.len()).sum();
            log::warn!("{n} events not stored: {}", e.chain());
            let text = e.chain();
            let busy = e.is_busy();
            let full = e.is_disk_full();
            let mut first = Some(e);
            for job in group.drain(..) {
                // Every caller gets the same cause; the first gets the original error value.
                let err = first
                    .take()
                    .unwrap_or_else(|| clone_error(&text, busy, full));
                let _ = job.reply.send(Err(err));
            }
        }
    }
}

/// The group-wide error, for the second and later callers (rusqlite errors are not Clone).
fn clone_error(text: &str, busy: bool, full: bool) -> Error {
    let code = if busy {
        rusqlite::ffi::SQLITE_BUSY
    } else if full {
        rusqlite::ffi::SQLITE_FULL
    } else {
        rusqlite::ffi::SQLITE_ERROR
    };
    Error::Db {
        op: "commit events",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            Some(text.to_owned()),
        ),
    }
}
