//! Statements for the outbound sinks' cursors (`sink_cursors`): each sink's delivered-through
//! seq, its counters, and the gaps retention forced on it. Run by each `tle-sink-<name>`
//! thread on its own connection, by retention (the hold) and by `timelapse-events sinks`.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::error::{Result, db};

/// One stored sink cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkCursor {
    /// The sink's name, e.g. `hook1`.
    pub name: String,
    /// `webhook` or `ntfy`.
    pub kind: String,
    /// Where it delivers, without secrets or query string.
    pub target: String,
    /// The last seq it has delivered (or skipped) and the far side acknowledged.
    pub seq: i64,
    /// Events delivered.
    pub delivered: i64,
    /// Events the far side refused for good (a 4xx), skipped.
    pub skipped: i64,
    /// Times retention's size limit deleted events before this sink delivered them.
    pub gaps: i64,
    /// Seqs lost in those gaps (filtered-out events included: they were never read).
    pub lost: i64,
    /// When the row last changed (UTC).
    pub updated_at: String,
}

const REGISTER: &str = "INSERT INTO sink_cursors (name, kind, target, seq) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, target = excluded.target";

const SELECT_ONE: &str = "SELECT name, kind, target, seq, delivered, skipped, gaps, lost, updated_at \
     FROM sink_cursors WHERE name = ?1";

/// Creates the cursor of `name` at `start_seq` unless it exists (then only its kind and
/// target are updated), and returns the stored cursor.
pub(crate) fn register(
    conn: &Connection,
    name: &str,
    kind: &str,
    target: &str,
    start_seq: i64,
) -> Result<SinkCursor> {
    conn.execute(REGISTER, params![name, kind, target, start_seq])
        .map_err(db("register a sink cursor"))?;
    conn.query_row(SELECT_ONE, [name], from_row)
        .map_err(db("read a sink cursor"))
}

const ADVANCE: &str = "UPDATE sink_cursors SET seq = max(seq, ?2), delivered = delivered + ?3, \
     skipped = skipped + ?4, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = ?1";

/// Moves the cursor of `name` forward to `seq` (never back), adding to its counters.
pub(crate) fn advance(
    conn: &Connection,
    name: &str,
    seq: i64,
    delivered: u64,
    skipped: u64,
) -> Result<()> {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    conn.prepare_cached(ADVANCE)
        .and_then(|mut s| s.execute(params![name, seq, as_i64(delivered), as_i64(skipped)]))
        .map_err(db("advance a sink cursor"))?;
    Ok(())
}

const RECORD_GAP: &str = "UPDATE sink_cursors SET seq = ?2, gaps = gaps + 1, lost = lost + ?2 - seq, \
     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = ?1 AND seq < ?2";

/// Records that events after the cursor of `name` through `pruned` were deleted before it
/// delivered them, and moves the cursor to `pruned`. Returns how many seqs were lost.
pub(crate) fn record_gap(conn: &Connection, name: &str, pruned: i64) -> Result<i64> {
    let before: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sink_cursors WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("read a sink cursor"))?;
    conn.execute(RECORD_GAP, params![name, pruned])
        .map_err(db("record a sink gap"))?;
    Ok(before.map_or(0, |b| (pruned - b).max(0)))
}

const HOLD: &str =
    "SELECT min(seq) FROM sink_cursors WHERE name IN (SELECT value FROM json_each(?1))";

/// The lowest cursor among the sinks `names` (the enabled ones): retention keeps every
/// event after it, unless the size limit forces otherwise. None without such a sink.
pub(crate) fn hold(conn: &Connection, names: &[String]) -> Result<Option<i64>> {
    if names.is_empty() {
        return Ok(None);
    }
    let list = serde_json::to_string(names).unwrap_or_else(|_| "[]".to_owned());
    conn.query_row(HOLD, [list], |r| r.get(0))
        .map_err(db("read the sinks' hold"))
}

const SELECT_ALL: &str = "SELECT name, kind, target, seq, delivered, skipped, gaps, lost, updated_at \
     FROM sink_cursors ORDER BY name";

/// Every stored cursor, by name (also of sinks no longer configured).
pub(crate) fn list(conn: &Connection) -> Result<Vec<SinkCursor>> {
    let mut stmt = conn.prepare(SELECT_ALL).map_err(db("read sink cursors"))?;
    let rows = stmt
        .query_map([], from_row)
        .map_err(db("read sink cursors"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(db("read sink cursors"))
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SinkCursor> {
    Ok(SinkCursor {
        name: r.get(0)?,
        kind: r.get(1)?,
        target: r.get(2)?,
        seq: r.get(3)?,
        delivered: r.get(4)?,
        skipped: r.get(5)?,
        gaps: r.get(6)?,
        lost: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().expect("memory db");
        c.execute_batch(super::super::schema::SCHEMA_SQL)
            .expect("schema");
        c
    }

    #[test]
    fn a_cursor_registers_once_advances_forward_and_records_gaps() -> Result<()> {
        let c = conn();
        let first = register(&c, "hook1", "webhook", "http://a/", 7)?;
        assert_eq!(first.seq, 7);
        advance(&c, "hook1", 10, 3, 0)?;
        // Registering again keeps the cursor (a restart resumes from it).
        assert_eq!(register(&c, "hook1", "webhook", "http://b/", 0)?.seq, 10);
        advance(&c, "hook1", 9, 0, 1)?; // never back
        assert_eq!(record_gap(&c, "hook1", 25)?, 15);
        assert_eq!(record_gap(&c, "hook1", 20)?, 0, "not behind: no gap");
        let rows = list(&c)?;
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        let got = (
            r.seq,
            r.delivered,
            r.skipped,
            r.gaps,
            r.lost,
            r.target.as_str(),
        );
        assert_eq!(got, (25, 3, 1, 1, 15, "http://b/"));
        Ok(())
    }

    #[test]
    fn the_hold_is_the_lowest_enabled_cursor() -> Result<()> {
        let c = conn();
        register(&c, "a", "webhook", "x", 5)?;
        register(&c, "b", "webhook", "x", 3)?;
        register(&c, "gone", "webhook", "x", 1)?;
        assert_eq!(hold(&c, &["a".into(), "b".into()])?, Some(3));
        assert_eq!(hold(&c, &["a".into()])?, Some(5));
        assert_eq!(hold(&c, &[])?, None);
        assert_eq!(hold(&c, &["unknown".into()])?, None);
        Ok(())
    }
}
