// Browser scenario for Draw64: two pages on the real binary in headless Chromium.
// Run by `cargo test` (tests/api/browser.rs) with DRAW64_BIN and OUT_DIR set.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';
import { OUT, cellColor, hex, launch, ready, step, stroke, twoPages, waitCell } from './lib.mjs';

const BIN = process.env.DRAW64_BIN;
const work = mkdtempSync(join(tmpdir(), 'draw64-browser-'));
const db = join(work, 'draw64.db');

// Set by tests/api/browser.rs: a real Prometheus, and the file listing what it scrapes.
const PROMETHEUS = process.env.PROMETHEUS_URL;
const TARGETS = process.env.PROMETHEUS_TARGETS;

/** Waits until the real Prometheus has a sample above 0 for each of `queries`. */
async function waitPrometheus(queries) {
  if (!PROMETHEUS) return;
  const deadline = Date.now() + 30000;
  for (const q of queries) {
    for (;;) {
      const res = await fetch(`${PROMETHEUS}/api/v1/query?query=${encodeURIComponent(`${q} > 0`)}`).catch(() => null);
      const body = res && res.ok ? await res.json() : null;
      if (body?.data?.result?.length) break;
      if (Date.now() > deadline) throw new Error(`Prometheus never scraped ${q}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

function startServer(listen, { database = db, args = [], env = {} } = {}) {
  const proc = spawn(BIN, ['--listen', listen, '--metrics-listen', '127.0.0.1:0', '--database', `sqlite://${database}`, '--drain-grace', '0', ...args], {
    env: { ...process.env, DRAW64_LOG_FORMAT: 'json', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: proc.stderr });
    let metrics = null;
    lines.on('line', (line) => {
      try {
        const v = JSON.parse(line);
        if (v.message === 'metrics listening') metrics = v.address;
        if (v.message === 'listening') {
          if (TARGETS) writeFileSync(TARGETS, JSON.stringify([{ targets: [metrics] }]));
          resolve({ proc, addr: v.address, metrics });
        }
      } catch { /* not JSON */ }
    });
    proc.on('exit', (code) => reject(new Error(`server exited early (${code})`)));
  });
}

/** Waits until every one of `series` has a sample above 0 in the server's Prometheus scrape. */
async function waitSeries(server, series) {
  const deadline = Date.now() + 10000;
  for (;;) {
    const text = await (await fetch(`http://${server.metrics}/metrics`)).text();
    const missing = series.filter((s) => !text.split('\n').some((l) => l.startsWith(s) && Number(l.split(' ').pop()) > 0));
    if (!missing.length) {
      for (const s of series) step(`  ${text.split('\n').find((l) => l.startsWith(s))}`);
      return;
    }
    if (Date.now() > deadline) throw new Error(`never scraped: ${missing.join(', ')}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function stopServer(server) {
  const exited = once(server.proc, 'exit');
  server.proc.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0, 'server exits 0 on SIGTERM');
}

let server = await startServer('127.0.0.1:0');
const base = `http://${server.addr}`;
const api = async (path, init) => fetch(base + path, init);
const browser = await launch();
let failed = false;
try {
  const [a, b] = await twoPages(browser, () => { failed = true; });
  // What page A sends: its WebSocket frames and its reports.
  const framesSent = [];
  const reports = [];
  a.on('websocket', (ws) => ws.on('framesent', (f) => framesSent.push(String(f.payload))));
  a.on('request', (r) => { if (r.url().endsWith('/rum')) reports.push(r.postData()); });

  step('page A opens default; the user count shows 1');
  await a.goto(base);
  await ready(a);
  await a.waitForFunction(() => document.getElementById('user-count').textContent === '1');
  const swatches = await a.$$eval('#palette > *', (els) => els.map((e) => getComputedStyle(e).backgroundColor));
  assert.equal(swatches.length, 16);
  assert.equal(swatches[2], 'rgb(177, 62, 83)');

  step('page B opens; A sees the user count change to 2');
  await b.goto(base);
  await ready(b);
  await a.waitForFunction(() => document.getElementById('user-count').textContent === '2');

  step('draw a stroke on A with real pointer events');
  await stroke(a, 3, [[10, 20], [11, 20], [12, 21]]);
  const red = hex('b13e53');
  for (const [x, y] of [[10, 20], [11, 20], [12, 21]]) {
    await waitCell(b, x, y, red);
  }
  const data = await (await api('/images/default/data')).json();
  assert.deepEqual(data[10][20], red);
  assert.deepEqual(data[12][21], red);
  assert.deepEqual(await cellColor(a, 10, 20), red);

  step('a fast diagonal stroke sets every cell on its line');
  {
    const box = await a.locator('#canvas').boundingBox();
    const at = ([x, y]) => [box.x + x * 10 + 5, box.y + y * 10 + 5];
    await a.click('#palette > :nth-child(5)');
    // One pointer sample at each end: every cell between them must still be painted.
    await a.mouse.move(...at([5, 40]));
    await a.mouse.down();
    await a.mouse.move(...at([25, 50]), { steps: 1 });
    await a.mouse.up();
    const painted = await cellColor(a, 5, 40);
    assert.notDeepEqual(painted, [255, 255, 255]);
    for (const [x, y] of [[5, 40], [25, 50]]) await waitCell(b, x, y, painted);
    const after = await (await api('/images/default/data')).json();
    // Bresenham's line from (5,40) to (25,50): one cell per column, no gap.
    for (let x = 5; x <= 25; x++) {
      const column = [];
      for (let y = 40; y <= 50; y++) if (after[x][y].join() === painted.join()) column.push(y);
      assert.ok(column.length >= 1, `column ${x} of the line has no painted cell`);
    }
    const count = after.flat().filter((p) => p.join() === painted.join()).length;
    assert.ok(count >= 21, `a 21-column line painted ${count} cells`);
  }

  step('the heart button draws on both pages');
  const before = (await (await api('/images/default/data')).json()).flat().filter((p) => p.join() !== '255,255,255').length;
  await b.click('#random');
  await a.waitForFunction(async (n) => {
    const d = await (await fetch('/images/default/data')).json();
    return d.flat().filter((p) => p.join() !== '255,255,255').length > n;
  }, before, { timeout: 10000, polling: 200 });

  step('a clear from B clears A');
  await b.click('#clear');
  await a.waitForFunction(() => {
    const d = document.getElementById('canvas').getContext('2d').getImageData(105, 205, 1, 1).data;
    return d[1] > 200;
  }, null, { timeout: 10000 });
  const cleared = await (await api('/images/default/data')).json();
  assert.ok(cleared.flat().every((p) => p.join() === '255,255,255'));

  step('an image created elsewhere appears in the selector');
  assert.equal((await api('/images/elsewhere', { method: 'POST' })).status, 201);
  await a.waitForSelector('#images option[value="elsewhere"]', { state: 'attached', timeout: 10000 });

  step('deleting the open image sends the page to default, without bringing it back');
  await a.selectOption('#images', 'elsewhere');
  await a.waitForFunction(() => document.body.dataset.connection === 'open' && document.body.dataset.loadedImage === 'elsewhere');
  assert.equal((await api('/images/elsewhere', { method: 'DELETE' })).status, 200);
  await ready(a);
  assert.equal(await a.inputValue('#images'), 'default');
  await a.waitForSelector('#images option[value="elsewhere"]', { state: 'detached', timeout: 10000 });
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await api('/images/elsewhere')).status, 404, 'the deleted image came back');

  step('the page reports its experience: page load, canvas, draw→echo and its socket, in the scrape');
  await a.evaluate(() => rum.flush());
  await waitSeries(server, [
    'draw64_browser_duration_seconds_count{draw64_browser_timing="ttfb"',
    'draw64_browser_duration_seconds_count{draw64_browser_timing="canvas_ready"',
    'draw64_browser_duration_seconds_count{draw64_browser_timing="draw_echo"',
    'draw64_browser_socket_events_total{draw64_browser_socket_event="connect"',
    'draw64_browser_reports_total{draw64_report_outcome="accepted"',
  ]);
  // Each stroke went out with a trace context of its own, and its draw→echo names that trace.
  const strokeTraces = framesSent.map((f) => JSON.parse(f).traceparent?.split('-')[1]).filter(Boolean);
  assert.ok(strokeTraces.length > 0, 'no frame carried a traceparent');
  const echoTraces = reports.flatMap((r) => JSON.parse(r).events)
    .filter((e) => e.name === 'draw_echo').map((e) => e.trace_id);
  assert.ok(echoTraces.length > 0 && echoTraces.every((t) => strokeTraces.includes(t)),
    `draw_echo trace ids ${echoTraces} are not the strokes' ${strokeTraces}`);
  // The Rust side looks these up at its OTLP receiver: each must be a server command span.
  writeFileSync(join(OUT, 'strokes.json'), JSON.stringify({ stroke_traces: strokeTraces, echo_traces: echoTraces }));
  await waitPrometheus([
    'draw64_browser_duration_seconds_count{draw64_browser_timing="ttfb"}',
    'draw64_browser_duration_seconds_count{draw64_browser_timing="canvas_ready"}',
    'draw64_browser_duration_seconds_count{draw64_browser_timing="draw_echo"}',
  ]);

  step('the server drops the page; the page reconnects and shows a change made while away');
  await stopServer(server);
  await a.waitForFunction(() => document.body.dataset.connection !== 'open', null, { timeout: 10000 });
  await new Promise((r) => setTimeout(r, 1500)); // let the page's backoff grow past the restart
  server = await startServer(server.addr);
  const blue = hex('3b5dc9');
  const put = await api('/images/default', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ command: { command_type: 'draw', values: [[30, 30, ...blue]] } }),
  });
  assert.equal(put.status, 200);
  await a.waitForFunction(() => document.body.dataset.connection === 'open', null, { timeout: 15000 });
  await waitCell(a, 30, 30, blue);

  step('the reconnect, and an error thrown in a page, reach the new server as metrics');
  {
    const c = await browser.newPage();
    await c.goto(base);
    await ready(c);
    // Resolves once the page's own error listeners (the reporter's first) have seen it.
    await c.evaluate(() => new Promise((resolve) => {
      addEventListener('error', () => setTimeout(resolve, 0), { once: true });
      setTimeout(() => { throw new RangeError('thrown by the browser test'); }, 0);
    }));
    await c.evaluate(() => rum.flush());
    await a.evaluate(() => rum.flush());
    await waitSeries(server, [
      'draw64_browser_duration_seconds_count{draw64_browser_timing="reconnect"',
      'draw64_browser_socket_events_total{draw64_browser_socket_event="reconnect"',
      'draw64_browser_errors_total{error_type="RangeError"',
    ]);
    await waitPrometheus(['draw64_browser_duration_seconds_count{draw64_browser_timing="reconnect"}']);
    await c.close();
  }

  await a.screenshot({ path: join(OUT, 'page.png') });
  step(`screenshot saved to ${join(OUT, 'page.png')}`);

  step('with an admin token set, a page without it has no Clear; one given /#admin=TOKEN has, and keeps it out of the address bar');
  {
    const token = 'browser-test-admin-token-0123';
    const guarded = await startServer('127.0.0.1:0', {
      database: join(work, 'guarded.db'),
      // One command a second (a burst of two): a few quick strokes are refused.
      args: ['--ws-command-rate', '1'],
      env: { DRAW64_ADMIN_TOKEN: token },
    });
    const url = `http://${guarded.addr}`;
    try {
      const visitor = await browser.newPage();
      await visitor.goto(url);
      await ready(visitor);
      assert.ok(await visitor.isHidden('#clear'), 'Clear is shown to a visitor without the token');
      const admin = await browser.newPage();
      await admin.goto(`${url}/#admin=${token}`);
      await ready(admin);
      assert.ok(await admin.isVisible('#clear'), 'Clear is hidden from the admin');
      assert.ok(!admin.url().includes(token), `the token stayed in the address bar: ${admin.url()}`);

      step('strokes faster than the server allows are shown as refused, and the page shows the image as stored');
      for (let i = 0; i < 6; i++) await stroke(visitor, 4, [[i, 60], [i, 61], [i, 62]]);
      await visitor.waitForFunction(() => document.getElementById('status').textContent.startsWith('Refused:'), null, { timeout: 10000 });
      step(`  the page says: ${await visitor.textContent('#status')}`);
      await admin.click('#clear');
      await visitor.waitForFunction(async () => {
        const d = await (await fetch('/images/default/data')).json();
        return d.flat().every((p) => p.join() === '255,255,255');
      }, null, { timeout: 10000, polling: 200 });
      await visitor.close();
      await admin.close();
    } finally {
      await stopServer(guarded);
    }
  }

  step('/docs works with no network: every request stays on the server');
  const offline = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const outside = [];
  await offline.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.host === server.addr) return route.continue();
    outside.push(url.href);
    return route.abort();
  });
  const docs = await offline.newPage();
  docs.on('pageerror', (e) => { failed = true; console.error('docs page error:', e); });
  await docs.goto(`${base}/docs`);
  await docs.waitForFunction(() => document.querySelectorAll('.opblock').length >= 11, null, { timeout: 15000 });
  // Try it out: run GET /statistics from the page.
  await docs.click('#operations-statistics-statistics .opblock-summary');
  await docs.click('#operations-statistics-statistics .try-out__btn');
  await docs.click('#operations-statistics-statistics .execute');
  await docs.waitForFunction(() => (document.querySelector(
    '#operations-statistics-statistics .live-responses-table')?.textContent ?? '').includes('images_created'),
  null, { timeout: 10000 });
  const shown = await docs.textContent('#operations-statistics-statistics .live-responses-table');
  assert.match(shown, /200/);
  assert.deepEqual(outside, [], 'the docs page reached outside the server');
  await docs.screenshot({ path: join(OUT, 'docs.png') });
  await offline.close();
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  await stopServer(server).catch(() => {});
  rmSync(work, { recursive: true, force: true });
}
if (failed) process.exit(1);
console.log('browser: all steps passed');
