// The dashboard page's view (GET /dashboard.js): cards, log and the core's messages. A
// file of its own so that the page's Content-Security-Policy can say script-src 'self'.
'use strict';
(() => {
  const LOG_ROWS = 200;
  const $ = (id) => document.getElementById(id);
  const cardsEl = $('cards'), logEl = $('log'), connEl = $('conn'), filterEl = $('type-filter');
  const pauseEl = $('pause'), heldEl = $('held'), hostsEl = $('hosts');
  const hostFilterEl = $('host-filter'), hostFilterLabel = $('host-filter-label');
  const camFilterEl = $('camera-filter'), noCamsEl = $('no-cams');
  // The hub serves each camera's latest frame (`serve --images-dir`): the page says so.
  const imagesOn = document.body.dataset.images === 'on';
  const cameraKey = (host, id) => (host === null ? String(id) : host + '/' + id);
  const hostOf = (v) => (v && typeof v.host === 'string' && v.host ? v.host : null);

  // View state. The core (shared worker or leader tab) sends sync / delta / conn messages.
  const cams = new Map(); // cameraKey(host, camera_id) -> { data, el, fields, host, id }
  let rows = []; // log rows, oldest first, at most LOG_ROWS
  let viewSeq = -1; // highest event seq shown: never show one twice
  let conn = { state: 'connecting', attempt: 0, nextRetryAt: null, since: Date.now(), detail: '' };
  let skewMs = 0;
  let paused = false, held = 0, filter = '', camFilter = '';
  let loaded = false; // the core has read the state once: until then the page says loading
  let lostAt = null; // when the page lost the hub (cards then say their data is as of it)
  // Captures per hour (24) and per day (30) by camera key, from GET /api/history.
  const history = new Map();
  let historyOn = true; // false once the hub has answered that it has no history
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

  const fmt = (n) => (Number.isFinite(Number(n)) ? Number(n).toLocaleString('en-US') : String(n));

  // "12 min", "3 h 4 min", "2 d 5 h": a duration for sentences.
  function span(ms) {
    return ago(ms).replace(/ ago$/, '').replace(/^(\d+ min) \d+ s$/, '$1');
  }

  // A moment: the time today, with the date before today.
  function when(t) {
    const d = new Date(t);
    if (!Number.isFinite(d.getTime())) return '';
    const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
    return d.toDateString() === new Date().toDateString() ? hm
      : d.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + hm;
  }

  const camLabel = (d, id) => (d && typeof d.name === 'string' && d.name ? d.name : 'Camera ' + id);
  // Each camera's last known name, kept after it is forgotten (its log lines keep it).
  const names = new Map();

  function makeCard(host, id) {
    const key = cameraKey(host, id);
    const card = el('article', 'card');
    card.dataset.cameraId = id;
    if (host !== null) card.dataset.host = host;
    card.dataset.key = key;
    const hid = 'cam-' + key.replace(/[^A-Za-z0-9_-]/g, '_');
    card.setAttribute('aria-labelledby', hid);
    const fields = {};
    if (imagesOn && host === null) {
      // The latest frame; a placeholder until there is one (or while it cannot be loaded).
      const box = el('div', 'frame');
      const none = el('span', 'no-frame', 'No picture yet');
      const img = el('img');
      img.hidden = true;
      img.width = 320;
      img.height = 180;
      img.decoding = 'async';
      img.addEventListener('load', () => { img.hidden = false; none.hidden = true; });
      img.addEventListener('error', () => { img.hidden = true; none.hidden = false; none.textContent = 'Picture unavailable'; });
      box.append(img, none);
      card.append(box);
      fields.img = img;
    }
    const head = el('header');
    const title = el('h3', '', 'Camera ' + id);
    title.id = hid;
    const sub = el('span', 'sub');
    sub.dataset.field = 'sub';
    const badge = el('span', 'badge', 'Stale');
    badge.dataset.field = 'stale';
    badge.hidden = true;
    head.append(title, sub, badge);
    const line = el('p', 'state');
    line.dataset.field = 'state';
    const asof = el('p', 'asof');
    asof.dataset.field = 'asof';
    asof.hidden = true;
    const dl = el('dl');
    Object.assign(fields, { title, sub, stale: badge, state: line, asof });
    for (const [k, label, extra] of [['status', 'Status', true], ['health', 'Health', true], ['ago', 'Last capture'],
      ['image_count', 'Images'], ['day_number', 'Day', true], ['timelapse', 'Timelapse', true]]) {
      const row = el('div', extra ? 'extra' : '');
      const dd = el('dd');
      dd.dataset.field = k;
      row.append(el('dt', '', label), dd);
      dl.append(row);
      fields[k] = dd;
    }
    const spark = el('div', 'spark');
    spark.dataset.field = 'history';
    spark.hidden = true;
    const actions = el('div', 'actions');
    const forget = el('button', 'forget', 'Forget…');
    forget.type = 'button';
    const ask = el('span', 'ask');
    ask.hidden = true;
    const yes = el('button', 'danger', 'Forget');
    yes.type = 'button';
    const no = el('button', '', 'Cancel');
    no.type = 'button';
    const said = el('span', 'said');
    said.setAttribute('role', 'status');
    ask.append(el('span', '', 'It comes back if it reports again. '), yes, no);
    actions.append(forget, ask, said);
    forget.addEventListener('click', () => { forget.hidden = true; ask.hidden = false; yes.focus(); });
    no.addEventListener('click', () => { ask.hidden = true; forget.hidden = false; forget.focus(); });
    yes.addEventListener('click', () => forgetCamera(host, id, { forget, ask, said, yes }));
    Object.assign(fields, { spark, forget, yes, no });
    card.append(head, line, asof, dl, spark, actions);
    return { el: card, fields, data: null, host, id, imageSeq: null };
  }

  // DELETE /api/cameras/<id>: the hub answers once its camera_forgotten event is stored;
  // the card goes when that event reaches the page (in every tab alike).
  function forgetCamera(host, id, ui) {
    ui.yes.disabled = true;
    const q = host === null ? '' : '?host=' + encodeURIComponent(host);
    fetch('/api/cameras/' + id + q, { method: 'DELETE', credentials: 'same-origin' })
      .then(async (r) => {
        if (r.ok) return put(ui.said, 'Forgotten.');
        let why = 'HTTP ' + r.status;
        try { why = (await r.json()).error || why; } catch (e) { /* keep the status */ }
        put(ui.said, 'Not forgotten: ' + why);
        ui.ask.hidden = true;
        ui.forget.hidden = false;
      })
      .catch(() => put(ui.said, 'Not forgotten: the hub cannot be reached'))
      .finally(() => { ui.yes.disabled = false; });
  }

  function put(node, text, cls) {
    if (node.textContent !== text) node.textContent = text;
    if (cls !== undefined && node.className !== cls) node.className = cls;
  }

  // Stale, offline or fine: the card's one-line verdict, in words and colour.
  function verdict(d, now) {
    const at = (t) => Date.parse(t || '');
    if (d.stale) {
      const since = at(d.stale_since), last = at(d.last_capture_at);
      const text = Number.isFinite(since) ? 'Stale for ' + span(now + skewMs - since) : 'Stale';
      return { state: 'stale', text: text + (Number.isFinite(last) ? ' · last capture ' + when(last) : ''), tone: 'warn' };
    }
    if (d.status === 'offline') {
      const since = at(d.status_since);
      return {
        state: 'offline',
        text: Number.isFinite(since) ? 'Offline since ' + when(since) + ' (' + span(now + skewMs - since) + ')' : 'Offline',
        tone: 'bad',
      };
    }
    const parts = [d.status || 'unknown'];
    if (d.health_status) parts.push(d.health_status);
    if (d.timelapse_status && d.timelapse_status !== 'running') parts.push('timelapse ' + d.timelapse_status);
    const text = parts.join(' · ');
    const t = [d.status, d.health_status].map(tone);
    return { state: 'ok', text: text.charAt(0).toUpperCase() + text.slice(1), tone: t.includes('bad') ? 'bad' : t.includes('warn') ? 'warn' : t[0] };
  }

  function renderCard(c) {
    const d = c.data, f = c.fields;
    put(f.title, camLabel(d, c.id));
    put(f.sub, d.name ? 'camera ' + c.id : '');
    put(f.status, d.status || 'unknown', 'pill tone-' + tone(d.status));
    put(f.health, d.health_status || 'unknown', 'pill tone-' + tone(d.health_status));
    put(f.image_count, d.image_count == null ? '—' : fmt(d.image_count));
    put(f.day_number, d.day_number == null ? '—' : String(d.day_number));
    put(f.timelapse, d.timelapse_id == null ? 'none'
      : '#' + d.timelapse_id + (d.timelapse_status ? ' · ' + d.timelapse_status : ''));
    f.status.title = 'status: ' + (d.status || 'unknown');
    f.health.title = 'health: ' + (d.health_status || 'unknown');
    f.ago.title = d.last_capture_at || 'no capture yet';
    f.stale.hidden = !d.stale;
    put(f.stale, d.silent_secs ? 'Stale · silent ' + ago(d.silent_secs * 1000).replace(/ \d+ s ago| ago/, '') : 'Stale');
    c.el.classList.toggle('stale', !!d.stale);
    if (f.img && d.image_seq != null && d.image_seq !== c.imageSeq) {
      c.imageSeq = d.image_seq;
      f.img.alt = 'Latest frame of ' + camLabel(d, c.id);
      f.img.dataset.seq = d.image_seq;
      f.img.src = '/api/cameras/' + c.id + '/latest?seq=' + d.image_seq;
    }
    f.forget.setAttribute('aria-label', 'Forget ' + camLabel(d, c.id));
    renderAgo(c, Date.now());
    renderSpark(c);
  }

  // The parts of a card that move with the clock: last capture, since/for, as-of.
  function renderAgo(c, now) {
    const d = c.data, f = c.fields;
    const t = Date.parse(d.last_capture_at || '');
    put(f.ago, Number.isFinite(t) ? ago(now + skewMs - t) : 'never');
    const v = verdict(d, now);
    const lost = lostAt !== null;
    c.el.dataset.state = v.state;
    c.el.classList.toggle('lost', lost);
    put(f.state, v.text, 'state tone-' + (lost ? 'none' : v.tone));
    f.asof.hidden = !lost;
    if (lost) put(f.asof, 'As of ' + clock(lostAt) + ': the page has lost the hub');
  }

  // Captures per hour over the last 24 hours as bars (inline SVG); an hour without a
  // capture after the camera's first one is a red gap.
  const SVG = 'http://www.w3.org/2000/svg';
  function bars(counts, w, h) {
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + counts.length * w + ' ' + h);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('aria-hidden', 'true');
    const max = Math.max(1, ...counts);
    const first = counts.findIndex((n) => n > 0);
    counts.forEach((n, i) => {
      const r = document.createElementNS(SVG, 'rect');
      const gap = n === 0 && first >= 0 && i > first && i < counts.length - 1;
      const bh = n > 0 ? Math.max(2, Math.round((n / max) * (h - 2))) : gap ? h : 1;
      r.setAttribute('x', String(i * w + 0.5));
      r.setAttribute('y', String(h - bh));
      r.setAttribute('width', String(w - 1));
      r.setAttribute('height', String(bh));
      r.setAttribute('class', n > 0 ? 'bar' : gap ? 'gap' : 'none');
      svg.append(r);
    });
    return svg;
  }

  function gapsOf(counts) {
    const first = counts.findIndex((n) => n > 0);
    if (first < 0) return 0;
    return counts.slice(first + 1, counts.length - 1).filter((n) => n === 0).length;
  }

  function renderSpark(c) {
    const h = history.get(cameraKey(c.host, c.id));
    const box = c.fields.spark;
    box.hidden = !h;
    if (!h) return;
    const sig = h.hourly.join() + '/' + h.daily.join();
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    box.dataset.hourly = h.hourly.join(',');
    box.dataset.daily = h.daily.join(',');
    const day = h.hourly.reduce((a, b) => a + b, 0);
    const gaps = gapsOf(h.hourly);
    box.dataset.gaps = String(gaps);
    box.setAttribute('role', 'img');
    const said = fmt(day) + ' captures in the last 24 hours' +
      (gaps ? ', ' + gaps + (gaps === 1 ? ' hour' : ' hours') + ' without one' : ', none missed') +
      '; ' + fmt(h.daily.reduce((a, b) => a + b, 0)) + ' in 30 days';
    box.setAttribute('aria-label', said);
    box.title = said;
    const cap = el('p', 'spark-cap', '24 h: ' + fmt(day) + (gaps ? ' · ' + gaps + ' h gap' : ''));
    if (gaps) cap.classList.add('has-gap');
    const cap30 = el('p', 'spark-cap days', '30 d: ' + fmt(h.daily.reduce((a, b) => a + b, 0)));
    const d30 = bars(h.daily, 8, 16);
    d30.classList.add('days');
    box.replaceChildren(bars(h.hourly, 10, 28), cap, d30, cap30);
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
    noCamsEl.hidden = cams.size > 0 || (!hostsEl.hidden && sections.size > 0);
    put(noCamsEl, loaded ? 'No camera has reported yet.' : 'Loading cameras…');
    noCamsEl.dataset.loading = String(!loaded);
    for (const c of cams.values()) {
      const name = camLabel(c.data, c.id);
      addCameraOption(cameraKey(c.host, c.id), c.host === null ? name : c.host + ' · ' + name);
    }
  }

  function summary(env) {
    const data = env && env.data && typeof env.data === 'object' ? { ...env.data } : {};
    delete data.camera_id;
    const s = JSON.stringify(data);
    return s === '{}' ? '' : s.length > 160 ? s.slice(0, 157) + '…' : s;
  }

  // The camera an event is about, as the key its card has ('' for none).
  function rowCamera(env) {
    const d = env && env.data && typeof env.data === 'object' ? env.data : {};
    const id = Number(d.camera_id);
    if (d.camera_id == null || !Number.isInteger(id)) return '';
    let host = hostOf(env);
    if (host === null && env.type === 'camera_forgotten') host = hostOf(d);
    return cameraKey(host, id);
  }

  function secs(v) {
    const n = Number(v);
    return Number.isFinite(n) ? span(n * 1000) : null;
  }

  // What an event says, in words, after the camera's name.
  function words(env) {
    const d = env && env.data && typeof env.data === 'object' ? env.data : {};
    const s = (v) => (typeof v === 'string' ? v : v == null ? '' : String(v));
    switch (env && env.type) {
      case 'image_captured': {
        const parts = [d.image_count != null ? 'captured image ' + fmt(d.image_count) : 'captured an image'];
        if (d.day_number != null) parts.push('day ' + fmt(d.day_number));
        return parts.join(', ');
      }
      case 'camera_status_changed':
        return 'is ' + (s(d.status) || 'unknown') + (d.health_status ? ', ' + s(d.health_status) : '')
          + (d.name ? ' (named ' + s(d.name) + ')' : '');
      case 'timelapse_status_changed':
        return (d.timelapse_id != null ? 'timelapse #' + s(d.timelapse_id) : 'its timelapse') + ' is ' + (s(d.status) || 'unknown');
      case 'camera_stale': {
        const silent = secs(d.silent_secs), usual = secs(d.expected_interval_secs);
        return 'is stale' + (silent ? ': silent for ' + silent : '') + (usual ? ', usually every ' + usual : '');
      }
      case 'camera_recovered': {
        const silent = secs(d.silent_secs);
        return 'recovered' + (silent ? ' after ' + silent + ' of silence' : '');
      }
      case 'camera_registered':
        return d.name ? 'is named ' + s(d.name) : 'registered';
      case 'camera_forgotten':
        return 'was forgotten';
      default:
        return String(env && env.type).replace(/_/g, ' ');
    }
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
    if (r.local) {
      li.append(t, el('span', 'type', type),
        el('span', 'data', 'stream reset: ' + ((r.env.data && r.env.data.reason) || '') + '; state reloaded'));
      return li;
    }
    const key = rowCamera(r.env);
    if (key) li.dataset.camera = key;
    const c = key ? cams.get(key) : null;
    const id = r.env.data.camera_id;
    // A registration names the camera by its number: "Camera 1 is named Garden".
    const named = r.env.type === 'camera_registered' ? null : c ? c.data : { name: names.get(key) };
    const name = key ? camLabel(named, id) : '';
    // Another host's line says whose it is; this hub's own look as they always did.
    const who = host === null ? name : host + (name ? ' · ' + name : '');
    const line = el('span', 'line');
    line.append(el('span', 'cam', who), document.createTextNode(who ? ' ' : ''), el('span', 'say', words(r.env)));
    li.append(t, line, el('span', 'type', type));
    // The event itself, behind a disclosure.
    const json = el('details', 'json');
    json.append(el('summary', '', 'JSON'), el('pre', 'data', JSON.stringify(r.env.data ?? {}, null, 1)));
    li.append(json);
    return li;
  }

  function shown(r) {
    return (!filter || (r.env && r.env.type === filter)) && shownHost(r)
      && (!camFilter || r.local || rowCamera(r.env) === camFilter);
  }

  // A note of the page's own (a stream reset) belongs to no host: shown under every one.
  function shownHost(r) {
    if (!hostFilter || r.local) return true;
    const h = hostOf(r.env);
    return hostFilter === OWN ? h === null : h === hostFilter;
  }

  // One option per camera seen (by its name), in the order of their cards.
  function addCameraOption(key, text) {
    let o = [...camFilterEl.options].find((x) => x.value === key);
    if (!o) {
      o = el('option', '', text);
      o.value = key;
      const before = [...camFilterEl.options].find((x) => x.value && x.value.localeCompare(key, 'en', { numeric: true }) > 0);
      camFilterEl.insertBefore(o, before || null);
    }
    put(o, text);
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
    for (const id of dirtyCams) if (cams.has(id)) renderCard(cams.get(id));
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
    if (typeof d.name === 'string' && d.name) names.set(key, d.name);
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

  // While the stream is down the hub is not asked anything else either (each refused
  // request is a console error, and the answer would be stale the moment it came).
  const hubDown = () => conn.state === 'reconnecting' || conn.state === 'offline';

  // The moment the page lost the hub: the cards' data is as of then.
  function noteConn() {
    const was = lostAt;
    if (conn.state === 'live' && was !== null) loadHistory();
    if (conn.state === 'live') lostAt = null;
    else if (lostAt === null && loaded && conn.state !== 'connecting') lostAt = conn.since || Date.now();
    if (was !== lostAt) for (const key of cams.keys()) dirtyCams.add(key);
  }

  function handle(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.t === 'sync') {
      loaded = !!msg.loaded;
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
      noteConn();
      connDirty = true;
      cardsMoved = true;
      loadHistory();
    } else if (msg.t === 'delta') {
      for (const key of msg.removed || []) {
        const c = cams.get(key);
        if (c) { c.el.remove(); cams.delete(key); dirtyCams.delete(key); cardsMoved = true; }
      }
      msg.cameras.forEach(upsertCamera);
      if (msg.events.some((r) => r.env && r.env.type === 'image_captured')) historySoon();
      takeRows(msg.events);
      if (msg.events.some((r) => hostOf(r.env) !== null)) hostsHeard();
    } else if (msg.t === 'conn') {
      conn = msg.conn;
      noteConn();
      connDirty = true;
    }
    queueFrame();
  }

  filterEl.addEventListener('change', () => {
    filter = filterEl.value;
    rebuildLog = true;
    queueFrame();
  });
  camFilterEl.addEventListener('change', () => {
    camFilter = camFilterEl.value;
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

  // Capture history: GET /api/history when the page syncs, every minute, and a few seconds
  // after captures arrive (at most one request at a time).
  const HISTORY_POLL_MS = 60000, HISTORY_SOON_MS = 3000;
  let historyBusy = false, historyAgain = false, historyTimer = null, historySoonTimer = null;
  function takeHistory(doc) {
    if (!doc || !Array.isArray(doc.cameras)) return;
    history.clear();
    for (const h of doc.cameras) {
      if (!h || !Array.isArray(h.hourly) || !Array.isArray(h.daily)) continue;
      history.set(cameraKey(hostOf(h), Number(h.camera_id)), { hourly: h.hourly.map(Number), daily: h.daily.map(Number) });
    }
    for (const key of cams.keys()) dirtyCams.add(key);
    queueFrame();
  }
  function loadHistory() {
    if (!historyOn || hubDown()) return; // asked again when the stream is back
    clearTimeout(historyTimer);
    if (historyBusy) { historyAgain = true; return; }
    historyBusy = true;
    fetch('/api/history', { credentials: 'same-origin', cache: 'no-store' })
      .then((r) => { if (r.status === 404) historyOn = false; return r.ok ? r.json() : null; })
      .then(takeHistory)
      .catch(() => {})
      .finally(() => {
        historyBusy = false;
        if (historyAgain) { historyAgain = false; loadHistory(); return; }
        if (historyOn) historyTimer = setTimeout(loadHistory, HISTORY_POLL_MS);
      });
  }
  function historySoon() {
    if (historySoonTimer === null) {
      historySoonTimer = setTimeout(() => { historySoonTimer = null; loadHistory(); }, HISTORY_SOON_MS);
    }
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
    if (hubDown()) return void setTimeout(pollSinks, SINK_POLL_MS);
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
    if (hubDown()) { hostsTimer = setTimeout(pollHosts, HOSTS_POLL_MS); return; }
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
