//! Logs, traces and metrics with OpenTelemetry, configured by the standard `OTEL_*` variables.
//!
//! `init` installs, in this order: the W3C trace-context propagator; a tracer provider (always,
//! so every request has a trace id for its log lines, exported or not); a meter provider with
//! the Prometheus registry and/or periodic OTLP/console readers; a logger provider when logs are
//! exported; and one `tracing` subscriber that feeds the fmt layer (stderr), the span bridge and
//! the log bridge. Every exporter batches through a bounded queue on the Tokio runtime, so an
//! unreachable collector costs a bounded buffer and a log line, never a blocked request.
//! [`Telemetry::shutdown`] flushes in order: traces, logs, metrics last.

#![deny(deprecated)] // deprecated semantic-convention names must not compile

mod console;
pub mod errors;
mod export;
mod host;
pub mod http_server;
mod logs;
pub mod metrics;
mod options;
pub mod profile;
pub mod propagation;
pub mod registry;
mod resource;
pub mod settings;
pub mod span;
pub mod throttle;

use std::{io::IsTerminal, net::SocketAddr};

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{
    logs::SdkLoggerProvider,
    metrics::SdkMeterProvider,
    propagation::TraceContextPropagator,
    trace::{Sampler as SdkSampler, SdkTracerProvider},
};
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{Targets, filter_fn},
    fmt,
    prelude::*,
};

use export::{batch_logs, batch_spans, otlp, periodic, sampler};
pub use metrics::metrics;
pub use options::{LogFormat, Options};
use settings::{Exporter, Settings, SettingsError};

/// Default filter: our own info, and only warnings from the libraries under us.
const DEFAULT_FILTER: &str = "info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn,\
    tonic=warn,h2=warn,hyper=warn,tower=warn";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("invalid log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("cannot build the {0} exporter: {1}")]
    Exporter(&'static str, String),
}

/// The installed providers. Keep it alive for the life of the process; call `shutdown` last.
pub struct Telemetry {
    pub instance_id: String,
    pub settings: Settings,
    /// Present when metrics include `prometheus`: what `/metrics` on the metrics port encodes.
    pub prometheus: Option<prometheus::Registry>,
    tracer: SdkTracerProvider,
    logger: Option<SdkLoggerProvider>,
    meter: SdkMeterProvider,
    #[cfg(feature = "otlp")]
    profiles: std::sync::Mutex<Option<profile::otlp::Continuous>>,
}

impl Telemetry {
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus.as_ref().map(|_| self.settings.prometheus_addr)
    }

    /// Flushes and stops every provider. Blocking: call it off the async workers.
    pub fn shutdown(&self) {
        #[cfg(feature = "otlp")]
        if let Some(profiles) = self.profiles.lock().ok().and_then(|mut p| p.take()) {
            profiles.stop();
        }
        if let Err(e) = self.tracer.shutdown() {
            eprintln!("draw64: flushing traces: {e}");
        }
        if let Some(logger) = &self.logger
            && let Err(e) = logger.shutdown()
        {
            eprintln!("draw64: flushing logs: {e}");
        }
        if let Err(e) = self.meter.shutdown() {
            eprintln!("draw64: flushing metrics: {e}");
        }
    }
}

/// Must run inside the Tokio runtime (the exporters' batch tasks live there).
pub fn init(config: &Options) -> Result<Telemetry, TelemetryError> {
    let settings = Settings::from_env(|k| std::env::var(k).ok(), config.metrics_listen)?;
    let (resource, instance_id) = resource::build(&settings.service_name);
    global::set_text_map_propagator(TraceContextPropagator::new());

    // With nowhere to send spans, none is recorded: a recorded span with no processor is built,
    // filled and thrown away on every request. Trace ids are still made, for the logs and for
    // the trace context passed on.
    let exported = settings.traces.iter().any(|e| !matches!(e, Exporter::Prometheus));
    let sampler = if exported { sampler(&settings.sampler) } else { SdkSampler::AlwaysOff };
    let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone()).with_sampler(sampler);
    for exporter in &settings.traces {
        tracer = match exporter {
            Exporter::Console => tracer.with_span_processor(batch_spans(console::ConsoleSpans)),
            Exporter::Otlp => tracer.with_span_processor(batch_spans(otlp::spans(settings.protocol)?)),
            Exporter::Prometheus => tracer,
        };
    }
    let tracer = tracer.build();
    global::set_tracer_provider(tracer.clone());

    let mut meter = SdkMeterProvider::builder().with_resource(resource.clone());
    let mut registry = None;
    for exporter in &settings.metrics {
        meter = match exporter {
            Exporter::Prometheus => {
                let r = prometheus::Registry::new();
                let reader = opentelemetry_prometheus::exporter()
                    .with_registry(r.clone())
                    .build()
                    .map_err(|e| TelemetryError::Exporter("prometheus", e.to_string()))?;
                registry = Some(r);
                meter.with_reader(reader)
            }
            Exporter::Console => {
                meter.with_reader(periodic(opentelemetry_stdout::MetricExporter::default(), &settings))
            }
            Exporter::Otlp => meter.with_reader(periodic(otlp::metrics(settings.protocol)?, &settings)),
        };
    }
    let meter = meter.build();
    global::set_meter_provider(meter.clone());

    let logger = if settings.logs.is_empty() {
        None
    } else {
        let mut logger = SdkLoggerProvider::builder().with_resource(resource.clone());
        for exporter in &settings.logs {
            logger = match exporter {
                Exporter::Console => {
                    logger.with_log_processor(batch_logs(opentelemetry_stdout::LogExporter::default()))
                }
                Exporter::Otlp => logger.with_log_processor(batch_logs(otlp::logs(settings.protocol)?)),
                Exporter::Prometheus => logger,
            };
        }
        Some(logger.build())
    };

    install_subscriber(config, &tracer, logger.as_ref())?;
    let push = settings.metrics.iter().any(|e| *e != Exporter::Prometheus);
    metrics::set_push(push);
    host::register(&global::meter("draw64"), push, registry.as_ref());
    metrics::metrics();
    install_panic_hook();
    tracing::info!(
        service.name = %settings.service_name,
        service.instance.id = %instance_id,
        traces = ?settings.traces,
        metrics = ?settings.metrics,
        logs = ?settings.logs,
        "telemetry ready"
    );
    #[cfg(feature = "otlp")]
    let profiles = match settings.profiles.clone() {
        Some(p) => Some(
            profile::otlp::Continuous::start(p, &resource)
                .map_err(|e| TelemetryError::Exporter("OTLP profiles", e.to_string()))?,
        ),
        None => None,
    }
    .into();
    #[cfg(not(feature = "otlp"))]
    if settings.profiles.is_some() {
        return Err(TelemetryError::Exporter(
            "OTLP profiles",
            "this build has no OTLP support (feature `otlp` is off)".into(),
        ));
    }
    Ok(Telemetry {
        instance_id,
        settings,
        prometheus: registry,
        tracer,
        logger,
        meter,
        #[cfg(feature = "otlp")]
        profiles,
    })
}

fn install_subscriber(
    config: &Options,
    tracer: &SdkTracerProvider,
    logger: Option<&SdkLoggerProvider>,
) -> Result<(), TelemetryError> {
    let spec = config.log.clone().or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| DEFAULT_FILTER.into());
    // The log filter applies to log lines (stderr and OTLP logs) only: quieting logs must not
    // turn traces off, so spans have a filter of their own.
    let filter = || EnvFilter::try_new(&spec).map_err(|e| TelemetryError::Filter(spec.clone(), e.to_string()));
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt_layer = if json {
        let format = fmt::format().json().flatten_event(true).with_current_span(false).with_span_list(false);
        fmt::layer().json().event_format(logs::JsonWithTraceIds(format)).with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    // Only the attributes we set: no code locations, threads or busy/idle timings per span.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer.tracer("draw64"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target("draw64", Level::INFO));
    // The exporters' own diagnostics must not be exported again through themselves.
    let not_exporter = filter_fn(|m| {
        let t = m.target();
        !(t.starts_with("opentelemetry") || t.starts_with("tonic") || t.starts_with("h2") || t.starts_with("hyper"))
    });
    let log_bridge = match logger {
        Some(l) => Some(
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(l)
                .with_filter(not_exporter)
                .with_filter(filter()?),
        ),
        None => None,
    };
    let exporter_failures = errors::ExporterFailures.with_filter(filter_fn(errors::is_exporter_failure));
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter()?))
        .with(spans)
        .with(log_bridge)
        .with(exporter_failures)
        .init();
    Ok(())
}

/// A panic is recorded here, once, in the thread that panics (so with the span it happened
/// in): an `exception` event with its stack trace, one log record with the backtrace, and the
/// counts. The places that catch it (the HTTP layer, a socket's task, the writer) only answer
/// for it. The default hook does not run: it would print the same panic again, unstructured.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        let message = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_owned(),
            None => info.payload().downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".to_owned()),
        };
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let cx = opentelemetry::Context::current();
        errors::mark(&cx, "panic", "panic", &message, Some(backtrace.clone()));
        errors::count(errors::Source::Panic, "panic");
        metrics().panics.add(1, &[]);
        let thread = std::thread::current();
        tracing::error!(
            exception.message = %message,
            code.location = %location,
            thread.name = thread.name().unwrap_or("unnamed"),
            exception.stacktrace = %backtrace,
            "panic"
        );
    }));
}
