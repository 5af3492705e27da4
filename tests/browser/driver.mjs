// A remote control for the system's headless Chromium, driven by tests/it/browser.rs.
//
// The Rust test owns the hub and the assertions; this script owns one browser. It reads one
// JSON command per line on stdin and answers one JSON line on stdout:
//   {"cmd":"open","url":"http://127.0.0.1:PORT/","count":8}  -> {"ok":true,"value":[tab ids]}
//   {"cmd":"eval","tab":0,"js":"<expression>"}               -> {"ok":true,"value":<JSON>}
//   {"cmd":"wait","tab":0,"js":"<expression>","timeout_ms":N} -> value once truthy, or ok:false
//   {"cmd":"screenshot","tab":0,"path":"...","full_page":true}
//   {"cmd":"viewport","tab":0,"width":390,"height":844}
//   {"cmd":"color_scheme","tab":0,"scheme":"dark"}
//   {"cmd":"close_tab","tab":0}
//   {"cmd":"axe","tab":0}  -> axe-core's violations (WCAG 2 A and AA rules): [{id, impact, help, nodes}]
//   {"cmd":"errors"}  -> page errors and console errors seen so far
//   {"cmd":"quit"}
// Chromium comes from the OS (Debian's `chromium`), never downloaded: playwright-core is the
// protocol client only. Every wait is bounded, and closing stdin (the test died) ends the
// browser and this process.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';

// axe-core's browser build, from npm (tests/browser/package.json), evaluated in the page
// through the DevTools protocol: the page's CSP (script-src 'self') refuses a script tag.
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

const EXECUTABLE = process.env.TLE_CHROMIUM || '/usr/bin/chromium';
const MAX_WAIT_MS = 60_000; // no single command may take longer than this
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const profile = mkdtempSync(join(tmpdir(), 'tle-chromium-'));
let context;
const tabs = new Map();
let nextTab = 0;
const errors = [];

function reply(msg) {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

async function shutdown(code) {
  try {
    if (context) await context.close();
  } catch (e) {
    /* the browser may already be gone */
  }
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

function tab(id) {
  const page = tabs.get(id);
  if (!page) throw new Error(`no tab ${id}`);
  return page;
}

function bounded(ms) {
  return Math.min(Math.max(Number(ms) || 10_000, 1), MAX_WAIT_MS);
}

async function run(c) {
  switch (c.cmd) {
    case 'open': {
      const ids = [];
      for (let i = 0; i < (c.count || 1); i++) {
        const page = await context.newPage();
        const id = nextTab++;
        page.on('pageerror', (e) => errors.push(`tab ${id}: ${e.message}`));
        page.on('console', (m) => {
          if (m.type() === 'error') errors.push(`tab ${id} console: ${m.text()}`);
        });
        if (c.viewport) await page.setViewportSize(c.viewport);
        await page.goto(c.url, { timeout: bounded(c.timeout_ms) });
        tabs.set(id, page);
        ids.push(id);
      }
      return ids;
    }
    case 'eval':
      return await tab(c.tab).evaluate(c.js);
    case 'wait': {
      // Polled from here, not with page.waitForFunction: that polls inside the page with
      // eval, which the dashboard's Content-Security-Policy (no 'unsafe-eval') forbids,
      // while evaluate() goes through the DevTools protocol. A navigation (a form's
      // submit) destroys the page's context mid-wait: the next poll runs in the new page.
      const ms = bounded(c.timeout_ms);
      const deadline = Date.now() + ms;
      for (;;) {
        let value;
        try {
          value = await tab(c.tab).evaluate(c.js);
        } catch (e) {
          if (!/context was destroyed|navigat/i.test(String(e && e.message))) throw e;
        }
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`Timeout ${ms}ms exceeded waiting for ${c.js}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    case 'screenshot':
      mkdirSync(dirname(c.path), { recursive: true });
      await tab(c.tab).screenshot({ path: c.path, fullPage: !!c.full_page });
      return c.path;
    case 'viewport':
      await tab(c.tab).setViewportSize({ width: c.width, height: c.height });
      return null;
    case 'color_scheme':
      await tab(c.tab).emulateMedia({ colorScheme: c.scheme });
      return null;
    case 'close_tab':
      await tab(c.tab).close({ runBeforeUnload: true });
      tabs.delete(c.tab);
      return null;
    case 'axe': {
      const page = tab(c.tab);
      await page.evaluate(AXE_SOURCE);
      return await page.evaluate(async () => {
        const r = await self.axe.run(document, {
          runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
        });
        return r.violations.map((v) => ({
          id: v.id,
          impact: v.impact,
          help: v.help,
          nodes: v.nodes.map((n) => n.target.join(' ') + ': ' + n.failureSummary),
        }));
      });
    }
    case 'errors':
      return errors;
    case 'quit':
      reply({ ok: true, value: null });
      return shutdown(0);
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
}

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: EXECUTABLE,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 800 },
    timeout: 30_000,
  });
  context.setDefaultTimeout(30_000);
  reply({ ok: true, value: { ready: true, version: context.browser()?.version() ?? null } });
} catch (e) {
  reply({ ok: false, error: `cannot launch ${EXECUTABLE}: ${e.message}` });
  await shutdown(3);
}

// Commands run one at a time, in order.
let chain = Promise.resolve();
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    let c;
    try {
      c = JSON.parse(line);
      reply({ ok: true, value: (await run(c)) ?? null });
    } catch (e) {
      reply({ ok: false, error: String((e && e.message) || e) });
    }
  });
});
lines.on('close', () => chain.then(() => shutdown(0)));
