//! Maintenance of a database file without a running hub: what the `stats`, `cleanup`,
//! `check` and `backup` subcommands of the binary call. Each opens the file itself; a hub
//! may be running on it meanwhile.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{Config, Synchronous};
use crate::error::{Error, Result};
use crate::store::{Store, maintenance};

/// Event statistics of a database, as `GET /api/events/stats` gives them (no subscribers).
///
/// # Errors
/// The database cannot be opened, migrated or read.
pub fn stats(db: &Path, synchronous: Synchronous) -> Result<Map<String, Value>> {
    let store = Store::open(db, synchronous, Duration::from_secs(5))?;
    maintenance::stats(&*store.conn()?, db)
}

/// Deletes dispatched events (never pending ones) older than `older_than`, or, without it,
/// what the hub's default retention policy would delete. Returns how many.
///
/// # Errors
/// The database cannot be opened, migrated or written.
pub fn cleanup(db: &Path, synchronous: Synchronous, older_than: Option<Duration>) -> Result<u64> {
    let policy = match older_than {
        Some(age) => maintenance::Policy {
            max_age_secs: Some(age.as_secs()),
            max_rows: None,
            max_db_bytes: None,
        },
        None => crate::retention::policy(&Config::default()),
    };
    let store = Store::open(db, synchronous, Duration::from_secs(5))?;
    maintenance::prune(&mut store.dedicated()?, policy)
}

/// Checks a database: integrity, schema version, counts, WAL size. Returns the report;
/// `on_report` sees it before a failed check returns its problems.
///
/// # Errors
/// [`Error::Check`] naming each problem found; other errors when the file cannot be read.
pub fn check(db: &Path, on_report: impl FnOnce(&Map<String, Value>)) -> Result<()> {
    let found = maintenance::check(db)?;
    on_report(&found.report);
    if found.problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Check {
            problems: found.problems,
        })
    }
}

/// Copies a (possibly running) database to `to` with SQLite's online backup API; `to` must
/// not exist. Returns the pages copied.
///
/// # Errors
/// `to` exists ([`Error::Config`]), or the copy fails.
pub fn backup(db: &Path, to: &Path) -> Result<u64> {
    if to.exists() {
        return Err(Error::Config {
            field: "to",
            reason: format!("{} exists; refusing to overwrite it", to.display()),
        });
    }
    maintenance::backup(db, to)
}
