//! The capture counters (`capture_history`): added to in the poller's dispatch transaction,
//! pruned by the retention thread, read by `/api/history`. The bucketing is
//! `crate::history`'s; only the SQL is here.

use rusqlite::{Connection, params};

use crate::error::{Result, db};
use crate::history::{Span, Tally};

/// Adds a batch's count to one bucket.
const UPSERT_BUCKET: &str = "INSERT INTO capture_history (host, camera_id, span, start, captures) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (host, camera_id, span, start) \
     DO UPDATE SET captures = captures + excluded.captures";
/// A forgotten camera's counters.
const DELETE_CAMERA: &str = "DELETE FROM capture_history WHERE host = ?1 AND camera_id = ?2";
/// Hour buckets before `?1` and day buckets before `?2` (the running totals stay). The
/// table holds at most about 110 rows per camera, so the walk of it is short.
const PRUNE: &str = "DELETE FROM capture_history \
     WHERE (span = 'hour' AND start < ?1) OR (span = 'day' AND start < ?2)";

/// The one statement `GET /api/history` runs, once per camera: a search of the primary key
/// by its first two columns, never a read of `sse_events`.
pub const HISTORY_READ_SQL: &str = "SELECT span, start, captures FROM capture_history \
     WHERE host = ?1 AND camera_id = ?2";

/// Writes a batch's tally: the forgotten cameras' counters go first, then one UPSERT per
/// bucket. Runs inside the caller's (dispatch) transaction.
pub(crate) fn add(conn: &Connection, tally: &Tally) -> Result<()> {
    if tally.is_empty() {
        return Ok(());
    }
    let mut forget = conn
        .prepare_cached(DELETE_CAMERA)
        .map_err(db("delete a forgotten camera's capture history"))?;
    for (host, camera) in tally.forgotten() {
        forget
            .execute(params![host, camera])
            .map_err(db("delete a forgotten camera's capture history"))?;
    }
    let mut upsert = conn
        .prepare_cached(UPSERT_BUCKET)
        .map_err(db("count captures"))?;
    for ((host, camera, span, start), n) in tally.buckets() {
        upsert
            .execute(params![host, camera, span.as_str(), start, n])
            .map_err(db("count captures"))?;
    }
    Ok(())
}

/// Deletes hour buckets that start before `hours_before` and day buckets before
/// `days_before` (Unix seconds); returns how many went.
pub(crate) fn prune(conn: &Connection, hours_before: i64, days_before: i64) -> Result<usize> {
    conn.prepare_cached(PRUNE)
        .and_then(|mut s| s.execute(params![hours_before, days_before]))
        .map_err(db("prune capture history"))
}

/// One camera's counters, `(span, start, captures)`; `host` is `""` for this host's.
pub(crate) fn camera(
    conn: &Connection,
    host: &str,
    camera_id: i64,
) -> Result<Vec<(Span, i64, i64)>> {
    const OP: &str = "read capture history";
    let mut stmt = conn.prepare_cached(HISTORY_READ_SQL).map_err(db(OP))?;
    let rows = stmt
        .query_map(params![host, camera_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(db(OP))?;
    let mut out = Vec::new();
    for row in rows {
        let (span, start, n) = row.map_err(db(OP))?;
        if let Some(span) = Span::parse(&span) {
            out.push((span, start, n));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::history::{DAY_SECS, HOUR_SECS, prune_before};
    use crate::state::{IMAGE_CAPTURED, parse_utc_ms};
    use crate::store::Store;
    use serde_json::json;

    #[test]
    fn tallies_add_up_forgotten_cameras_go_and_old_buckets_are_pruned() -> Result<()> {
        let (_dir, store) = Store::scratch()?;
        let conn = store.dedicated()?;
        let shot = |camera: i64, at: &str| {
            Event::for_test(1, IMAGE_CAPTURED, at, json!({"camera_id": camera}))
        };
        let now = parse_utc_ms("2026-12-01T18:04:05.000Z").unwrap_or_default();
        let hour = now / 1000 / HOUR_SECS * HOUR_SECS;
        let day = now / 1000 / DAY_SECS * DAY_SECS;
        for _ in 0..2 {
            let mut t = Tally::default();
            t.add(&shot(1, "2026-12-01T18:00:00.000Z"));
            t.add(&shot(1, "2026-11-28T10:00:00.000Z")); // older than 48 hours
            t.add(&shot(2, "2026-12-01T18:00:00.000Z"));
            add(&conn, &t)?;
        }
        let mut rows = camera(&conn, "", 1)?;
        rows.sort_unstable();
        let old_hour = parse_utc_ms("2026-11-28T10:00:00Z").unwrap_or_default() / 1000;
        assert_eq!(
            rows,
            [
                (Span::Hour, old_hour, 2),
                (Span::Hour, hour, 2),
                (Span::Day, old_hour / DAY_SECS * DAY_SECS, 2),
                (Span::Day, day, 2),
                (Span::All, 0, 4),
            ]
        );
        let (hours, days) = prune_before(now);
        assert_eq!(prune(&conn, hours, days)?, 1, "only the old hour");
        assert_eq!(camera(&conn, "", 1)?.len(), 4);
        let mut t = Tally::default();
        t.forget(None, 1);
        add(&conn, &t)?;
        assert!(camera(&conn, "", 1)?.is_empty());
        assert_eq!(camera(&conn, "", 2)?.len(), 3, "camera 2 keeps its counts");
        Ok(())
    }
}
