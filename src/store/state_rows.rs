//! Persistence of the state projection and the per-type counters, both bounded by
//! [`Limits`]: the tables hold what the projection holds.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{Result, db};
use crate::state::{CameraState, Changed, Limits, State, TimelapseState};

const UPSERT_CAMERA: &str = "INSERT INTO camera_state (camera_id, state) VALUES (?1, ?2) \
     ON CONFLICT (camera_id) DO UPDATE SET state = excluded.state";
const UPSERT_TIMELAPSE: &str = "INSERT INTO timelapse_state (timelapse_id, state) VALUES (?1, ?2) \
     ON CONFLICT (timelapse_id) DO UPDATE SET state = excluded.state";
const DELETE_TIMELAPSE: &str = "DELETE FROM timelapse_state WHERE timelapse_id = ?1";
const DELETE_CAMERA: &str = "DELETE FROM camera_state WHERE camera_id = ?1";
const DELETE_REMOTE: &str = "DELETE FROM remote_camera_state WHERE host = ?1 AND camera_id = ?2";
/// A type that has a row: one primary-key seek.
const BUMP_TYPE: &str =
    "UPDATE event_type_counts SET dispatched = dispatched + ?2 WHERE event_type = ?1";
/// A type without one gets a row while there are fewer than `?3` (the cap); the table is
/// small (at most the cap), so the count is a walk of a few pages.
const NEW_TYPE: &str = "INSERT INTO event_type_counts (event_type, dispatched) \
     SELECT ?1, ?2 WHERE (SELECT count(*) FROM event_type_counts) < ?3";

/// Keep the `?1` most recently updated cameras (updated_at is the folded event's
/// created_at; the higher id wins a tie), as a restart on a database written with a higher
/// cap (or before there was one) must load at most the cap.
const TRIM_CAMERAS: &str = "DELETE FROM camera_state WHERE camera_id NOT IN \
     (SELECT camera_id FROM camera_state \
      ORDER BY json_extract(state, '$.updated_at') DESC, camera_id DESC LIMIT ?1)";
/// Timelapses of cameras no longer held go with them.
const TRIM_ORPHAN_TIMELAPSES: &str = "DELETE FROM timelapse_state \
     WHERE json_extract(state, '$.camera_id') NOT IN (SELECT camera_id FROM camera_state)";
const TRIM_TIMELAPSES: &str = "DELETE FROM timelapse_state WHERE timelapse_id NOT IN \
     (SELECT timelapse_id FROM timelapse_state \
      ORDER BY json_extract(state, '$.updated_at') DESC, timelapse_id DESC LIMIT ?1)";
/// Keep the counters of the `?1` most dispatched types: a flood of one-off names has the
/// smallest counts, the types a home really sends the largest.
const TRIM_TYPES: &str = "DELETE FROM event_type_counts WHERE event_type NOT IN \
     (SELECT event_type FROM event_type_counts ORDER BY dispatched DESC, event_type LIMIT ?1)";

const SELECT_CAMERAS: &str = "SELECT state FROM camera_state ORDER BY camera_id";
const UPSERT_REMOTE: &str = "INSERT INTO remote_camera_state (host, camera_id, state) \
     VALUES (?1, ?2, ?3) ON CONFLICT (host, camera_id) DO UPDATE SET state = excluded.state";
const SELECT_REMOTE: &str = "SELECT state FROM remote_camera_state ORDER BY host, camera_id";
/// Other hosts' cameras beyond the cap go the way this host's do: least recently updated.
const TRIM_REMOTE: &str = "DELETE FROM remote_camera_state WHERE (host, camera_id) NOT IN \
     (SELECT host, camera_id FROM remote_camera_state \
      ORDER BY json_extract(state, '$.updated_at') DESC, host, camera_id DESC LIMIT ?1)";
const SELECT_CAMERA: &str = "SELECT state FROM camera_state WHERE camera_id = ?1";
const SELECT_TIMELAPSES: &str = "SELECT state FROM timelapse_state ORDER BY timelapse_id";

/// Trims the persisted projection and type counters to `limits` (in one transaction; what
/// was dropped is logged), then loads it.
pub(crate) fn load(conn: &mut Connection, limits: Limits) -> Result<State> {
    trim(conn, limits)?;
    let mut state = State {
        limits,
        ..State::default()
    };
    for c in records::<CameraState>(conn, SELECT_CAMERAS, "load camera state")? {
        state.cameras.insert(c.camera_id, c);
    }
    for c in records::<CameraState>(conn, SELECT_REMOTE, "load remote camera state")? {
        if let Some(host) = c.host.clone() {
            state.remote.insert((host, c.camera_id), c);
        }
    }
    for t in records::<TimelapseState>(conn, SELECT_TIMELAPSES, "load timelapse state")? {
        state.timelapses.insert(t.timelapse_id, t);
    }
    state.seq = conn
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM hub_meta WHERE key = 'state_seq'",
            [],
            |r| r.get(0),
        )
        .map_err(db("load state_seq"))?;
    Ok(state)
}

fn trim(conn: &mut Connection, limits: Limits) -> Result<()> {
    let cap = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("begin trimming the state"))?;
    let cameras = tx
        .execute(TRIM_CAMERAS, [cap(limits.max_cameras)])
        .map_err(db("trim camera state"))?
        + tx.execute(TRIM_REMOTE, [cap(limits.max_cameras)])
            .map_err(db("trim remote camera state"))?;
    let timelapses = tx
        .execute(TRIM_ORPHAN_TIMELAPSES, [])
        .map_err(db("trim timelapse state"))?
        + tx.execute(TRIM_TIMELAPSES, [cap(limits.max_timelapses)])
            .map_err(db("trim timelapse state"))?;
    let types = tx
        .execute(TRIM_TYPES, [cap(limits.max_event_types)])
        .map_err(db("trim event type counters"))?;
    tx.commit().map_err(db("commit trimming the state"))?;
    if cameras + timelapses + types > 0 {
        log::info!(
            "state over its limits: kept the {} most recently updated cameras (dropped \
             {cameras}; --max-cameras), dropped {timelapses} older timelapses, and kept the \
             counters of the {} most dispatched event types (dropped {types}; \
             --max-event-types)",
            limits.max_cameras,
            limits.max_event_types
        );
    }
    Ok(())
}

/// Writes the records `changed` names, and the seq the state reflects. Forgotten cameras'
/// rows go first: a later event of the same batch may have brought one back.
pub(crate) fn save(conn: &Connection, state: &State, changed: &[Changed]) -> Result<()> {
    for f in changed.iter().filter_map(|c| c.forgotten.as_ref()) {
        let op = "delete a forgotten camera's state";
        match &f.host {
            Some(h) => conn
                .prepare_cached(DELETE_REMOTE)
                .and_then(|mut s| s.execute(params![h, f.camera_id])),
            None => conn
                .prepare_cached(DELETE_CAMERA)
                .and_then(|mut s| s.execute([f.camera_id])),
        }
        .map_err(db(op))?;
        for id in &f.timelapses {
            if !state.timelapses.contains_key(id) {
                conn.prepare_cached(DELETE_TIMELAPSE)
                    .and_then(|mut s| s.execute([id]))
                    .map_err(db(op))?;
            }
        }
    }
    let mut cam = conn
        .prepare_cached(UPSERT_CAMERA)
        .map_err(db("save camera state"))?;
    let mut tl = conn
        .prepare_cached(UPSERT_TIMELAPSE)
        .map_err(db("save timelapse state"))?;
    let mut cams: Vec<i64> = changed.iter().filter_map(|c| c.camera).collect();
    cams.sort_unstable();
    cams.dedup();
    for id in cams {
        if let Some(c) = state.cameras.get(&id) {
            let text = serde_json::to_string(c).unwrap_or_default();
            cam.execute(params![id, text])
                .map_err(db("save camera state"))?;
        }
    }
    let mut remote = conn
        .prepare_cached(UPSERT_REMOTE)
        .map_err(db("save remote camera state"))?;
    let mut keys: Vec<&(String, i64)> = changed.iter().filter_map(|c| c.remote.as_ref()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        if let Some(c) = state.remote.get(key) {
            let text = serde_json::to_string(c).unwrap_or_default();
            remote
                .execute(params![key.0, key.1, text])
                .map_err(db("save remote camera state"))?;
        }
    }
    let mut tls: Vec<i64> = changed.iter().filter_map(|c| c.timelapse).collect();
    tls.sort_unstable();
    tls.dedup();
    for id in tls {
        if let Some(t) = state.timelapses.get(&id) {
            let text = serde_json::to_string(t).unwrap_or_default();
            tl.execute(params![id, text])
                .map_err(db("save timelapse state"))?;
        }
    }
    let mut gone = conn
        .prepare_cached(DELETE_TIMELAPSE)
        .map_err(db("delete timelapse state"))?;
    for id in changed.iter().filter_map(|c| c.evicted) {
        // Evicted, then perhaps folded in again by a later event of the same batch.
        if !state.timelapses.contains_key(&id) {
            gone.execute([id]).map_err(db("delete timelapse state"))?;
        }
    }
    conn.prepare_cached("UPDATE hub_meta SET value = ?1 WHERE key = 'state_seq'")
        .and_then(|mut s| s.execute([state.seq.to_string()]))
        .map_err(db("save state_seq"))?;
    Ok(())
}

/// The persisted state of the cameras `ids` names (those it has), or of every camera: the
/// hub's state as of the last dispatch transaction, for a reader on another thread.
pub(crate) fn cameras(conn: &Connection, ids: Option<&[i64]>) -> Result<Vec<CameraState>> {
    const OP: &str = "read camera state";
    let Some(ids) = ids else {
        return records(conn, SELECT_CAMERAS, OP);
    };
    let mut stmt = conn.prepare_cached(SELECT_CAMERA).map_err(db(OP))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let text: Option<String> = stmt
            .query_row([id], |r| r.get(0))
            .optional()
            .map_err(db(OP))?;
        match text.map(|t| serde_json::from_str(&t)) {
            Some(Ok(c)) => out.push(c),
            Some(Err(e)) => log::warn!("{OP}: ignoring an unreadable row: {e}"),
            None => {}
        }
    }
    Ok(out)
}

/// Adds `n` dispatched events of `event_type` to the kept counters. Returns false when
/// the type has no counter and `max_types` others have one (the events are not counted).
pub(crate) fn bump_type(
    conn: &Connection,
    event_type: &str,
    n: i64,
    max_types: usize,
) -> Result<bool> {
    // Known types are nearly every call: an UPDATE, rather than one upsert that checks
    // the type, counts the table and then conflicts into the same UPDATE (measured under
    // callgrind: 26,700 instructions a batch).
    let bumped = conn
        .prepare_cached(BUMP_TYPE)
        .and_then(|mut s| s.execute(params![event_type, n]))
        .map_err(db("count event types"))?;
    if bumped > 0 {
        return Ok(true);
    }
    let cap = i64::try_from(max_types).unwrap_or(i64::MAX);
    let rows = conn
        .prepare_cached(NEW_TYPE)
        .and_then(|mut s| s.execute(params![event_type, n, cap]))
        .map_err(db("count event types"))?;
    Ok(rows > 0)
}

/// The JSON records `sql` selects; an unreadable one is logged and skipped.
fn records<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    op: &'static str,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare(sql).map_err(db(op))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(db(op))?;
    let mut out = Vec::new();
    for row in rows {
        match serde_json::from_str(&row.map_err(db(op))?) {
            Ok(record) => out.push(record),
            Err(e) => log::warn!("{op}: ignoring an unreadable row: {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn camera_row(id: i64, at: &str) -> String {
        serde_json::to_string(&CameraState {
            camera_id: id,
            updated_at: at.into(),
            ..CameraState::default()
        })
        .unwrap_or_default()
    }

    #[test]
    fn a_load_keeps_the_most_recent_cameras_and_the_most_dispatched_types() -> Result<()> {
        let (_dir, store) = Store::scratch()?;
        let mut conn = store.dedicated()?;
        let at = |s: i64| format!("2026-11-26T10:00:{s:02}.000Z");
        for (id, second) in [(1, 5), (2, 9), (3, 1), (4, 9), (5, 7)] {
            conn.execute(UPSERT_CAMERA, params![id, camera_row(id, &at(second))])
                .map_err(db("test insert"))?;
        }
        let timelapse = |id: i64, camera: i64| {
            serde_json::to_string(&TimelapseState {
                timelapse_id: id,
                camera_id: camera,
                updated_at: at(id),
                ..TimelapseState::default()
            })
            .unwrap_or_default()
        };
        for (id, camera) in [(10, 1), (11, 2), (12, 4), (13, 4), (14, 2), (15, 3)] {
            conn.execute(UPSERT_TIMELAPSE, params![id, timelapse(id, camera)])
                .map_err(db("test insert"))?;
        }
        for (t, n) in [("a", 5), ("b", 50), ("c", 1), ("d", 7)] {
            assert!(bump_type(&conn, t, n, usize::MAX)?);
        }
        // Keeps 2 cameras (4 and 2 at :09), 2 × 4 timelapses but only theirs, 2 types.
        let state = load(&mut conn, Limits::new(2, 2))?;
        assert_eq!(state.cameras.keys().copied().collect::<Vec<_>>(), [2, 4]);
        assert_eq!(
            state.timelapses.keys().copied().collect::<Vec<_>>(),
            [11, 12, 13, 14]
        );
        let types: Vec<String> = conn
            .prepare("SELECT event_type FROM event_type_counts ORDER BY event_type")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(db("test read"))?;
        assert_eq!(types, ["b", "d"]);
        // Full: a new type gets no counter, a known one still counts.
        assert!(!bump_type(&conn, "e", 1, 2)?);
        assert!(bump_type(&conn, "b", 1, 2)?);
        let again = load(&mut conn, Limits::new(2, 2))?;
        assert_eq!(again, state, "a second load finds nothing to trim");
        Ok(())
    }
}
