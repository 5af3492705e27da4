//! In-process producers: [`Emitter`], a cheap handle that capture threads clone, and the one
//! thread behind it that commits their events in groups.
//!
//! SQLite has one writer at a time. Rather than many threads fighting for its lock (measured
//! here: two threads committing single rows were slower than one, and unfair), every emit is
//! queued, in arrival order, to one thread that takes whatever is waiting (up to
//! [`MAX_GROUP_ROWS`]) and commits it in one transaction. One fsync then covers the group,
//! which is what makes `--synchronous full` affordable on an SD card.
//!
//! Inside a hub that thread is the poller, which stores the group and dispatches it in the
//! same transaction (see `poller`). An emitter made by [`Emitter::open`], for another
//! process writing into a hub's file, has a writer thread of its own (`tle-writer`) that
//! only stores; the hub picks the rows up like any external producer's.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, select};
use rusqlite::Connection;

use crate::config::Synchronous;
use crate::error::{Error, Result};
use crate::event::{EventId, NewEvent};
use crate::metrics::Metrics;
use crate::store::{OpenMode, Store, events};
use crate::thread::{join_thread, spawn_critical};

/// Most events committed in one transaction.
pub const MAX_GROUP_ROWS: usize = 1024;
/// Emits that may wait for the writer before `emit` blocks.
const QUEUE_JOBS: usize = 8192;

/// One caller's events (one for `emit`, many for `emit_batch`), committed all or none.
pub(crate) struct Job {
    pub(crate) events: Vec<(NewEvent, String)>,
    pub(crate) reply: Sender<Result<Vec<EventId>>>,
}

impl Job {
    /// A job for `events`, and where its answer arrives.
    pub(crate) fn new(events: Vec<NewEvent>) -> Result<(Job, Receiver<Result<Vec<EventId>>>)> {
        let events = events
            .into_iter()
            .map(|e| e.validate().map(|data| (e, data)))
            .collect::<Result<Vec<_>>>()?;
        let (reply, answer) = bounded(1);
        Ok((Job { events, reply }, answer))
    }
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
    /// Disconnected when the thread that takes the jobs has ended.
    alive: Receiver<()>,
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
        Emitter::open_as(db_path.as_ref(), synchronous, OpenMode::Create)
    }

    /// [`Emitter::open_with`] for a database that must exist already: a mistyped path, or
    /// one relative to the wrong directory, is an error instead of a new, empty database
    /// that no hub reads. What the `emit` subcommand uses (without `--create`).
    ///
    /// # Errors
    /// [`Error::DbFile`] when there is no timelapse-events database at `db_path` (no file,
    /// no directory, not SQLite, no schema) or this user may not read and write it; then as
    /// [`Emitter::open`].
    pub fn open_existing(db_path: impl AsRef<Path>, synchronous: Synchronous) -> Result<Emitter> {
        Emitter::open_as(db_path.as_ref(), synchronous, OpenMode::Existing)
    }

    fn open_as(db_path: &Path, synchronous: Synchronous, mode: OpenMode) -> Result<Emitter> {
        let store = Store::open_as(db_path, synchronous, Duration::from_secs(5), mode)?;
        let (writer, emitter) = Writer::start(&store)?;
        Ok(Emitter {
            _owner: Some(Arc::new(writer)),
            ..emitter
        })
    }

    /// An emitter whose jobs the caller's thread takes from the returned queue (the hub's
    /// poller, or a standalone writer).
    pub(crate) fn channel() -> (Emitter, Intake) {
        let (tx, rx) = bounded::<Job>(QUEUE_JOBS);
        let (alive_tx, alive) = bounded::<()>(0);
        (
            Emitter {
                tx,
                alive,
                _owner: None,
            },
            Intake {
                rx,
                alive: alive_tx,
            },
        )
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
        let (job, answer) = Job::new(events)?;
        self.tx.send(job).map_err(|_| Error::Closed)?;
        // The queue's thread answers every job it takes. One it never took (queued as it
        // stopped) stays in the channel, unanswered, while other emitters keep the channel
        // open, so waiting for the answer alone could wait forever.
        select! {
            recv(answer) -> r => r.map_err(|_| Error::Closed)?,
            // Ended: an answer it sent before is visible now; none means not stored.
            recv(self.alive) -> _ => answer.try_recv().map_err(|_| Error::Closed)?,
        }
    }
}

/// The taking end of an [`Emitter`]'s queue. Its thread holds it; when that thread ends,
/// `alive` drops and every emit waiting for an answer returns [`Error::Closed`].
pub(crate) struct Intake {
    pub(crate) rx: Receiver<Job>,
    pub(crate) alive: Sender<()>,
}

/// The writer thread of an [`Emitter::open`] and the means to stop it.
pub(crate) struct Writer {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Writer {
    /// Starts `tle-writer` on a dedicated connection.
    fn start(store: &Store) -> Result<(Writer, Emitter)> {
        let conn = store.dedicated()?;
        crate::store::fast_busy_handler(&conn)?;
        let busy_limit = store.busy_timeout();
        let (emitter, queue) = Emitter::channel();
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let handle = spawn_critical("writer", None, move || {
            crate::store::set_busy_limit(busy_limit);
            writer_loop(conn, &queue.rx, &stop_rx);
            drop(queue);
            Ok(())
        })?;
        Ok((
            Writer {
                stop: Some(stop_tx),
                handle: Some(handle),
            },
            emitter,
        ))
    }
}

impl Drop for Writer {
    /// Commits what is queued, answers it, and ends the thread (the last clone is gone).
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take()
            && let Err(e) = join_thread("writer", h)
        {
            log::error!("{}", e.chain());
        }
    }
}

fn writer_loop(mut conn: Connection, rx: &Receiver<Job>, stop: &Receiver<()>) {
    let mut group: Vec<Job> = Vec::with_capacity(64);
    loop {
        let stopping = select! {
            recv(rx) -> job => match job {
                Ok(job) => { group.push(job); false }
                Err(_) => true, // every Emitter is gone
            },
            recv(stop) -> _ => true,
        };
        take_queued(rx, &mut group);
        if !group.is_empty() {
            commit_group(&mut conn, &mut group);
        }
        if stopping {
            // Drain what was queued before the stop so every accepted emit is answered.
            loop {
                take_queued(rx, &mut group);
                if group.is_empty() {
                    break;
                }
                commit_group(&mut conn, &mut group);
            }
            log::debug!("writer stopped");
            return;
        }
    }
}

fn commit_group(conn: &mut Connection, group: &mut Vec<Job>) {
    let outcome = events::insert_groups(conn, &inserts(group));
    answer(group, outcome.map_err(Error::into_shared), None);
}

/// Rows in a group of jobs.
pub(crate) fn rows(group: &[Job]) -> usize {
    group.iter().map(|j| j.events.len()).sum()
}

/// Adds what is queued to `group` without waiting, up to [`MAX_GROUP_ROWS`] rows.
pub(crate) fn take_queued(rx: &Receiver<Job>, group: &mut Vec<Job>) {
    let mut n = rows(group);
    while n < MAX_GROUP_ROWS {
        match rx.try_recv() {
            Ok(job) => {
                n += job.events.len();
                group.push(job);
            }
            Err(_) => break,
        }
    }
}

/// The INSERTs of a group, one list per job.
pub(crate) fn inserts(group: &[Job]) -> Vec<Vec<events::Insert<'_>>> {
    group
        .iter()
        .map(|j| {
            j.events
                .iter()
                .map(|(event, data)| events::Insert { event, data })
                .collect()
        })
        .collect()
}

/// Answers every job of `group` (and empties it): with its own result when the transaction
/// committed, else with the error that failed them all (the same error, shared). Returns
/// that error's text, or the first job's own database error, for `/health`.
pub(crate) fn answer(
    group: &mut Vec<Job>,
    outcome: std::result::Result<Vec<Result<Vec<EventId>>>, Arc<Error>>,
    metrics: Option<&Metrics>,
) -> Option<String> {
    match outcome {
        Ok(results) => {
            let mut failed = None;
            for (job, result) in group.drain(..).zip(results) {
                match &result {
                    Ok(_) => {
                        for (event, _) in &job.events {
                            log::debug!("stored an event ({})", event.event_type);
                            if let Some(m) = metrics {
                                m.emitted(&event.event_type);
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!("{} events not stored: {}", job.events.len(), e.chain());
                        failed.get_or_insert_with(|| e.to_string());
                    }
                }
                // The emitter may have given up waiting (its thread ended): nothing to tell.
                let _ = job.reply.send(result);
            }
            failed
        }
        Err(e) => {
            let text = e.chain();
            log::warn!("{} events not stored: {text}", rows(group));
            for job in group.drain(..) {
                // As above: a caller that gave up waiting needs no answer.
                let _ = job.reply.send(Err(Error::Shared(e.clone())));
            }
            Some(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real SQLite failure: an INSERT into a database opened read-only.
    fn read_only_failure() -> Error {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.db");
        Store::open(&path, Synchronous::Normal, Duration::from_secs(1)).expect("create");
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open read-only");
        conn.execute("INSERT INTO hub_meta (key, value) VALUES ('k', 'v')", [])
            .map_err(crate::error::db("insert event"))
            .expect_err("a read-only database refuses writes")
    }

    /// Every emit of a failed group learns the same cause, with the same condition
    /// (read-only, busy, disk full), not a copy rebuilt from its text.
    #[test]
    fn every_caller_of_a_failed_group_gets_the_original_error() {
        let original = read_only_failure();
        let want = original.chain();
        assert!(want.contains("read-only"), "{want}");
        let mut group = Vec::new();
        let mut answers = Vec::new();
        for i in 0..3 {
            let (job, answer) =
                Job::new(vec![NewEvent::new("t", serde_json::json!({"i": i}))]).expect("job");
            group.push(job);
            answers.push(answer);
        }
        let health = answer(&mut group, Err(original.into_shared()), None);
        assert_eq!(health.as_deref(), Some(want.as_str()));
        assert!(group.is_empty());
        for (i, a) in answers.iter().enumerate() {
            let got = a.try_recv().expect("answered").expect_err("failed");
            assert_eq!(got.chain(), want, "caller {i}");
            assert!(!got.is_busy() && !got.is_disk_full(), "caller {i}");
        }
    }
}
