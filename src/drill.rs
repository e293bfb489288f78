//! Fire drills: a panic on purpose, armed by an operator on the metrics port
//! (`POST /debug/panic?in=request|writer`, only with `--fire-drills`), to prove that a panic
//! is recorded (trace, log, metrics, alert) and that the instance goes on serving. Each drill
//! fires once; unarmed, the check is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drill {
    /// The next public HTTP request's handler panics.
    Request,
    /// The writer panics at the start of its next batch.
    Writer,
}

static REQUEST: AtomicBool = AtomicBool::new(false);
static WRITER: AtomicBool = AtomicBool::new(false);

fn flag(drill: Drill) -> &'static AtomicBool {
    match drill {
        Drill::Request => &REQUEST,
        Drill::Writer => &WRITER,
    }
}

pub fn arm(drill: Drill) {
    flag(drill).store(true, Ordering::Relaxed);
}

/// Whether `drill` was armed; disarms it.
pub fn take(drill: Drill) -> bool {
    let f = flag(drill);
    f.load(Ordering::Relaxed) && f.swap(false, Ordering::Relaxed)
}
