//! Persistence of the state projection and the per-type counters.

use rusqlite::{Connection, params};

use crate::error::{Result, db};
use crate::state::{CameraState, Changed, State, TimelapseState};

const UPSERT_CAMERA: &str = "INSERT INTO camera_state (camera_id, state) VALUES (?1, ?2) \
     ON CONFLICT (camera_id) DO UPDATE SET state = excluded.state";
const UPSERT_TIMELAPSE: &str = "INSERT INTO timelapse_state (timelapse_id, state) VALUES (?1, ?2) \
     ON CONFLICT (timelapse_id) DO UPDATE SET state = excluded.state";
const BUMP_TYPE: &str = "INSERT INTO event_type_counts (event_type, dispatched) VALUES (?1, ?2) \
     ON CONFLICT (event_type) DO UPDATE SET dispatched = dispatched + excluded.dispatched";

const SELECT_CAMERAS: &str = "SELECT state FROM camera_state ORDER BY camera_id";
const SELECT_TIMELAPSES: &str = "SELECT state FROM timelapse_state ORDER BY timelapse_id";

/// Loads the persisted projection.
pub(crate) fn load(conn: &Connection) -> Result<State> {
    let mut state = State::default();
    for c in records::<CameraState>(conn, SELECT_CAMERAS, "load camera state")? {
        state.cameras.insert(c.camera_id, c);
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

/// Writes the records `changed` names, and the seq the state reflects.
pub(crate) fn save(conn: &Connection, state: &State, changed: &[Changed]) -> Result<()> {
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
    conn.prepare_cached("UPDATE hub_meta SET value = ?1 WHERE key = 'state_seq'")
        .and_then(|mut s| s.execute([state.seq.to_string()]))
        .map_err(db("save state_seq"))?;
    Ok(())
}

/// Adds `n` dispatched events of `event_type` to the kept counters.
pub(crate) fn bump_type(conn: &Connection, event_type: &str, n: i64) -> Result<()> {
    conn.prepare_cached(BUMP_TYPE)
        .and_then(|mut s| s.execute(params![event_type, n]))
        .map_err(db("count event types"))?;
    Ok(())
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
