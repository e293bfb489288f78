//! This process (CPU time, memory, threads, descriptors, uptime) and its async runtime.

use opentelemetry::{KeyValue, metrics::Meter};
use opentelemetry_semantic_conventions::{attribute as attr, metric as semconv};

use super::SampleFn;
use crate::telemetry::metrics::{registry_gauge, registry_gauge_f64};

pub fn register(meter: &Meter, sample: &SampleFn, push: bool, prometheus: Option<&prometheus::Registry>) {
    let s = sample.clone();
    meter
        .f64_observable_counter(semconv::PROCESS_CPU_TIME)
        .with_unit("s")
        .with_description("CPU time used by this process, by mode.")
        .with_callback(move |o| {
            let p = s().process;
            o.observe(p.user_seconds, &[KeyValue::new(attr::CPU_MODE, "user")]);
            o.observe(p.system_seconds, &[KeyValue::new(attr::CPU_MODE, "system")]);
        })
        .build();
    let s = sample.clone();
    meter
        .f64_observable_gauge(semconv::PROCESS_CPU_UTILIZATION)
        .with_unit("1")
        .with_description("Share of all CPUs this process used since the previous collection (0 to 1).")
        .with_callback(move |o| o.observe(s().process_cpu_utilization, &[]))
        .build();
    let s = sample.clone();
    meter
        .i64_observable_up_down_counter(semconv::PROCESS_MEMORY_USAGE)
        .with_unit("By")
        .with_description("Resident memory of this process.")
        .with_callback(move |o| o.observe(s().process.rss, &[]))
        .build();
    let s = sample.clone();
    meter
        .i64_observable_up_down_counter(semconv::PROCESS_MEMORY_VIRTUAL)
        .with_unit("By")
        .with_description("Virtual memory of this process.")
        .with_callback(move |o| o.observe(s().process.virtual_bytes, &[]))
        .build();
    if push {
        let s = sample.clone();
        meter
            .i64_observable_up_down_counter(semconv::PROCESS_THREAD_COUNT)
            .with_unit("{thread}")
            .with_description("Threads of this process.")
            .with_callback(move |o| o.observe(s().process.threads, &[]))
            .build();
        let s = sample.clone();
        meter
            .i64_observable_up_down_counter(semconv::PROCESS_UNIX_FILE_DESCRIPTOR_COUNT)
            .with_unit("{file_descriptor}")
            .with_description("Open file descriptors of this process (sockets included).")
            .with_callback(move |o| o.observe(s().process.fds, &[]))
            .build();
    }
    if let Some(registry) = prometheus {
        let collector = ProcessCounts::new(sample.clone());
        if let Err(e) = registry.register(Box::new(collector)) {
            tracing::warn!(error = %e, "cannot register process_threads and process_open_fds");
        }
    }
    let s = sample.clone();
    meter
        .f64_observable_gauge(semconv::PROCESS_UPTIME)
        .with_unit("s")
        .with_description("Time since this process started.")
        .with_callback(move |o| o.observe(s().uptime, &[]))
        .build();
}

pub fn register_runtime(meter: &Meter, sample: &SampleFn) {
    // The async runtime.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let gauge = |name: &'static str, read: fn(&tokio::runtime::RuntimeMetrics) -> usize| {
            let runtime = runtime.clone();
            registry_gauge(meter, name, move || read(&runtime.metrics()) as u64);
        };
        gauge("draw64.runtime.workers", tokio::runtime::RuntimeMetrics::num_workers);
        gauge("draw64.runtime.tasks", tokio::runtime::RuntimeMetrics::num_alive_tasks);
        gauge("draw64.runtime.global_queue.depth", tokio::runtime::RuntimeMetrics::global_queue_depth);
        let s = sample.clone();
        registry_gauge_f64(meter, "draw64.runtime.worker.utilization", move |o| {
            o.observe(s().runtime_utilization, &[])
        });
    }
}

/// `process_threads` and `process_open_fds`, read at each scrape.
struct ProcessCounts {
    threads: prometheus::IntGauge,
    fds: prometheus::IntGauge,
    sample: SampleFn,
}

impl ProcessCounts {
    fn new(sample: SampleFn) -> Self {
        let gauge = |name, help| prometheus::IntGauge::new(name, help).expect("valid metric name");
        Self {
            threads: gauge("process_threads", "Threads of this process (OpenTelemetry: process.thread.count)."),
            fds: gauge(
                "process_open_fds",
                "Open file descriptors of this process (OpenTelemetry: process.unix.file_descriptor.count).",
            ),
            sample,
        }
    }
}

impl prometheus::core::Collector for ProcessCounts {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.threads.desc().into_iter().chain(self.fds.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let p = (self.sample)().process;
        self.threads.set(p.threads);
        self.fds.set(p.fds);
        self.threads.collect().into_iter().chain(self.fds.collect()).collect()
    }
}
