"""A Python SSE client for tests/it/real_clients.rs: httpx + httpx-sse, used the way its
README shows, with the reconnect loop httpx-sse leaves to its users (resume with the
`Last-Event-ID` of the last event seen, after the server's `retry:` delay).

Usage: python httpx_sse_client.py URL [--seconds S] [--max N] [--last-event-id ID]
                                      [--no-reconnect] [--retry-ms MS]

Prints one JSON object per line on stdout, flushed as it happens:
  {"kind":"open","status":N,"content_type":..,"last_event_id":..}   every connection
  {"kind":"event","event":..,"id":..,"data":..,"retry":N|null}        every ServerSentEvent
  {"kind":"error","message":..}                                       connection lost/refused
  {"kind":"done","reason":"max"|"time"|"ended"}                       before exiting 0
Every ServerSentEvent httpx-sse yields is printed, empty ones included: the tests check
that the hub sends nothing that this client turns into an empty event.
"""

import argparse
import json
import os
import sys
import threading
import time

import httpx
from httpx_sse import connect_sse


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max", type=int, default=None)
    p.add_argument("--last-event-id", default=None)
    p.add_argument("--no-reconnect", action="store_true")
    p.add_argument("--retry-ms", type=int, default=None, help="override the server's retry:")
    a = p.parse_args()

    def on_time():
        out({"kind": "done", "reason": "time"})
        os._exit(0)

    timer = threading.Timer(a.seconds, on_time)
    timer.daemon = True
    timer.start()

    last_id = a.last_event_id
    retry_ms = 2000
    count = 0
    # No read timeout of httpx's default 5 s: an idle stream only carries heartbeats.
    timeout = httpx.Timeout(5.0, read=60.0)
    with httpx.Client(timeout=timeout) as client:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(client, "GET", a.url, headers=headers) as source:
                    r = source.response
                    out({
                        "kind": "open",
                        "status": r.status_code,
                        "content_type": r.headers.get("content-type"),
                        "last_event_id": last_id,
                    })
                    for sse in source.iter_sse():
                        if sse.retry is not None:
                            retry_ms = sse.retry
                        if sse.id:
                            last_id = sse.id
                        out({"kind": "event", "event": sse.event, "id": sse.id,
                             "data": sse.data, "retry": sse.retry})
                        count += 1
                        if a.max is not None and count >= a.max:
                            out({"kind": "done", "reason": "max"})
                            return
                    out({"kind": "error", "message": "stream ended"})
            except (httpx.TransportError, httpx.HTTPStatusError) as e:
                out({"kind": "error", "message": f"{type(e).__name__}: {e}"})
            if a.no_reconnect:
                out({"kind": "done", "reason": "ended"})
                return
            delay = a.retry_ms if a.retry_ms is not None else retry_ms
            time.sleep(delay / 1000.0)


if __name__ == "__main__":
    main()
