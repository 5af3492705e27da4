// A browser-grade SSE client for tests/it/real_clients.rs: the npm `eventsource` package
// (WhatWG EventSource for Node), with its own automatic reconnects and `Last-Event-ID`.
//
// Usage: node eventsource_client.mjs URL [--seconds S] [--max N] [--listen type1,type2]
//
// Prints one JSON object per line on stdout, flushed as it happens:
//   {"kind":"open"}                                        every (re)connection
//   {"kind":"event","type":..,"lastEventId":..,"data":..}  every event dispatched
//   {"kind":"error","message":..,"readyState":N}           every error (reconnects follow)
//   {"kind":"done","reason":"max"|"time"}                  before exiting 0
// `--listen` adds listeners for named events (`event: <type>`), which never reach
// `onmessage`. Exits after N events, or after S seconds (default 20) whatever happens.
import { EventSource } from 'eventsource';

const args = process.argv.slice(2);
const url = args[0];
let seconds = 20;
let max = Infinity;
let listen = [];
for (let i = 1; i < args.length; i += 2) {
  const [flag, value] = [args[i], args[i + 1]];
  if (flag === '--seconds') seconds = Number(value);
  else if (flag === '--max') max = Number(value);
  else if (flag === '--listen') listen = value.split(',').filter(Boolean);
  else {
    process.stderr.write(`unknown argument ${flag}\n`);
    process.exit(2);
  }
}
if (!url) {
  process.stderr.write('usage: node eventsource_client.mjs URL [--seconds S] [--max N] [--listen a,b]\n');
  process.exit(2);
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
let count = 0;
const es = new EventSource(url);

function finish(reason) {
  es.close();
  out({ kind: 'done', reason });
  // Let stdout drain before exiting.
  process.stdout.write('', () => process.exit(0));
}

function onEvent(e) {
  out({ kind: 'event', type: e.type, lastEventId: e.lastEventId, data: e.data });
  count += 1;
  if (count >= max) finish('max');
}

es.addEventListener('open', () => out({ kind: 'open' }));
es.addEventListener('error', (e) =>
  out({ kind: 'error', message: String(e.message ?? ''), code: e.code ?? null, readyState: es.readyState }),
);
es.addEventListener('message', onEvent);
for (const type of listen) es.addEventListener(type, onEvent);

setTimeout(() => finish('time'), seconds * 1000).unref();
// Keep the process alive even while EventSource waits to reconnect.
const keepAlive = setInterval(() => {}, 1000);
process.on('exit', () => clearInterval(keepAlive));
