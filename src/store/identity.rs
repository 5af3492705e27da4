//! The database file's identity: [`DbLock`], the lock on `<db>.lock` that keeps a second
//! hub off a file one already serves, and [`FileId`], the (device, inode) pair with which
//! the poller notices that the file at the path is no longer the one it writes into. No SQL:
//! plain file-system calls, made by `Hub::start` (the lock) and by the poller and `/health`
//! (one `stat` per check).
//!
//! Why both: two hubs on one file would both dispatch its rows, each with its own idea of
//! the stream's seq, and a file deleted or replaced under a running hub keeps taking its
//! commits into an inode nobody will ever open again, so an acknowledged event is lost.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{DbFileProblem, Error, Result};

/// The lock that makes a hub the only one on its database: an exclusive `flock` on
/// `<db>.lock` (beside the file the path resolves to, so a symlink to the same database
/// finds the same lock), held until this value drops. The kernel releases it when the
/// process ends, however it ends, so a hub killed with SIGKILL leaves no stale lock.
/// The file holds the holder's pid, for the message a second hub prints; it is never
/// deleted (removing a lock file races with the next hub taking it).
#[derive(Debug)]
pub(crate) struct DbLock {
    _file: File,
    path: PathBuf,
}

impl DbLock {
    /// Takes the lock for the database at `db`, creating the lock file if need be (mode
    /// 0666 less the umask, as [`super::create_with_umask`] does for the database).
    ///
    /// # Errors
    /// [`DbFileProblem::InUse`] when another process holds it; [`DbFileProblem::ReadOnlyDir`]
    /// when the lock file cannot be created there; [`DbFileProblem::MissingDir`];
    /// [`Error::Io`] otherwise.
    pub(crate) fn acquire(db: &Path) -> Result<DbLock> {
        // A database that does not exist yet (its creation failed) is named as given.
        let real = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_owned());
        let path = super::sibling(&real, ".lock");
        let file = open_lock_file(&path).map_err(|e| match e.kind() {
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                Error::db_file_from(db, DbFileProblem::ReadOnlyDir, e)
            }
            ErrorKind::NotFound => Error::db_file_from(db, DbFileProblem::MissingDir, e),
            _ => Error::Io {
                op: "open the database's lock file",
                source: e,
            },
        })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_pid(&path);
                return Err(Error::db_file(&real, DbFileProblem::InUse { holder }));
            }
            Err(TryLockError::Error(source)) => {
                return Err(Error::Io {
                    op: "lock the database's lock file",
                    source,
                });
            }
        }
        // The pid is for people; the lock works without it (a lock file another user owns
        // was opened read-only).
        let written = file
            .set_len(0)
            .and_then(|()| writeln!(&file, "{}", std::process::id()));
        if let Err(e) = written {
            log::debug!("{}: pid not written: {e}", path.display());
        }
        Ok(DbLock { _file: file, path })
    }

    /// The lock file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens (creating) the lock file for writing, or only for reading when it exists and this
/// user may not write it: `flock` needs no write access.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false) // the holder's pid stays until we hold the lock
        .mode(0o666)
        .open(path);
    match rw {
        Err(e) if e.kind() == ErrorKind::PermissionDenied && path.exists() => File::open(path),
        other => other,
    }
}

/// The pid in a lock file, if it holds one.
fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    parse_pid(&text)
}

fn parse_pid(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|&pid| pid > 0)
}

/// Which file a path names: its device and inode, as `stat(2)` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file at `path` now (following symlinks, as SQLite does).
    pub(crate) fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Checks that the file at `path` is still `opened`, the one the hub opened: one `stat`.
///
/// # Errors
/// [`DbFileProblem::Deleted`] or [`DbFileProblem::Replaced`] (see [`judge`]).
pub(crate) fn verify(path: &Path, opened: FileId) -> Result<()> {
    judge(path, opened, FileId::of(path))
}

/// What a `stat` of the database's path says about the file the hub opened: nothing at the
/// path is a deleted file; another file there is a replaced one. A `stat` that fails for
/// another reason (the directory made unsearchable, say) counts as deleted too: the hub
/// acknowledges nothing it cannot place in the file at the path.
fn judge(path: &Path, opened: FileId, now: std::io::Result<FileId>) -> Result<()> {
    match now {
        Ok(id) if id == opened => Ok(()),
        Ok(_) => Err(Error::db_file(path, DbFileProblem::Replaced)),
        Err(e) => Err(Error::db_file_from(path, DbFileProblem::Deleted, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_is_judged_same_deleted_or_replaced() {
        let path = Path::new("/var/lib/timelapse-events/events.db");
        let opened = FileId { dev: 8, ino: 42 };
        let gone = || std::io::Error::from(ErrorKind::NotFound);
        let denied = || std::io::Error::from(ErrorKind::PermissionDenied);
        let cases: [(std::io::Result<FileId>, Option<DbFileProblem>); 5] = [
            (Ok(opened), None),
            (
                Ok(FileId { dev: 8, ino: 43 }),
                Some(DbFileProblem::Replaced),
            ),
            (
                Ok(FileId { dev: 9, ino: 42 }),
                Some(DbFileProblem::Replaced),
            ),
            (Err(gone()), Some(DbFileProblem::Deleted)),
            (Err(denied()), Some(DbFileProblem::Deleted)),
        ];
        for (now, expected) in cases {
            let what = format!("{now:?}");
            let got = judge(path, opened, now);
            match (got, expected) {
                (Ok(()), None) => {}
                (Err(e), Some(p)) => {
                    assert!(e.is_identity_lost(), "{what}: {e}");
                    assert!(!e.is_setup(), "{what}: a restart fixes it");
                    assert!(
                        matches!(e, Error::DbFile { problem, .. } if problem == p),
                        "{what}: {e:?}"
                    );
                    assert!(e.to_string().contains(path.to_str().unwrap_or("?")));
                }
                (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn pids_parse_from_lock_file_text() {
        for (text, pid) in [
            ("1234\n", Some(1234)),
            ("  77 ", Some(77)),
            ("", None),
            ("0\n", None),
            ("-5\n", None),
            ("12ab\n", None),
        ] {
            assert_eq!(parse_pid(text), pid, "{text:?}");
        }
    }

    #[test]
    fn a_second_lock_on_one_database_is_refused_with_the_holders_pid() -> Result<()> {
        let dir = tempfile::tempdir().map_err(crate::error::io("make a temp dir"))?;
        let db = dir.path().join("events.db");
        std::fs::write(&db, b"").map_err(crate::error::io("create the file"))?;
        let first = DbLock::acquire(&db)?;
        let real = std::fs::canonicalize(&db).map_err(crate::error::io("canonicalize"))?;
        assert_eq!(first.path(), super::super::sibling(&real, ".lock"));
        // flock locks belong to the open file, so a second open in this process conflicts
        // as another process's would; a symlink to the database finds the same lock.
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).map_err(crate::error::io("symlink"))?;
        for path in [&db, &link] {
            match DbLock::acquire(path) {
                Err(Error::DbFile {
                    problem: DbFileProblem::InUse { holder },
                    ..
                }) => assert_eq!(holder, Some(std::process::id())),
                other => panic!("{}: expected InUse, got {other:?}", path.display()),
            }
        }
        drop(first);
        let again = DbLock::acquire(&db)?;
        drop(again);
        Ok(())
    }
}
