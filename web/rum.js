// Real-user monitoring: what this tab's user lives through, measured with the browser's
// Performance APIs and reported to Draw64 itself (POST /rum; same origin, no third party).
// Nothing identifies a person: a random per-tab session id, fixed event names, numbers, and
// error types with their messages cut short. The schema is in docs/observability.md.
'use strict';

const rum = (() => {
  const session = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, '0')).join('');
  const MAX_EVENTS = 64;
  let queue = [];

  function push(event) {
    // Bounded: a page that cannot report keeps at most one report's worth.
    if (queue.length < MAX_EVENTS) queue.push(event);
  }

  function timing(name, ms, traceId) {
    if (!Number.isFinite(ms) || ms < 0) return;
    const event = { type: 'timing', name, value: Math.round(ms * 100) / 100 };
    if (traceId) event.trace_id = traceId;
    push(event);
  }

  const hex = (bytes) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');

  function socket(event, code) {
    push(code === undefined ? { type: 'socket', event } : { type: 'socket', event, code });
  }

  function error(kind, message) {
    push({ type: 'error', kind: String(kind || 'Error').slice(0, 64), message: String(message || '').slice(0, 200) });
  }

  function flush(leaving) {
    if (!queue.length) return;
    const body = JSON.stringify({ session, events: queue });
    queue = [];
    if (leaving && navigator.sendBeacon) {
      navigator.sendBeacon('/rum', body);
    } else {
      fetch('/rum', { method: 'POST', body, headers: { 'Content-Type': 'application/json' }, keepalive: true })
        .catch(() => {});
    }
  }

  // Navigation timing, once the page has loaded.
  addEventListener('load', () => setTimeout(() => {
    const [nav] = performance.getEntriesByType('navigation');
    if (!nav) return;
    timing('ttfb', nav.responseStart);
    timing('dom_ready', nav.domContentLoadedEventEnd);
    timing('load', nav.loadEventEnd);
  }, 0));

  // Core Web Vitals: FCP and LCP (the last candidate before the page is hidden), CLS (shifts
  // not caused by input, summed), INP (the slowest interaction seen).
  let lcp = null;
  let cls = 0;
  let inp = null;
  const observe = (type, callback, options = {}) => {
    try {
      new PerformanceObserver((list) => list.getEntries().forEach(callback)).observe({ type, buffered: true, ...options });
    } catch { /* not supported by this browser */ }
  };
  observe('paint', (e) => { if (e.name === 'first-contentful-paint') timing('fcp', e.startTime); });
  observe('largest-contentful-paint', (e) => { lcp = e.startTime; });
  observe('layout-shift', (e) => { if (!e.hadRecentInput) cls += e.value; });
  observe('event', (e) => { if (e.interactionId && (inp === null || e.duration > inp)) inp = e.duration; },
    { durationThreshold: 16 });
  let vitalsSent = false;
  function vitals() {
    if (vitalsSent) return;
    vitalsSent = true;
    if (lcp !== null) timing('lcp', lcp);
    if (inp !== null) timing('inp', inp);
    push({ type: 'timing', name: 'cls', value: Math.min(100, Math.round(cls * 10000) / 10000) });
  }

  addEventListener('error', (e) => error(e.error?.name || 'Error', e.message));
  addEventListener('unhandledrejection', (e) => error('unhandledrejection', e.reason?.message || e.reason));

  setInterval(() => flush(false), 5000);
  addEventListener('pagehide', () => { vitals(); flush(true); });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') { vitals(); flush(true); }
  });

  // The real-time experience, fed by app.js.
  const sent = new Map();
  let firstCanvas = false;
  let closedAt = null;
  let connects = 0;
  return {
    flush: () => { vitals(); flush(false); },
    /** A command this tab sends; answers the W3C traceparent to send with it (a new trace
     * per stroke, sampled). Its echo is matched by its values. */
    sending(values) {
      const traceId = hex(16);
      if (sent.size < 256) sent.set(JSON.stringify(values), { at: performance.now(), traceId });
      return `00-${traceId}-${hex(8)}-01`;
    },
    /** A command the server relayed: this tab's own one closes its draw→echo latency. */
    relayed(values) {
      const key = JSON.stringify(values);
      const mine = sent.get(key);
      if (mine !== undefined) {
        sent.delete(key);
        timing('draw_echo', performance.now() - mine.at, mine.traceId);
      }
    },
    canvasPainted() {
      if (!firstCanvas) {
        firstCanvas = true;
        timing('canvas_ready', performance.now());
      }
    },
    opened() {
      connects += 1;
      socket(connects === 1 ? 'connect' : 'reconnect');
      if (closedAt !== null) timing('reconnect', performance.now() - closedAt);
      closedAt = null;
    },
    closed(code) {
      socket(code === 1013 ? 'resync' : 'close', code);
      if (closedAt === null) closedAt = performance.now();
      sent.clear();
    },
  };
})();
