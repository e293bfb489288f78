// Draw64 page: one WebSocket per open image, one EventSource for announcements.
'use strict';

const SIDE = 64;
const CELL = 10;
const PALETTE = ['1a1c2c', '5d275d', 'b13e53', 'ef7d57', 'ffcd75', 'a7f070', '38b764', '257179',
  '29366f', '3b5dc9', '41a6f6', '73eff7', 'f4f4f4', '94b0c2', '566c86', '333c57'];
const HEART = ['.XX.XX.', 'XXXXXXX', 'XXXXXXX', '.XXXXX.', '..XXX..', '...X...'];

const canvas = document.getElementById('canvas');
const ctx = canvas.getContext('2d');
const select = document.getElementById('images');
const userCount = document.getElementById('user-count');
const statusLine = document.getElementById('status');

// The admin token, when the server asks for one: given once as /#admin=TOKEN, kept for this
// tab only, and taken out of the address bar (so it is not bookmarked or shared).
const adminMode = document.querySelector('meta[name="draw64-admin"]')?.content;
const adminToken = (() => {
  const given = new URLSearchParams(location.hash.slice(1)).get('admin');
  if (given) {
    sessionStorage.setItem('draw64-admin', given);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem('draw64-admin');
})();
// Without the token, the controls the server would refuse are not shown.
if (adminMode === 'token' && !adminToken) document.getElementById('clear').hidden = true;

let imageId = 'default';
let color = hexToRgb(PALETTE[0]);
let pixels = blank();
let socket = null;
let backoff = 250;
let reconnectTimer = null;

function hexToRgb(hex) {
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function blank() {
  return Array.from({ length: SIDE }, () => Array.from({ length: SIDE }, () => [255, 255, 255]));
}

function setStatus(text, connection) {
  statusLine.textContent = text;
  if (connection) document.body.dataset.connection = connection;
}

// White cells show a light checkerboard so the grid stays visible.
function paintCell(x, y) {
  const [r, g, b] = pixels[x][y];
  const white = r === 255 && g === 255 && b === 255;
  ctx.fillStyle = white ? ((x + y) % 2 ? '#f1f3f6' : '#ffffff') : `rgb(${r},${g},${b})`;
  ctx.fillRect(x * CELL, y * CELL, CELL, CELL);
}

function repaint() {
  for (let x = 0; x < SIDE; x++) for (let y = 0; y < SIDE; y++) paintCell(x, y);
}

function setPixel(x, y, rgb) {
  if (x < 0 || y < 0 || x >= SIDE || y >= SIDE) return;
  pixels[x][y] = rgb;
  paintCell(x, y);
}

function applyCommand(command) {
  if (command.command_type === 'clear_canvas') {
    pixels = blank();
    repaint();
  } else if (command.command_type === 'draw') {
    for (const [x, y, r, g, b] of command.values) setPixel(x, y, [r, g, b]);
  }
}

// Changes that arrive while the image loads: the loaded image may predate some of them, so
// they are applied again on top of it (re-applying a run of changes in order is harmless).
let arrivedWhileLoading = null;

async function loadImage() {
  const wanted = imageId;
  arrivedWhileLoading = [];
  try {
    const res = await fetch(`/images/${encodeURIComponent(wanted)}/data`);
    if (!res.ok || wanted !== imageId) return;
    pixels = await res.json();
    repaint();
    for (const command of arrivedWhileLoading) applyCommand(command);
    document.body.dataset.loadedImage = wanted;
    rum.canvasPainted();
  } finally {
    arrivedWhileLoading = null;
  }
}

function send(command) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    // The stroke's trace context rides along; the server strips it before relaying.
    const traceparent = command.values ? rum.sending(command.values) : undefined;
    socket.send(JSON.stringify(traceparent ? { command, traceparent } : { command }));
  } else {
    setStatus('Not connected: change not sent.');
  }
}

function connect() {
  clearTimeout(reconnectTimer);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = `${scheme}://${location.host}/ws/images/${encodeURIComponent(imageId)}`;
  // A browser cannot give a WebSocket headers: the token rides as a subprotocol entry, never in
  // the address (which balancers log).
  const ws = adminToken ? new WebSocket(url, ['draw64', `draw64.token.${adminToken}`]) : new WebSocket(url);
  socket = ws;
  setStatus('Connecting…', 'connecting');
  ws.onopen = () => {
    rum.opened();
    backoff = 250;
    setStatus('Connected', 'open');
    // Reload after every (re)connect: changes made while away are in the stored image.
    loadImage();
  };
  ws.onmessage = (msg) => {
    const { event } = JSON.parse(msg.data);
    if (event.event_type === 'image_updated' && event.image_id === imageId) {
      if (event.command.values) rum.relayed(event.command.values);
      arrivedWhileLoading?.push(event.command);
      applyCommand(event.command);
    }
    else if (event.event_type === 'error') {
      // What was painted here ahead of the server is not true: show the refusal and the image
      // as it is.
      setStatus(`Refused: ${event.detail}`);
      loadImage();
    }
  };
  ws.onclose = (e) => {
    if (ws !== socket) return; // replaced by a switch
    socket = null;
    rum.closed(e.code);
    if (e.code === 4404) {
      // Deleted: do not reconnect (that would create it again); go to the default image.
      setStatus(`Image ${imageId} was deleted.`, 'closed');
      switchTo('default');
      return;
    }
    // Closed for drawing too fast: wait longer before trying again.
    if (e.code === 1008) backoff = Math.max(backoff, 4000);
    const delay = Math.min(backoff, 5000) * (0.75 + Math.random() / 2);
    backoff *= 2;
    const why = e.code === 1008 ? 'too many changes too fast' : `${e.code}`;
    setStatus(`Disconnected (${why}); reconnecting…`, 'closed');
    reconnectTimer = setTimeout(connect, delay);
  };
}

function switchTo(id) {
  if (socket) {
    const old = socket;
    socket = null;
    old.close(1000);
  }
  imageId = id;
  pixels = blank();
  repaint();
  ensureOption(id);
  select.value = id;
  backoff = 250;
  connect();
}

function ensureOption(id) {
  if ([...select.options].some((o) => o.value === id)) return;
  const option = new Option(id, id);
  const after = [...select.options].find((o) => o.value > id);
  select.add(option, after || null);
}

function removeOption(id) {
  for (const o of [...select.options]) if (o.value === id) o.remove();
}

async function loadImageList() {
  const res = await fetch('/images');
  if (!res.ok) return;
  for (const { image_id } of await res.json()) ensureOption(image_id);
  select.value = imageId;
}

// Bumped by every live count, so a /statistics answer that left before it cannot overwrite it.
let countEvents = 0;

function listen() {
  const source = new EventSource('/sse/announce');
  source.addEventListener('image_created', (e) => ensureOption(JSON.parse(e.data).event.image_id));
  source.addEventListener('image_deleted', (e) => removeOption(JSON.parse(e.data).event.image_id));
  source.addEventListener('user_count_updated', (e) => {
    countEvents += 1;
    userCount.textContent = JSON.parse(e.data).event.user_count;
  });
  source.onopen = async () => {
    loadImageList();
    const seen = countEvents;
    const res = await fetch('/statistics');
    const stats = res.ok ? await res.json() : null;
    if (stats && seen === countEvents) userCount.textContent = stats.user_count;
  };
}

// Pencil: pointerdown paints the cell under the pointer; the stroke paints the straight line of
// cells from the last one to each new one (a fast pointer skips cells between two samples), and
// sends them as one command.
let stroke = null;

/** The cells of the straight line from (x0, y0) to (x1, y1), both ends included (Bresenham). */
function lineCells(x0, y0, x1, y1) {
  const cells = [];
  const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0);
  const sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  let err = dx + dy;
  for (;;) {
    cells.push([x0, y0]);
    if (x0 === x1 && y0 === y1) return cells;
    const e2 = 2 * err;
    if (e2 >= dy) { err += dy; x0 += sx; }
    if (e2 <= dx) { err += dx; y0 += sy; }
  }
}
function cellAt(e) {
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor(((e.clientX - rect.left) / rect.width) * SIDE);
  const y = Math.floor(((e.clientY - rect.top) / rect.height) * SIDE);
  return x >= 0 && y >= 0 && x < SIDE && y < SIDE ? [x, y] : null;
}
function paintAt(e) {
  const cell = cellAt(e);
  if (!cell) return;
  const last = stroke && stroke.last;
  if (last && last[0] === cell[0] && last[1] === cell[1]) return;
  // The first cell of the line is the one painted last time.
  const cells = last ? lineCells(last[0], last[1], cell[0], cell[1]).slice(1) : [cell];
  if (stroke) stroke.last = cell;
  for (const [x, y] of cells) setPixel(x, y, color);
  queueCells(cells.map(([x, y]) => [x, y, ...color]));
}

// A stroke's cells go out once per frame, as one command: a fast pointer (hundreds of
// samples a second) stays well within the server's command rate.
let queued = [];
function queueCells(values) {
  if (queued.length === 0) requestAnimationFrame(flushCells);
  queued.push(...values);
}
function flushCells() {
  const values = queued;
  queued = [];
  if (values.length) send({ command_type: 'draw', values });
}
canvas.addEventListener('pointerdown', (e) => {
  canvas.setPointerCapture(e.pointerId);
  stroke = { last: null };
  paintAt(e);
});
canvas.addEventListener('pointermove', (e) => {
  if (!stroke) return;
  for (const ev of e.getCoalescedEvents ? e.getCoalescedEvents() : [e]) paintAt(ev);
});
const endStroke = () => { stroke = null; };
canvas.addEventListener('pointerup', endStroke);
canvas.addEventListener('pointercancel', endStroke);

function buildPalette() {
  const palette = document.getElementById('palette');
  PALETTE.forEach((hex, i) => {
    const swatch = document.createElement('button');
    swatch.type = 'button';
    swatch.setAttribute('role', 'radio');
    swatch.setAttribute('aria-label', `#${hex}`);
    swatch.setAttribute('aria-checked', i === 0 ? 'true' : 'false');
    swatch.style.backgroundColor = `#${hex}`;
    swatch.dataset.color = hex;
    swatch.addEventListener('click', () => {
      color = hexToRgb(hex);
      for (const s of palette.children) s.setAttribute('aria-checked', s === swatch ? 'true' : 'false');
    });
    palette.appendChild(swatch);
  });
}

document.getElementById('random').addEventListener('click', () => {
  const rgb = hexToRgb(PALETTE[Math.floor(Math.random() * PALETTE.length)]);
  const ox = Math.floor(Math.random() * (SIDE - HEART[0].length));
  const oy = Math.floor(Math.random() * (SIDE - HEART.length));
  const values = [];
  HEART.forEach((row, dy) => [...row].forEach((c, dx) => {
    if (c === 'X') values.push([ox + dx, oy + dy, ...rgb]);
  }));
  send({ command_type: 'draw', values });
});

document.getElementById('clear').addEventListener('click', () => send({ command_type: 'clear_canvas' }));

document.getElementById('new-image').addEventListener('click', async () => {
  const res = await fetch('/images', { method: 'POST' });
  const body = await res.json();
  if (res.ok) switchTo(body.image_id);
  else setStatus(body.detail);
});

select.addEventListener('change', () => switchTo(select.value));

buildPalette();
repaint();
listen();
switchTo('default');
