#!/usr/bin/env bash
# Instructions the hub spends on a fixed HTTP workload, counted by callgrind (stable where
# timings are not): one stream that reads 200 events, 500 GET /health and 200 POST
# /api/events, each request on a connection of its own. Needs valgrind and curl.
#
#   cargo build --release && examples/callgrind_http.sh target/release/timelapse-events
set -euo pipefail
bin=${1:?usage: $0 path/to/timelapse-events [port]}
url=http://127.0.0.1:${2:-18300}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$bin" serve --db "$dir/e.db" \
    --bind "${url#http://}" 2>"$dir/log" &
pid=$!
for _ in $(seq 200); do curl -sf -o /dev/null "$url/favicon.ico" && break; sleep 0.5; done
(timeout 300 curl -sN "$url/api/events" | grep -m200 -c '^data:' >"$dir/got") &
sleep 3
for _ in $(seq 500); do curl -sf -o /dev/null "$url/health"; done
for i in $(seq 200); do
    curl -sf -o /dev/null -H 'Content-Type: application/json' \
        -d "{\"type\":\"image_captured\",\"data\":{\"camera_id\":1,\"image_number\":$i}}" "$url/api/events"
done
wait %2 2>/dev/null || true
[ "$(cat "$dir/got")" = 200 ] || { echo "the stream got $(cat "$dir/got") of 200 events" >&2; exit 1; }
kill -TERM "$pid"; wait "$pid" || true
callgrind_annotate "$dir/out" 2>/dev/null | grep "PROGRAM TOTALS" | sed 's/^/process: /'
callgrind_annotate --inclusive=yes "$dir/out" 2>/dev/null |
    grep -m1 -E "timelapse_events::http::(server::)?worker " | sed 's/^/workers: /'
