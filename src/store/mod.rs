//! The SQLite event log: opening, pragmas, the connection pool, migrations, and (in
//! [`events`]) every SQL statement the hub runs. Nothing outside this module writes SQL.
//!
//! Connections follow rusqlite's `Send + !Sync`: the poller (the hub's one writer), the
//! checkpoint and retention threads, and a standalone `Emitter::open`'s writer each own one
//! dedicated connection (the poller's `PRAGMA data_version` is per connection); request
//! handlers and stream threads borrow pooled ones for short reads.

pub(crate) mod events;
pub(crate) mod history;
pub(crate) mod identity;
pub(crate) mod maintenance;
mod schema;
pub(crate) mod sinks;
pub(crate) mod state_rows;
mod tx;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::config::Synchronous;
use crate::error::{DbFileProblem, Error, Result, db};
use identity::FileId;

pub use schema::SCHEMA_VERSION;

/// Pooled connections for short reads: request handlers and stream back-fill.
const POOL_SIZE: u32 = 4;
/// WAL is truncated back to this after a checkpoint (SQLite's `journal_size_limit`). Below
/// the checkpoint thread's threshold (4 MiB), so that the file's size tells how much the
/// WAL holds: otherwise a WAL that once grew stays that size, rewound but never shrunk.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 2 * 1024 * 1024;

/// Opened event log: the pool plus what was read once at open.
#[derive(Clone)]
pub(crate) struct Store {
    pool: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    synchronous: Synchronous,
    busy_timeout: Duration,
    log_id: u32,
    /// The file opened, for noticing one deleted or replaced at `path` later.
    identity: FileId,
}

/// Whether [`Store::open_as`] may create the database file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Create (and initialise) the file when it is missing: `serve`, `emit --create`,
    /// `Emitter::open`.
    Create,
    /// The file must already exist and hold a timelapse-events schema (an older one is
    /// migrated): `emit`, `cleanup`, `Emitter::open_existing`.
    Existing,
}

/// A pooled connection.
pub(crate) type Pooled = r2d2::PooledConnection<SqliteConnectionManager>;

/// Creates the database file at `path` if it is missing, empty, as `open(2)` with mode 0666
/// does: the umask decides, as for any Unix program, so `UMask=0002` in the unit gives a file
/// its group may write. SQLite itself creates it 0644 whatever the umask
/// (`SQLITE_DEFAULT_FILE_PERMISSIONS`); it takes an empty file as a new database, and gives
/// the `-wal` and `-shm` files the database's own mode (sqlite3.c `robust_open`), so a group
/// that may write the database may write them too. Only `serve` calls this. Errors are left
/// to the open that follows, which reports them as before.
pub(crate) fn create_with_umask(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(path);
    if created.is_ok() {
        log::debug!("created {} (mode 0666 less the umask)", path.display());
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates it to [`SCHEMA_VERSION`]
    /// and sets WAL mode.
    pub(crate) fn open(
        path: &Path,
        synchronous: Synchronous,
        busy_timeout: Duration,
    ) -> Result<Store> {
        Store::open_as(path, synchronous, busy_timeout, OpenMode::Create)
    }

    /// A store in a fresh temporary directory, for unit tests (the directory goes when
    /// the returned guard drops).
    #[cfg(test)]
    pub(crate) fn scratch() -> Result<(tempfile::TempDir, Store)> {
        let dir = tempfile::tempdir().map_err(crate::error::io("make a temp dir"))?;
        let store = Store::open(
            &dir.path().join("e.db"),
            Synchronous::Normal,
            Duration::from_secs(1),
        )?;
        Ok((dir, store))
    }

    /// [`Store::open`], creating the file only in [`OpenMode::Create`]. Every refusal is an
    /// [`Error::DbFile`] naming the path and what is wrong, found before anything is written:
    /// a missing file or directory, permissions, a file that is not SQLite, one without our
    /// schema (with `Existing`), or one this user may not write.
    pub(crate) fn open_as(
        path: &Path,
        synchronous: Synchronous,
        busy_timeout: Duration,
        mode: OpenMode,
    ) -> Result<Store> {
        preflight(path, mode)?;
        let flags = match mode {
            OpenMode::Create => OpenFlags::default(),
            OpenMode::Existing => OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE,
        };
        let mut first = Connection::open_with_flags(path, flags)
            .map_err(|e| classify(path, e, "open the database"))?;
        // Right after the open: SQLite keeps no handle we could ask (no unsafe here).
        let identity =
            FileId::of(path).map_err(|e| Error::db_file_from(path, DbFileProblem::Deleted, e))?;
        first
            .busy_timeout(busy_timeout)
            .map_err(db("set the busy timeout"))?;
        // Read before anything is written: SQLite opens lazily, so a file that is not a
        // database, or an empty one, shows here, and setting WAL would write its header.
        let (version, tables) =
            probe(&first).map_err(|e| classify(path, e, "read the database"))?;
        if mode == OpenMode::Existing && version == 0 && !tables.contains("sse_events") {
            return Err(Error::db_file(path, DbFileProblem::NotInitialised));
        }
        // SQLite falls back to read-only, silently, for a file this user may not write.
        if first
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(db("open the database"))?
        {
            return Err(Error::db_file(path, DbFileProblem::ReadOnly));
        }
        apply_pragmas(&first, synchronous, busy_timeout)
            .map_err(|e| classify(path, e, "configure the database"))?;
        probe_write(&first, path)?;
        schema::migrate(&mut first, path, tables.is_empty())?;
        let log_id = events::log_id(&first)?;
        drop(first);
        let init_sync = synchronous;
        let manager = SqliteConnectionManager::file(path)
            .with_init(move |c| apply_pragmas(c, init_sync, busy_timeout));
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(busy_timeout.max(Duration::from_secs(1)))
            .build(manager)?;
        Ok(Store {
            pool,
            path: path.to_owned(),
            synchronous,
            busy_timeout,
            log_id,
            identity,
        })
    }

    /// Checks that the file at the database's path is still the one opened: one `stat`.
    ///
    /// # Errors
    /// [`DbFileProblem::Deleted`] or [`DbFileProblem::Replaced`].
    pub(crate) fn verify_identity(&self) -> Result<()> {
        identity::verify(&self.path, self.identity)
    }

    /// The identity of the file opened (see [`Store::verify_identity`]).
    pub(crate) fn identity(&self) -> FileId {
        self.identity
    }

    /// A pooled connection for a short read.
    pub(crate) fn conn(&self) -> Result<Pooled> {
        Ok(self.pool.get()?)
    }

    /// A new connection of its own, with the same pragmas (for a long-lived thread).
    pub(crate) fn dedicated(&self) -> Result<Connection> {
        open_connection(&self.path, self.synchronous, self.busy_timeout)
    }

    /// The database's random id (the first half of every cursor).
    pub(crate) fn log_id(&self) -> u32 {
        self.log_id
    }

    /// The database file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How long writes wait for another connection's lock.
    pub(crate) fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// The `-wal` file beside the database.
    pub(crate) fn wal_path(&self) -> PathBuf {
        sibling(&self.path, "-wal")
    }

    /// Folds the WAL back into the database file and truncates it (used at shutdown).
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let conn = self.conn()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(db("checkpoint the WAL"))
    }
}

/// Opens an existing database read-only (`SQLITE_OPEN_READ_ONLY`): `check`, `stats` and the
/// source of `backup`, which work on a file this user may only read. In WAL mode SQLite
/// needs the `-shm` beside the file, and creates it when the directory is writable; when it
/// is not and there is no `-wal` either (no writer has the file open: a writer always has
/// one), the file is opened `immutable`, which needs neither. Never migrates.
pub(crate) fn open_read_only(path: &Path) -> Result<Connection> {
    preflight(path, OpenMode::Existing)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let open = |target: &Path| -> Result<Connection> {
        let conn = Connection::open_with_flags(target, flags)
            .map_err(|e| classify(path, e, "open the database"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db("set the busy timeout"))?;
        probe(&conn).map_err(|e| classify(path, e, "read the database"))?;
        Ok(conn)
    };
    match open(path) {
        Err(Error::DbFile {
            problem: DbFileProblem::ReadOnlyDir,
            ..
        }) if !sibling(path, "-wal").exists() => {
            log::warn!(
                "{}: no -shm beside it and its directory is read-only; reading it as immutable",
                path.display()
            );
            open(&immutable_uri(path))
        }
        other => other,
    }
}

/// A read-only connection to a timelapse-events database of the current schema version,
/// for reports that read our tables (`stats`); never migrates.
pub(crate) fn open_current_read_only(path: &Path) -> Result<Connection> {
    let conn = open_read_only(path)?;
    let (version, tables) = probe(&conn).map_err(|e| classify(path, e, "read the database"))?;
    if version == 0 && !tables.contains("sse_events") {
        return Err(Error::db_file(path, DbFileProblem::NotInitialised));
    }
    if version < 0 {
        return Err(Error::SchemaUnknown {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(Error::schema_too_new(version));
    }
    if version < SCHEMA_VERSION {
        return Err(Error::SchemaTooOld {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// `PRAGMA user_version` and the names of the tables (joined by spaces), read without
/// writing anything.
fn probe(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables = conn.query_row(
        "SELECT coalesce(group_concat(name, ' '), '') FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    Ok((version, tables))
}

/// `path` with `suffix` appended: the `-wal` and `-shm` files beside a database.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// A `file:` URI for `path` with `immutable=1` (SQLite's URI rules: `?`, `#` and `%` in the
/// path are percent-encoded).
fn immutable_uri(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_');
    let encoded = percent_encoding::percent_encode(path.as_os_str().as_bytes(), KEEP);
    PathBuf::from(format!("file:{encoded}?immutable=1"))
}

/// Finds, before SQLite touches anything, a missing file (unless `mode` creates it) or
/// directory, and a directory this user may not search.
pub(crate) fn preflight(path: &Path, mode: OpenMode) -> Result<()> {
    use std::io::ErrorKind;
    let problem = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => DbFileProblem::NotSqlite,
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(d) if d.is_dir() && mode == OpenMode::Create => return Ok(()),
                Ok(d) if d.is_dir() => DbFileProblem::Missing,
                Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                    return Err(Error::db_file_from(
                        path,
                        DbFileProblem::PermissionDenied,
                        e,
                    ));
                }
                _ => DbFileProblem::MissingDir,
            }
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(Error::db_file_from(
                path,
                DbFileProblem::PermissionDenied,
                e,
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotADirectory => DbFileProblem::MissingDir,
        Err(source) => {
            return Err(Error::Io {
                op: "look for the database file",
                source,
            });
        }
    };
    Err(Error::db_file(path, problem))
}

/// Names the file problem behind an SQLite error, when it is one; `op` otherwise.
fn classify(path: &Path, e: rusqlite::Error, op: &'static str) -> Error {
    let Some(code) = e.sqlite_error().copied() else {
        return Error::Db { op, source: e };
    };
    let problem = match code.code {
        ErrorCode::NotADatabase => DbFileProblem::NotSqlite,
        ErrorCode::PermissionDenied => DbFileProblem::PermissionDenied,
        ErrorCode::ReadOnly if code.extended_code == rusqlite::ffi::SQLITE_READONLY_DIRECTORY => {
            DbFileProblem::ReadOnlyDir
        }
        ErrorCode::ReadOnly => DbFileProblem::ReadOnly,
        // SQLite does not say why it could not open: look.
        ErrorCode::CannotOpen => match std::fs::File::open(path) {
            Err(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                DbFileProblem::PermissionDenied
            }
            // Missing (in create mode) or readable: it is the directory we may not write.
            _ => DbFileProblem::ReadOnlyDir,
        },
        _ => return Error::Db { op, source: e },
    };
    Error::db_file_from(path, problem, e)
}

/// Takes the write lock and gives it back (`BEGIN IMMEDIATE; ROLLBACK`), writing nothing:
/// the one sure test that this user may write the database, its `-wal` and `-shm` (SQLite
/// opens a `-wal` or `-shm` it may not write read-only, and then fails every write with
/// "attempt to write a readonly database"). Another process holding the write lock past the
/// busy timeout proves nothing either way, and is left to the writes that follow.
fn probe_write(conn: &Connection, path: &Path) -> Result<()> {
    match conn.execute_batch(PROBE_WRITE) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ) =>
        {
            log::warn!(
                "{}: could not check that the database takes writes: {e}",
                path.display()
            );
            Ok(())
        }
        // The file itself was found writable (`is_readonly`) before this.
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::ReadOnly) => {
            Err(Error::db_file_from(path, DbFileProblem::ReadOnlyWal, e))
        }
        Err(e) => Err(classify(path, e, "write the database")),
    }
}

const PROBE_WRITE: &str = "BEGIN IMMEDIATE; ROLLBACK";

/// Opens one connection with the hub's pragmas (no migration).
pub(crate) fn open_connection(
    path: &Path,
    synchronous: Synchronous,
    busy_timeout: Duration,
) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db("open the database"))?;
    apply_pragmas(&conn, synchronous, busy_timeout).map_err(db("configure the database"))?;
    Ok(conn)
}

fn apply_pragmas(
    conn: &Connection,
    synchronous: Synchronous,
    busy_timeout: Duration,
) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    // WAL: readers never block the writer and vice versa, and commits are one append.
    // The mode is stored in the file, so external producers get it too.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("journal_mode is {mode}, not WAL (is the file on a network share?)");
    }
    // NORMAL in WAL mode never corrupts the database; it can lose the last commits on
    // power loss. FULL fsyncs every commit (group commit in the emitter keeps it affordable).
    conn.pragma_update(None, "synchronous", synchronous.as_str())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)?;
    Ok(())
}

thread_local! {
    /// The busy limit of the connections this thread owns (see [`fast_busy_handler`]).
    static BUSY_LIMIT: Cell<Duration> = const { Cell::new(Duration::from_secs(5)) };
    /// When the current wait for a lock began.
    static BUSY_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets how long the calling thread's fast-retry connections wait for a lock.
pub(crate) fn set_busy_limit(limit: Duration) {
    BUSY_LIMIT.with(|l| l.set(limit));
}

/// Replaces SQLite's busy handler on one of the hub's own long-lived connections (the
/// writer's, the poller's). SQLite's default first sleeps 1 ms, then 2, 5, 10... ms; but our
/// writer and poller each hold the write lock for about 0.1 ms, so when they meet, that
/// first sleep alone was most of an in-process delivery (measured: p50 2.4 ms). This one
/// retries every 50 µs at first and backs off to 5 ms, giving up after the limit set with
/// [`set_busy_limit`] by the thread that uses the connection.
pub(crate) fn fast_busy_handler(conn: &Connection) -> Result<()> {
    conn.busy_handler(Some(busy_retry))
        .map_err(db("set the busy handler"))
}

fn busy_retry(attempt: i32) -> bool {
    let now = Instant::now();
    let since = BUSY_SINCE.with(|s| {
        if attempt == 0 {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    if now.duration_since(since) >= BUSY_LIMIT.with(Cell::get) {
        return false;
    }
    let pause = match attempt {
        0..=19 => Duration::from_micros(50),
        20..=99 => Duration::from_micros(500),
        _ => Duration::from_millis(5),
    };
    std::thread::sleep(pause);
    true
}

/// Reads `PRAGMA user_version` of a database file without migrating it.
pub(crate) fn user_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("read the schema version"))
}

impl Error {
    /// [`Error::DbFile`] with no underlying error.
    pub(crate) fn db_file(path: &Path, problem: DbFileProblem) -> Error {
        Error::DbFile {
            path: path.to_owned(),
            problem,
            source: None,
        }
    }

    /// [`Error::DbFile`] revealed by `source`.
    pub(crate) fn db_file_from(
        path: &Path,
        problem: DbFileProblem,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::DbFile {
            path: path.to_owned(),
            problem,
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn schema_too_new(found: i64) -> Error {
        Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        }
    }
}
