#!/usr/bin/env bash
# Instructions the hub spends on a fixed HTTP workload, counted by callgrind (stable where
# timings are not). Workload: one stream client that reads 200 events, 500 GET /health and
# 200 POST /api/events, each on a connection of its own.
#
#   cargo build --release && examples/callgrind_http.sh target/release/timelapse-events
#
# Prints the whole process's instructions and those of the HTTP worker threads' entry
# function. Needs valgrind, curl and python3.
set -euo pipefail
bin=${1:?usage: $0 path/to/timelapse-events [port]}
port=${2:-18300}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$bin" serve --db "$dir/e.db" \
    --bind "127.0.0.1:$port" 2>"$dir/log" &
pid=$!
for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port/favicon.ico" && break; sleep 0.5; done
python3 - "$port" <<'PY'
import http.client, json, socket, sys, threading, time
port = int(sys.argv[1])
def call(method, path, body=None, headers={}):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse(); r.read(); c.close()
    return r.status
got = []
def stream():
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while buf.count(b"data: ") < 200:
        d = s.recv(65536)
        if not d: break
        buf += d
    got.append(buf.count(b"data: "))
t = threading.Thread(target=stream); t.start(); time.sleep(3)
for _ in range(500):
    assert call("GET", "/health") == 200
for i in range(200):
    body = json.dumps({"type": "image_captured", "data": {"camera_id": 1, "image_number": i}})
    assert call("POST", "/api/events", body, {"Content-Type": "application/json"}) == 201
t.join()
assert got == [200], got
PY
kill -TERM "$pid"; wait "$pid" || true
callgrind_annotate "$dir/out" 2>/dev/null | grep "PROGRAM TOTALS" | sed 's/^/process: /'
callgrind_annotate --inclusive=yes "$dir/out" 2>/dev/null | grep -m1 -E "timelapse_events::http::(server::)?worker " | sed 's/^/workers: /'
