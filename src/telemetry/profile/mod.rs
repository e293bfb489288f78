//! CPU profiles: sampled by `pprof` (SIGPROF at [`FREQUENCY`] Hz, stacks symbolised when the
//! profile is taken), then encoded as the pprof protobuf (`pprof.rs`: what `go tool pprof`,
//! Pyroscope and Grafana read) or as the OpenTelemetry profiles signal (`otlp.rs`). One
//! profile is taken at a time in the process (the sampling timer is process-wide): [`start`]
//! answers `Busy` otherwise.

#[cfg(feature = "otlp")]
pub mod otlp;
pub mod pprof;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

/// Samples per second per busy CPU: the rate Go's runtime and most profilers use.
pub const FREQUENCY: i32 = 100;
/// The longest on-demand profile.
pub const MAX_SECONDS: u64 = 60;

/// Libraries whose code is never unwound from the signal handler: unwinding inside the C
/// library, the unwinder itself or the vDSO can deadlock or crash.
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    Busy(&'static str),
    #[error("cannot profile: {0}")]
    Sampler(#[from] ::pprof::Error),
    #[error("cannot draw the flame graph: {0}")]
    Flamegraph(String),
    #[error("cannot start the profiler's thread: {0}")]
    Thread(String),
}

/// The right to run the process's one sampler (its timer is process-wide).
static BUSY: AtomicBool = AtomicBool::new(false);

/// Held while sampling; the sampler stops when it drops.
pub struct Session {
    guard: Option<::pprof::ProfilerGuard<'static>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.guard.take());
        BUSY.store(false, Ordering::Release);
    }
}

/// Starts sampling, unless a profile is being taken already.
pub fn start() -> Result<Session, ProfileError> {
    if BUSY.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return Err(ProfileError::Busy(
            "a profile is being taken already (on demand, or by the continuous profiler); try again later",
        ));
    }
    // From here on the session frees the slot, even if the sampler does not start.
    let mut session = Session { guard: None };
    session.guard = Some(sampler()?);
    Ok(session)
}

fn sampler() -> Result<::pprof::ProfilerGuard<'static>, ::pprof::Error> {
    ::pprof::ProfilerGuardBuilder::default().frequency(FREQUENCY).blocklist(BLOCKLIST).build()
}

/// Samples for `duration` on the calling thread (a blocking one), then symbolises.
pub fn capture(duration: Duration) -> Result<::pprof::Report, ProfileError> {
    let session = start()?;
    std::thread::sleep(duration);
    session.report()
}

impl Session {
    /// Ends one period and begins the next without letting the sampler go: the period's
    /// samples, symbolised.
    pub fn next_period(&mut self) -> Result<::pprof::Report, ProfileError> {
        let report = self.report();
        drop(self.guard.take());
        self.guard = Some(sampler()?);
        report
    }

    /// What was sampled so far, symbolised.
    pub fn report(&self) -> Result<::pprof::Report, ProfileError> {
        let guard = self.guard.as_ref().expect("a started session has its sampler");
        Ok(guard.report().build()?)
    }
}

/// A flame graph of `report`, as SVG.
pub fn flamegraph(report: &::pprof::Report) -> Result<Vec<u8>, ProfileError> {
    if report.data.is_empty() {
        // inferno draws nothing at all for no samples; a reader should see why.
        let seconds = report.timing.duration.as_secs_f64();
        let text = format!("No CPU samples in {seconds:.1} s: the process was idle.");
        let svg = format!(
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="600" height="40" xmlns="http://www.w3.org/2000/svg"><text x="10" y="25" font-family="Verdana" font-size="14">{text}</text></svg>"#
        );
        return Ok(svg.into_bytes());
    }
    let mut svg = Vec::with_capacity(64 * 1024);
    report.flamegraph(&mut svg).map_err(|e| ProfileError::Flamegraph(e.to_string()))?;
    Ok(svg)
}

/// A report in tables, the shape both encodings share. Every table starts with a zero entry,
/// as the OTLP dictionary requires; pprof's 1-based ids are then the indices themselves.
#[derive(Debug)]
pub struct Stacks {
    pub strings: Vec<String>,
    /// (name, system name, file) as string indices.
    pub functions: Vec<(usize, usize, usize)>,
    /// (function, line).
    pub locations: Vec<(usize, i64)>,
    pub samples: Vec<Sample>,
    pub start: SystemTime,
    pub duration: Duration,
    /// Nanoseconds of CPU that one sample stands for.
    pub period: i64,
}

#[derive(Debug)]
pub struct Sample {
    /// Locations, the innermost (leaf) first.
    pub locations: Vec<usize>,
    pub count: i64,
    /// The thread's name, as a string index.
    pub thread: usize,
}

impl Stacks {
    pub fn from_report(report: &::pprof::Report) -> Self {
        let mut t = Tables::default();
        t.string("");
        t.functions.push((0, 0, 0));
        t.locations.push((0, 0));
        let mut samples = Vec::with_capacity(report.data.len());
        for (frames, count) in &report.data {
            let mut locations = Vec::with_capacity(frames.frames.len());
            for symbol in frames.frames.iter().flatten() {
                let function = t.function(&symbol.name(), &symbol.sys_name(), &symbol.filename());
                locations.push(t.location(function, i64::from(symbol.lineno())));
            }
            let thread = t.string(&frames.thread_name_or_id());
            samples.push(Sample { locations, count: *count as i64, thread });
        }
        let frequency = i64::from(report.timing.frequency.max(1));
        Stacks {
            strings: t.strings,
            functions: t.functions,
            locations: t.locations,
            samples,
            start: report.timing.start_time,
            duration: report.timing.duration,
            period: 1_000_000_000 / frequency,
        }
    }

    /// The string table with `names` added (each once): the encodings' own labels.
    pub fn strings_with<const N: usize>(&self, names: [&str; N]) -> (Vec<String>, [usize; N]) {
        let mut strings = self.strings.clone();
        let at = names.map(|name| {
            strings.iter().position(|x| x == name).unwrap_or_else(|| {
                strings.push(name.to_owned());
                strings.len() - 1
            })
        });
        (strings, at)
    }
}

#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_at: HashMap<String, usize>,
    functions: Vec<(usize, usize, usize)>,
    function_at: HashMap<(usize, usize, usize), usize>,
    locations: Vec<(usize, i64)>,
    location_at: HashMap<(usize, i64), usize>,
}

impl Tables {
    fn string(&mut self, s: &str) -> usize {
        if let Some(&i) = self.string_at.get(s) {
            return i;
        }
        self.strings.push(s.to_owned());
        self.string_at.insert(s.to_owned(), self.strings.len() - 1);
        self.strings.len() - 1
    }

    fn function(&mut self, name: &str, system_name: &str, file: &str) -> usize {
        let key = (self.string(name), self.string(system_name), self.string(file));
        *self.function_at.entry(key).or_insert_with(|| {
            self.functions.push(key);
            self.functions.len() - 1
        })
    }

    fn location(&mut self, function: usize, line: i64) -> usize {
        *self.location_at.entry((function, line)).or_insert_with(|| {
            self.locations.push((function, line));
            self.locations.len() - 1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real samples of this test's own busy loop: the profiler sees its caller.
    #[test]
    fn a_busy_loop_is_sampled_and_one_profile_runs_at_a_time() {
        let session = start().unwrap();
        assert!(matches!(start(), Err(ProfileError::Busy(_))));
        let until = std::time::Instant::now() + Duration::from_millis(400);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(std::hint::black_box(1442695040888963407));
        }
        std::hint::black_box(x);
        let stacks = Stacks::from_report(&session.report().unwrap());
        drop(session);
        assert!(start().is_ok(), "the slot is free again");
        assert!(!stacks.samples.is_empty(), "samples taken");
        assert_eq!(stacks.strings[0], "");
        assert_eq!(stacks.period, 10_000_000);
        for s in &stacks.samples {
            assert!(s.locations.iter().all(|&l| l > 0 && l < stacks.locations.len()));
        }
    }
}
