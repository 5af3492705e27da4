//! Statements for stats and retention.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::{Map, Value, json};

use super::events;
use crate::error::{Result, db};

/// Rows deleted per transaction, so the write lock is never held for long.
const CHUNK_ROWS: i64 = 1000;

/// What retention keeps; whichever limit bites first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Dispatched events older than this many seconds go.
    pub(crate) max_age_secs: Option<u64>,
    /// At most this many dispatched events stay.
    pub(crate) max_rows: Option<u64>,
    /// Events go (oldest first) while the database's used pages exceed this.
    pub(crate) max_db_bytes: Option<u64>,
    /// Events after this seq stay whatever their age and count: the lowest cursor of the
    /// enabled sinks. Only `max_db_bytes` may delete past it (the sink then records a gap).
    pub(crate) hold_after: Option<i64>,
}

/// Deletes dispatched events per `policy`, oldest first, in chunks; never a pending row.
/// Returns how many rows went.
pub(crate) fn prune(conn: &mut Connection, policy: Policy) -> Result<u64> {
    let mut deleted = 0;
    let pruned = events::pruned_seq(conn)?;
    let head = events::head_seq(conn)?;
    let mut boundary = pruned;
    if let Some(age) = policy.max_age_secs {
        let old: Option<i64> = conn
            .query_row(
                "SELECT max(seq) FROM sse_events WHERE created_at < \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) AND seq IS NOT NULL",
                [format!("-{age} seconds")],
                |r| r.get(0),
            )
            .map_err(db("find old events"))?;
        boundary = boundary.max(old.unwrap_or(0));
        // Rejected rows (never dispatched, never sent) age out too.
        deleted += conn
            .execute(
                "DELETE FROM sse_events WHERE id IN (SELECT id FROM sse_events \
                 WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
                 AND seq IS NULL AND processed_at IS NOT NULL)",
                [format!("-{age} seconds")],
            )
            .map_err(db("delete old rejected rows"))? as u64;
    }
    if let Some(max) = policy.max_rows {
        // Dispatched seqs are contiguous from pruned+1 to head, so this is the row count.
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        if head - pruned > max {
            boundary = boundary.max(head - max);
        }
    }
    if let Some(hold) = policy.hold_after
        && hold < boundary
    {
        log::debug!(
            "retention keeps seqs after {hold} for a sink (age and count would go to {boundary})"
        );
        boundary = hold.max(pruned);
    }
    let mut at = pruned;
    while at < boundary {
        let upto = boundary.min(at + CHUNK_ROWS);
        deleted += delete_through(conn, at, upto)?;
        at = upto;
    }
    if let Some(max_bytes) = policy.max_db_bytes {
        loop {
            let used = used_bytes(conn)?;
            if used <= max_bytes || at >= head {
                break;
            }
            // Delete about as many rows as the excess holds on average (plus one), so a
            // table of large rows is not emptied by one 1,000-row chunk.
            let rows = u64::try_from(head - at).unwrap_or(1).max(1);
            let estimate = (used - max_bytes).saturating_mul(rows) / used.max(1) + 1;
            let chunk = i64::try_from(estimate)
                .unwrap_or(CHUNK_ROWS)
                .clamp(1, CHUNK_ROWS);
            let upto = head.min(at + chunk);
            deleted += delete_through(conn, at, upto)?;
            at = upto;
        }
    }
    if deleted > 0 {
        log::info!("retention deleted {deleted} events; stream now starts after seq {at}");
    }
    Ok(deleted)
}

/// Deletes dispatched rows with `from < seq <= upto` in one transaction, keeping the type
/// counters and `pruned_seq` in step.
fn delete_through(conn: &mut Connection, from: i64, upto: i64) -> Result<u64> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("begin retention"))?;
    tx.execute(
        "UPDATE event_type_counts SET dispatched = dispatched - (SELECT count(*) FROM sse_events \
         WHERE seq > ?1 AND seq <= ?2 AND sse_events.event_type = event_type_counts.event_type)",
        params![from, upto],
    )
    .map_err(db("update type counts"))?;
    tx.execute("DELETE FROM event_type_counts WHERE dispatched <= 0", [])
        .map_err(db("update type counts"))?;
    let n = tx
        .execute(
            "DELETE FROM sse_events WHERE seq > ?1 AND seq <= ?2",
            params![from, upto],
        )
        .map_err(db("delete old events"))?;
    tx.execute(
        "UPDATE hub_meta SET value = ?1 WHERE key = 'pruned_seq' AND CAST(value AS INTEGER) < ?1",
        [upto],
    )
    .map_err(db("record pruned_seq"))?;
    tx.commit().map_err(db("commit retention"))?;
    Ok(n as u64)
}

/// Bytes of the database file in use (pages minus free pages).
pub(crate) fn used_bytes(conn: &Connection) -> Result<u64> {
    conn.query_row(
        "SELECT (page_count - freelist_count) * page_size \
         FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| u64::try_from(v).unwrap_or(0))
    .map_err(db("measure the database"))
}

/// Stats that come from the database: every figure from an index or a kept counter.
pub(crate) fn stats(conn: &Connection, path: &Path) -> Result<Map<String, Value>> {
    let head = events::head_seq(conn)?;
    let pruned = events::pruned_seq(conn)?;
    let counts = events::counts(conn)?;
    let last_hour: i64 = conn
        .query_row(
            "SELECT count(*) FROM sse_events WHERE seq IS NOT NULL \
             AND created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')",
            [],
            |r| r.get(0),
        )
        .map_err(db("count recent events"))?;
    let oldest: Option<String> = conn
        .query_row(
            "SELECT min(created_at) FROM sse_events WHERE seq IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .map_err(db("find the oldest event"))?;
    let mut by_type = Map::new();
    let mut typed = 0;
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_type, dispatched FROM event_type_counts ORDER BY event_type",
            )
            .map_err(db("read type counts"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db("read type counts"))?;
        for row in rows {
            let (t, n) = row.map_err(db("read type counts"))?;
            typed += n;
            by_type.insert(t, n.into());
        }
    }
    let file_len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let log_id = events::log_id(conn)?;
    let v = json!({
        "total": counts.dispatched + counts.pending,
        "pending": counts.pending,
        "dispatched": counts.dispatched,
        // Dispatched rows created in the last hour (an index range), plus every pending row
        // (pending rows are recent, and their count is small).
        "last_hour": last_hour + counts.pending,
        "distinct_types": by_type.len(),
        "by_type": by_type,
        // Dispatched events of the types beyond --max-event-types, which have no counter.
        "other_types": (counts.dispatched - typed).max(0),
        "head": format!("{log_id:08x}-{head}"),
        "pruned_through_seq": pruned,
        "oldest_event_at": oldest,
        "db_bytes": file_len(path),
        "wal_bytes": file_len(Path::new(&wal)),
        "db_used_bytes": used_bytes(conn)?,
    });
    Ok(match v {
        Value::Object(m) => m,
        _ => Map::new(),
    })
}

/// What `timelapse-events check` found.
pub(crate) struct CheckReport {
    pub(crate) problems: Vec<String>,
    pub(crate) report: Map<String, Value>,
}

/// Checks a database file without changing it: SQLite's `integrity_check`, the schema
/// version, counts and sizes.
pub(crate) fn check(path: &Path) -> Result<CheckReport> {
    let conn = super::open_read_only(path)?;
    let mut problems = Vec::new();
    let integrity: Vec<String> = {
        let mut stmt = conn
            .prepare("PRAGMA integrity_check")
            .map_err(db("run integrity_check"))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(db("run integrity_check"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("run integrity_check"))?
    };
    if integrity != ["ok"] {
        problems.extend(integrity.iter().take(20).map(|l| format!("integrity: {l}")));
    }
    let version = super::user_version(&conn)?;
    let supported = super::SCHEMA_VERSION;
    if version > supported {
        problems.push(format!(
            "schema version {version} is newer than this binary supports (version {supported})"
        ));
    } else if version < 0 {
        problems.push(format!(
            "schema version {version} is not one timelapse-events writes (0 to {supported})"
        ));
    }
    let mut report = Map::new();
    report.insert(
        "integrity".into(),
        json!(integrity.first().cloned().unwrap_or_default()),
    );
    report.insert("schema_version".into(), json!(version));
    report.insert("supported_schema_version".into(), json!(supported));
    if (1..=supported).contains(&version) {
        match stats(&conn, path) {
            Ok(s) => report.extend(s),
            Err(e) => problems.push(format!("cannot read stats: {e}")),
        }
    } else if version == 0 {
        report.insert(
            "note".into(),
            json!("not yet initialised by a hub (schema is created at first start)"),
        );
    }
    report.insert("ok".into(), json!(problems.is_empty()));
    report.insert("problems".into(), json!(problems));
    Ok(CheckReport { problems, report })
}

/// Copies a live database (`from`, opened read-only) to `dest`, an empty file, with
/// SQLite's online backup API, a few hundred pages at a time, so the hub keeps writing
/// meanwhile; then checks the copy.
pub(crate) fn backup(from: &Connection, dest: &Path) -> Result<u64> {
    use rusqlite::backup::Backup;
    let mut to = Connection::open(dest).map_err(db("create the backup file"))?;
    {
        let b = Backup::new(from, &mut to).map_err(db("start the backup"))?;
        b.run_to_completion(256, std::time::Duration::from_millis(5), None)
            .map_err(db("copy pages"))?;
    }
    let ok: String = to
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(db("check the backup"))?;
    if ok != "ok" {
        return Err(crate::error::Error::Io {
            op: "verify the backup",
            source: std::io::Error::other(format!("quick_check says: {ok}")),
        });
    }
    // The copy is a standalone file: leave it in rollback-journal mode, no -wal beside it.
    to.pragma_update(None, "journal_mode", "DELETE")
        .map_err(db("finish the backup"))?;
    let pages: i64 = to
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(db("count pages"))?;
    Ok(u64::try_from(pages).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ten_old_events() -> Result<(tempfile::TempDir, Connection)> {
        let dir = tempfile::tempdir().map_err(crate::error::io("make a temp dir"))?;
        let conn = Connection::open(dir.path().join("e.db")).map_err(db("open"))?;
        conn.execute_batch(super::super::schema::SCHEMA_SQL)
            .map_err(db("schema"))?;
        for seq in 1..=10 {
            conn.execute(
                "INSERT INTO sse_events (event_type, event_data, created_at, processed_at, seq) \
                 VALUES ('old', '{}', '2000-01-01T00:00:00.000Z', 'x', ?1)",
                [seq],
            )
            .map_err(db("insert"))?;
        }
        Ok((dir, conn))
    }

    #[test]
    fn age_and_count_stop_at_the_sinks_hold_and_only_size_goes_past_it() -> Result<()> {
        let (_dir, mut conn) = ten_old_events()?;
        let by_age = Policy {
            max_age_secs: Some(60),
            max_rows: Some(2),
            max_db_bytes: None,
            hold_after: Some(4),
        };
        assert_eq!(
            prune(&mut conn, by_age)?,
            4,
            "seqs 1-4 only: a sink has 5+ to come"
        );
        assert_eq!(events::pruned_seq(&conn)?, 4);
        let no_hold = Policy {
            hold_after: None,
            ..by_age
        };
        assert_eq!(prune(&mut conn, no_hold)?, 6);
        let (_dir, mut conn) = ten_old_events()?;
        let by_size = Policy {
            max_age_secs: None,
            max_rows: None,
            max_db_bytes: Some(0),
            hold_after: Some(0),
        };
        assert_eq!(prune(&mut conn, by_size)?, 10, "the size limit is not held");
        Ok(())
    }
}
