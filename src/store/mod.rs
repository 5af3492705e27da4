//! The SQLite event log: opening, pragmas, the connection pool, migrations, and (in
//! [`events`]) every SQL statement the hub runs. Nothing outside this module writes SQL.
//!
//! Connections follow rusqlite's `Send + !Sync`: the poller (the hub's one writer), the
//! checkpoint and retention threads, and a standalone `Emitter::open`'s writer each own one
//! dedicated connection (the poller's `PRAGMA data_version` is per connection); request
//! handlers and stream threads borrow pooled ones for short reads.

pub(crate) mod events;
pub(crate) mod maintenance;
mod schema;
pub(crate) mod state_rows;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

use crate::config::Synchronous;
use crate::error::{Error, Result, db};

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
}

/// A pooled connection.
pub(crate) type Pooled = r2d2::PooledConnection<SqliteConnectionManager>;

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates it to [`SCHEMA_VERSION`]
    /// and sets WAL mode.
    pub(crate) fn open(
        path: &Path,
        synchronous: Synchronous,
        busy_timeout: Duration,
    ) -> Result<Store> {
        let mut first = open_connection(path, synchronous, busy_timeout)?;
        schema::migrate(&mut first)?;
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
        })
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
        let mut p = self.path.as_os_str().to_owned();
        p.push("-wal");
        PathBuf::from(p)
    }

    /// Folds the WAL back into the database file and truncates it (used at shutdown).
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let conn = self.conn()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(db("checkpoint the WAL"))
    }
}

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
    pub(crate) fn schema_too_new(found: i64) -> Error {
        Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        }
    }
}
