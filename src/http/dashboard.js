// The dashboard page's view (GET /dashboard.js): cards, log and the core's messages. A
// file of its own so that the page's Content-Security-Policy can say script-src 'self'.
'use strict';
(() => {
  const LOG_ROWS = 200;
  const $ = (id) => document.getElementById(id);
  const cardsEl = $('cards'), logEl = $('log'), connEl = $('conn'), filterEl = $('type-filter');
  const pauseEl = $('pause'), heldEl = $('held'), hostsEl = $('hosts');
  const hostFilterEl = $('host-filter'), hostFilterLabel = $('host-filter-label');
  const cameraKey = (host, id) => (host === null ? String(id) : host + '/' + id);
  const hostOf = (v) => (v && typeof v.host === 'string' && v.host ? v.host : null);

  // View state. The core (shared worker or leader tab) sends sync / delta / conn messages.
  const cams = new Map(); // cameraKey(host, camera_id) -> { data, el, fields, host, id }
  let rows = []; // log rows, oldest first, at most LOG_ROWS
  let viewSeq = -1; // highest event seq shown: never show one twice
  let conn = { state: 'connecting', attempt: 0, nextRetryAt: null, since: Date.now(), detail: '' };
  let skewMs = 0;
  let paused = false, held = 0, filter = '';
  // The value of the host filter: '' all hosts, OWN this hub's rows (no `host`), or a name.
  const OWN = '@self'; // '@' is never in a host name
  let hostFilter = '';
  const types = new Set();
  // Hosts, from GET /api/hosts: this hub's own name, the fleet ingest (null without one),
  // and every other host heard (name -> { online, last_heard_at }).
  const hostInfo = { self: null, fleet: null, others: new Map() };
  const rowHosts = new Set(); // other hosts seen in the log
  let ownRows = false; // this hub's own events seen in the log
  const sections = new Map(); // host section key (OWN or a name) -> { el, cardsEl, fields }
  let hostsDirty = false;
  const dirtyCams = new Set();
  let newRows = [];
  let rebuildLog = false, connDirty = true, frameQueued = false, cardsMoved = true;

  function tone(value) {
    const v = String(value || '').toLowerCase();
    if (/^(online|healthy|ok|running|capturing|active|good)$/.test(v)) return 'good';
    if (/^(degraded|warning|warn|paused|starting|idle|unknown_warn|low_disk)$/.test(v)) return 'warn';
    if (/^(offline|unhealthy|error|failed|critical|stopped|down)$/.test(v)) return 'bad';
    return 'none';
  }

  function ago(ms) {
    if (!Number.isFinite(ms)) return '—';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min ago';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h ago';
  }

  function clock(t) {
    const d = new Date(t);
    return Number.isFinite(d.getTime()) ? d.toLocaleTimeString([], { hour12: false }) : '';
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function makeCard(host, id) {
    const card = el('article', 'card');
    card.dataset.cameraId = id;
    if (host !== null) card.dataset.host = host;
    card.dataset.key = cameraKey(host, id);
    const head = el('header');
    head.append(el('h3', '', 'Camera ' + id));
    const badge = el('span', 'badge', 'Stale');
    badge.dataset.field = 'stale';
    badge.hidden = true;
    head.append(badge);
    const dl = el('dl');
    const fields = { stale: badge };
    for (const [key, label] of [['status', 'Status'], ['health', 'Health'], ['ago', 'Last capture'],
      ['image_count', 'Images'], ['day_number', 'Day'], ['timelapse', 'Timelapse']]) {
      const dd = el('dd');
      dd.dataset.field = key;
      dl.append(el('dt', '', label), dd);
      fields[key] = dd;
    }
    card.append(head, dl);
    return { el: card, fields, data: null, host, id };
  }

  function put(node, text, cls) {
    if (node.textContent !== text) node.textContent = text;
    if (cls !== undefined && node.className !== cls) node.className = cls;
  }

  function renderCard(c) {
    const d = c.data, f = c.fields;
    put(f.status, d.status || 'unknown', 'pill tone-' + tone(d.status));
    put(f.health, d.health_status || 'unknown', 'pill tone-' + tone(d.health_status));
    put(f.image_count, d.image_count == null ? '—' : String(d.image_count));
    put(f.day_number, d.day_number == null ? '—' : String(d.day_number));
    put(f.timelapse, d.timelapse_id == null ? 'none'
      : '#' + d.timelapse_id + (d.timelapse_status ? ' · ' + d.timelapse_status : ''));
    f.status.title = 'status: ' + (d.status || 'unknown');
    f.health.title = 'health: ' + (d.health_status || 'unknown');
    f.ago.title = d.last_capture_at || 'no capture yet';
    renderAgo(c, Date.now());
    f.stale.hidden = !d.stale;
    put(f.stale, d.silent_secs ? 'Stale · silent ' + ago(d.silent_secs * 1000).replace(/ \d+ s ago| ago/, '') : 'Stale');
    c.el.classList.toggle('stale', !!d.stale);
  }

  function renderAgo(c, now) {
    const t = Date.parse(c.data.last_capture_at || '');
    put(c.fields.ago, Number.isFinite(t) ? ago(now + skewMs - t) : 'never');
  }

  // More than one host: another host heard, a fleet ingest, or a camera or event of another
  // host. A single host's page has no host sections and no host filter.
  function grouped() {
    if (hostInfo.fleet || hostInfo.others.size || rowHosts.size) return true;
    for (const c of cams.values()) if (c.host !== null) return true;
    return false;
  }

  const ownName = () => hostInfo.self || 'this hub';

  // Cards into `box` sorted by camera id; a node is only moved when it is out of place.
  function fill(box, list) {
    list.sort((a, b) => a.id - b.id).forEach((c, i) => {
      if (box.children[i] !== c.el) box.insertBefore(c.el, box.children[i] || null);
    });
  }

  function makeSection(key) {
    const sec = el('section', 'host');
    const head = el('header', 'host-head');
    const name = el('h3', 'host-name');
    const online = el('span', 'pill');
    online.dataset.field = 'online';
    const heard = el('span', 'heard');
    heard.dataset.field = 'heard';
    const count = el('span', 'host-count');
    head.append(name, online, heard, count);
    const box = el('div', 'cards');
    const none = el('p', 'no-cams', 'No camera has reported yet.');
    sec.append(head, box, none);
    if (key === OWN) sec.dataset.own = 'true';
    return { el: sec, cardsEl: box, none, fields: { name, online, heard, count } };
  }

  // A host section's heading: its name, online/offline (colour and text) and when last heard.
  function renderHead(key, s, now) {
    const f = s.fields;
    let online, heard;
    if (key === OWN) {
      // This hub: as available as the page's own connection to it.
      online = conn.state === 'live' ? true : conn.state === 'offline' ? false : null;
      heard = 'this hub';
    } else {
      const h = hostInfo.others.get(key) || {};
      online = typeof h.online === 'boolean' ? h.online : null;
      const t = Date.parse(h.last_heard_at || '');
      heard = 'last heard ' + (Number.isFinite(t) ? ago(now + skewMs - t) : 'never');
    }
    const name = key === OWN ? ownName() : key;
    s.el.dataset.host = name;
    s.el.dataset.online = String(online);
    put(f.name, name);
    const word = online === true ? 'online' : online === false ? 'offline' : 'unknown';
    put(f.online, word, 'pill tone-' + (online === true ? 'good' : online === false ? 'bad' : 'none'));
    f.online.title = key === OWN ? 'this hub: ' + word : 'availability: ' + word;
    put(f.heard, heard);
  }

  function renderHeads(now) {
    for (const [key, s] of sections) renderHead(key, s, now);
  }

  // One option per host seen, in name order (this hub's own first); never removed.
  function addHostOption(value, text) {
    let o = [...hostFilterEl.options].find((x) => x.value === value);
    if (!o) {
      o = el('option', '', text);
      o.value = value;
      const before = value === OWN ? hostFilterEl.options[1]
        : [...hostFilterEl.options].find((x) => x.value && x.value !== OWN && x.value > value);
      hostFilterEl.insertBefore(o, before || null);
    }
    put(o, text);
  }

  function placeHosts() {
    const on = grouped();
    hostsEl.hidden = !on;
    cardsEl.hidden = on;
    hostFilterLabel.hidden = !on;
    if (!on) {
      fill(cardsEl, [...cams.values()]);
      return;
    }
    // A section per host: this hub's own (when it has cameras) first, then the others.
    const byHost = new Map();
    const own = [];
    for (const c of cams.values()) {
      if (c.host === null) own.push(c);
      else (byHost.get(c.host) || byHost.set(c.host, []).get(c.host)).push(c);
    }
    for (const h of hostInfo.others.keys()) if (!byHost.has(h)) byHost.set(h, []);
    const keys = (own.length ? [OWN] : []).concat([...byHost.keys()].sort());
    for (const [key, s] of sections) if (!keys.includes(key)) { s.el.remove(); sections.delete(key); }
    keys.forEach((key, i) => {
      let s = sections.get(key);
      if (!s) sections.set(key, (s = makeSection(key)));
      if (hostsEl.children[i] !== s.el) hostsEl.insertBefore(s.el, hostsEl.children[i] || null);
      const list = key === OWN ? own : byHost.get(key);
      fill(s.cardsEl, list);
      s.none.hidden = list.length > 0;
      put(s.fields.count, list.length ? '(' + list.length + ')' : '');
      renderHead(key, s, Date.now());
    });
    if (own.length || ownRows) addHostOption(OWN, ownName());
    for (const h of [...byHost.keys(), ...rowHosts]) addHostOption(h, h);
  }

  function placeCards() {
    // Cards sorted by camera id (per host, with more than one); moved only when needed.
    placeHosts();
    $('cam-count').textContent = cams.size ? '(' + cams.size + ')' : '';
    // With host sections, each one says it has no camera yet itself.
    $('no-cams').hidden = cams.size > 0 || (!hostsEl.hidden && sections.size > 0);
  }

  function summary(env) {
    const data = env && env.data && typeof env.data === 'object' ? { ...env.data } : {};
    delete data.camera_id;
    const s = JSON.stringify(data);
    return s === '{}' ? '' : s.length > 160 ? s.slice(0, 157) + '…' : s;
  }

  function makeRow(r) {
    const li = el('li', r.local ? 'local' : '');
    const type = String(r.env && r.env.type);
    const host = hostOf(r.env);
    li.dataset.type = type;
    if (host !== null) li.dataset.host = host;
    if (r.seq != null) li.dataset.seq = r.seq;
    if (r.env && r.env.id != null) li.dataset.id = r.env.id;
    const t = el('time', '', clock(r.env && r.env.timestamp));
    t.dateTime = (r.env && r.env.timestamp) || '';
    const cam = r.env && r.env.data && r.env.data.camera_id != null ? 'camera ' + r.env.data.camera_id : '';
    // Another host's line says whose it is; this hub's own look as they always did.
    const who = host === null ? cam : host + (cam ? ' · ' + cam : '');
    li.append(t, el('span', 'type', type), el('span', 'cam', who));
    const s = r.local ? 'stream reset: ' + ((r.env.data && r.env.data.reason) || '') + '; state reloaded' : summary(r.env);
    if (s) li.append(el('span', 'data', s));
    return li;
  }

  function shown(r) {
    return (!filter || (r.env && r.env.type === filter)) && shownHost(r);
  }

  // A note of the page's own (a stream reset) belongs to no host: shown under every one.
  function shownHost(r) {
    if (!hostFilter || r.local) return true;
    const h = hostOf(r.env);
    return hostFilter === OWN ? h === null : h === hostFilter;
  }

  function addTypes(list) {
    for (const r of list) {
      const t = r.env && r.env.type;
      if (typeof t === 'string' && !types.has(t)) {
        types.add(t);
        const o = el('option', '', t);
        o.value = t;
        const before = [...filterEl.options].find((x) => x.value && x.value > t);
        filterEl.insertBefore(o, before || null);
      }
    }
  }

  function renderLog() {
    if (paused) {
      put(heldEl, held ? held + ' new event' + (held === 1 ? '' : 's') + ' held' : '');
      newRows = [];
      return;
    }
    put(heldEl, '');
    if (rebuildLog) {
      rebuildLog = false;
      newRows = [];
      const frag = document.createDocumentFragment();
      for (let i = rows.length - 1; i >= 0; i--) if (shown(rows[i])) frag.append(makeRow(rows[i]));
      logEl.replaceChildren(frag);
      return;
    }
    if (!newRows.length) return;
    const frag = document.createDocumentFragment();
    for (let i = newRows.length - 1; i >= 0; i--) if (shown(newRows[i])) frag.append(makeRow(newRows[i]));
    newRows = [];
    logEl.prepend(frag);
    while (logEl.children.length > LOG_ROWS) logEl.lastElementChild.remove();
  }

  function renderConn(now) {
    const c = conn;
    let text;
    if (c.state === 'live') text = 'Live';
    else if (c.state === 'connecting') text = 'Connecting…';
    else {
      const next = c.nextRetryAt ? ', next try ' + clock(c.nextRetryAt) + ' (in ' +
        Math.max(0, Math.ceil((c.nextRetryAt - now) / 1000)) + ' s)' : '';
      text = c.state === 'offline'
        ? 'Offline: ' + (c.detail || 'hub unreachable') + ' since ' + clock(c.since) + ' · attempt ' + c.attempt + next
        : 'Reconnecting: attempt ' + c.attempt + next;
    }
    connEl.dataset.state = c.state;
    connEl.dataset.attempt = c.attempt;
    put(connEl, text);
    document.title = (c.state === 'live' ? '' : '⚠ ') + 'Cameras · timelapse-events';
  }

  // DOM passes and the script time they took, for tests and the curious (window.tleStats).
  const stats = (window.tleStats = { frames: 0, ms: 0, maxMs: 0 });

  function frame() {
    const t0 = performance.now();
    frameQueued = false;
    for (const id of dirtyCams) renderCard(cams.get(id));
    dirtyCams.clear();
    if (cardsMoved || hostsDirty) placeCards();
    cardsMoved = hostsDirty = false;
    renderLog();
    if (connDirty) {
      renderConn(Date.now());
      const s = sections.get(OWN);
      if (s) renderHead(OWN, s, Date.now());
    }
    connDirty = false;
    const ms = performance.now() - t0;
    stats.frames += 1;
    stats.ms += ms;
    stats.maxMs = Math.max(stats.maxMs, ms);
  }

  // One DOM pass per animation frame, however many messages came in. A hidden tab gets
  // no frames, so a timer stands in (the tab still catches up before it is shown).
  function queueFrame() {
    if (frameQueued) return;
    frameQueued = true;
    let done = false;
    const run = () => { if (!done) { done = true; frame(); } };
    requestAnimationFrame(run);
    setTimeout(run, 500);
  }

  function upsertCamera(d) {
    const id = Number(d.camera_id);
    if (!Number.isFinite(id)) return;
    const host = hostOf(d);
    const key = cameraKey(host, id);
    let c = cams.get(key);
    if (!c) {
      c = makeCard(host, id);
      cams.set(key, c);
      cardsMoved = true;
    }
    c.data = d;
    dirtyCams.add(key);
  }

  function takeRows(list) {
    const fresh = [];
    for (const r of list) {
      if (r.seq != null) {
        if (r.seq <= viewSeq) continue;
        viewSeq = r.seq;
      }
      fresh.push(r);
    }
    if (!fresh.length) return;
    rows = rows.concat(fresh);
    if (rows.length > LOG_ROWS) rows = rows.slice(rows.length - LOG_ROWS);
    addTypes(fresh);
    for (const r of fresh) {
      if (r.local) continue;
      const h = hostOf(r.env);
      if (h === null) {
        if (!ownRows) hostsDirty = ownRows = true;
      } else if (!rowHosts.has(h)) {
        rowHosts.add(h);
        hostsDirty = true;
      }
    }
    if (paused) held += fresh.filter(shown).length;
    else newRows = newRows.concat(fresh);
  }

  function handle(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.t === 'sync') {
      const keep = new Set(msg.cameras.map((c) => cameraKey(hostOf(c), Number(c.camera_id))));
      for (const [key, c] of cams) if (!keep.has(key)) { c.el.remove(); cams.delete(key); dirtyCams.delete(key); }
      msg.cameras.forEach(upsertCamera);
      rows = [];
      viewSeq = -1;
      takeRows(msg.log || []);
      rebuildLog = true;
      held = 0;
      skewMs = msg.skewMs || 0;
      conn = msg.conn || conn;
      connDirty = true;
      cardsMoved = true;
    } else if (msg.t === 'delta') {
      msg.cameras.forEach(upsertCamera);
      takeRows(msg.events);
      if (msg.events.some((r) => hostOf(r.env) !== null)) hostsHeard();
    } else if (msg.t === 'conn') {
      conn = msg.conn;
      connDirty = true;
    }
    queueFrame();
  }

  filterEl.addEventListener('change', () => {
    filter = filterEl.value;
    rebuildLog = true;
    queueFrame();
  });
  hostFilterEl.addEventListener('change', () => {
    hostFilter = hostFilterEl.value;
    rebuildLog = true;
    queueFrame();
  });
  pauseEl.addEventListener('click', () => {
    paused = !paused;
    pauseEl.setAttribute('aria-pressed', String(paused));
    pauseEl.textContent = paused ? 'Resume' : 'Pause';
    held = 0;
    rebuildLog = !paused;
    queueFrame();
  });

  setInterval(() => {
    if (document.hidden) return;
    const now = Date.now();
    for (const c of cams.values()) renderAgo(c, now);
    renderHeads(now);
    if (conn.state !== 'live') renderConn(now);
  }, 1000);

  // Who owns the stream: ?share=worker (default), locks (leader tab), own (this tab).
  const want = new URLSearchParams(location.search).get('share') || 'worker';
  const modeEl = $('mode');
  const setMode = (m, text) => { document.documentElement.dataset.mode = m; modeEl.textContent = text; };

  function ownCore() {
    setMode('own', 'This tab has its own stream.');
    self.TLE.createCore(location.origin, handle);
  }

  // Leader election where SharedWorker is missing: a Web Lock picks the one tab that runs the
  // core; a BroadcastChannel carries its messages to the other tabs. A heartbeat election
  // would break in hidden tabs, whose timers Chrome throttles to once a minute; the lock is
  // released by the browser the moment its tab closes, and the next waiting tab takes over.
  function leaderTab() {
    const ch = new BroadcastChannel('tle-dashboard');
    let core = null;
    ch.onmessage = (e) => {
      const m = e.data || {};
      if (core) {
        if (m.k === 'hello') ch.postMessage({ k: 'msg', msg: core.sync() });
      } else if (m.k === 'msg') {
        handle(m.msg);
      }
    };
    setMode('follower', 'Following the stream of another tab.');
    ch.postMessage({ k: 'hello' });
    navigator.locks.request('tle-dashboard-leader', () => new Promise(() => {
      setMode('leader', 'This tab holds the stream for the other tabs.');
      core = self.TLE.createCore(location.origin, (msg) => {
        handle(msg);
        ch.postMessage({ k: 'msg', msg });
      });
    }));
  }

  function sharedWorker() {
    const w = new SharedWorker('/dashboard-worker.js', { name: 'tle-dashboard' });
    let heard = false;
    w.port.onmessage = (e) => { heard = true; handle(e.data); };
    w.onerror = () => { if (!heard) fallback(); };
    w.port.start();
    w.port.postMessage({ t: 'hello' });
    addEventListener('pagehide', () => w.port.postMessage({ t: 'bye' }));
    addEventListener('pageshow', (e) => { if (e.persisted) w.port.postMessage({ t: 'hello' }); });
    setMode('shared-worker', 'Tabs share one stream (shared worker).');
  }

  function fallback() {
    if (self.BroadcastChannel && navigator.locks && want !== 'own') leaderTab();
    else ownCore();
  }

  // The sink health line: GET /api/sinks every few seconds (the cookie goes with it), one
  // entry per sink: name, kind, ok or failing and since when, lag. Hidden without sinks.
  // A sink that has had nothing to deliver yet is ok (not failing), with no time.
  const SINK_POLL_MS = 3000;
  const sinksEl = $('sinks');
  function renderSinks(list) {
    sinksEl.hidden = list.length === 0;
    const parts = list.map((s) => {
      const ok = !s.failing;
      const at = ok ? s.connected_since : s.failing_since;
      const since = at ? Date.parse(at) : NaN;
      const when = Number.isFinite(since) ? ' since ' + clock(since) : '';
      const e = el('span', 'sink', s.name + ' (' + s.kind + '): ' + (ok ? 'ok' : 'failing') + when + ', lag ' + s.lag);
      e.dataset.state = ok ? 'ok' : 'failing';
      e.dataset.sink = s.name;
      if (!ok && s.last_error) e.title = s.last_error;
      return e;
    });
    sinksEl.replaceChildren(...parts);
  }
  function pollSinks() {
    fetch('/api/sinks', { credentials: 'same-origin', cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : []))
      .then((list) => renderSinks(Array.isArray(list) ? list : []))
      .catch(() => {})
      .finally(() => setTimeout(pollSinks, SINK_POLL_MS));
  }
  pollSinks();

  // The hosts: GET /api/hosts every few seconds while there is a fleet ingest (else now
  // and then, in case one appears), and soon after an event of another host arrives.
  const HOSTS_POLL_MS = 3000, HOSTS_IDLE_POLL_MS = 30000, HOSTS_HEARD_MS = 1000;
  let hostsTimer = null, hostsBusy = false, hostsAgain = false, hostsHeardTimer = null;
  function takeHosts(doc) {
    if (!doc || typeof doc !== 'object') return;
    hostInfo.self = typeof doc.host === 'string' && doc.host ? doc.host : null;
    hostInfo.fleet = doc.fleet && typeof doc.fleet === 'object' ? doc.fleet : null;
    hostInfo.others = new Map();
    for (const h of Array.isArray(doc.hosts) ? doc.hosts : []) {
      if (h && typeof h.host === 'string' && h.host) hostInfo.others.set(h.host, h);
    }
    hostsDirty = true;
    queueFrame();
  }
  function pollHosts() {
    clearTimeout(hostsTimer);
    if (hostsBusy) { hostsAgain = true; return; }
    hostsBusy = true;
    fetch('/api/hosts', { credentials: 'same-origin', cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : null))
      .then(takeHosts)
      .catch(() => {})
      .finally(() => {
        hostsBusy = false;
        const next = hostsAgain ? 0 : hostInfo.fleet ? HOSTS_POLL_MS : HOSTS_IDLE_POLL_MS;
        hostsAgain = false;
        hostsTimer = setTimeout(pollHosts, next);
      });
  }
  function hostsHeard() {
    if (hostsHeardTimer === null) {
      hostsHeardTimer = setTimeout(() => { hostsHeardTimer = null; pollHosts(); }, HOSTS_HEARD_MS);
    }
  }
  pollHosts();

  if (!self.TLE) {
    conn = { state: 'offline', attempt: 0, nextRetryAt: null, since: Date.now(), detail: 'dashboard script missing; reload' };
    queueFrame();
  } else if (want === 'worker' && self.SharedWorker) {
    try { sharedWorker(); } catch (e) { fallback(); }
  } else {
    fallback();
  }
  queueFrame();
})();
