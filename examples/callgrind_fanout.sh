#!/usr/bin/env bash
# Instructions the hub spends per delivered event, counted by callgrind (stable where timings
# are not): CLIENTS streams (default 20) each read EVENTS events (default 200) that a
# separate process INSERTs into the database (the hub's native producer path) at RATE per
# second (default 20: slow enough under valgrind that every event is its own batch, so the
# count does not depend on how the machine's timing groups them). Prints the whole process's
# count, the stream threads' and the poller's, each per delivered event, and the top symbols
# by exclusive count. Needs valgrind, curl and python3. KEEP=<file> keeps callgrind's output
# there, for callgrind_annotate.
#
#   cargo build --release && examples/callgrind_fanout.sh target/release/timelapse-events
set -euo pipefail
bin=${1:?usage: $0 path/to/timelapse-events [port]}
url=http://127.0.0.1:${2:-18301}
clients=${CLIENTS:-20} events=${EVENTS:-200} rate=${RATE:-20}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$bin" serve --db "$dir/e.db" \
    --bind "${url#http://}" --max-clients $((clients + 8)) --max-streams-per-addr $((clients + 8)) \
    2>"$dir/log" &
pid=$!
for _ in $(seq 200); do curl -sf -o /dev/null "$url/favicon.ico" && break; sleep 0.5; done
for i in $(seq "$clients"); do
    (timeout 600 curl -sN "$url/api/events" | grep -m"$events" -c '^data:' >"$dir/got$i") &
done
sleep 5
python3 - "$dir/e.db" "$events" "$rate" <<'PY'
import json, sqlite3, sys, time
db, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=5, isolation_level=None)
start = time.monotonic()
for i in range(n):
    time.sleep(max(0.0, start + i / rate - time.monotonic()))
    conn.execute("INSERT INTO sse_events (event_type, event_data) VALUES ('bench', ?)",
                 (json.dumps({"n": i, "t": time.time_ns()}),))
PY
for job in $(jobs -p | grep -v "^$pid$"); do wait "$job" 2>/dev/null || true; done
got=$(cat "$dir"/got* | paste -sd+ | bc)
want=$((clients * events))
[ "$got" = "$want" ] || { echo "the streams got $got of $want events" >&2; exit 1; }
kill -TERM "$pid"; wait "$pid" || true
[ -z "${KEEP:-}" ] || cp "$dir/out" "$KEEP"
per() { awk -v d="$want" '{gsub(",","",$1); printf "%s: %d instructions, %.0f per delivered event\n", label, $1, $1 / d}' label="$1"; }
callgrind_annotate "$dir/out" 2>/dev/null | grep "PROGRAM TOTALS" | per process
callgrind_annotate --inclusive=yes "$dir/out" 2>/dev/null >"$dir/incl"
grep -m1 -E " timelapse_events::http::stream::follow" "$dir/incl" | per "stream threads (follow)" || true
grep -m1 -E " timelapse_events::poller::[A-Za-z_:]*run" "$dir/incl" | per "poller (run)" || true
echo "top symbols, exclusive:"
callgrind_annotate "$dir/out" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '3,17p'
