//! Maintenance of a database file without a running hub: what the `stats`, `sinks`,
//! `cleanup`, `check` and `backup` subcommands of the binary call. Each opens the file itself; a hub
//! may be running on it meanwhile.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{Config, Synchronous};
use crate::error::{Error, Result};
use crate::store::{self, OpenMode, Store, maintenance};

/// Event statistics of a database, as `GET /api/events/stats` gives them (no subscribers).
/// Opens the file read-only, so it works on one this user may only read; `synchronous` is
/// not used (nothing is written) and stays for compatibility.
///
/// # Errors
/// [`Error::DbFile`] when there is no timelapse-events database at `db`;
/// [`Error::SchemaTooOld`] for one no hub of this version has migrated yet; or the
/// database cannot be read.
pub fn stats(db: &Path) -> Result<Map<String, Value>> {
    let conn = store::open_current_read_only(db)?;
    maintenance::stats(&conn, db)
}

/// The stored cursor of every sink (also of sinks no longer configured), by name. Opens the
/// file read-only.
///
/// # Errors
/// As [`stats`].
pub fn sinks(db: &Path) -> Result<Vec<store::sinks::SinkCursor>> {
    let conn = store::open_current_read_only(db)?;
    store::sinks::list(&conn)
}

/// Deletes dispatched events (never pending ones) older than `older_than`, or, without it,
/// what the hub's default retention policy would delete. Returns how many.
///
/// # Errors
/// [`Error::DbFile`] when there is no timelapse-events database at `db` (nothing is
/// created) or it may not be written; or it cannot be migrated or written.
pub fn cleanup(db: &Path, synchronous: Synchronous, older_than: Option<Duration>) -> Result<u64> {
    let policy = match older_than {
        Some(age) => maintenance::Policy {
            max_age_secs: Some(age.as_secs()),
            max_rows: None,
            max_db_bytes: None,
            // Without a hub there is no list of enabled sinks: an explicit cleanup is the
            // operator's word, and a sink that falls behind it records the gap.
            hold_after: None,
        },
        None => crate::retention::policy(&Config::default()),
    };
    let store = Store::open_as(db, synchronous, Duration::from_secs(5), OpenMode::Existing)?;
    maintenance::prune(&mut store.dedicated()?, policy)
}

/// Checks a database: integrity, schema version, counts, WAL size. Returns the report;
/// `on_report` sees it before a failed check returns its problems. Opens the file
/// read-only and never changes it.
///
/// # Errors
/// [`Error::Check`] naming each problem found; [`Error::DbFile`] when there is no database
/// at `db` to check (then `on_report` is not called); other errors when it cannot be read.
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
/// not exist. Returns the pages copied. The source is opened read-only, and must exist;
/// when anything fails, `to` is removed again: a failed backup leaves no file behind.
///
/// # Errors
/// `to` exists ([`Error::Config`]), there is no database at `db` ([`Error::DbFile`]), or
/// the copy fails.
pub fn backup(db: &Path, to: &Path) -> Result<u64> {
    let exists = || Error::Config {
        field: "to",
        reason: format!("{} exists; refusing to overwrite it", to.display()),
    };
    if to.exists() {
        return Err(exists());
    }
    let from = store::open_read_only(db)?;
    // Claims the name atomically: a file that appeared meanwhile is not ours to replace
    // (nor, on failure, to remove).
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
        Err(e) => {
            return Err(Error::Io {
                op: "create the backup file",
                source: e,
            });
        }
    }
    let copied = maintenance::backup(&from, to);
    if copied.is_err() {
        for leftover in ["", "-journal", "-wal", "-shm"].map(|s| store::sibling(to, s)) {
            if let Err(e) = std::fs::remove_file(&leftover)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                log::warn!(
                    "cannot remove the partial backup {}: {e}",
                    leftover.display()
                );
            }
        }
    }
    copied
}
