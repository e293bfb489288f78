//! The synchronous instruments the hot path records into, created once from the global meter
//! provider. Semantic-convention instruments take their names from the
//! `opentelemetry-semantic-conventions` constants; Draw64's own from [`super::registry`].

use std::sync::OnceLock;

use opentelemetry::{
    KeyValue, global,
    metrics::{AsyncInstrument, BoundCounter, Counter, Histogram, Meter, UpDownCounter},
};
use opentelemetry_semantic_conventions::metric as semconv;

use super::registry::{Instrument, def};

/// Bucket boundaries the HTTP and database duration conventions recommend, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// Finer buckets for in-process fan-out, which lives in the sub-millisecond range.
const FANOUT_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const SIZE_BUCKETS: &[f64] = &[0.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0];
/// Pages' timings: from a few milliseconds (an echo) to a minute (a slow load or reconnect).
const BROWSER_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Cumulative Layout Shift: good below 0.1, poor above 0.25.
const SHIFT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

pub struct Metrics {
    pub http_duration: Histogram<f64>,
    pub http_active: UpDownCounter<i64>,
    pub http_request_size: Histogram<u64>,
    pub http_response_size: Histogram<u64>,
    pub db_duration: Histogram<f64>,
    pub ws_connections: UpDownCounter<i64>,
    pub ws_disconnections: Counter<u64>,
    pub ws_messages: Counter<u64>,
    pub sse_streams: UpDownCounter<i64>,
    pub commands_applied: Counter<u64>,
    pub commands_rejected: Counter<u64>,
    pub pixels_drawn: Counter<u64>,
    pub fanout_latency: Histogram<f64>,
    pub subscriber_lagged: Counter<u64>,
    pub fanout_undelivered: Counter<u64>,
    pub batch_size: Histogram<u64>,
    pub panics: Counter<u64>,
    pub errors: Counter<u64>,
    pub browser_duration: Histogram<f64>,
    pub browser_layout_shift: Histogram<f64>,
    pub browser_socket_events: Counter<u64>,
    pub browser_errors: Counter<u64>,
    pub browser_reports: Counter<u64>,
    pub limits_refused: Counter<u64>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Whether metrics are pushed (OTLP or console) besides, or instead of, Prometheus. Some
/// semantic-convention names end in `.count`, which Prometheus reserves for histograms
/// (promtool rejects them); those instruments exist only when they are pushed.
static PUSH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_push(push: bool) {
    PUSH.store(push, std::sync::atomic::Ordering::Relaxed);
}

pub fn push_enabled() -> bool {
    PUSH.load(std::sync::atomic::Ordering::Relaxed)
}

/// The instruments. Created on first use from the global meter provider, so `telemetry::init`
/// touches this after installing the provider; without it (unit tests) they are no-ops.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let m = Metrics::new(&global::meter("draw64"));
        // Every counter shows in a scrape from the start (at 0), so a dashboard or an alert on
        // `rate(...)` has a series before the first event.
        for c in [
            &m.ws_disconnections,
            &m.ws_messages,
            &m.commands_applied,
            &m.commands_rejected,
            &m.pixels_drawn,
            &m.subscriber_lagged,
            &m.fanout_undelivered,
            &m.panics,
            &m.errors,
            &m.browser_socket_events,
            &m.browser_errors,
            &m.browser_reports,
            &m.limits_refused,
        ] {
            c.add(0, &[]);
        }
        m.ws_connections.add(0, &[]);
        m.sse_streams.add(0, &[]);
        m
    })
}

/// A counter of the hot path bound once per set of attribute values (OpenTelemetry's bound
/// instruments), so that a recording does not make the SDK sort, deduplicate and hash its
/// attribute list: the values are a few static strings, found again by a short scan. Past
/// `MAX_BOUND` sets it records unbound, as an instrument without this would.
pub struct CounterBy<const N: usize> {
    keys: [&'static str; N],
    bound: std::sync::RwLock<Vec<([&'static str; N], BoundCounter<u64>)>>,
}

const MAX_BOUND: usize = 64;

impl<const N: usize> CounterBy<N> {
    pub const fn new(keys: [&'static str; N]) -> Self {
        Self { keys, bound: std::sync::RwLock::new(Vec::new()) }
    }

    pub fn add(&self, counter: &Counter<u64>, n: u64, values: [&'static str; N]) {
        let same = |v: &[&'static str; N]| v.iter().zip(&values).all(|(a, b)| std::ptr::eq(*a, *b) || a == b);
        if let Some((_, b)) = self.bound.read().unwrap_or_else(|e| e.into_inner()).iter().find(|(v, _)| same(v)) {
            return b.add(n);
        }
        let attributes: Vec<KeyValue> = self.keys.iter().zip(values).map(|(k, v)| KeyValue::new(*k, v)).collect();
        let mut bound = self.bound.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = bound.iter().find(|(v, _)| same(v)) {
            return b.add(n);
        }
        if bound.len() >= MAX_BOUND {
            drop(bound);
            return counter.add(n, &attributes);
        }
        let b = counter.bind(&attributes);
        b.add(n);
        bound.push((values, b));
    }
}

fn counter(meter: &Meter, name: &'static str) -> Counter<u64> {
    let d = def(name);
    debug_assert_eq!(d.instrument, Instrument::Counter);
    meter.u64_counter(d.name).with_unit(d.unit).with_description(d.description).build()
}

fn histogram(meter: &Meter, name: &'static str, buckets: &[f64]) -> Histogram<f64> {
    let d = def(name);
    debug_assert_eq!(d.instrument, Instrument::Histogram);
    meter
        .f64_histogram(d.name)
        .with_unit(d.unit)
        .with_description(d.description)
        .with_boundaries(buckets.to_vec())
        .build()
}

fn up_down(meter: &Meter, name: &'static str) -> UpDownCounter<i64> {
    let d = def(name);
    debug_assert_eq!(d.instrument, Instrument::UpDownCounter);
    meter.i64_up_down_counter(d.name).with_unit(d.unit).with_description(d.description).build()
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let fanout = def("draw64.fanout.latency");
        let batch = def("draw64.store.batch.size");
        Self {
            http_duration: meter
                .f64_histogram(semconv::HTTP_SERVER_REQUEST_DURATION)
                .with_unit("s")
                .with_description("Duration of HTTP server requests.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            http_active: meter
                .i64_up_down_counter(semconv::HTTP_SERVER_ACTIVE_REQUESTS)
                .with_unit("{request}")
                .with_description("Number of active HTTP server requests.")
                .build(),
            http_request_size: meter
                .u64_histogram(semconv::HTTP_SERVER_REQUEST_BODY_SIZE)
                .with_unit("By")
                .with_description("Size of HTTP server request bodies.")
                .with_boundaries(SIZE_BUCKETS.to_vec())
                .build(),
            http_response_size: meter
                .u64_histogram(semconv::HTTP_SERVER_RESPONSE_BODY_SIZE)
                .with_unit("By")
                .with_description("Size of HTTP server response bodies.")
                .with_boundaries(SIZE_BUCKETS.to_vec())
                .build(),
            db_duration: meter
                .f64_histogram(semconv::DB_CLIENT_OPERATION_DURATION)
                .with_unit("s")
                .with_description("Duration of database client operations.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            ws_connections: up_down(meter, "draw64.ws.connections"),
            ws_disconnections: counter(meter, "draw64.ws.disconnections"),
            ws_messages: counter(meter, "draw64.ws.messages"),
            sse_streams: up_down(meter, "draw64.sse.streams"),
            commands_applied: counter(meter, "draw64.commands.applied"),
            commands_rejected: counter(meter, "draw64.commands.rejected"),
            pixels_drawn: counter(meter, "draw64.pixels.drawn"),
            fanout_latency: meter
                .f64_histogram(fanout.name)
                .with_unit(fanout.unit)
                .with_description(fanout.description)
                .with_boundaries(FANOUT_BUCKETS.to_vec())
                .build(),
            subscriber_lagged: counter(meter, "draw64.subscriber.lagged"),
            fanout_undelivered: counter(meter, "draw64.fanout.undelivered"),
            batch_size: meter
                .u64_histogram(batch.name)
                .with_unit(batch.unit)
                .with_description(batch.description)
                .with_boundaries(BATCH_BUCKETS.to_vec())
                .build(),
            panics: counter(meter, "draw64.panics"),
            errors: counter(meter, "draw64.errors"),
            browser_duration: histogram(meter, "draw64.browser.duration", BROWSER_BUCKETS),
            browser_layout_shift: histogram(meter, "draw64.browser.layout_shift", SHIFT_BUCKETS),
            browser_socket_events: counter(meter, "draw64.browser.socket.events"),
            browser_errors: counter(meter, "draw64.browser.errors"),
            browser_reports: counter(meter, "draw64.browser.reports"),
            limits_refused: counter(meter, "draw64.limits.refused"),
        }
    }
}

/// An observable gauge declared in the registry, with no attributes, read at each collection.
pub fn registry_gauge(meter: &Meter, name: &'static str, read: impl Fn() -> u64 + Send + Sync + 'static) {
    registry_gauge_u64(meter, name, move |o| o.observe(read(), &[]));
}

/// An observable gauge declared in the registry; `observe` reports its series at each collection.
pub fn registry_gauge_u64(
    meter: &Meter,
    name: &'static str,
    observe: impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static,
) {
    let d = gauge_def(name);
    meter.u64_observable_gauge(d.name).with_unit(d.unit).with_description(d.description).with_callback(observe).build();
}

/// The same for a fractional gauge.
pub fn registry_gauge_f64(
    meter: &Meter,
    name: &'static str,
    observe: impl Fn(&dyn AsyncInstrument<f64>) + Send + Sync + 'static,
) {
    let d = gauge_def(name);
    meter.f64_observable_gauge(d.name).with_unit(d.unit).with_description(d.description).with_callback(observe).build();
}

fn gauge_def(name: &'static str) -> &'static super::registry::MetricDef {
    let d = def(name);
    debug_assert_eq!(d.instrument, Instrument::Gauge);
    d
}
