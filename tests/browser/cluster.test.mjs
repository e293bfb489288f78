// Browser scenario for a local cluster (scripts/cluster): two tabs through HAProxy land on two
// instances and see each other's strokes. Run by `cargo test` (tests/api/browser.rs) with
// BASE (the balancer's URL), METRICS (each instance's /metrics URL, comma-separated), OUT_DIR.
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { OUT, hex, launch, ready, step, stroke, twoPages, waitCell } from './lib.mjs';

const BASE = process.env.BASE;
const METRICS = process.env.METRICS.split(',');

/** Open WebSockets on each instance, from its own /metrics. */
async function socketsPerInstance() {
  return Promise.all(METRICS.map(async (url) => {
    const text = await (await fetch(url)).text();
    const line = text.split('\n').find((l) => l.startsWith('draw64_ws_connections'));
    assert.ok(line, `no draw64_ws_connections in ${url}`);
    return Number(line.split(' ').pop());
  }));
}

const browser = await launch();
let failed = false;
try {
  const [a, b] = await twoPages(browser, () => { failed = true; });

  step('two tabs open the balancer\'s page');
  await a.goto(BASE);
  await ready(a);
  await b.goto(BASE);
  await ready(b);
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.getElementById('user-count').textContent === '2', null, { timeout: 10000 });
  }

  step('their sockets are on different instances');
  const deadline = Date.now() + 10000;
  let sockets = await socketsPerInstance();
  while (sockets.join() !== '1,1' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    sockets = await socketsPerInstance();
  }
  assert.deepEqual(sockets, [1, 1], `one socket on each instance, not ${sockets}`);

  step('a stroke in each tab appears in the other');
  await stroke(a, 3, [[5, 5], [6, 5], [7, 6]]);
  const red = hex('b13e53');
  for (const [x, y] of [[5, 5], [6, 5], [7, 6]]) await waitCell(b, x, y, red);
  await stroke(b, 7, [[40, 40], [41, 41]]);
  const swatch7 = await b.$eval('#palette > :nth-child(7)', (e) => getComputedStyle(e).backgroundColor);
  const rgb = swatch7.match(/\d+/g).map(Number);
  for (const [x, y] of [[40, 40], [41, 41]]) await waitCell(a, x, y, rgb);

  await a.screenshot({ path: join(OUT, 'cluster.png') });
  step(`screenshot saved to ${join(OUT, 'cluster.png')}`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
if (failed) process.exit(1);
console.log('browser: all cluster steps passed');
