# The smallest producer in another language: one INSERT into the hub's database file
# (the table contract in schema.sql). Run it beside ./timelapse-events.db, e.g. from the
# repository root while `cargo run --release -- serve` runs; the hub streams the event
# within a few milliseconds. In the wrong directory it fails ("unable to open database
# file") rather than leave an empty database behind. The same snippet is in README.md, and a test keeps the two
# identical and runs it.
import json, sqlite3
with sqlite3.connect("file:timelapse-events.db?mode=rw", uri=True, timeout=5) as db:  # mode=rw: never creates a file; commits when the block ends
    db.execute("INSERT INTO sse_events (event_type, event_data) VALUES (?, ?)", ("image_captured", json.dumps({"camera_id": 1, "image_count": 42})))
