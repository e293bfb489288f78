//! The machine: CPU, memory, filesystems, disks, network interfaces, load average.

use opentelemetry::{KeyValue, metrics::Meter};
use opentelemetry_semantic_conventions::{attribute as attr, metric as semconv};

use super::{SampleFn, sample::Filesystem};
use crate::telemetry::metrics::registry_gauge_f64;

pub fn register_cpu_and_memory(meter: &Meter, sample: &SampleFn) {
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
}

pub fn register_storage(meter: &Meter, sample: &SampleFn) {
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
}

pub fn register_network_and_load(meter: &Meter, sample: &SampleFn) {
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
