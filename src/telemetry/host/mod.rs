//! Host, process and async-runtime metrics, observed when a reader collects (each Prometheus
//! scrape, each OTLP export). One sample of the machine is taken per collection and shared by
//! all the instruments, so a scrape costs one read of each /proc file, not one per series.
//!
//! Sources: sysinfo for CPU, memory, filesystems and network interfaces; `/proc/diskstats`
//! for disk bytes and operations (sysinfo lacks operations); `/proc/self/*` for the process;
//! Tokio's stable runtime metrics for the runtime.

mod process;
mod sample;
mod system;

use std::sync::Arc;

use opentelemetry::metrics::Meter;

use self::sample::{Probe, Sample};

/// One sample of the machine, taken at most every `sample::FRESH` and shared by every instrument.
type SampleFn = Arc<dyn Fn() -> Sample + Send + Sync>;

/// Registers every host, process and runtime instrument on `meter`.
///
/// `process.thread.count` and `process.unix.file_descriptor.count` end in `_count`, which the
/// Prometheus exposition reserves for histograms and summaries (promtool rejects them). So
/// they are OpenTelemetry instruments only when a push exporter (OTLP, console) is on, and the
/// Prometheus registry gets the conventional `process_threads` and `process_open_fds` instead.
pub fn register(meter: &Meter, push: bool, prometheus: Option<&prometheus::Registry>) {
    let sampler = std::sync::Mutex::new(Probe::new());
    let sample: SampleFn = Arc::new(move || sampler.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sample());
    system::register_cpu_and_memory(meter, &sample);
    system::register_storage(meter, &sample);
    system::register_network_and_load(meter, &sample);
    process::register(meter, &sample, push, prometheus);
    process::register_runtime(meter, &sample);
}
