//! Fault injection, for teaching and for proving the alerts: faults an operator switches on
//! at run time — from a flagd flag file (`--fault-flags`, the OpenTelemetry Demo's format,
//! watched and reloaded) or over `PUT /admin/faults/{flag}` (admin token) — and that the
//! service then suffers where a real one would: slow or failing commits, failing readiness,
//! slow or dropped fan-out to a share of subscribers, a bounded memory leak, CPU burnt per
//! request, slow PNG rendering. All off by default.
//!
//! Process-wide, like the fire drills: the hooks sit in layers that share nothing else (the
//! writer thread, the fan-out, the HTTP handlers), and with no fault on each is one relaxed
//! atomic load. An active fault is never a mystery: every change is logged, each flag has a
//! gauge series, `/readyz` names the active ones, and the affected spans carry
//! `feature_flag.key` and `feature_flag.result.variant`.

pub mod flagd;
pub mod watch;

use std::{
    collections::BTreeMap,
    sync::{
        RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

/// The faults Draw64 knows, by their flag keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    SlowCommits,
    FailingCommits,
    FailingReadiness,
    SlowFanout,
    DroppedFanout,
    MemoryLeak,
    CpuBurn,
    SlowPng,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::SlowCommits,
        Fault::FailingCommits,
        Fault::FailingReadiness,
        Fault::SlowFanout,
        Fault::DroppedFanout,
        Fault::MemoryLeak,
        Fault::CpuBurn,
        Fault::SlowPng,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Fault::SlowCommits => "slowCommits",
            Fault::FailingCommits => "failingCommits",
            Fault::FailingReadiness => "failingReadiness",
            Fault::SlowFanout => "slowFanout",
            Fault::DroppedFanout => "droppedFanout",
            Fault::MemoryLeak => "memoryLeak",
            Fault::CpuBurn => "cpuBurn",
            Fault::SlowPng => "slowPng",
        }
    }

    pub fn from_key(key: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.key() == key)
    }

    /// What a variant's value is, for errors and the docs.
    pub fn value_shape(self) -> &'static str {
        match self {
            Fault::SlowCommits | Fault::SlowFanout => r#"{"delayMs": 0..60000, "share": 0..1}"#,
            Fault::FailingCommits | Fault::DroppedFanout => "a share, 0..1",
            Fault::FailingReadiness => "true or false",
            Fault::MemoryLeak => "MiB leaked a minute, 0..256 (at most 256 MiB held)",
            Fault::CpuBurn => "microseconds of CPU a request, 0..100000",
            Fault::SlowPng => "milliseconds added to each PNG, 0..60000",
        }
    }
}

/// A fault's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Setting {
    Switch(bool),
    /// The share of commits or subscribers affected.
    Share(f64),
    /// Milliseconds, microseconds or MiB a minute, by the fault.
    Amount(f64),
    Delay {
        ms: f64,
        share: f64,
    },
}

/// Most a leak holds, whatever it is set to.
pub const LEAK_CAP_MIB: f64 = 256.0;

impl Setting {
    /// A variant's JSON value, checked against what `fault` takes.
    pub fn parse(fault: Fault, value: &Value) -> Result<Setting, String> {
        let shape = || format!("expected {}", fault.value_shape());
        let within = |v: Option<f64>, max: f64, what: &str| match v {
            Some(v) if (0.0..=max).contains(&v) => Ok(v),
            Some(v) => Err(format!("{what} {v} is not between 0 and {max}")),
            None => Err(shape()),
        };
        match fault {
            Fault::FailingReadiness => value.as_bool().map(Setting::Switch).ok_or_else(shape),
            Fault::FailingCommits | Fault::DroppedFanout => {
                within(value.as_f64(), 1.0, "the share").map(Setting::Share)
            }
            Fault::SlowCommits | Fault::SlowFanout => {
                let object = value.as_object().ok_or_else(shape)?;
                if let Some(other) = object.keys().find(|k| !matches!(k.as_str(), "delayMs" | "share")) {
                    return Err(format!("unknown field {other:?}: {}", shape()));
                }
                let ms = within(object.get("delayMs").and_then(Value::as_f64), 60_000.0, "delayMs")?;
                let share = within(object.get("share").and_then(Value::as_f64), 1.0, "the share")?;
                Ok(Setting::Delay { ms, share })
            }
            Fault::MemoryLeak => match value.as_f64() {
                Some(v) if v > LEAK_CAP_MIB => Err(format!("{v} MiB a minute: at most 256")),
                v => within(v, LEAK_CAP_MIB, "MiB a minute").map(Setting::Amount),
            },
            Fault::CpuBurn => within(value.as_f64(), 100_000.0, "microseconds").map(Setting::Amount),
            Fault::SlowPng => within(value.as_f64(), 60_000.0, "milliseconds").map(Setting::Amount),
        }
    }

    pub fn is_off(&self) -> bool {
        match *self {
            Setting::Switch(on) => !on,
            Setting::Share(v) | Setting::Amount(v) => v == 0.0,
            Setting::Delay { ms, share } => ms == 0.0 || share == 0.0,
        }
    }

    /// The gauge's value: the share, amount or switch in force (0 when off).
    pub fn level(&self) -> f64 {
        match *self {
            Setting::Switch(on) => f64::from(u8::from(on)),
            Setting::Share(v) | Setting::Amount(v) => v,
            Setting::Delay { ms, share } => ms * share,
        }
    }

    pub fn to_json(self) -> Value {
        match self {
            Setting::Switch(on) => Value::Bool(on),
            Setting::Share(v) | Setting::Amount(v) => serde_json::json!(v),
            Setting::Delay { ms, share } => serde_json::json!({"delayMs": ms, "share": share}),
        }
    }
}

/// Where an active fault's setting came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The flag file's default variant (its name).
    File(String),
    /// `PUT /admin/faults/{flag}`, which wins over the file until it is deleted.
    Admin,
}

impl Source {
    /// The `feature_flag.result.variant` of spans and log lines.
    pub fn variant(&self) -> &str {
        match self {
            Source::File(variant) => variant,
            Source::Admin => "admin",
        }
    }
}

#[derive(Default)]
struct Faults {
    file: BTreeMap<Fault, flagd::FromFile>,
    admin: BTreeMap<Fault, Setting>,
}

impl Faults {
    /// One fault's setting in force, if it is on: an admin's wins over the file's.
    fn get(&self, fault: Fault) -> Option<(Setting, Source)> {
        let found = match self.admin.get(&fault) {
            Some(setting) => Some((*setting, Source::Admin)),
            None => self.file.get(&fault).map(|f| (f.setting, Source::File(f.variant.clone()))),
        };
        found.filter(|(setting, _)| !setting.is_off())
    }

    fn active(&self) -> BTreeMap<Fault, (Setting, Source)> {
        let mut active: BTreeMap<_, _> =
            self.file.iter().map(|(f, s)| (*f, (s.setting, Source::File(s.variant.clone())))).collect();
        for (fault, setting) in &self.admin {
            active.insert(*fault, (*setting, Source::Admin));
        }
        active.retain(|_, (setting, _)| !setting.is_off());
        active
    }
}

static ANY: AtomicBool = AtomicBool::new(false);
static FAULTS: RwLock<Faults> = RwLock::new(Faults { file: BTreeMap::new(), admin: BTreeMap::new() });

fn faults() -> std::sync::RwLockReadGuard<'static, Faults> {
    FAULTS.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The faults in force, with where each came from.
pub fn active() -> BTreeMap<Fault, (Setting, Source)> {
    if !ANY.load(Ordering::Relaxed) {
        return BTreeMap::new();
    }
    faults().active()
}

/// `fault`'s setting, if it is on.
pub fn setting(fault: Fault) -> Option<(Setting, Source)> {
    if !ANY.load(Ordering::Relaxed) {
        return None;
    }
    faults().get(fault)
}

/// Changes the faults, then logs each one whose setting changed.
fn change(update: impl FnOnce(&mut Faults)) {
    let mut faults = FAULTS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = faults.active();
    update(&mut faults);
    let after = faults.active();
    ANY.store(!after.is_empty(), Ordering::Relaxed);
    drop(faults);
    for fault in Fault::ALL {
        match (before.get(&fault), after.get(&fault)) {
            (b, a) if b == a => {}
            (_, Some((setting, source))) => tracing::warn!(
                feature_flag.key = fault.key(),
                feature_flag.result.variant = source.variant(),
                value = %setting.to_json(),
                "fault injection: {} is on", fault.key()
            ),
            (_, None) => tracing::warn!(feature_flag.key = fault.key(), "fault injection: {} is off", fault.key()),
        }
    }
}

/// What the flag file now says (replacing what it said before).
pub fn set_from_file(file: BTreeMap<Fault, flagd::FromFile>) {
    change(|f| f.file = file);
}

/// An operator's setting over HTTP; `None` gives the fault back to the file.
pub fn set_by_admin(fault: Fault, setting: Option<Setting>) {
    change(|f| match setting {
        Some(s) => drop(f.admin.insert(fault, s)),
        None => drop(f.admin.remove(&fault)),
    });
}

/// Whether a thing picked at random falls in `share`.
fn hit(share: f64) -> bool {
    share >= 1.0 || fastrand::f64() < share
}

/// A delay for this commit (`slowCommits`).
pub fn commit_delay() -> Option<Duration> {
    match setting(Fault::SlowCommits)? {
        (Setting::Delay { ms, share }, _) if hit(share) => Some(Duration::from_secs_f64(ms / 1000.0)),
        _ => None,
    }
}

/// Whether this commit fails (`failingCommits`).
pub fn commit_fails() -> bool {
    matches!(setting(Fault::FailingCommits), Some((Setting::Share(share), _)) if hit(share))
}

/// Whether readiness fails (`failingReadiness`).
pub fn readiness_fails() -> bool {
    setting(Fault::FailingReadiness).is_some()
}

/// What happens to a subscriber's events: the share of subscribers is chosen by `subscriber`
/// (any number stable for the subscriber), so the same ones suffer for as long as it lasts.
#[derive(Debug, PartialEq)]
pub enum Fate {
    Deliver,
    Delay(Duration),
    Drop,
}

pub fn fanout_fate(subscriber: u64) -> Fate {
    if !ANY.load(Ordering::Relaxed) {
        return Fate::Deliver;
    }
    let faults = faults();
    fate(faults.get(Fault::DroppedFanout), faults.get(Fault::SlowFanout), subscriber)
}

fn fate(dropped: Option<(Setting, Source)>, slow: Option<(Setting, Source)>, subscriber: u64) -> Fate {
    // A stable place in 0..1 for the subscriber (Fibonacci hashing spreads sequential ids).
    let place = (subscriber.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    if let Some((Setting::Share(share), _)) = dropped
        && place < share
    {
        return Fate::Drop;
    }
    match slow {
        Some((Setting::Delay { ms, share }, _)) if place < share => Fate::Delay(Duration::from_secs_f64(ms / 1000.0)),
        _ => Fate::Deliver,
    }
}

/// CPU to burn in this request (`cpuBurn`).
pub fn cpu_burn() -> Option<Duration> {
    match setting(Fault::CpuBurn)? {
        (Setting::Amount(us), _) => Some(Duration::from_secs_f64(us / 1e6)),
        _ => None,
    }
}

/// Spins until this thread has spent `length` of CPU: the point is to cost CPU, as a slow
/// algorithm would, and a slow algorithm costs the same CPU however busy the machine is (a
/// wall-clock spin costs less CPU the more the thread is preempted). Bounded in wall time too,
/// at ten times `length`, so a starved thread cannot hold its worker for long.
pub fn burn(length: Duration) {
    let start = std::time::Instant::now();
    let spent = thread_cpu();
    let mut x = 0u64;
    while thread_cpu().saturating_sub(spent) < length && start.elapsed() < length * 10 {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A delay added to each PNG rendering (`slowPng`).
pub fn png_delay() -> Option<Duration> {
    match setting(Fault::SlowPng)? {
        (Setting::Amount(ms), _) => Some(Duration::from_secs_f64(ms / 1000.0)),
        _ => None,
    }
}

/// Marks a span that `fault` affected.
pub fn mark_span(span: &opentelemetry::trace::SpanRef<'_>, fault: Fault) {
    if let Some(attributes) = span_attributes(fault) {
        span.set_attributes(attributes);
    }
}

/// The `feature_flag.*` attributes for a span that `fault` affected.
pub fn span_attributes(fault: Fault) -> Option<[opentelemetry::KeyValue; 2]> {
    let (_, source) = setting(fault)?;
    Some([
        opentelemetry::KeyValue::new("feature_flag.key", fault.key()),
        opentelemetry::KeyValue::new("feature_flag.result.variant", source.variant().to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burn_spends_its_length_in_cpu_on_its_own_thread() {
        let before = thread_cpu();
        burn(Duration::from_millis(30));
        assert!(thread_cpu() - before >= Duration::from_millis(30), "{:?}", thread_cpu() - before);
    }

    // The switches themselves are process-wide and other unit tests commit: they are tested
    // through the binary (tests/api/faults.rs); here, what is in force given a file and admins.
    #[test]
    fn the_file_s_faults_overridden_by_an_admin_s_off_included() {
        let file = flagd::parse(
            r#"{"flags": {"failingCommits": {"state": "ENABLED", "variants": {"all": 1, "off": 0}, "defaultVariant": "all"},
                          "droppedFanout": {"state": "ENABLED", "variants": {"half": 0.5}, "defaultVariant": "half"}}}"#,
        )
        .unwrap();
        let mut faults = Faults { file, admin: BTreeMap::new() };
        let fate_of = |faults: &Faults, s| fate(faults.get(Fault::DroppedFanout), faults.get(Fault::SlowFanout), s);
        assert_eq!(faults.get(Fault::FailingCommits), Some((Setting::Share(1.0), Source::File("all".into()))));
        assert_eq!(faults.active().len(), 2);
        let dropped = (0..10_000u64).filter(|s| fate_of(&faults, *s) == Fate::Drop).count();
        assert!((4_000..6_000).contains(&dropped), "{dropped} of 10,000 subscribers");
        assert_eq!(fate_of(&faults, 42), fate_of(&faults, 42), "the same subscribers suffer");
        faults.admin.insert(Fault::FailingCommits, Setting::Share(0.0));
        faults.admin.insert(Fault::SlowFanout, Setting::Delay { ms: 5.0, share: 1.0 });
        assert_eq!(faults.get(Fault::FailingCommits), None, "an admin's setting wins, off included");
        assert!(!faults.active().contains_key(&Fault::FailingCommits));
        assert_eq!(faults.get(Fault::SlowFanout).unwrap().1, Source::Admin);
        let slowed = (0..100u64).filter(|s| fate_of(&faults, *s) == Fate::Delay(Duration::from_millis(5))).count();
        assert!((30..70).contains(&slowed), "the half not dropped is slowed: {slowed} of 100");
    }

    #[test]
    fn settings_take_only_what_their_fault_means() {
        assert_eq!(Setting::parse(Fault::CpuBurn, &serde_json::json!(250)), Ok(Setting::Amount(250.0)));
        assert!(Setting::parse(Fault::CpuBurn, &serde_json::json!(-1)).is_err());
        assert!(Setting::parse(Fault::SlowFanout, &serde_json::json!({"delayMs": 5, "share": 1, "x": 1})).is_err());
        assert!(Setting::parse(Fault::FailingReadiness, &serde_json::json!(1)).is_err());
        assert!(Setting::Delay { ms: 100.0, share: 0.0 }.is_off());
    }
}
