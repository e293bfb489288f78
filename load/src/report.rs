//! What a run measured: printed as text, or as one JSON line.

use std::{collections::BTreeMap, fmt, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to a minute, with 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, took: Duration) {
    h.saturating_record((took.as_micros() as u64).max(1));
}

#[derive(Serialize, Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        let ms = |us: u64| us as f64 / 1000.0;
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
    }
}

/// For fan-out: what arrived against what should have.
#[derive(Serialize, Debug, Default)]
pub struct Delivery {
    /// Changes acknowledged to writers × subscribers.
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Receipts of one writer's changes out of their sending order.
    pub reordered: u64,
    /// Sends more than 1 ms behind their schedule, and the worst lateness.
    pub late_sends: u64,
    pub max_late_ms: f64,
    /// Subscribers the server closed (e.g. 1013 for lagging).
    pub closed_subscribers: u64,
}

/// The server process, when its pid was given.
#[derive(Serialize, Debug, Default)]
pub struct ServerUse {
    /// CPU time over the load phase, as a share of one core.
    pub cpu_cores: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
}

#[derive(Serialize, Debug, Default)]
pub struct Report {
    pub scenario: &'static str,
    pub url: String,
    pub duration_s: f64,
    /// Operations completed (requests answered, changes sent, sockets opened).
    pub operations: u64,
    pub per_second: f64,
    pub latency: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerUse>,
    /// Idle: server memory per open socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_socket: Option<f64>,
    /// Other figures a scenario measures (e.g. read latency in `users`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<&'static str, f64>,
    pub errors: BTreeMap<String, u64>,
    /// Scenario parameters, for the record.
    pub params: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    pub fn merge_errors(&mut self, errors: BTreeMap<String, u64>) {
        for (kind, n) in errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(f, "{} against {} ({}) for {:.1} s", self.scenario, self.url, params.join(" "), self.duration_s)?;
        writeln!(f, "  operations  {} ({:.0}/s)", self.operations, self.per_second)?;
        if let Some(l) = &self.latency {
            writeln!(
                f,
                "  latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples)",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            )?;
        }
        if let Some(d) = &self.delivery {
            writeln!(
                f,
                "  delivery    {} of {} received ({:.2} %), {} missing, {} duplicates, {} reordered, {} subscribers closed",
                d.received,
                d.expected,
                if d.expected > 0 { d.received as f64 * 100.0 / d.expected as f64 } else { 100.0 },
                d.missing,
                d.duplicates,
                d.reordered,
                d.closed_subscribers
            )?;
            writeln!(f, "  schedule    {} sends late by > 1 ms (worst {:.2} ms)", d.late_sends, d.max_late_ms)?;
        }
        if let Some(s) = &self.server {
            writeln!(
                f,
                "  server      {:.2} cores busy; RSS {:.1} MB -> {:.1} MB",
                s.cpu_cores,
                s.rss_before_bytes as f64 / 1e6,
                s.rss_after_bytes as f64 / 1e6
            )?;
        }
        if let Some(b) = self.bytes_per_socket {
            writeln!(f, "  memory      {:.0} bytes ({:.1} KB) per open socket", b, b / 1024.0)?;
        }
        for (name, value) in &self.figures {
            writeln!(f, "  {name:<11} {value:.2}")?;
        }
        if self.errors.is_empty() {
            writeln!(f, "  errors      none")
        } else {
            let errors: Vec<String> = self.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            writeln!(f, "  errors      {}", errors.join(", "))
        }
    }
}

/// CPU time and RSS of a process, from /proc (Linux).
pub struct ProcSample {
    at: std::time::Instant,
    cpu_ticks: u64,
    pub rss_bytes: u64,
}

impl ProcSample {
    pub fn take(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(ProcSample { at: std::time::Instant::now(), cpu_ticks: utime + stime, rss_bytes: rss_kb * 1024 })
    }

    pub fn since(&self, before: &ProcSample) -> ServerUse {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let secs = (self.at - before.at).as_secs_f64().max(1e-9);
        ServerUse {
            cpu_cores: (self.cpu_ticks.saturating_sub(before.cpu_ticks)) as f64 / hz / secs,
            rss_before_bytes: before.rss_bytes,
            rss_after_bytes: self.rss_bytes,
        }
    }
}
