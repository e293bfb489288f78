// What the browser scenarios share: launching Debian's Chromium and reading the page's canvas.
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const OUT = process.env.OUT_DIR || '.';

export const step = (name) => console.log(`browser: ${name}`);
export const hex = (h) => [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16));

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
}

export async function cellColor(page, x, y) {
  return page.evaluate(([x, y]) => {
    const d = document.getElementById('canvas').getContext('2d').getImageData(x * 10 + 5, y * 10 + 5, 1, 1).data;
    return [d[0], d[1], d[2]];
  }, [x, y]);
}

export async function waitCell(page, x, y, rgb) {
  await page.waitForFunction(([x, y, rgb]) => {
    const d = document.getElementById('canvas').getContext('2d').getImageData(x * 10 + 5, y * 10 + 5, 1, 1).data;
    return d[0] === rgb[0] && d[1] === rgb[1] && d[2] === rgb[2];
  }, [x, y, rgb], { timeout: 10000 });
}

/** The page shows `image` over an open socket. */
export const ready = (page, image = 'default') => page.waitForFunction(
  (image) => document.body.dataset.connection === 'open' && document.body.dataset.loadedImage === image,
  image, { timeout: 10000 });

/** Draws a stroke through `cells` with real pointer events, in palette colour `swatch` (1-based). */
export async function stroke(page, swatch, cells) {
  await page.click(`#palette > :nth-child(${swatch})`);
  const box = await page.locator('#canvas').boundingBox();
  const at = ([x, y]) => [box.x + x * 10 + 5, box.y + y * 10 + 5];
  await page.mouse.move(...at(cells[0]));
  await page.mouse.down();
  for (const cell of cells.slice(1)) await page.mouse.move(...at(cell), { steps: 3 });
  await page.mouse.up();
}

/** Two pages in one browser context; a page error calls `onError`. */
export async function twoPages(browser, onError) {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const pages = [await ctx.newPage(), await ctx.newPage()];
  for (const p of pages) p.on('pageerror', (e) => { onError(); console.error('page error:', e); });
  return pages;
}
