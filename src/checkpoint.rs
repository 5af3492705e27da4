//! The checkpoint thread (`tle-checkpoint`): copies the WAL back into the database file
//! once it has grown past [`CHECKPOINT_WAL_BYTES`], on a connection of its own.
//!
//! No connection of the hub checkpoints inside its commits (`wal_autocheckpoint = 0`):
//! SQLite would then run the checkpoint, and its fsyncs, on whichever commit crossed the
//! threshold, so one emit in a thousand would wait for the disk. Here a PASSIVE checkpoint
//! runs beside the poller (WAL lets a checkpoint and a writer work at once), so its
//! fsyncs never delay a dispatch. On this VM's disk an fsync is about a millisecond and
//! the difference is lost in the noise; on an SD card one takes 10 to 100 ms, which the
//! poller would otherwise spend once a second under load with every event waiting.
//!
//! It looks when the poller has dispatched a batch (its [`Bell`](crate::bell::Bell)), at
//! most once per [`CHECK_EVERY`], and otherwise every [`IDLE_CHECK`] for writes that
//! dispatch nothing (retention's deletes): an idle hub's checkpointer sleeps.
//!
//! A PASSIVE checkpoint copies the WAL but never starts it again: only a writer can, and
//! only if its transaction began when every frame had been copied. Under commits that never
//! pause, each one begins while the last checkpoint is still copying, so the WAL grew
//! without end (measured: 20 MB more per 400 POSTs of 12 KB, 78 MB after 1,600, every
//! PASSIVE checkpoint complete). Past [`RESTART_WAL_BYTES`] a PASSIVE pass is followed by
//! a RESTART: it holds the writers off while it copies what the PASSIVE pass left (the
//! frames committed meanwhile) and until no reader uses the WAL, at most [`RESTART_WAIT`]
//! for each, and the next commit starts the WAL from its beginning (and truncates the file
//! to the store's `journal_size_limit`). That wait is the one delay this thread may cause
//! a dispatch, once per 16 MiB of WAL under sustained load.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::error::Result;
use crate::store::Store;
use crate::store::events::{self, CheckpointMode};

/// The WAL is checkpointed once it is this large (SQLite's own default is 1,000 pages).
pub(crate) const CHECKPOINT_WAL_BYTES: u64 = 4 * 1024 * 1024;
/// A WAL this large is checkpointed with RESTART: PASSIVE ones did not keep it smaller.
pub(crate) const RESTART_WAL_BYTES: u64 = 4 * CHECKPOINT_WAL_BYTES;
/// The longest a RESTART waits for the write lock, and then for the readers.
const RESTART_WAIT: Duration = Duration::from_millis(200);
/// The WAL's size is looked at (a `stat`, nothing more) at most this often.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// And at least this often, dispatches or not.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// Runs until `stop` is dropped; `dispatched` has a message after the poller dispatched.
/// Errors are logged (once per streak) and retried at the next check; a checkpoint that
/// cannot finish now (a reader holds old frames) finishes in a later one.
pub(crate) fn run(store: &Store, stop: &Receiver<()>, dispatched: &Receiver<()>) -> Result<()> {
    let conn = store.dedicated()?;
    events::disable_autocheckpoint(&conn)?;
    events::set_busy_timeout(&conn, RESTART_WAIT)?;
    let wal = store.wal_path();
    let mut failing = false;
    let mut looked = Instant::now();
    loop {
        select! {
            recv(stop) -> _ => return Ok(()),
            recv(dispatched) -> _ => {}
            default(IDLE_CHECK) => {}
        }
        // Under load the bell rings for every batch: one look a second is enough.
        let early = CHECK_EVERY.saturating_sub(looked.elapsed());
        if !early.is_zero() {
            select! {
                recv(stop) -> _ => return Ok(()),
                default(early) => {}
            }
        }
        looked = Instant::now();
        let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if len < CHECKPOINT_WAL_BYTES {
            continue;
        }
        let started = Instant::now();
        let restart = len >= RESTART_WAL_BYTES;
        // Before a RESTART, a PASSIVE pass copies what is there beside the writers, so that
        // the RESTART holds them off only for the frames committed meanwhile (measured at
        // 1,000 events/s: a 25 MB WAL held the poller 28 to 41 ms in one RESTART).
        let copied = events::checkpoint(&conn, CheckpointMode::Passive).and_then(|passive| {
            if !restart {
                return Ok((passive, Duration::ZERO));
            }
            let held = Instant::now();
            let last = events::checkpoint(&conn, CheckpointMode::Restart)?;
            Ok((last, held.elapsed()))
        });
        match copied {
            Ok(((frames, copied), held)) => {
                failing = false;
                log::debug!(
                    "checkpointed a {len}-byte WAL ({}) in {:?}: {copied} of its {frames} \
                     frames{}",
                    if restart {
                        "PASSIVE, then RESTART"
                    } else {
                        "PASSIVE"
                    },
                    started.elapsed(),
                    if restart {
                        format!("; the RESTART held writers off for at most {held:?}")
                    } else {
                        String::new()
                    }
                );
            }
            Err(e) if !failing => {
                failing = true;
                log::warn!("{}", e.chain());
            }
            Err(e) => log::debug!("checkpoint still failing: {}", e.chain()),
        }
    }
}
