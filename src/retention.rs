//! The retention thread (`tle-retention`): deletes old dispatched events by age, count and
//! database size, in small chunks (see store/maintenance.rs). Pending rows are never touched.

use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use crate::config::Config;
use crate::error::Result;
use crate::store::Store;
use crate::store::maintenance::{Policy, prune};

/// The policy a config describes.
pub(crate) fn policy(config: &Config) -> Policy {
    Policy {
        max_age_secs: config.retention_age.map(|d| d.as_secs()),
        max_rows: config.retention_max_rows,
        max_db_bytes: config.retention_max_db_bytes,
    }
}

/// Runs `prune` now and every `interval` until `stop` is dropped; errors are logged (once
/// per streak) and retried at the next round.
pub(crate) fn run(
    store: &Store,
    policy: Policy,
    interval: Duration,
    stop: &Receiver<()>,
) -> Result<()> {
    let mut conn = store.dedicated()?;
    let mut failing = false;
    loop {
        match prune(&mut conn, policy) {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                log::warn!("retention: {}", e.chain());
                failing = true;
            }
            Err(e) => log::debug!("retention still failing: {}", e.chain()),
        }
        select! {
            recv(stop) -> _ => return Ok(()),
            default(interval) => {}
        }
    }
}
