//! The flag file on disk: read at start (a file with a mistake refuses the start), then
//! watched — read once a second and applied when its text changed (a few hundred bytes; size
//! and modification time can both stay the same across a quick edit) — and a changed file with
//! a mistake is logged and leaves the faults as they were. Also the per-flag
//! gauge and the leak, which needs a task of its own.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Fault, LEAK_CAP_MIB, Setting, flagd};

/// Why the flag file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the fault flag file {path}: {why}")]
pub struct FlagFileError {
    path: String,
    why: String,
}

type Read = Result<std::collections::BTreeMap<Fault, flagd::FromFile>, FlagFileError>;

fn parse(path: &Path, text: &std::io::Result<String>) -> Read {
    let error = |why: String| FlagFileError { path: path.display().to_string(), why };
    let text = text.as_ref().map_err(|e| error(e.to_string()))?;
    flagd::parse(text).map_err(error)
}

/// Applies the file now, then follows it until the runtime ends.
pub fn start(path: Option<PathBuf>) -> Result<(), FlagFileError> {
    // Once a process (in-process tests build several apps): the faults are the process's.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let meter = opentelemetry::global::meter("draw64");
        crate::telemetry::metrics::registry_gauge_f64(&meter, "draw64.faults.active", |o| {
            let active = super::active();
            for fault in Fault::ALL {
                let level = active.get(&fault).map_or(0.0, |(s, _)| s.level());
                o.observe(level, &[opentelemetry::KeyValue::new("feature_flag.key", fault.key())]);
            }
        });
        tokio::spawn(leak());
    });
    let Some(path) = path else { return Ok(()) };
    let mut seen = std::fs::read_to_string(&path);
    super::set_from_file(parse(&path, &seen)?);
    tracing::info!(path = %path.display(), "fault flags read; watching the file for changes");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = std::fs::read_to_string(&path);
            let same = match (&now, &seen) {
                (Ok(a), Ok(b)) => a == b,
                (Err(a), Err(b)) => a.kind() == b.kind(),
                _ => false,
            };
            if same {
                continue;
            }
            seen = now;
            match parse(&path, &seen) {
                Ok(faults) => super::set_from_file(faults),
                Err(e) => {
                    tracing::error!(error = %e, "fault flag file changed but cannot be used; the faults stay as they were")
                }
            }
        }
    });
    Ok(())
}

/// `memoryLeak`: each second, a sixtieth of the MiB a minute it is set to, written to (so it
/// is resident), held until the fault is off, and never more than 256 MiB.
async fn leak() {
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some((Setting::Amount(per_minute), _)) = super::setting(Fault::MemoryLeak) else {
            if !held.is_empty() {
                held = Vec::new();
            }
            continue;
        };
        let mib = 1 << 20;
        let held_bytes: usize = held.iter().map(Vec::len).sum();
        let cap = (LEAK_CAP_MIB as usize) * mib;
        let more = ((per_minute / 60.0) * mib as f64) as usize;
        let more = more.min(cap.saturating_sub(held_bytes));
        if more > 0 {
            held.push(vec![0xA5; more]);
        }
    }
}
