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

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::error::Result;
use crate::store::{Store, events};

/// The WAL is checkpointed once it is this large (SQLite's own default is 1,000 pages).
pub(crate) const CHECKPOINT_WAL_BYTES: u64 = 4 * 1024 * 1024;
/// How often the WAL's size is looked at (a `stat`, nothing more).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs until `stop` is dropped. Errors are logged (once per streak) and retried at the
/// next check; a checkpoint that cannot finish now (a reader holds old frames) finishes
/// in a later one.
pub(crate) fn run(store: &Store, stop: &Receiver<()>) -> Result<()> {
    let conn = store.dedicated()?;
    events::disable_autocheckpoint(&conn)?;
    let wal = store.wal_path();
    let mut failing = false;
    loop {
        select! {
            recv(stop) -> _ => return Ok(()),
            default(CHECK_EVERY) => {}
        }
        let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if len < CHECKPOINT_WAL_BYTES {
            continue;
        }
        let started = Instant::now();
        match events::checkpoint_passive(&conn) {
            Ok(()) => {
                failing = false;
                log::debug!("checkpointed a {len}-byte WAL in {:?}", started.elapsed());
            }
            Err(e) if !failing => {
                failing = true;
                log::warn!("{}", e.chain());
            }
            Err(e) => log::debug!("checkpoint still failing: {}", e.chain()),
        }
    }
}
