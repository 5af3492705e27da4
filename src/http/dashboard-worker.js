// timelapse-events dashboard: the connection core (served as GET /dashboard-worker.js).
//
// One copy of this code per browser owns the event stream: it runs in a SharedWorker that
// every dashboard tab connects to, or, where SharedWorker is missing (Chrome on Android),
// in the one tab elected leader over a BroadcastChannel (see dashboard.html). Browsers
// allow about 6 HTTP/1.1 connections per host across all tabs, so one stream per tab would
// hang the seventh tab.
//
// The core loads GET /api/state, then follows GET /api/events?last_event_id=<cursor>. It
// folds events into the camera state the same way src/state.rs does (a camera is known by
// its host and id: another host's events and cameras carry `host`), drops any event whose
// cursor seq it has already seen, and tells its views (tabs) what changed:
//   {t:'sync',  cameras, log, conn, skewMs, loaded}  everything, sent to a view when it
//                                            connects (`loaded`: the state has been read once)
//   {t:'delta', cameras, removed, events}    changed cameras, the keys of forgotten ones, and
//                                            new log rows, ~60 per s max
//   {t:'conn',  conn}                        connection state changed
// A view never talks back except {t:'hello'} (send me a sync).
'use strict';

self.TLE = (() => {
  const LOG_ROWS = 200; // kept in the core, so a new tab starts with the recent log
  const BACKFILL_ROWS = 50; // events before the state's cursor fetched for the log only
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const OFFLINE_AFTER_ATTEMPTS = 5; // failed attempts in a row before "offline"
  const HUB_RETRY_MS = 2000; // the hub's `retry:` (src/sse.rs RETRY_MS): EventSource's own pace
  const FLUSH_MS = 16; // events are batched to views at most this often

  const CAMERA_TYPES = new Set([
    'image_captured',
    'camera_status_changed',
    'timelapse_status_changed',
    'camera_stale',
    'camera_recovered',
    'camera_registered',
    'camera_forgotten',
  ]);


  function parseCursor(text) {
    const m = /^([0-9a-fA-F]{8})-(\d{1,18})$/.exec(text || '');
    return m ? { stream: m[1].toLowerCase(), seq: Number(m[2]) } : null;
  }

  function int(v) {
    if (typeof v === 'number' && Number.isFinite(v)) return Math.trunc(v);
    if (typeof v === 'string' && /^-?\d+$/.test(v.trim())) return Number(v.trim());
    return null;
  }

  function text(v) {
    return typeof v === 'string' ? v : null;
  }

  function imageName(v) {
    return typeof v === 'string' && v.length >= 1 && v.length <= 1024;
  }

  function name(v) {
    return typeof v === 'string' && v.trim() ? v.trim().slice(0, 64) : null;
  }

  // A camera is a host's camera: two hosts may both have camera 1. This hub's own cameras
  // (and events) carry no host; another host's carry its name.
  function hostOf(v) {
    return v && typeof v.host === 'string' && v.host ? v.host : null;
  }

  function cameraKey(host, id) {
    return host === null ? String(id) : host + '/' + id;
  }

  // The client-side twin of State::apply in src/state.rs: returns the camera's key (no
  // longer in `cameras` when the event forgot it). `seq` is the event's place in the stream.
  function applyEvent(cameras, timelapses, env, seq) {
    const d = env && typeof env.data === 'object' && env.data ? env.data : {};
    if (!CAMERA_TYPES.has(env.type)) return null;
    const id = int(d.camera_id);
    if (id === null) return null;
    let host = hostOf(env);
    if (env.type === 'camera_forgotten') {
      // This hub's own event may forget another host's camera (data.host).
      if (host === null) host = hostOf(d);
      const gone = cameraKey(host, id);
      if (!cameras.has(gone)) return null;
      cameras.delete(gone);
      if (host === null) for (const [tid, tl] of timelapses) if (tl.camera_id === id) timelapses.delete(tid);
      return gone;
    }
    const key = cameraKey(host, id);
    let cam = cameras.get(key);
    if (!cam) {
      cam = {
        camera_id: id, name: null, status: null, status_since: null, health_status: null,
        last_capture_at: null, image_count: null, day_number: null, timelapse_id: null,
        timelapse_status: null, stale: false, stale_since: null, image_seq: null, updated_at: null,
      };
      if (host !== null) cam.host = host;
      cameras.set(key, cam);
    }
    const at = env.timestamp || null;
    const tid = int(d.timelapse_id);
    const setStatus = (v) => {
      if (v !== null && v !== cam.status) cam.status_since = at;
      if (v !== null) cam.status = v;
    };
    switch (env.type) {
      case 'image_captured':
        cam.last_capture_at = at;
        cam.image_count = int(d.image_count) ?? cam.image_count;
        cam.day_number = int(d.day_number) ?? cam.day_number;
        if (tid !== null) {
          if (cam.timelapse_id !== tid) cam.timelapse_status = null;
          cam.timelapse_id = tid;
        }
        if (cam.status === null) setStatus('online');
        // The hub keeps the name of a capture's image (`thumbnail`, else `file_name`) and
        // serves it at /api/cameras/<id>/latest; its seq makes the URL change per capture.
        if (seq != null && (imageName(d.thumbnail) || imageName(d.file_name))) cam.image_seq = seq;
        break;
      case 'camera_status_changed':
        setStatus(text(d.status));
        cam.health_status = text(d.health_status) ?? cam.health_status;
        cam.name = name(d.name) ?? cam.name ?? null;
        break;
      case 'camera_registered':
        cam.name = name(d.name) ?? cam.name ?? null;
        break;
      case 'timelapse_status_changed':
        if (tid !== null) cam.timelapse_id = tid;
        cam.timelapse_status = text(d.status) ?? cam.timelapse_status;
        break;
      case 'camera_stale':
        cam.stale = true;
        cam.stale_since = at;
        cam.silent_secs = int(d.silent_secs);
        break;
      case 'camera_recovered':
        cam.stale = false;
        cam.stale_since = null;
        break;
    }
    // A camera that goes offline, or whose timelapse stops running, is no longer expected
    // to capture: the hub clears its stale flag then (src/state.rs), and so does this twin.
    if ((env.type === 'camera_status_changed' && text(d.status) === 'offline')
      || (env.type === 'timelapse_status_changed' && text(d.status) !== null && text(d.status) !== 'running')) {
      cam.stale = false;
      cam.stale_since = null;
    }
    cam.updated_at = at;
    // Another host's timelapses are its own business: the hub keeps no record of them.
    if (host === null && tid !== null && (env.type === 'image_captured' || env.type === 'timelapse_status_changed')) {
      const tl = timelapses.get(tid) || { timelapse_id: tid, camera_id: id, status: null };
      tl.camera_id = id;
      if (env.type === 'image_captured') {
        tl.image_count = int(d.image_count) ?? tl.image_count;
        tl.day_number = int(d.day_number) ?? tl.day_number;
        if (tl.status === null) tl.status = 'running';
      } else {
        tl.status = text(d.status) ?? tl.status;
      }
      tl.updated_at = at;
      timelapses.set(tid, tl);
      if (cam.timelapse_id === tid && cam.timelapse_status === null) cam.timelapse_status = tl.status;
    }
    return key;
  }

  // `base` is the hub's origin; `emit(msg)` reaches every view.
  function createCore(base, emit) {
    const cameras = new Map();
    const timelapses = new Map();
    let log = []; // oldest first, at most LOG_ROWS
    let stream = null; // the database's stream id, from the cursors
    let appliedSeq = -1; // highest seq folded into `cameras`
    let loggedSeq = -1; // highest seq put in the log (the dedupe key)
    let cursor = null; // where a new EventSource resumes
    let es = null;
    let attempt = 0;
    let retryTimer = null;
    let skewMs = 0; // hub clock minus ours, from the Date header
    let resets = []; // recent reset times, to back off a reset loop
    let conn = { state: 'connecting', attempt: 0, nextRetryAt: null, since: Date.now(), detail: '' };
    let changed = new Set();
    let fresh = [];
    let flushTimer = null;
    let closed = false;
    let loaded = false; // the state has been read (or the hub has none)

    function setConn(state, detail, nextRetryAt) {
      const offlineDevice = self.navigator && self.navigator.onLine === false;
      if (state !== 'live' && (offlineDevice || attempt >= OFFLINE_AFTER_ATTEMPTS)) state = 'offline';
      if (offlineDevice) detail = 'this device has no network';
      const since = state === conn.state ? conn.since : Date.now();
      conn = { state, attempt, nextRetryAt: nextRetryAt || null, since, detail: detail || '' };
      emit({ t: 'conn', conn });
    }

    function backoffMs() {
      const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt - 1, 16));
      return Math.round(ceiling / 2 + Math.random() * (ceiling / 2)); // jitter: [½, 1) × ceiling
    }

    function retryLater(what, detail) {
      if (closed) return;
      clearTimeout(retryTimer);
      attempt += 1;
      const delay = backoffMs();
      setConn('reconnecting', detail, Date.now() + delay);
      retryTimer = setTimeout(what, delay);
    }

    function dropStream() {
      if (es) {
        es.onopen = es.onmessage = es.onerror = null;
        es.close();
        es = null;
      }
    }

    function sync() {
      return { t: 'sync', cameras: [...cameras.values()], log, conn, skewMs, loaded };
    }

    function scheduleFlush() {
      if (flushTimer === null) flushTimer = setTimeout(flush, FLUSH_MS);
    }

    function flush() {
      flushTimer = null;
      if (!changed.size && !fresh.length) return;
      const cams = [...changed].filter((key) => cameras.has(key)).map((key) => cameras.get(key));
      const removed = [...changed].filter((key) => !cameras.has(key));
      emit({ t: 'delta', cameras: cams, removed, events: fresh });
      changed = new Set();
      fresh = [];
    }

    function addToLog(row) {
      log.push(row);
      if (log.length > LOG_ROWS) log = log.slice(log.length - LOG_ROWS);
      fresh.push(row);
      if (fresh.length > LOG_ROWS) fresh = fresh.slice(fresh.length - LOG_ROWS);
    }

    async function loadState(backfill) {
      dropStream();
      clearTimeout(retryTimer);
      let res;
      try {
        res = await fetch(base + '/api/state', { cache: 'no-store', headers: { Accept: 'application/json' } });
      } catch (e) {
        return retryLater(() => loadState(backfill), 'cannot reach the hub');
      }
      if (closed) return;
      const date = Date.parse(res.headers.get('Date') || '');
      if (Number.isFinite(date)) skewMs = Math.abs(date - Date.now()) > 2000 ? date - Date.now() : 0;
      if (res.status === 404) {
        // A hub without the state API: cameras are built from the events alone.
        loaded = true;
        flush();
        emit(sync());
        return subscribe(cursor, false);
      }
      let state;
      try {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        state = await res.json();
      } catch (e) {
        return retryLater(() => loadState(backfill), 'state: ' + e.message);
      }
      const c = parseCursor(state.cursor);
      if (!c || !Array.isArray(state.cameras)) {
        return retryLater(() => loadState(backfill), 'state: unexpected answer');
      }
      if (stream !== null && stream !== c.stream) {
        // Another database: its seqs start again, so the old rows cannot be compared.
        loggedSeq = -1;
        log = log.filter((r) => r.seq === null);
      }
      stream = c.stream;
      cameras.clear();
      timelapses.clear();
      for (const cam of state.cameras) {
        const id = int(cam && cam.camera_id);
        if (id !== null) cameras.set(cameraKey(hostOf(cam), id), { ...cam, camera_id: id });
      }
      for (const tl of state.timelapses || []) {
        const id = int(tl && tl.timelapse_id);
        if (id !== null) timelapses.set(id, tl);
      }
      appliedSeq = c.seq;
      cursor = state.cursor;
      loaded = true;
      changed = new Set();
      flush();
      emit(sync());
      let from = cursor;
      if (backfill && loggedSeq < 0 && c.seq > 0) {
        // Fill the log with the events just before the state; they are not applied again.
        from = stream + '-' + Math.max(0, c.seq - BACKFILL_ROWS);
      }
      subscribe(from, true, from !== cursor);
    }

    // `backfilling`: `from` reaches back before the state, for the log only.
    function subscribe(from, stateLoaded, backfilling) {
      dropStream();
      if (closed) return;
      const url = base + '/api/events' + (from ? '?last_event_id=' + encodeURIComponent(from) : '');
      const source = new EventSource(url);
      es = source;
      source.onopen = () => {
        attempt = 0;
        setConn('live');
      };
      source.onmessage = (m) => onEvent(m);
      source.addEventListener('reset', (m) => onReset(m, stateLoaded, backfilling));
      source.onerror = () => {
        if (source !== es) return;
        if (source.readyState === EventSource.CLOSED) {
          // A non-200 (a proxy's 502, the hub's 503) ends EventSource for good: our turn.
          dropStream();
          retryLater(() => subscribe(cursor, stateLoaded), 'the hub refused the stream');
        } else {
          // EventSource retries by itself, sending Last-Event-ID.
          attempt += 1;
          const why = attempt === 1 ? 'stream interrupted' : 'hub unreachable';
          setConn('reconnecting', why, Date.now() + HUB_RETRY_MS);
        }
      };
    }

    function onEvent(m) {
      let env;
      try {
        env = JSON.parse(m.data);
      } catch (e) {
        return; // not ours; nothing to show
      }
      const c = parseCursor(m.lastEventId);
      if (c) {
        if (stream !== null && c.stream !== stream) return loadState(false);
        stream = c.stream;
        if (c.seq <= loggedSeq) return; // seen already: resumed twice, or a second leader
        loggedSeq = c.seq;
        cursor = m.lastEventId;
      }
      if (!c || c.seq > appliedSeq) {
        const key = applyEvent(cameras, timelapses, env, c ? c.seq : null);
        if (key !== null) changed.add(key);
        if (c) appliedSeq = c.seq;
      }
      addToLog({ seq: c ? c.seq : null, cursor: m.lastEventId, env });
      if (conn.state !== 'live') {
        attempt = 0;
        setConn('live');
      }
      scheduleFlush();
    }

    function onReset(m, stateLoaded, backfilling) {
      if (backfilling && loggedSeq < 0) {
        // The back-fill reached past what retention kept: just start at the state.
        dropStream();
        return subscribe(cursor, true, false);
      }
      let info = {};
      try {
        info = JSON.parse(m.data);
      } catch (e) {
        /* the reload below is what matters */
      }
      flush();
      addToLog({ seq: null, cursor: null, local: true, env: { type: 'reset', data: info, timestamp: new Date().toISOString() } });
      const now = Date.now();
      resets = resets.filter((t) => now - t < 10000).concat(now);
      dropStream();
      if (!stateLoaded && parseCursor(info.cursor)) cursor = info.cursor;
      const reload = () => loadState(false);
      if (resets.length > 3) retryLater(reload, 'the hub keeps resetting the stream');
      else reload();
    }

    function onNetwork() {
      if (conn.state !== 'live') setConn(conn.state, conn.detail, conn.nextRetryAt);
    }
    self.addEventListener('online', onNetwork);
    self.addEventListener('offline', onNetwork);

    loadState(true);
    return {
      sync,
      close() {
        closed = true;
        clearTimeout(retryTimer);
        clearTimeout(flushTimer);
        dropStream();
        self.removeEventListener('online', onNetwork);
        self.removeEventListener('offline', onNetwork);
      },
    };
  }

  return { createCore, applyEvent, parseCursor, cameraKey, hostOf, LOG_ROWS };
})();

// As a SharedWorker: one core for every tab of this origin.
if (typeof SharedWorkerGlobalScope !== 'undefined' && self instanceof SharedWorkerGlobalScope) {
  const ports = new Set();
  const core = self.TLE.createCore(self.location.origin, (msg) => {
    for (const p of ports) p.postMessage(msg);
  });
  self.onconnect = (e) => {
    const port = e.ports[0];
    ports.add(port);
    port.onmessage = (m) => {
      if (m.data && m.data.t === 'hello') port.postMessage(core.sync());
      if (m.data && m.data.t === 'bye') ports.delete(port);
    };
    port.start();
  };
}
