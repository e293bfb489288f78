//! Host, process and async-runtime metrics, observed when a reader collects (each Prometheus
//! scrape, each OTLP export). One sample of the machine is taken per collection and shared by
//! all the instruments, so a scrape costs one read of each /proc file, not one per series.
//!
//! Sources: sysinfo for CPU, memory, filesystems and network interfaces; `/proc/diskstats`
//! for disk bytes and operations (sysinfo lacks operations); `/proc/self/*` for the process;
//! Tokio's stable runtime metrics for the runtime.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use opentelemetry::{KeyValue, metrics::Meter};
use opentelemetry_semantic_conventions::{attribute as attr, metric as semconv};
use sysinfo::{Disks, Networks, System};

use super::metrics::{registry_gauge, registry_gauge_f64};

/// Collections closer together than this reuse the previous sample.
const FRESH: Duration = Duration::from_millis(500);
/// `/proc/self/stat` reports CPU time in clock ticks; Linux fixes USER_HZ at 100.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Default, Clone)]
struct Sample {
    cpu_utilization: f64,
    memory_total: u64,
    memory_used: u64,
    memory_free: u64,
    memory_available: u64,
    filesystems: Vec<Filesystem>,
    disks: Vec<DiskStat>,
    networks: Vec<(String, u64, u64)>,
    load: [f64; 3],
    process: ProcessStat,
    process_cpu_utilization: f64,
    runtime_utilization: f64,
    uptime: f64,
}

#[derive(Clone)]
struct Filesystem {
    device: String,
    mountpoint: String,
    fs_type: String,
    total: u64,
    free: u64,
}

#[derive(Clone)]
struct DiskStat {
    device: String,
    reads: u64,
    writes: u64,
    read_bytes: u64,
    written_bytes: u64,
}

#[derive(Default, Clone, Copy)]
struct ProcessStat {
    user_seconds: f64,
    system_seconds: f64,
    threads: i64,
    rss: i64,
    virtual_bytes: i64,
    fds: i64,
}

struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
    runtime: Option<tokio::runtime::Handle>,
    started: Instant,
    last: Option<(Instant, Sample)>,
    previous_busy: Duration,
}

impl Sampler {
    fn sample(&mut self) -> Sample {
        let now = Instant::now();
        if let Some((at, sample)) = &self.last
            && now.duration_since(*at) < FRESH
        {
            return sample.clone();
        }
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let load = System::load_average();
        let process = read_process();
        let (process_cpu_utilization, runtime_utilization) = match &self.last {
            Some((at, previous)) => {
                let elapsed = now.duration_since(*at).as_secs_f64().max(1e-9);
                let cpus = self.system.cpus().len().max(1) as f64;
                let cpu = (process.user_seconds + process.system_seconds
                    - previous.process.user_seconds
                    - previous.process.system_seconds)
                    / elapsed
                    / cpus;
                let busy = self.runtime_busy();
                let workers = self.runtime.as_ref().map_or(1, |r| r.metrics().num_workers()).max(1) as f64;
                let runtime = (busy.saturating_sub(self.previous_busy)).as_secs_f64() / elapsed / workers;
                self.previous_busy = busy;
                (cpu.clamp(0.0, 1.0), runtime.clamp(0.0, 1.0))
            }
            None => {
                self.previous_busy = self.runtime_busy();
                (0.0, 0.0)
            }
        };
        let sample = Sample {
            cpu_utilization: f64::from(self.system.global_cpu_usage()) / 100.0,
            memory_total: self.system.total_memory(),
            memory_used: self.system.used_memory(),
            memory_free: self.system.free_memory(),
            memory_available: self.system.available_memory(),
            filesystems: self
                .disks
                .list()
                .iter()
                .map(|d| Filesystem {
                    device: d.name().to_string_lossy().into_owned(),
                    mountpoint: d.mount_point().to_string_lossy().into_owned(),
                    fs_type: d.file_system().to_string_lossy().into_owned(),
                    total: d.total_space(),
                    free: d.available_space(),
                })
                .collect(),
            disks: read_diskstats(),
            networks: self
                .networks
                .list()
                .iter()
                .map(|(name, data)| (name.clone(), data.total_received(), data.total_transmitted()))
                .collect(),
            load: [load.one, load.five, load.fifteen],
            process,
            process_cpu_utilization,
            runtime_utilization,
            uptime: self.started.elapsed().as_secs_f64(),
        };
        self.last = Some((now, sample.clone()));
        sample
    }

    fn runtime_busy(&self) -> Duration {
        let Some(runtime) = &self.runtime else { return Duration::ZERO };
        let m = runtime.metrics();
        (0..m.num_workers()).map(|w| m.worker_total_busy_duration(w)).sum()
    }
}

/// Whole-disk devices only (sda, vda, nvme0n1), not their partitions, so bytes are not counted twice.
fn read_diskstats() -> Vec<DiskStat> {
    let Ok(text) = std::fs::read_to_string("/proc/diskstats") else { return Vec::new() };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let device = f[2];
        let is_partition = std::path::Path::new(&format!("/sys/class/block/{device}/partition")).exists();
        if is_partition || device.starts_with("loop") || device.starts_with("ram") {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        out.push(DiskStat {
            device: device.to_owned(),
            reads: n(3),
            read_bytes: n(5) * 512,
            writes: n(7),
            written_bytes: n(9) * 512,
        });
    }
    out
}

fn read_process() -> ProcessStat {
    let mut p = ProcessStat::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The command name may hold spaces; fields are counted after its closing parenthesis.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            p.user_seconds = n(11) / TICKS_PER_SECOND;
            p.system_seconds = n(12) / TICKS_PER_SECOND;
            p.threads = n(17) as i64;
            p.virtual_bytes = n(20) as i64;
            p.rss = n(21) as i64 * 4096;
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        p.fds = dir.count() as i64;
    }
    p
}

/// Registers every host, process and runtime instrument on `meter`.
///
/// `process.thread.count` and `process.unix.file_descriptor.count` end in `_count`, which the
/// Prometheus exposition reserves for histograms and summaries (promtool rejects them). So
/// they are OpenTelemetry instruments only when a push exporter (OTLP, console) is on, and the
/// Prometheus registry gets the conventional `process_threads` and `process_open_fds` instead.
pub fn register(meter: &Meter, push: bool, prometheus: Option<&prometheus::Registry>) {
    let sampler = Arc::new(Mutex::new(Sampler {
        system: System::new(),
        disks: Disks::new_with_refreshed_list(),
        networks: Networks::new_with_refreshed_list(),
        runtime: tokio::runtime::Handle::try_current().ok(),
        started: Instant::now(),
        last: None,
        previous_busy: Duration::ZERO,
    }));
    let sample = move || sampler.lock().unwrap_or_else(PoisonError::into_inner).sample();
    let s = sample.clone();
    meter
        .f64_observable_gauge(semconv::SYSTEM_CPU_UTILIZATION)
        .with_unit("1")
        .with_description("Share of CPU time not idle, all logical CPUs together (0 to 1).")
        .with_callback(move |o| o.observe(s().cpu_utilization, &[]))
        .build();
    let s = sample.clone();
    meter
        .i64_observable_up_down_counter(semconv::SYSTEM_MEMORY_USAGE)
        .with_unit("By")
        .with_description("Memory in use and free.")
        .with_callback(move |o| {
            let s = s();
            o.observe(s.memory_used as i64, &[KeyValue::new(attr::SYSTEM_MEMORY_STATE, "used")]);
            o.observe(s.memory_free as i64, &[KeyValue::new(attr::SYSTEM_MEMORY_STATE, "free")]);
        })
        .build();
    let s = sample.clone();
    meter
        .f64_observable_gauge(semconv::SYSTEM_MEMORY_UTILIZATION)
        .with_unit("1")
        .with_description("Share of memory in use (0 to 1).")
        .with_callback(move |o| {
            let s = s();
            let total = s.memory_total.max(1) as f64;
            o.observe(s.memory_used as f64 / total, &[KeyValue::new(attr::SYSTEM_MEMORY_STATE, "used")]);
            o.observe(s.memory_free as f64 / total, &[KeyValue::new(attr::SYSTEM_MEMORY_STATE, "free")]);
        })
        .build();
    let s = sample.clone();
    meter
        .i64_observable_up_down_counter(semconv::SYSTEM_MEMORY_LIMIT)
        .with_unit("By")
        .with_description("Total memory.")
        .with_callback(move |o| o.observe(s().memory_total as i64, &[]))
        .build();
    let s = sample.clone();
    meter
        .i64_observable_up_down_counter(semconv::SYSTEM_MEMORY_LINUX_AVAILABLE)
        .with_unit("By")
        .with_description("Memory available for starting new applications, without swapping.")
        .with_callback(move |o| o.observe(s().memory_available as i64, &[]))
        .build();
    let s = sample.clone();
    meter
        .i64_observable_up_down_counter(semconv::SYSTEM_FILESYSTEM_USAGE)
        .with_unit("By")
        .with_description("Filesystem space used and free, per mount.")
        .with_callback(move |o| {
            for fs in s().filesystems {
                for (state, bytes) in [("used", fs.total - fs.free.min(fs.total)), ("free", fs.free)] {
                    o.observe(bytes as i64, &fs_attrs(&fs, state));
                }
            }
        })
        .build();
    let s = sample.clone();
    meter
        .f64_observable_gauge(semconv::SYSTEM_FILESYSTEM_UTILIZATION)
        .with_unit("1")
        .with_description("Share of filesystem space used, per mount (0 to 1).")
        .with_callback(move |o| {
            for fs in s().filesystems.iter().filter(|fs| fs.total > 0) {
                let used = (fs.total - fs.free.min(fs.total)) as f64 / fs.total as f64;
                o.observe(used, &fs_attrs(fs, "used"));
            }
        })
        .build();
    let s = sample.clone();
    meter
        .u64_observable_counter(semconv::SYSTEM_DISK_IO)
        .with_unit("By")
        .with_description("Bytes read from and written to each disk.")
        .with_callback(move |o| {
            for d in s().disks {
                o.observe(d.read_bytes, &disk_attrs(&d.device, "read"));
                o.observe(d.written_bytes, &disk_attrs(&d.device, "write"));
            }
        })
        .build();
    let s = sample.clone();
    meter
        .u64_observable_counter(semconv::SYSTEM_DISK_OPERATIONS)
        .with_unit("{operation}")
        .with_description("Read and write operations completed by each disk.")
        .with_callback(move |o| {
            for d in s().disks {
                o.observe(d.reads, &disk_attrs(&d.device, "read"));
                o.observe(d.writes, &disk_attrs(&d.device, "write"));
            }
        })
        .build();
    let s = sample.clone();
    meter
        .u64_observable_counter(semconv::SYSTEM_NETWORK_IO)
        .with_unit("By")
        .with_description("Bytes received and transmitted per network interface.")
        .with_callback(move |o| {
            for (name, rx, tx) in s().networks {
                let at = |dir: &'static str| {
                    [
                        KeyValue::new(attr::NETWORK_INTERFACE_NAME, name.clone()),
                        KeyValue::new(attr::NETWORK_IO_DIRECTION, dir),
                    ]
                };
                o.observe(rx, &at("receive"));
                o.observe(tx, &at("transmit"));
            }
        })
        .build();
    let s = sample.clone();
    registry_gauge_f64(meter, "draw64.host.load_average", move |o| {
        let l = s().load;
        for (window, v) in [("1m", l[0]), ("5m", l[1]), ("15m", l[2])] {
            o.observe(v, &[KeyValue::new("draw64.load.window", window)]);
        }
    });

    // The process.
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
        let collector = ProcessCounts::new(Box::new(sample.clone()));
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
    sample: Box<dyn Fn() -> Sample + Send + Sync>,
}

impl ProcessCounts {
    fn new(sample: Box<dyn Fn() -> Sample + Send + Sync>) -> Self {
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

fn fs_attrs(fs: &Filesystem, state: &'static str) -> [KeyValue; 4] {
    [
        KeyValue::new(attr::SYSTEM_DEVICE, fs.device.clone()),
        KeyValue::new(attr::SYSTEM_FILESYSTEM_MOUNTPOINT, fs.mountpoint.clone()),
        KeyValue::new(attr::SYSTEM_FILESYSTEM_TYPE, fs.fs_type.clone()),
        KeyValue::new(attr::SYSTEM_FILESYSTEM_STATE, state),
    ]
}

fn disk_attrs(device: &str, direction: &'static str) -> [KeyValue; 2] {
    [KeyValue::new(attr::SYSTEM_DEVICE, device.to_owned()), KeyValue::new(attr::DISK_IO_DIRECTION, direction)]
}
