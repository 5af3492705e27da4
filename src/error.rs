//! The crate's one error type. Display covers this layer only; the cause is in `source()`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a build without the `tls` feature refuses `mqtts://` and `https://`.
pub(crate) const NO_TLS: &str = "needs TLS, which this build does not have: build with \
    `cargo build --release --features tls`, or use mqtt:// or http:// on a trusted network";

/// Shorthand for `Result<T, timelapse_events::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a database file ([`Error::DbFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbFileProblem {
    /// No file at the path, and the caller does not create one.
    Missing,
    /// The directory the file should be in does not exist.
    MissingDir,
    /// The file, or its directory, may not be read (or created) by this user.
    PermissionDenied,
    /// The file exists but is not an SQLite database.
    NotSqlite,
    /// An SQLite file without a timelapse-events schema (e.g. empty), which only a
    /// creating open (`serve`, `emit --create`) initialises.
    NotInitialised,
    /// The file may be read but not written by this user, and the caller must write it.
    ReadOnly,
    /// The directory may not be written by this user, and SQLite must create the `-wal` and
    /// `-shm` files beside the database there.
    ReadOnlyDir,
    /// The database file may be written, but its `-wal` or `-shm` file may not (say, left
    /// behind by another user): SQLite then refuses every write.
    ReadOnlyWal,
    /// Another hub serves this database: it holds the lock on `<db>.lock` (only one `serve`
    /// may run on a file; producers, `emit` and the read-only subcommands need no lock).
    InUse {
        /// The process id the holder wrote into the lock file, when it could be read.
        holder: Option<u32>,
    },
    /// The file the hub opened is no longer at the path: it was deleted while the hub ran.
    Deleted,
    /// Another file is at the path now (moved or copied over it) while the hub ran.
    Replaced,
}

/// Everything that can fail inside the hub.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range; `field` is the config key.
    Config {
        /// The config field, e.g. `max_clients`.
        field: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// An event was refused before it reached the database.
    Invalid {
        /// The offending field: `type`, `data`, `priority` or `source`.
        field: &'static str,
        /// Why it was refused, in words a producer can act on.
        reason: String,
    },
    /// SQLite failed while doing `op`, e.g. "insert event".
    Db {
        /// What the hub was doing.
        op: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// No pooled database connection could be had.
    Pool {
        /// The pool's error.
        source: r2d2::Error,
    },
    /// The database was written by a newer version of timelapse-events.
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this binary knows.
        supported: i64,
    },
    /// An I/O operation failed; `op` says which.
    Io {
        /// What the hub was doing.
        op: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP listener could not be bound.
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    Spawn {
        /// The thread's name.
        name: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A thread of the hub panicked or ended with an error.
    Thread {
        /// The thread's name.
        name: String,
        /// What it reported.
        reason: String,
    },
    /// The database's `PRAGMA user_version` is no version this binary ever wrote (e.g.
    /// negative): not a timelapse-events database, or a damaged one.
    SchemaUnknown {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this binary knows.
        supported: i64,
    },
    /// `timelapse-events check` found problems (each one named).
    Check {
        /// What is wrong, one entry per problem.
        problems: Vec<String>,
    },
    /// The database file at `path` cannot be used as asked; `problem` says why, in words an
    /// operator can act on (a mistyped path, a missing directory, permissions).
    DbFile {
        /// The database file asked for.
        path: PathBuf,
        /// What is wrong with it.
        problem: DbFileProblem,
        /// The SQLite or I/O error that revealed it, when there was one.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The database has an older schema than this binary's, and the caller only reads it
    /// (`stats`): it is never migrated by a read.
    SchemaTooOld {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The version this binary writes.
        supported: i64,
    },
    /// The config file (`serve --config`) is unreadable or refused: `line` is 1-based (0
    /// when the problem is not on one line, e.g. the file cannot be read), `key` the
    /// offending key (`sink.header_file` inside a `[[sink]]`), empty for a syntax error.
    ConfigFile {
        /// The file as it was given.
        path: PathBuf,
        /// The line of the key or value, 1-based; 0 for the whole file.
        line: usize,
        /// The key, e.g. `heartbeat_secs`.
        key: String,
        /// Why it was refused (never a secret's value).
        reason: String,
    },
    /// The hub (or the emitter's writer) has been shut down.
    Closed,
    /// One failure reported to several callers (every emit of a group whose commit
    /// failed): displays, and classifies, exactly as the error it shares.
    Shared(Arc<Error>),
    /// An MQTT broker sent bytes that are not the packet we expected, or refused us.
    Mqtt {
        /// What the sink was doing, e.g. "read CONNACK".
        op: &'static str,
        /// What was wrong, in words (never the broker's raw bytes).
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { field, reason } => write!(f, "config `{field}`: {reason}"),
            Error::ConfigFile {
                path,
                line,
                key,
                reason,
            } => {
                write!(f, "config file {}", path.display())?;
                if *line > 0 {
                    write!(f, " line {line}")?;
                }
                if !key.is_empty() {
                    write!(f, " key `{key}`")?;
                }
                write!(f, ": {reason}")
            }
            Error::Mqtt { op, reason } => write!(f, "mqtt: cannot {op}: {reason}"),
            Error::Invalid { field, reason } => write!(f, "invalid event `{field}`: {reason}"),
            Error::Db { op, source } => match db_condition(source) {
                Some(cond) => write!(f, "database: cannot {op} ({cond})"),
                None => write!(f, "database: cannot {op}"),
            },
            Error::Pool { .. } => write!(f, "database: no connection available"),
            Error::SchemaTooNew { found, supported } => write!(
                f,
                "database schema version {found} is newer than this binary supports \
                 (version {supported}); upgrade timelapse-events"
            ),
            Error::Io { op, .. } => write!(f, "cannot {op}"),
            Error::Bind { addr, .. } => write!(f, "cannot listen on {addr}"),
            Error::Spawn { name, .. } => write!(f, "cannot start thread {name}"),
            Error::Thread { name, reason } => write!(f, "thread {name} failed: {reason}"),
            Error::SchemaUnknown { found, supported } => write!(
                f,
                "database schema version {found} is not one timelapse-events writes \
                 (0 to {supported}); is this a timelapse-events database?"
            ),
            Error::Check { problems } => write!(f, "check failed: {}", problems.join("; ")),
            Error::DbFile { path, problem, .. } => {
                let dir = parent_of(path);
                let path = path.display();
                match problem {
                    DbFileProblem::Missing => write!(
                        f,
                        "no timelapse-events database at {path}: the file does not exist"
                    ),
                    DbFileProblem::MissingDir => write!(
                        f,
                        "no timelapse-events database at {path}: directory {dir} does not exist"
                    ),
                    DbFileProblem::PermissionDenied => write!(
                        f,
                        "cannot open the database at {path}: permission denied on the file or \
                         on directory {dir} (which user owns them?)"
                    ),
                    DbFileProblem::NotSqlite => write!(
                        f,
                        "{path} is not a timelapse-events database: not an SQLite file"
                    ),
                    DbFileProblem::NotInitialised => write!(
                        f,
                        "{path} is not a timelapse-events database: an SQLite file without its \
                         schema (e.g. empty); only `serve` or `emit --create` initialise one"
                    ),
                    DbFileProblem::ReadOnly => write!(
                        f,
                        "the database at {path} is read-only for this user, and it must be \
                         written (check the file's owner and mode)"
                    ),
                    DbFileProblem::ReadOnlyDir => write!(
                        f,
                        "cannot write in directory {dir}: SQLite must create {path}-wal and \
                         {path}-shm (or a new database) there, and `serve` {path}.lock, and \
                         this user may not"
                    ),
                    DbFileProblem::ReadOnlyWal => write!(
                        f,
                        "the database at {path} cannot be written by this user: {path}-wal or \
                         {path}-shm is read-only for it (check their owner and mode)"
                    ),
                    DbFileProblem::InUse { holder } => {
                        write!(f, "the database at {path} is in use by another hub")?;
                        if let Some(pid) = holder {
                            write!(f, " (pid {pid})")?;
                        }
                        write!(
                            f,
                            ": it holds the lock on {path}.lock, and only one `serve` may run \
                             on a database"
                        )
                    }
                    DbFileProblem::Deleted => write!(
                        f,
                        "the database file {path} was deleted while the hub had it open: \
                         nothing more is acknowledged, and the hub stops so that it starts \
                         again on the file at that path"
                    ),
                    DbFileProblem::Replaced => write!(
                        f,
                        "the database file {path} was replaced by another file while the hub \
                         had it open: nothing more is acknowledged, and the hub stops so that \
                         it starts again on the new file"
                    ),
                }
            }
            Error::SchemaTooOld { found, supported } => write!(
                f,
                "database schema version {found} is older than this binary's (version \
                 {supported}); start `serve` on it once to migrate it"
            ),
            Error::Closed => write!(f, "the hub is shut down"),
            Error::Shared(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Db { source, .. } => Some(source),
            Error::Pool { source } => Some(source),
            Error::Io { source, .. } | Error::Bind { source, .. } | Error::Spawn { source, .. } => {
                Some(source)
            }
            Error::DbFile {
                source: Some(source),
                ..
            } => Some(&**source),
            Error::Shared(e) => e.source(),
            _ => None,
        }
    }
}

impl Error {
    /// True when SQLite gave up waiting for another connection's lock (busy timeout).
    pub fn is_busy(&self) -> bool {
        matches!(
            self.sqlite_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }

    /// True when the database cannot take writes for a reason outside the hub, neither a
    /// busy lock nor a full disk: read-only, an I/O error, a file that cannot be opened or
    /// is damaged, no pooled connection, or the file gone from under the hub.
    pub fn is_unavailable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self.root() {
            Error::Pool { .. } | Error::DbFile { .. } => true,
            e => matches!(
                e.sqlite_code(),
                Some(
                    C::ReadOnly
                        | C::SystemIoFailure
                        | C::CannotOpen
                        | C::DatabaseCorrupt
                        | C::NotADatabase
                        | C::PermissionDenied
                        | C::FileLockingProtocolFailed
                )
            ),
        }
    }

    /// True when the database file was deleted or replaced under the running hub
    /// ([`DbFileProblem::Deleted`], [`DbFileProblem::Replaced`]): the hub must stop.
    pub fn is_identity_lost(&self) -> bool {
        matches!(
            self.root(),
            Error::DbFile {
                problem: DbFileProblem::Deleted | DbFileProblem::Replaced,
                ..
            }
        )
    }

    /// For a lost database file ([`Error::is_identity_lost`]), what happened in words
    /// without the path, for HTTP bodies (which never carry file paths).
    pub(crate) fn identity_reason(&self) -> Option<&'static str> {
        match self.root() {
            Error::DbFile {
                problem: DbFileProblem::Deleted,
                ..
            } => Some("the database file was deleted under the hub; it is restarting"),
            Error::DbFile {
                problem: DbFileProblem::Replaced,
                ..
            } => Some("the database file was replaced under the hub; it is restarting"),
            _ => None,
        }
    }

    /// True when `serve` cannot use its database as set up, which no restart fixes: another
    /// hub holds it, or this user may not write it, its `-wal` and `-shm` or its directory.
    /// `serve` exits 2 on these, as on a bad setting.
    pub fn is_setup(&self) -> bool {
        matches!(
            self.root(),
            Error::DbFile {
                problem: DbFileProblem::InUse { .. }
                    | DbFileProblem::ReadOnly
                    | DbFileProblem::ReadOnlyDir
                    | DbFileProblem::ReadOnlyWal
                    | DbFileProblem::PermissionDenied,
                ..
            }
        )
    }

    /// The error a [`Error::Shared`] stands for (itself otherwise).
    fn root(&self) -> &Error {
        match self {
            Error::Shared(e) => e.root(),
            e => e,
        }
    }

    /// True when the disk (or SQLite's `max_page_count`) is full.
    pub fn is_disk_full(&self) -> bool {
        self.sqlite_code() == Some(rusqlite::ErrorCode::DiskFull)
    }

    fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            Error::Db { source, .. } => sqlite_code(source),
            Error::Shared(e) => e.sqlite_code(),
            _ => None,
        }
    }

    /// This error in a form several callers can hold.
    pub(crate) fn into_shared(self) -> Arc<Error> {
        match self {
            Error::Shared(e) => e,
            e => Arc::new(e),
        }
    }

    /// The error and its causes as one line: `a: b: c`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

/// The directory part of `path`, as a message shows it (`.` for a bare file name).
fn parent_of(path: &std::path::Path) -> std::path::Display<'_> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.display(),
        _ => std::path::Path::new(".").display(),
    }
}

fn sqlite_code(e: &rusqlite::Error) -> Option<rusqlite::ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

/// A plain-words name for the conditions an operator can act on.
fn db_condition(e: &rusqlite::Error) -> Option<&'static str> {
    match sqlite_code(e)? {
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
            Some("database is locked by another connection; busy timeout expired")
        }
        rusqlite::ErrorCode::DiskFull => Some("disk full"),
        rusqlite::ErrorCode::ConstraintViolation => Some("rejected by a CHECK constraint"),
        rusqlite::ErrorCode::ReadOnly => Some("database is read-only"),
        rusqlite::ErrorCode::SystemIoFailure => Some("I/O error"),
        rusqlite::ErrorCode::DatabaseCorrupt => Some("database file is corrupt"),
        _ => None,
    }
}

/// Most characters of client input an error message quotes ([`quote`]).
pub(crate) const QUOTE_CHARS: usize = 64;

/// The start of `text`: `Some` with its first `max_chars` characters (cut on a character
/// boundary) when it is longer, else `None`.
fn cut(text: &str, max_chars: usize) -> Option<&str> {
    text.char_indices()
        .nth(max_chars)
        .map(|(at, _)| &text[..at])
}

/// Client input as an error message quotes it: in backticks, escaped (`escape_debug`, so
/// no control character reaches a log or a body), and if longer than [`QUOTE_CHARS`]
/// characters, only that many, then `…` and the whole length: `` `aaaa…` (1048576 bytes) ``.
/// Whatever a client sends, the message stays short (measured before: a 1 MiB `camera_id`
/// came back whole in the 400).
pub(crate) fn quote(input: &str) -> String {
    match cut(input, QUOTE_CHARS) {
        None => format!("`{}`", input.escape_debug()),
        Some(start) => format!("`{}…` ({} bytes)", start.escape_debug(), input.len()),
    }
}

/// `message` cut to `max_chars` characters, then `…` and its whole length: the last guard
/// for messages that carry what something else quoted (a parser's error, say).
pub(crate) fn clip(message: String, max_chars: usize) -> String {
    match cut(&message, max_chars) {
        None => message,
        Some(start) => format!("{start}… ({} bytes)", message.len()),
    }
}

/// Tags a rusqlite error with what we were doing: `.map_err(db("insert event"))?`.
pub(crate) fn db(op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Db { op, source }
}

/// Tags an I/O error with what we were doing.
pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

impl From<r2d2::Error> for Error {
    fn from(source: r2d2::Error) -> Self {
        Error::Pool { source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_keep_a_short_escaped_prefix_and_the_length() {
        let at_limit = "a".repeat(QUOTE_CHARS);
        let over = format!("{at_limit}b");
        let wide = "é".repeat(100); // 2 bytes each: the cut must fall between characters
        for (input, want) in [
            ("", "``".to_owned()),
            ("urgent", "`urgent`".to_owned()),
            ("a\nb\u{7}", "`a\\nb\\u{7}`".to_owned()),
            (at_limit.as_str(), format!("`{at_limit}`")),
            (over.as_str(), format!("`{at_limit}…` (65 bytes)")),
            (wide.as_str(), format!("`{}…` (200 bytes)", "é".repeat(64))),
        ] {
            assert_eq!(quote(input), want, "{input:?}");
        }
        let huge = "7".repeat(1 << 20);
        assert!(quote(&huge).len() < 100, "{}", quote(&huge).len());
    }

    #[test]
    fn clipped_messages_end_with_their_length() {
        assert_eq!(clip("short".into(), 10), "short");
        assert_eq!(clip("0123456789ab".into(), 10), "0123456789… (12 bytes)");
        assert_eq!(clip("ééé".into(), 2), "éé… (6 bytes)");
    }
}
