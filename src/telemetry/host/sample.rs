//! One sample of the machine and this process, read from sysinfo, `/proc/diskstats`,
//! `/proc/self/*` and Tokio's runtime metrics.

use std::time::{Duration, Instant};

use sysinfo::{Disks, Networks, System};

/// Collections closer together than this reuse the previous sample.
pub(super) const FRESH: Duration = Duration::from_millis(500);
/// `/proc/self/stat` reports CPU time in clock ticks; Linux fixes USER_HZ at 100.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Default, Clone)]
pub(super) struct Sample {
    pub(super) cpu_utilization: f64,
    pub(super) memory_total: u64,
    pub(super) memory_used: u64,
    pub(super) memory_free: u64,
    pub(super) memory_available: u64,
    pub(super) filesystems: Vec<Filesystem>,
    pub(super) disks: Vec<DiskStat>,
    pub(super) networks: Vec<(String, u64, u64)>,
    pub(super) load: [f64; 3],
    pub(super) process: ProcessStat,
    pub(super) process_cpu_utilization: f64,
    pub(super) runtime_utilization: f64,
    pub(super) uptime: f64,
}

#[derive(Clone)]
pub(super) struct Filesystem {
    pub(super) device: String,
    pub(super) mountpoint: String,
    pub(super) fs_type: String,
    pub(super) total: u64,
    pub(super) free: u64,
}

#[derive(Clone)]
pub(super) struct DiskStat {
    pub(super) device: String,
    pub(super) reads: u64,
    pub(super) writes: u64,
    pub(super) read_bytes: u64,
    pub(super) written_bytes: u64,
}

#[derive(Default, Clone, Copy)]
pub(super) struct ProcessStat {
    pub(super) user_seconds: f64,
    pub(super) system_seconds: f64,
    pub(super) threads: i64,
    pub(super) rss: i64,
    pub(super) virtual_bytes: i64,
    pub(super) fds: i64,
}

pub(super) struct Probe {
    pub(super) system: System,
    pub(super) disks: Disks,
    pub(super) networks: Networks,
    pub(super) runtime: Option<tokio::runtime::Handle>,
    pub(super) started: Instant,
    pub(super) last: Option<(Instant, Sample)>,
    pub(super) previous_busy: Duration,
}

impl Probe {
    pub(super) fn new() -> Self {
        Self {
            system: System::new(),
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            started: Instant::now(),
            last: None,
            previous_busy: Duration::ZERO,
        }
    }

    pub(super) fn sample(&mut self) -> Sample {
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
