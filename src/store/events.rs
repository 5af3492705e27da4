//! Every statement on `sse_events` and `hub_meta`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Map, Value};

use super::tx::WriteTx;
use super::{history, state_rows};
use crate::error::{Error, Result, db};
use crate::event::{Cursor, Event, EventId, NewEvent, Priority, validate_type};
use crate::history::Tally;
use crate::state::{NotFolded, State};

/// One event ready for INSERT: validated, payload serialised.
pub(crate) struct Insert<'a> {
    pub(crate) event: &'a NewEvent,
    pub(crate) data: &'a str,
}

/// Per group of rows, in order: the ids it was stored under, or why it was not.
pub(crate) type Stored = Vec<Result<Vec<EventId>>>;

const INSERT: &str = "INSERT INTO sse_events (event_type, event_data, priority, source) \
                      VALUES (?1, ?2, ?3, ?4)";

/// Inserts groups of rows in one IMMEDIATE transaction (group commit). Each group is
/// atomic on its own (a savepoint): if SQLite refuses one of its rows, that group's rows
/// are rolled back and it gets the error, while the other groups commit. A failed BEGIN or
/// COMMIT fails them all.
pub(crate) fn insert_groups(conn: &mut Connection, groups: &[Vec<Insert<'_>>]) -> Result<Stored> {
    let tx = WriteTx::begin(conn).map_err(db("begin writing events"))?;
    let results = insert_in(&tx, groups)?;
    tx.commit().map_err(db("commit events"))?;
    Ok(results)
}

/// The groups of [`insert_groups`], each in a savepoint of `tx`.
fn insert_in(tx: &WriteTx<'_>, groups: &[Vec<Insert<'_>>]) -> Result<Stored> {
    let mut results = Vec::with_capacity(groups.len());
    for rows in groups {
        let sp = tx.savepoint().map_err(db("begin an event group"))?;
        let inserted = insert_rows(&sp, rows);
        match inserted {
            Ok(ids) => {
                sp.release().map_err(db("finish an event group"))?;
                results.push(Ok(ids));
            }
            Err(e) => {
                // Dropping the savepoint rolls this group back; the others are untouched.
                drop(sp);
                results.push(Err(e));
            }
        }
    }
    Ok(results)
}

fn insert_rows(conn: &Connection, rows: &[Insert<'_>]) -> Result<Vec<EventId>> {
    let mut stmt = conn
        .prepare_cached(INSERT)
        .map_err(db("prepare event insert"))?;
    rows.iter()
        .map(|row| {
            let e = row.event;
            stmt.execute(params![
                e.event_type,
                row.data,
                e.priority.as_str(),
                e.source
            ])
            .map(|_| EventId(conn.last_insert_rowid()))
            .map_err(db("insert event"))
        })
        .collect()
}

/// One event another camera host published, to store here (`serve --mqtt-subscribe`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Remote {
    /// The host it came from (`origin_host`).
    pub(crate) host: String,
    /// Its place in that host's log, `<log id>-<seq>` (`origin_cursor`).
    pub(crate) cursor: String,
    /// Type, data, priority and source, validated.
    pub(crate) event: NewEvent,
    /// Its `created_at` there (RFC 3339 UTC), or `None` for now.
    pub(crate) created_at: Option<String>,
}

/// The schema's unique rule on (origin_host, origin_cursor) makes a second copy a no-op.
const INSERT_REMOTE: &str = "INSERT INTO sse_events \
     (event_type, event_data, priority, source, created_at, origin_host, origin_cursor) \
     VALUES (?1, ?2, ?3, ?4, coalesce(?5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), ?6, ?7) \
     ON CONFLICT (origin_host, origin_cursor) WHERE origin_cursor IS NOT NULL DO NOTHING";

/// Stores remote events in one IMMEDIATE transaction, those already stored (a redelivery)
/// skipped by the schema; returns how many were new. All or none: the caller acknowledges
/// them to the broker only after this returns.
pub(crate) fn insert_remote(conn: &mut Connection, rows: &[Remote]) -> Result<usize> {
    let tx = WriteTx::begin(conn).map_err(db("begin storing remote events"))?;
    let mut new = 0;
    {
        let mut stmt = tx
            .prepare_cached(INSERT_REMOTE)
            .map_err(db("prepare the remote insert"))?;
        for r in rows {
            let e = &r.event;
            new += stmt
                .execute(params![
                    e.event_type,
                    e.data.to_string(),
                    e.priority.as_str(),
                    e.source,
                    r.created_at,
                    r.host,
                    r.cursor
                ])
                .map_err(db("store a remote event"))?;
        }
    }
    tx.commit().map_err(db("commit remote events"))?;
    Ok(new)
}

/// The pending-rows order; the CASE is the pending index's expression, letter for letter.
/// No `LIMIT ?`: SQLite re-prepares a statement each time a parameter its LIMIT uses is
/// bound (measured: 8 % of the poller's CPU); the caller stops stepping instead, which the
/// index order makes free.
const SELECT_PENDING: &str = "SELECT id, event_type, event_data, created_at, priority, source, origin_host \
     FROM sse_events WHERE processed_at IS NULL \
     ORDER BY (CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END), id";
const MARK_DISPATCHED: &str = "UPDATE sse_events \
     SET seq = ?1, processed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?2";
const MARK_REJECTED: &str = "UPDATE sse_events \
     SET processed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1";

/// What one dispatch transaction did.
pub(crate) struct Dispatched {
    /// Events now in the stream, in stream order.
    pub(crate) events: Vec<Event>,
    /// Rows that could not be read as events (only possible in a table adopted from the
    /// design we replace, which lacks the CHECKs); marked processed so they never block.
    pub(crate) rejected: usize,
    /// True when the batch changed the state projection.
    pub(crate) state_changed: bool,
    /// Events of the batch over the state's limits (stored and dispatched all the same).
    pub(crate) not_folded: NotFolded,
    /// `PRAGMA data_version` as the transaction saw it: every commit it stands for was
    /// read by this dispatch.
    pub(crate) data_version: i64,
}

/// The hub's step: in one IMMEDIATE transaction, stores `groups` (each atomic on its own,
/// as in [`insert_groups`]) and then dispatches up to `limit` pending rows, the new ones
/// among them in priority order. One commit (one fsync with `synchronous=full`) covers
/// both, so an event from the hub's own process costs one commit, not two. `head` and
/// `state` are updated only when the commit succeeds; a failed BEGIN or COMMIT fails every
/// group and dispatches nothing.
///
/// With `unless_seen` (the `data_version` the caller last saw) and no groups, it returns
/// `None` once it holds the write lock if no other connection has committed since, and
/// rolls back having read nothing: BEGIN IMMEDIATE waited for any commit in progress, so
/// a file event whose commit was not yet visible costs the full dispatch only if there
/// was one, and the event of the caller's own last commit costs three cached statements.
pub(crate) fn store_and_dispatch(
    conn: &mut Connection,
    groups: &[Vec<Insert<'_>>],
    log_id: u32,
    head: &mut i64,
    limit: usize,
    state: &mut State,
    unless_seen: Option<i64>,
) -> Result<Option<(Stored, Dispatched)>> {
    let tx = WriteTx::begin(conn).map_err(db("begin dispatch"))?;
    let version = data_version(&tx)?;
    if groups.is_empty() && unless_seen == Some(version) {
        return Ok(None);
    }
    let stored = insert_in(&tx, groups)?;
    let mut events = Vec::new();
    let mut rejected = 0;
    let mut seq = *head;
    let mut next_state: Option<State> = None;
    let mut changed = Vec::new();
    let mut not_folded = NotFolded::default();
    let mut tally = Tally::default();
    {
        let mut select = tx
            .prepare_cached(SELECT_PENDING)
            .map_err(db("read pending events"))?;
        let rows: Vec<RawRow> = select
            .query_map([], RawRow::from_row)
            .map_err(db("read pending events"))?
            .take(limit)
            .collect::<rusqlite::Result<_>>()
            .map_err(db("read pending events"))?;
        let mut mark = tx
            .prepare_cached(MARK_DISPATCHED)
            .map_err(db("mark dispatched"))?;
        let mut reject = tx
            .prepare_cached(MARK_REJECTED)
            .map_err(db("mark rejected"))?;
        for raw in rows {
            let id = raw.id;
            match raw.into_event(Cursor {
                log_id,
                seq: seq + 1,
            }) {
                Ok(event) => {
                    seq += 1;
                    mark.execute(params![seq, id])
                        .map_err(db("mark dispatched"))?;
                    let c = next_state
                        .get_or_insert_with(|| state.clone())
                        .apply(&event);
                    if c.over_cap {
                        not_folded.camera_cap += 1;
                    }
                    // Only cameras the state holds are counted: a flood of camera ids
                    // grows neither the state nor the history.
                    if c.camera.is_some() || c.remote.is_some() {
                        tally.add(&event);
                    }
                    if let Some(f) = &c.forgotten {
                        tally.forget(f.host.as_deref(), f.camera_id);
                    }
                    if c.any() {
                        changed.push(c);
                    }
                    events.push(event);
                }
                Err(reason) => {
                    log::warn!("skipping event row {id}: {reason}");
                    reject.execute([id]).map_err(db("mark rejected"))?;
                    rejected += 1;
                }
            }
        }
    }
    let mut per_type: Vec<(&str, i64)> = Vec::new();
    for e in &events {
        match per_type.iter_mut().find(|(t, _)| *t == e.event_type) {
            Some((_, n)) => *n += 1,
            None => per_type.push((&e.event_type, 1)),
        }
    }
    for (t, n) in per_type {
        if !state_rows::bump_type(&tx, t, n, state.limits.max_event_types)? {
            not_folded.event_type_cap += n.unsigned_abs();
        }
    }
    let state_changed = !changed.is_empty();
    if let (true, Some(next)) = (state_changed, &next_state) {
        state_rows::save(&tx, next, &changed)?;
    }
    history::add(&tx, &tally)?;
    tx.commit().map_err(db("commit dispatch"))?;
    *head = seq;
    if let (true, Some(next)) = (state_changed, next_state) {
        *state = next;
    }
    Ok(Some((
        stored,
        Dispatched {
            events,
            rejected,
            state_changed,
            not_folded,
            data_version: version,
        },
    )))
}

const SELECT_SEQ_OF: &str = "SELECT seq FROM sse_events WHERE id = ?1";

/// The stream position of row `id`: `None` while it is pending (or rejected, or gone).
pub(crate) fn cursor_of(conn: &Connection, log_id: u32, id: EventId) -> Result<Option<Cursor>> {
    let seq: Option<Option<i64>> = conn
        .prepare_cached(SELECT_SEQ_OF)
        .and_then(|mut s| s.query_row([id.0], |r| r.get(0)).optional())
        .map_err(db("read an event's stream position"))?;
    Ok(seq.flatten().map(|seq| Cursor { log_id, seq }))
}

/// No `LIMIT ?` either (see [`SELECT_PENDING`]).
const SELECT_AFTER: &str = "SELECT id, event_type, event_data, created_at, priority, source, origin_host, seq \
     FROM sse_events WHERE seq IS NOT NULL AND seq > ?1 AND seq <= ?2 ORDER BY seq";

/// Dispatched events with `after < seq <= upto`, in stream order, at most `limit`.
pub(crate) fn replay(
    conn: &Connection,
    log_id: u32,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let mut stmt = conn
        .prepare_cached(SELECT_AFTER)
        .map_err(db("replay events"))?;
    let rows = stmt
        .query_map(params![after, upto], |r| {
            Ok((RawRow::from_row(r)?, r.get::<_, i64>(7)?))
        })
        .map_err(db("replay events"))?;
    let mut out = Vec::new();
    for row in rows.take(limit) {
        let (raw, seq) = row.map_err(db("replay events"))?;
        // Dispatched rows were validated when dispatched; one that no longer reads is skipped
        // rather than stopping every replay behind it.
        match raw.into_event(Cursor { log_id, seq }) {
            Ok(e) => out.push(e),
            Err(reason) => log::warn!("replay skips row at seq {seq}: {reason}"),
        }
    }
    Ok(out)
}

/// Stops this connection from checkpointing the WAL inside its own commits (SQLite's
/// default every 1,000 pages, an fsync on the commit path). The hub's poller runs this;
/// the checkpoint thread checkpoints beside it instead ([`checkpoint`]).
pub(crate) fn disable_autocheckpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_autocheckpoint = 0", [], |_| Ok(()))
        .map_err(db("turn off automatic checkpoints"))
}

/// How a checkpoint treats the writers and readers it meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckpointMode {
    /// Copies what it can, waiting for no one.
    Passive,
    /// Takes the write lock for the copy, and waits until no reader uses the WAL, so that
    /// the next writer starts the WAL again from its beginning (each wait bounded by the
    /// connection's busy timeout; past it, it carries on as `Passive`).
    Restart,
}

/// One checkpoint. Returns the frames in the WAL and how many of them are now in the
/// database (SQLite's `log` and `checkpointed` columns).
pub(crate) fn checkpoint(conn: &Connection, mode: CheckpointMode) -> Result<(i64, i64)> {
    let sql = match mode {
        CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        CheckpointMode::Restart => "PRAGMA wal_checkpoint(RESTART)",
    };
    conn.query_row(sql, [], |r| Ok((r.get(1)?, r.get(2)?)))
        .map_err(db("checkpoint the WAL"))
}

/// Sets how long this connection waits for a lock before it gives up (`SQLITE_BUSY`).
pub(crate) fn set_busy_timeout(conn: &Connection, timeout: std::time::Duration) -> Result<()> {
    conn.busy_timeout(timeout)
        .map_err(db("set the busy timeout"))
}

/// Changes whenever another connection (or process) commits; the caller's own commits do not
/// change it. About 2 µs; the statement is cached because the poller asks every few ms.
pub(crate) fn data_version(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(db("read data_version"))
}

/// The last seq handed out (0 for an empty stream), counting pruned rows.
pub(crate) fn head_seq(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT max(coalesce((SELECT max(seq) FROM sse_events WHERE seq IS NOT NULL), 0), \
                    (SELECT CAST(value AS INTEGER) FROM hub_meta WHERE key = 'pruned_seq'))",
        [],
        |r| r.get(0),
    )
    .map_err(db("read the stream head"))
}

/// The highest seq retention deleted: cursors below it cannot be resumed.
pub(crate) fn pruned_seq(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT CAST(value AS INTEGER) FROM hub_meta WHERE key = 'pruned_seq'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(db("read pruned_seq"))
    .map(|v| v.unwrap_or(0))
}

/// The database's stream id.
pub(crate) fn log_id(conn: &Connection) -> Result<u32> {
    let hex: String = conn
        .query_row(
            "SELECT value FROM hub_meta WHERE key = 'stream_id'",
            [],
            |r| r.get(0),
        )
        .map_err(db("read the stream id"))?;
    u32::from_str_radix(&hex, 16).map_err(|_| Error::Thread {
        name: "store".into(),
        reason: format!("hub_meta.stream_id `{hex}` is not 8 hex digits"),
    })
}

/// Row counts for the start-up line and health.
pub(crate) struct Counts {
    pub(crate) dispatched: i64,
    pub(crate) pending: i64,
}

pub(crate) fn counts(conn: &Connection) -> Result<Counts> {
    // Dispatched seqs run contiguously from pruned_seq + 1 to the head (one poller gives
    // them out; retention deletes only a prefix), so no count(*) over the table is needed.
    let dispatched = head_seq(conn)? - pruned_seq(conn)?;
    // The partial pending index holds only pending rows: a count over it is small.
    let pending = conn
        .query_row(
            "SELECT count(*) FROM sse_events WHERE processed_at IS NULL",
            [],
            |r| r.get(0),
        )
        .map_err(db("count events"))?;
    Ok(Counts {
        dispatched,
        pending,
    })
}

struct RawRow {
    id: i64,
    event_type: String,
    data: String,
    created_at: String,
    priority: String,
    source: String,
    origin_host: Option<String>,
}

impl RawRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
        // Read every column as text, whatever its storage class, so a hostile row is
        // reported by into_event rather than failing the whole query.
        let text = |i: usize| -> rusqlite::Result<String> {
            use rusqlite::types::ValueRef;
            Ok(match r.get_ref(i)? {
                ValueRef::Null => String::new(),
                ValueRef::Integer(n) => n.to_string(),
                ValueRef::Real(f) => f.to_string(),
                ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
            })
        };
        Ok(RawRow {
            id: r.get(0)?,
            event_type: text(1)?,
            data: text(2)?,
            created_at: text(3)?,
            priority: text(4)?,
            source: text(5)?,
            // The CHECK makes it text or NULL; anything else reads as this host's.
            origin_host: r.get::<_, Option<String>>(6).ok().flatten(),
        })
    }

    fn into_event(self, cursor: Cursor) -> std::result::Result<Event, String> {
        validate_type(&self.event_type).map_err(|e| e.to_string())?;
        let data = match serde_json::from_str::<Value>(&self.data) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err("event_data is not a JSON object".into()),
            Err(e) => return Err(format!("event_data is not JSON: {e}")),
        };
        let priority: Priority = self.priority.parse().map_err(|e: Error| e.to_string())?;
        Ok(Event {
            cursor,
            id: EventId(self.id),
            event_type: self.event_type,
            data: data as Map<String, Value>,
            priority,
            source: self.source,
            created_at: self.created_at,
            host: self.origin_host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let args = rusqlite::params_from_iter(std::iter::repeat_n(1i64, stmt.parameter_count()));
        let rows = stmt
            .query_map(args, |r| r.get::<_, String>(3))
            .expect("plan rows");
        rows.map(|r| r.expect("detail"))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    #[test]
    fn batch_replay_and_stats_queries_use_indexes_not_scans() {
        let (_dir, store) = Store::scratch().expect("open");
        let conn = store.conn().expect("conn");
        let pending = plan(&conn, SELECT_PENDING);
        assert!(
            pending.contains("USING INDEX sse_events_pending"),
            "{pending}"
        );
        assert!(!pending.contains("TEMP B-TREE"), "no sort step: {pending}");
        let replay = plan(&conn, SELECT_AFTER);
        assert!(replay.contains("USING INDEX sse_events_seq"), "{replay}");
        assert!(!replay.contains("SCAN sse_events"), "{replay}");
        let recent = plan(
            &conn,
            "SELECT count(*) FROM sse_events WHERE seq IS NOT NULL AND created_at >= ?1",
        );
        assert!(
            recent.contains("COVERING INDEX sse_events_created"),
            "{recent}"
        );
        let head = plan(
            &conn,
            "SELECT max(seq) FROM sse_events WHERE seq IS NOT NULL",
        );
        assert!(head.contains("sse_events_seq"), "{head}");
        let count_pending = plan(
            &conn,
            "SELECT count(*) FROM sse_events WHERE processed_at IS NULL",
        );
        assert!(
            count_pending.contains("sse_events_pending"),
            "{count_pending}"
        );
    }

    #[test]
    fn a_dispatch_unless_seen_runs_only_after_another_connections_commit() -> Result<()> {
        let (_dir, store) = Store::scratch()?;
        let mut conn = store.dedicated()?;
        let other = store.dedicated()?;
        let mut head = 0;
        let mut state = State::default();
        let log_id = store.log_id();
        let mut dispatch = |conn: &mut Connection, groups: &[Vec<Insert<'_>>], seen| {
            store_and_dispatch(conn, groups, log_id, &mut head, 100, &mut state, seen)
                .map(|d| d.map(|(_, d)| (d.events.len(), d.data_version)))
        };
        let Some((0, seen)) = dispatch(&mut conn, &[], None)? else {
            panic!("a dispatch without `unless_seen` always runs");
        };
        assert_eq!(dispatch(&mut conn, &[], Some(seen))?, None, "nothing new");
        // Its own commit (an emit stored by the same step) is not another's.
        let own = NewEvent::new("own", serde_json::json!({}));
        let data = own.data.to_string();
        let group = vec![vec![Insert {
            event: &own,
            data: &data,
        }]];
        assert_eq!(dispatch(&mut conn, &group, Some(seen))?, Some((1, seen)));
        assert_eq!(dispatch(&mut conn, &[], Some(seen))?, None, "own commit");
        other
            .execute(
                "INSERT INTO sse_events (event_type, event_data) VALUES ('theirs', '{}')",
                [],
            )
            .map_err(db("test insert"))?;
        let Some((1, after)) = dispatch(&mut conn, &[], Some(seen))? else {
            panic!("another connection's row is dispatched");
        };
        assert_ne!(after, seen);
        assert_eq!(dispatch(&mut conn, &[], Some(after))?, None, "seen now");
        Ok(())
    }

    #[test]
    fn a_remote_event_is_stored_once_and_dispatched_with_its_host() -> Result<()> {
        let (_dir, store) = Store::scratch()?;
        let mut conn = store.dedicated()?;
        let remote = |n: i64| Remote {
            host: "garden".into(),
            cursor: format!("0000abcd-{n}"),
            event: NewEvent::new(
                "image_captured",
                serde_json::json!({"camera_id": 1, "n": n}),
            ),
            created_at: Some("2026-12-01T10:00:00.000Z".into()),
        };
        assert_eq!(insert_remote(&mut conn, &[remote(1), remote(2)])?, 2);
        // A redelivery, and one more: only the new one is stored.
        assert_eq!(insert_remote(&mut conn, &[remote(2), remote(3)])?, 1);
        let mut head = 0;
        let mut state = State::default();
        let Some((_, d)) = store_and_dispatch(
            &mut conn,
            &[],
            store.log_id(),
            &mut head,
            100,
            &mut state,
            None,
        )?
        else {
            panic!("a dispatch without `unless_seen` always runs");
        };
        let got: Vec<(Option<&str>, Value)> = d
            .events
            .iter()
            .map(|e| (e.host.as_deref(), e.data["n"].clone()))
            .collect();
        assert_eq!(
            got,
            [1, 2, 3]
                .map(|n| (Some("garden"), serde_json::json!(n)))
                .to_vec()
        );
        assert_eq!(d.events[0].created_at, "2026-12-01T10:00:00.000Z");
        assert_eq!(d.events[0].envelope()["host"], "garden");
        let replayed = replay(&conn, store.log_id(), 0, head, 10)?;
        assert_eq!(replayed, d.events, "replay reads the host too");
        Ok(())
    }
}
