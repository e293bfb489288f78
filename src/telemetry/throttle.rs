//! At most one log line per period for one kind of event, however often it happens: a flood
//! (a client sending garbage, a disk that stays full) cannot flood the log. The next line
//! says how many it stands for. Counters still count every event; only the lines are thinned.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// One kind of event's last line and the events left out since.
pub struct LineThrottle {
    /// The second (since the process's first throttled line, plus one) of the last line.
    last: AtomicU64,
    unlogged: AtomicU64,
}

impl LineThrottle {
    pub const fn new() -> Self {
        Self { last: AtomicU64::new(0), unlogged: AtomicU64::new(0) }
    }

    /// `Some(events left out since the last line)` when this one may be logged, at most once
    /// every `every_secs` seconds.
    pub fn admit(&self, every_secs: u64) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        // Offset so that the first event, in second 0, is logged.
        self.admit_at(START.get_or_init(Instant::now).elapsed().as_secs() + every_secs, every_secs)
    }

    fn admit_at(&self, now: u64, every_secs: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if now < last + every_secs
            || self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.unlogged.swap(0, Ordering::Relaxed))
    }
}

impl Default for LineThrottle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_line_a_period_and_the_next_counts_the_rest() {
        let throttle = LineThrottle::new();
        assert_eq!((0..1000).filter(|_| throttle.admit_at(7, 1).is_some()).count(), 1);
        assert_eq!(throttle.admit_at(8, 1), Some(999), "the next second's line counts the rest");
        assert_eq!(throttle.admit_at(8, 1), None);
        let slow = LineThrottle::new();
        assert_eq!(slow.admit_at(10, 10), Some(0));
        assert_eq!(slow.admit_at(19, 10), None);
        assert_eq!(slow.admit_at(20, 10), Some(1));
    }
}
