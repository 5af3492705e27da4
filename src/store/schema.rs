//! Schema versions, applied with `PRAGMA user_version`.
//!
//! Versions:
//! - 0: an empty file, or the table of the design we replace (sse_events without `seq`).
//! - 1: sse_events with CHECKs, `seq`, the pending and seq indexes, hub_meta.
//! - 2: the state projection (camera_state, timelapse_state), event_type_counts, and an
//!   index on created_at. Rebuilt from the stored events when upgrading from 1.
//! - 3: the seq and created_at indexes become partial (`WHERE seq IS NOT NULL`), so an
//!   INSERT writes two B-trees fewer (measured: 13,000 → 19,500 single-row commits/s);
//!   an index for rejected rows.
//! - 4: sink_cursors, each outbound sink's delivered-through seq and counters.
//! - 5: `origin_host` and `origin_cursor` on sse_events, and a unique index on them: events
//!   stored from other camera hosts (the fleet), each at most once.
//! - 6: capture_history, the captures per camera and hour, day and in all. An upgrade
//!   fills it from the captures retention has kept (`BACKFILL_HISTORY`).
//!
//! `schema.sql` is always the whole current schema and is idempotent, so every step runs it
//! and then does what only that step needs. Columns added after version 1 are added (when
//! missing) before every step's run, since schema.sql's indexes name them.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::state::State;

use super::user_version;
use crate::error::{Error, Result, db};

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: i64 = 6;

/// The public table contract, shipped in the binary.
pub(crate) const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Brings the database up to [`SCHEMA_VERSION`], one step at a time, each step in one
/// IMMEDIATE transaction. A newer file is refused, untouched. Each step of an existing
/// file is logged; a `fresh` one (no tables) is logged once, as created.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, fresh: bool) -> Result<()> {
    let mut created = false;
    loop {
        let version = user_version(conn)?;
        if version > SCHEMA_VERSION {
            return Err(Error::schema_too_new(version));
        }
        if version < 0 {
            return Err(Error::SchemaUnknown {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            if created {
                log::info!(
                    "created database {} (schema version {SCHEMA_VERSION})",
                    path.display()
                );
            }
            return Ok(());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("begin the schema migration"))?;
        // Read again under the write lock: another process may have migrated meanwhile.
        let version = user_version(&tx)?;
        match version {
            0 => migrate_v0_to_v1(&tx)?,
            1 => migrate_v1_to_v2(&tx)?,
            2 => migrate_v2_to_v3(&tx)?,
            3 => migrate_v3_to_v4(&tx)?,
            4 => migrate_v4_to_v5(&tx)?,
            5 => migrate_v5_to_v6(&tx)?,
            v if v >= SCHEMA_VERSION => {}
            // Negative: nothing this binary (or the design it replaces) ever wrote.
            v => {
                return Err(Error::SchemaUnknown {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
        }
        tx.commit().map_err(db("commit the schema migration"))?;
        if version >= SCHEMA_VERSION {
            // Another process migrated it meanwhile: nothing was done here.
            continue;
        }
        if fresh {
            created = true;
            log::debug!("new database: schema version {version} to {}", version + 1);
        } else {
            log::info!(
                "database schema migrated from version {version} to {}",
                version + 1
            );
        }
    }
}

/// Columns the design we replace may lack, with how to add them.
const LEGACY_COLUMNS: [(&str, &str); 5] = [
    (
        "processed_at",
        "ALTER TABLE sse_events ADD COLUMN processed_at TEXT",
    ),
    (
        "retry_count",
        "ALTER TABLE sse_events ADD COLUMN retry_count INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "priority",
        "ALTER TABLE sse_events ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'",
    ),
    (
        "source",
        "ALTER TABLE sse_events ADD COLUMN source TEXT NOT NULL DEFAULT 'system'",
    ),
    ("seq", "ALTER TABLE sse_events ADD COLUMN seq INTEGER"),
];

/// Columns later versions added, with how to add them to an older table.
const LATER_COLUMNS: [(&str, &str); 2] = [
    (
        "origin_host",
        "ALTER TABLE sse_events ADD COLUMN origin_host TEXT \
         CHECK (origin_host IS NULL \
                OR (typeof(origin_host) = 'text' AND length(origin_host) BETWEEN 1 AND 64))",
    ),
    (
        "origin_cursor",
        "ALTER TABLE sse_events ADD COLUMN origin_cursor TEXT \
         CHECK (origin_cursor IS NULL \
                OR (typeof(origin_cursor) = 'text' AND origin_host IS NOT NULL \
                    AND length(origin_cursor) BETWEEN 3 AND 40))",
    ),
];

fn sse_columns(tx: &Connection) -> Result<Vec<String>> {
    let mut stmt = tx
        .prepare("SELECT name FROM pragma_table_info('sse_events')")
        .map_err(db("inspect sse_events"))?;
    stmt.query_map([], |r| r.get(0))
        .map_err(db("inspect sse_events"))?
        .collect::<rusqlite::Result<_>>()
        .map_err(db("inspect sse_events"))
}

/// Adds the later versions' columns an existing sse_events lacks, then runs schema.sql.
fn run_schema(tx: &Connection) -> Result<()> {
    let existing = sse_columns(tx)?;
    if !existing.is_empty() {
        for (column, alter) in LATER_COLUMNS {
            if !existing.iter().any(|c| c == column) {
                tx.execute_batch(alter)
                    .map_err(db("add a column to sse_events"))?;
            }
        }
    }
    tx.execute_batch(SCHEMA_SQL)
        .map_err(db("create the schema"))
}

fn migrate_v0_to_v1(tx: &Connection) -> Result<()> {
    let existing = sse_columns(tx)?;
    if !existing.is_empty() {
        // A table from the design we replace: keep its rows, add what is missing. Its rows
        // were never checked, so the poller validates every row it reads (and skips bad ones).
        log::warn!("adopting an existing sse_events table without this hub's CHECK constraints");
        for (column, alter) in LEGACY_COLUMNS {
            if !existing.iter().any(|c| c == column) {
                tx.execute_batch(alter)
                    .map_err(db("add a column to sse_events"))?;
            }
        }
    }
    run_schema(tx)?;
    tx.pragma_update(None, "user_version", 1)
        .map_err(db("set the schema version"))
}

fn migrate_v1_to_v2(tx: &Connection) -> Result<()> {
    run_schema(tx)?;
    let log_id = super::events::log_id(tx)?;
    rebuild_state(tx, log_id)?;
    tx.pragma_update(None, "user_version", 2)
        .map_err(db("set the schema version"))
}

fn migrate_v2_to_v3(tx: &Connection) -> Result<()> {
    // Same names, new (partial) definitions: CREATE ... IF NOT EXISTS would keep the old.
    tx.execute_batch(
        "DROP INDEX IF EXISTS sse_events_seq; DROP INDEX IF EXISTS sse_events_created;",
    )
    .map_err(db("drop the version 2 indexes"))?;
    run_schema(tx)?;
    tx.pragma_update(None, "user_version", 3)
        .map_err(db("set the schema version"))
}

fn migrate_v3_to_v4(tx: &Connection) -> Result<()> {
    // A new table only: schema.sql creates it, nothing to convert.
    run_schema(tx)?;
    tx.pragma_update(None, "user_version", 4)
        .map_err(db("set the schema version"))
}

fn migrate_v4_to_v5(tx: &Connection) -> Result<()> {
    // Two columns (NULL in every existing row: they are all this host's) and their index.
    run_schema(tx)?;
    tx.pragma_update(None, "user_version", 5)
        .map_err(db("set the schema version"))
}

fn migrate_v5_to_v6(tx: &Connection) -> Result<()> {
    // A new table (schema.sql creates it), filled from the captures retention has kept, so
    // that an upgraded hub shows the history it can still know rather than none.
    run_schema(tx)?;
    let counted = tx
        .execute(BACKFILL_HISTORY, [])
        .map_err(db("count the kept captures into capture_history"))?;
    log::info!("schema 6: {counted} capture counters filled from the kept events");
    tx.pragma_update(None, "user_version", 6)
        .map_err(db("set the schema version"))
}

/// The counters of every dispatched `image_captured` still stored, for the cameras the state
/// holds (as the poller counts them: by the event's UTC hour and day, and in all), within the
/// windows the retention thread keeps (48 hours of hours, 60 days of days). One pass over
/// the captures, once, at the upgrade: each is read once into its hour, and the days and
/// totals are summed from the hours (5 s for a million captures on the 2-core VM).
const BACKFILL_HISTORY: &str = "WITH kept AS MATERIALIZED ( \
       SELECT host, camera_id, t / 3600 * 3600 AS hour, count(*) AS n \
       FROM (SELECT coalesce(origin_host, '') AS host, \
                    json_extract(event_data, '$.camera_id') AS id, \
                    CAST(json_extract(event_data, '$.camera_id') AS INTEGER) AS camera_id, \
                    CAST(strftime('%s', created_at) AS INTEGER) AS t \
             FROM sse_events WHERE event_type = 'image_captured' AND seq IS NOT NULL) \
       WHERE t IS NOT NULL AND (typeof(id) = 'integer' \
             OR (typeof(id) = 'text' AND trim(id) GLOB '[0-9]*' AND trim(id) NOT GLOB '*[^0-9]*')) \
       GROUP BY host, camera_id, hour), \
     held AS MATERIALIZED ( \
       SELECT k.* FROM kept k \
       WHERE (k.host = '' AND k.camera_id IN (SELECT camera_id FROM camera_state)) \
          OR (k.host <> '' AND EXISTS (SELECT 1 FROM remote_camera_state r \
                                       WHERE r.host = k.host AND r.camera_id = k.camera_id))) \
     INSERT INTO capture_history (host, camera_id, span, start, captures) \
     SELECT host, camera_id, 'hour', hour, n FROM held \
       WHERE hour >= CAST(strftime('%s', 'now') AS INTEGER) / 3600 * 3600 - 48 * 3600 \
     UNION ALL \
     SELECT host, camera_id, 'day', hour / 86400 * 86400, sum(n) FROM held \
       WHERE hour >= CAST(strftime('%s', 'now') AS INTEGER) / 86400 * 86400 - 60 * 86400 \
       GROUP BY host, camera_id, hour / 86400 \
     UNION ALL \
     SELECT host, camera_id, 'all', 0, sum(n) FROM held GROUP BY host, camera_id";

const REBUILD_COUNTERS: &str = "DELETE FROM camera_state; DELETE FROM timelapse_state; \
     DELETE FROM event_type_counts; \
     INSERT INTO event_type_counts (event_type, dispatched) \
     SELECT event_type, count(*) FROM sse_events WHERE seq IS NOT NULL GROUP BY event_type;";

/// Recomputes the projection and counters from the events still stored (v1 → v2).
fn rebuild_state(conn: &Connection, log_id: u32) -> Result<()> {
    conn.execute_batch(REBUILD_COUNTERS)
        .map_err(db("rebuild counters"))?;
    let mut state = State::default();
    let mut changed = Vec::new();
    let mut after = 0;
    loop {
        let page = super::events::replay(conn, log_id, after, i64::MAX, 1000)?;
        let Some(last) = page.last() else { break };
        after = last.cursor.seq;
        for e in &page {
            changed.push(state.apply(e));
        }
    }
    super::state_rows::save(conn, &state, &changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 file (the whole schema but `sink_cursors`) gains the table, keeps its
    /// events, and says the current version.
    #[test]
    fn a_version_3_database_gains_the_sink_cursors() -> Result<()> {
        let dir = tempfile::tempdir().map_err(crate::error::io("make a temp dir"))?;
        let path = dir.path().join("v3.db");
        let mut conn = Connection::open(&path).map_err(db("open"))?;
        conn.execute_batch(SCHEMA_SQL).map_err(db("schema"))?;
        conn.execute_batch(
            "DROP TABLE sink_cursors; PRAGMA user_version = 3; \
             INSERT INTO sse_events (event_type, event_data, processed_at, seq) \
             VALUES ('kept', '{}', 'x', 1);",
        )
        .map_err(db("write a version 3 file"))?;
        migrate(&mut conn, &path, false)?;
        assert_eq!(user_version(&conn)?, SCHEMA_VERSION);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'sink_cursors'",
                [],
                |r| r.get(0),
            )
            .map_err(db("look for the table"))?;
        let events: i64 = conn
            .query_row("SELECT count(*) FROM sse_events", [], |r| r.get(0))
            .map_err(db("count events"))?;
        assert_eq!((tables, events), (1, 1));
        Ok(())
    }

    /// A version 4 file (sse_events without the origin columns) gains them, NULL in its
    /// rows, and the unique rule: a remote event stored twice is refused by the schema.
    #[test]
    fn a_version_4_database_gains_the_origin_columns_and_their_rule() -> Result<()> {
        let dir = tempfile::tempdir().map_err(crate::error::io("make a temp dir"))?;
        let path = dir.path().join("v4.db");
        let mut conn = Connection::open(&path).map_err(db("open"))?;
        conn.execute_batch(SCHEMA_SQL).map_err(db("schema"))?;
        conn.execute_batch(
            "DROP INDEX sse_events_origin; \
             ALTER TABLE sse_events DROP COLUMN origin_cursor; \
             ALTER TABLE sse_events DROP COLUMN origin_host; \
             PRAGMA user_version = 4; \
             INSERT INTO sse_events (event_type, event_data, processed_at, seq) \
             VALUES ('kept', '{}', 'x', 1);",
        )
        .map_err(db("write a version 4 file"))?;
        migrate(&mut conn, &path, false)?;
        assert_eq!(user_version(&conn)?, SCHEMA_VERSION);
        let old: (Option<String>, Option<String>) = conn
            .query_row(
                "SELECT origin_host, origin_cursor FROM sse_events WHERE seq = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("read the old row"))?;
        assert_eq!(old, (None, None), "an old row is this host's");
        let remote = "INSERT INTO sse_events (event_type, event_data, origin_host, origin_cursor) \
                      VALUES ('r', '{}', 'garden', '0000abcd-7')";
        conn.execute_batch(remote).map_err(db("a remote event"))?;
        let again = conn.execute_batch(remote);
        assert!(
            again.is_err_and(|e| e.to_string().contains("UNIQUE")),
            "the same origin twice is refused"
        );
        // A local producer's statement is untouched, as many times as it likes.
        for _ in 0..2 {
            conn.execute_batch(
                "INSERT INTO sse_events (event_type, event_data) VALUES ('l', '{}')",
            )
            .map_err(db("a local event"))?;
        }
        let bad = conn.execute_batch(
            "INSERT INTO sse_events (event_type, event_data, origin_cursor) VALUES ('x', '{}', 'a-1')",
        );
        assert!(bad.is_err(), "an origin cursor needs its host");
        Ok(())
    }

    /// A version 5 file gains the capture history of the captures it kept, for the cameras
    /// its state holds, and keeps its events.
    #[test]
    fn a_version_5_database_gains_the_capture_history_of_its_kept_captures() -> Result<()> {
        let dir = tempfile::tempdir().map_err(crate::error::io("make a temp dir"))?;
        let path = dir.path().join("v5.db");
        let mut conn = Connection::open(&path).map_err(db("open"))?;
        conn.execute_batch(SCHEMA_SQL).map_err(db("schema"))?;
        conn.execute_batch(
            "DROP TABLE capture_history; PRAGMA user_version = 5; \
             INSERT INTO camera_state (camera_id, state) VALUES (1, '{}'), (3, '{}'); \
             INSERT INTO remote_camera_state (host, camera_id, state) VALUES ('garden', 1, '{}'); \
             INSERT INTO sse_events (event_type, event_data, processed_at, seq, created_at) VALUES \
               ('image_captured', '{\"camera_id\": 1}', 'x', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
               ('image_captured', '{\"camera_id\": 1}', 'x', 2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 days')), \
               ('image_captured', '{\"camera_id\": \"3\"}', 'x', 3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
               ('image_captured', '{\"camera_id\": 2}', 'x', 4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
               ('image_captured', '{\"camera_id\": 1}', 'x', NULL, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
               ('camera_status_changed', '{\"camera_id\": 1}', 'x', 5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
             INSERT INTO sse_events (event_type, event_data, processed_at, seq, origin_host, origin_cursor) \
               VALUES ('image_captured', '{\"camera_id\": 1}', 'x', 6, 'garden', 'abcd-9'), \
                      ('image_captured', '{\"camera_id\": 1}', 'x', 7, 'window', 'abcd-3');",
        )
        .map_err(db("write a version 5 file"))?;
        migrate(&mut conn, &path, false)?;
        assert_eq!(user_version(&conn)?, 6);
        let rows: Vec<(String, i64, String, i64)> = conn
            .prepare("SELECT host, camera_id, span, captures FROM capture_history ORDER BY 1, 2, 3, start")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .map_err(db("read the counters"))?;
        let row = |h: &str, c: i64, s: &str, n: i64| (h.to_owned(), c, s.to_owned(), n);
        assert_eq!(
            rows,
            vec![
                // camera 1: two kept captures, one 3 days ago (no hour bucket kept for it);
                // camera 2 is not in the state, the undispatched row and other types do not
                // count, nor window's camera 1, which the state does not hold; camera "3" (a
                // number as text) counts as the poller reads it.
                row("", 1, "all", 2),
                row("", 1, "day", 1),
                row("", 1, "day", 1),
                row("", 1, "hour", 1),
                row("", 3, "all", 1),
                row("", 3, "day", 1),
                row("", 3, "hour", 1),
                row("garden", 1, "all", 1),
                row("garden", 1, "day", 1),
                row("garden", 1, "hour", 1),
            ]
        );
        let events: i64 = conn
            .query_row("SELECT count(*) FROM sse_events", [], |r| r.get(0))
            .map_err(db("count rows"))?;
        assert_eq!(events, 8);
        Ok(())
    }
}
