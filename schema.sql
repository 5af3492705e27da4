-- timelapse-events database schema, version 6 (PRAGMA user_version = 6).
--
-- PUBLIC CONTRACT: any local process may produce an event with one statement,
--
--     INSERT INTO sse_events(event_type, event_data) VALUES (?, ?);
--
-- optionally also setting `priority` and `source`. Every other column is owned by the hub.
-- The CHECK constraints below are the table's own defence against bad rows from outside:
-- a row that breaks one is rejected at INSERT, with SQLite's "CHECK constraint failed".
--
-- Columns, in the order the original design had them:
--   id            row id, assigned by SQLite, never reused (AUTOINCREMENT)
--   event_type    1..64 characters of A-Z a-z 0-9 _ . : -   (no spaces, no newlines: SSE framing)
--   event_data    a JSON object, as text
--   created_at    UTC, millisecond precision, set by SQLite when the row is inserted
--   processed_at  NULL until the hub has dispatched (or rejected) the row
--   retry_count   kept for compatibility with the original design; the hub leaves it at 0
--   priority      low | normal | high | critical   (higher is dispatched first)
--   source        free-form producer name, 1..64 characters, e.g. 'camera-3' or 'cron'
--   seq           the row's place in the stream, assigned when dispatched (NULL before);
--                 SSE cursors are built from it. A row with processed_at set and seq NULL
--                 was rejected by the hub (see the log) and is never sent.
--   origin_host   (version 5) NULL for this host's own events, which is every row a local
--                 producer inserts; for an event another camera host published and this
--                 hub stored from MQTT (`serve --mqtt-subscribe`), that host's name
--   origin_cursor (version 5) with origin_host: the event's place in its host's log
--                 (`<log id>-<seq>`, as that host's stream sends it); with the UNIQUE
--                 index below, a redelivered remote event is never stored twice

CREATE TABLE IF NOT EXISTS sse_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type   TEXT    NOT NULL
                 CHECK (typeof(event_type) = 'text'
                        AND length(event_type) BETWEEN 1 AND 64
                        AND event_type NOT GLOB '*[^A-Za-z0-9_.:-]*'),
    event_data   TEXT    NOT NULL
                 CHECK (typeof(event_data) = 'text'
                        AND json_valid(event_data)
                        AND json_type(event_data) = 'object'),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    processed_at TEXT,
    retry_count  INTEGER NOT NULL DEFAULT 0,
    priority     TEXT    NOT NULL DEFAULT 'normal'
                 CHECK (priority IN ('low', 'normal', 'high', 'critical')),
    source       TEXT    NOT NULL DEFAULT 'system'
                 CHECK (typeof(source) = 'text' AND length(source) BETWEEN 1 AND 64),
    seq          INTEGER,
    origin_host  TEXT
                 CHECK (origin_host IS NULL
                        OR (typeof(origin_host) = 'text' AND length(origin_host) BETWEEN 1 AND 64)),
    origin_cursor TEXT
                 CHECK (origin_cursor IS NULL
                        OR (typeof(origin_cursor) = 'text' AND origin_host IS NOT NULL
                            AND length(origin_cursor) BETWEEN 3 AND 40))
);

-- "Next undispatched batch, highest priority first, then oldest": a walk of this small
-- partial index (only pending rows are in it). The CASE must match store/events.rs exactly.
CREATE INDEX IF NOT EXISTS sse_events_pending ON sse_events (
    (CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END),
    id
) WHERE processed_at IS NULL;

-- "Replay after cursor": a range walk of this index. UNIQUE also guards the stream order.
-- Partial (version 3): a pending row is not in it, so an INSERT does not write it.
CREATE UNIQUE INDEX IF NOT EXISTS sse_events_seq ON sse_events (seq) WHERE seq IS NOT NULL;

-- Hub bookkeeping. `stream_id` is random per database file, so a cursor from another (or a
-- deleted and recreated) database is recognised; `pruned_seq` is the highest seq retention
-- has deleted, so a cursor older than what is stored is recognised too.
CREATE TABLE IF NOT EXISTS hub_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

INSERT OR IGNORE INTO hub_meta (key, value) VALUES ('stream_id', lower(hex(randomblob(4))));
INSERT OR IGNORE INTO hub_meta (key, value) VALUES ('pruned_seq', '0');

-- Version 2 ------------------------------------------------------------------------------
-- The live state projection, written by the hub in the same transaction that dispatches
-- the events it folds (read it freely; do not write it). One JSON record per camera and
-- per timelapse, as served by GET /api/state; `hub_meta.state_seq` is the seq it reflects.
CREATE TABLE IF NOT EXISTS camera_state (
    camera_id INTEGER PRIMARY KEY,
    state     TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS timelapse_state (
    timelapse_id INTEGER PRIMARY KEY,
    state        TEXT    NOT NULL
);

-- Dispatched events per type, kept by the hub (dispatch adds, retention subtracts), so
-- stats never scan the table.
CREATE TABLE IF NOT EXISTS event_type_counts (
    event_type TEXT    PRIMARY KEY,
    dispatched INTEGER NOT NULL
) WITHOUT ROWID;

-- "Events in the last hour", "oldest retained event" and retention by age: range scans
-- over dispatched rows. Partial (version 3), so an INSERT does not write it; the row
-- enters it when dispatched, in the poller's batched transaction.
CREATE INDEX IF NOT EXISTS sse_events_created ON sse_events (created_at, seq) WHERE seq IS NOT NULL;

-- Rows the hub rejected (only possible in a table adopted from the design we replace),
-- so that retention finds them without a scan.
CREATE INDEX IF NOT EXISTS sse_events_rejected ON sse_events (created_at)
    WHERE seq IS NULL AND processed_at IS NOT NULL;

INSERT OR IGNORE INTO hub_meta (key, value) VALUES ('state_seq', '0');

-- Version 4 ------------------------------------------------------------------------------
-- One row per outbound sink (webhook, ntfy): the seq it has delivered through (advanced
-- only after the far side acknowledged), its counters, and the gaps retention forced on it
-- (events deleted by the size limit before it delivered them). Written by the hub only.
CREATE TABLE IF NOT EXISTS sink_cursors (
    name       TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    delivered  INTEGER NOT NULL DEFAULT 0,
    skipped    INTEGER NOT NULL DEFAULT 0,
    gaps       INTEGER NOT NULL DEFAULT 0,
    lost       INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;

-- Version 5 ------------------------------------------------------------------------------
-- Events from other camera hosts (the columns origin_host and origin_cursor above): one row
-- per remote event whatever MQTT redelivers, by this rule rather than a check in memory.
-- Partial, so a local INSERT (origin_cursor NULL) does not write it.
CREATE UNIQUE INDEX IF NOT EXISTS sse_events_origin ON sse_events (origin_host, origin_cursor)
    WHERE origin_cursor IS NOT NULL;

-- Other camera hosts' cameras, folded from their events like camera_state (which holds only
-- this host's): one JSON record per (host, camera id), written in the dispatch transaction.
CREATE TABLE IF NOT EXISTS remote_camera_state (
    host      TEXT    NOT NULL,
    camera_id INTEGER NOT NULL,
    state     TEXT    NOT NULL,
    PRIMARY KEY (host, camera_id)
) WITHOUT ROWID;

-- Version 6 ------------------------------------------------------------------------------
-- Captures per camera and UTC hour or day (`span`; `start` is the bucket's first second,
-- Unix time), and each camera's running total (`span` 'all', `start` 0): added to by the
-- poller for each dispatched image_captured, in its dispatch transaction. Retention of
-- events never touches it, so the counts outlive the events; the retention thread deletes
-- hour buckets older than 48 hours and day buckets older than 60 days. `host` is '' for this
-- host's cameras. Written by the hub only; GET /api/history reads it by primary key. The
-- upgrade from version 5 fills it from the captures still stored.
CREATE TABLE IF NOT EXISTS capture_history (
    host      TEXT    NOT NULL DEFAULT '',
    camera_id INTEGER NOT NULL,
    span      TEXT    NOT NULL CHECK (span IN ('hour', 'day', 'all')),
    start     INTEGER NOT NULL,
    captures  INTEGER NOT NULL,
    PRIMARY KEY (host, camera_id, span, start)
) WITHOUT ROWID;
