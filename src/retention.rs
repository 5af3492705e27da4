//! The retention thread (`tle-retention`): deletes old dispatched events by age, count and
//! database size, in small chunks (see store/maintenance.rs). Pending rows are never touched,
//! nor (but by the size limit) rows an enabled sink has not delivered. Each round also
//! deletes the capture history's buckets past their keep (48 hours, 60 days): never the
//! counters of events it deletes, which outlive them.

use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use crate::config::Config;
use crate::error::Result;
use crate::history;
use crate::store::Store;
use crate::store::maintenance::{Policy, prune};

/// The policy a config describes.
pub(crate) fn policy(config: &Config) -> Policy {
    Policy {
        max_age_secs: config.retention_age.map(|d| d.as_secs()),
        max_rows: config.retention_max_rows,
        max_db_bytes: config.retention_max_db_bytes,
        hold_after: None,
    }
}

/// Runs `prune` now and every `interval` until `stop` is dropped; errors are logged (once
/// per streak) and retried at the next round. Each round first reads the lowest cursor of
/// the enabled `sinks`, so age and count never delete what one has not delivered.
pub(crate) fn run(
    store: &Store,
    policy: Policy,
    sinks: &[String],
    interval: Duration,
    stop: &Receiver<()>,
) -> Result<()> {
    let mut conn = store.dedicated()?;
    let mut failing = false;
    loop {
        let round = crate::store::sinks::hold(&conn, sinks)
            .and_then(|hold_after| {
                prune(
                    &mut conn,
                    Policy {
                        hold_after,
                        ..policy
                    },
                )
            })
            .and_then(|_| {
                // Old capture buckets: a different table, whatever the events' policy.
                let (hours, days) = history::prune_before(crate::state::now_ms());
                crate::store::history::prune(&conn, hours, days)
            });
        match round {
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
