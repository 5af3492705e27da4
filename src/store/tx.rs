//! The IMMEDIATE write transaction every writer of the hub uses, and the savepoints inside
//! it, on cached statements: rusqlite's `Transaction` runs `BEGIN IMMEDIATE`, `COMMIT` and
//! each `SAVEPOINT` through `execute_batch`, which parses the SQL again every time
//! (measured under callgrind: a few thousand instructions a statement, on the poller's
//! path once per event at low rates).

use std::ops::Deref;

use rusqlite::Connection;

const BEGIN: &str = "BEGIN IMMEDIATE";
const COMMIT: &str = "COMMIT";
const ROLLBACK: &str = "ROLLBACK";
const SAVEPOINT: &str = "SAVEPOINT tle_group";
const RELEASE: &str = "RELEASE tle_group";
const ROLLBACK_TO: &str = "ROLLBACK TO tle_group";

/// Runs one cached statement that returns no rows.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// An IMMEDIATE transaction (the write lock from the start, so a busy database makes
/// `begin` wait, never a later statement). Rolled back when dropped uncommitted, as
/// rusqlite's `Transaction` is; it derefs to the connection for the statements inside.
pub(crate) struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    /// `BEGIN IMMEDIATE` on `conn`.
    pub(crate) fn begin(conn: &'c Connection) -> rusqlite::Result<WriteTx<'c>> {
        run(conn, BEGIN)?;
        Ok(WriteTx { conn })
    }

    /// `COMMIT`. A failed commit leaves the transaction open, and the drop rolls it back.
    pub(crate) fn commit(self) -> rusqlite::Result<()> {
        run(self.conn, COMMIT)
    }

    /// Opens a savepoint: the group of statements after it can be undone alone.
    pub(crate) fn savepoint(&self) -> rusqlite::Result<Savepoint<'_>> {
        run(self.conn, SAVEPOINT)?;
        Ok(Savepoint {
            conn: self.conn,
            released: false,
        })
    }
}

impl Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // Committed (or ended by SQLite itself after an I/O error): nothing to undo.
        if !self.conn.is_autocommit() {
            // Best effort, as rusqlite's: a failed rollback leaves nothing we could do, and
            // SQLite rolls back a transaction left open when the connection closes.
            let _ = run(self.conn, ROLLBACK);
        }
    }
}

/// A savepoint in a [`WriteTx`]: undone when dropped unreleased.
pub(crate) struct Savepoint<'t> {
    conn: &'t Connection,
    released: bool,
}

impl Savepoint<'_> {
    /// Keeps the group's statements (as part of the transaction).
    pub(crate) fn release(mut self) -> rusqlite::Result<()> {
        run(self.conn, RELEASE)?;
        self.released = true;
        Ok(())
    }
}

impl Deref for Savepoint<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.released && !self.conn.is_autocommit() {
            // ROLLBACK TO undoes the group but keeps the savepoint; RELEASE then drops it.
            // Best effort: a failure here fails the enclosing COMMIT or rolls it back.
            let _ = run(self.conn, ROLLBACK_TO).and_then(|()| run(self.conn, RELEASE));
        }
    }
}
