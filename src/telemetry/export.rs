//! How each signal leaves the process: the sampler, the batching processors and readers with
//! their bounded queues, and the OTLP exporters (gRPC or HTTP/protobuf).

use opentelemetry_sdk::{runtime::Tokio, trace::Sampler as SdkSampler};

use super::settings::{Sampler, Settings};

pub(super) fn sampler(s: &Sampler) -> SdkSampler {
    match *s {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::TraceIdRatio(r) => SdkSampler::TraceIdRatioBased(r),
        Sampler::ParentBasedAlwaysOn => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOff)),
        Sampler::ParentBasedTraceIdRatio(r) => SdkSampler::ParentBased(Box::new(SdkSampler::TraceIdRatioBased(r))),
    }
}

/// Spans wait in a bounded queue and go out in batches of `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
/// (512). Unless the operator sets them, Draw64 exports every 200 ms (the SDK's 5 s lets a
/// busy instance fill its queue between exports) from a queue of 16,384 spans (about 16 MB at
/// most): a full second of 16,000 traced requests fits without a drop. When the queue is full,
/// spans are dropped and counted, never waited for.
pub(super) fn batch_spans(
    exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static,
) -> opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor<Tokio> {
    let mut config = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        config = config.with_scheduled_delay(std::time::Duration::from_millis(200));
    }
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(16_384);
    }
    opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(exporter, Tokio)
        .with_batch_config(config.build())
        .build()
}

pub(super) fn batch_logs(
    exporter: impl opentelemetry_sdk::logs::LogExporter + 'static,
) -> opentelemetry_sdk::logs::log_processor_with_async_runtime::BatchLogProcessor<Tokio> {
    opentelemetry_sdk::logs::log_processor_with_async_runtime::BatchLogProcessor::builder(exporter, Tokio).build()
}

pub(super) fn periodic(
    exporter: impl opentelemetry_sdk::metrics::exporter::PushMetricExporter + 'static,
    settings: &Settings,
) -> opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader<
    impl opentelemetry_sdk::metrics::exporter::PushMetricExporter,
> {
    opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(exporter, Tokio)
        .with_interval(settings.metric_interval)
        .build()
}

#[cfg(feature = "otlp")]
pub(super) mod otlp {
    use opentelemetry_otlp::{LogExporter, MetricExporter, Protocol as Wire, SpanExporter, WithExportConfig as _};

    use crate::telemetry::{TelemetryError, settings::Protocol};

    fn err(signal: &'static str) -> impl Fn(opentelemetry_otlp::ExporterBuildError) -> TelemetryError {
        move |e| TelemetryError::Exporter(signal, e.to_string())
    }

    pub fn spans(p: Protocol) -> Result<SpanExporter, TelemetryError> {
        match p {
            Protocol::Grpc => SpanExporter::builder().with_tonic().build(),
            Protocol::HttpProtobuf => SpanExporter::builder().with_http().with_protocol(Wire::HttpBinary).build(),
        }
        .map_err(err("OTLP trace"))
    }

    pub fn metrics(p: Protocol) -> Result<MetricExporter, TelemetryError> {
        match p {
            Protocol::Grpc => MetricExporter::builder().with_tonic().build(),
            Protocol::HttpProtobuf => MetricExporter::builder().with_http().with_protocol(Wire::HttpBinary).build(),
        }
        .map_err(err("OTLP metric"))
    }

    pub fn logs(p: Protocol) -> Result<LogExporter, TelemetryError> {
        match p {
            Protocol::Grpc => LogExporter::builder().with_tonic().build(),
            Protocol::HttpProtobuf => LogExporter::builder().with_http().with_protocol(Wire::HttpBinary).build(),
        }
        .map_err(err("OTLP log"))
    }
}

#[cfg(not(feature = "otlp"))]
pub(super) mod otlp {
    use crate::telemetry::{TelemetryError, settings::Protocol};

    fn off<T>() -> Result<T, TelemetryError> {
        Err(TelemetryError::Exporter("OTLP", "this build has no OTLP support (feature `otlp` is off)".into()))
    }
    pub fn spans(_: Protocol) -> Result<crate::telemetry::console::ConsoleSpans, TelemetryError> {
        off()
    }
    pub fn metrics(_: Protocol) -> Result<opentelemetry_stdout::MetricExporter, TelemetryError> {
        off()
    }
    pub fn logs(_: Protocol) -> Result<opentelemetry_stdout::LogExporter, TelemetryError> {
        off()
    }
}
