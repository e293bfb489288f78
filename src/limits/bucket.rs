//! A token bucket: `rate` tokens a second, holding at most `burst`. Pure: the caller passes the
//! time, so the rules are tested without a clock.

use std::time::{Duration, Instant};

/// A sustained rate and the burst allowed above it. A rate of 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_second`, with a burst of two seconds' worth (at least `min_burst`).
    pub fn per_second(per_second: f64, min_burst: f64) -> Self {
        Self { per_second, burst: (per_second * 2.0).max(min_burst) }
    }

    pub fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, at: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
    }

    /// Takes `n` tokens, or answers how long until there would be enough (and takes none).
    pub fn take(&mut self, rate: Rate, n: f64, now: Instant) -> Result<(), Duration> {
        match self.wait_for(rate, n, now) {
            Some(wait) => Err(wait),
            None => {
                self.spend(rate, n);
                Ok(())
            }
        }
    }

    /// Refills, then answers how long until `n` tokens would be there: `None` if they are.
    pub fn wait_for(&mut self, rate: Rate, n: f64, now: Instant) -> Option<Duration> {
        if rate.is_unlimited() {
            return None;
        }
        self.refill(rate, now);
        if self.tokens >= n {
            return None;
        }
        // More than a burst can never be taken at once: wait for a full bucket then.
        let missing = n.min(rate.burst) - self.tokens;
        Some(Duration::from_secs_f64((missing / rate.per_second).max(0.001)))
    }

    /// Takes `n` tokens that `wait_for` has just found there.
    pub fn spend(&mut self, rate: Rate, n: f64) {
        if !rate.is_unlimited() {
            self.tokens -= n;
        }
    }

    /// Whether it would be full again by `now`, so forgetting it changes nothing.
    pub fn is_refilled(&self, rate: Rate, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second >= rate.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = Rate::per_second(10.0, 0.0);
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        assert_eq!((0..100).filter(|_| b.take(rate, 1.0, t0).is_ok()).count(), 20);
        let wait = b.take(rate, 1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| b.take(rate, 1.0, t1).is_ok()).count(), 5);
        assert!(!b.is_refilled(rate, t1));
        assert!(b.is_refilled(rate, t1 + Duration::from_secs(2)));
    }

    #[test]
    fn weighted_takes_and_unlimited_rates() {
        let rate = Rate::per_second(1000.0, 4096.0);
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        assert!(b.take(rate, 4096.0, t0).is_ok());
        // Asking for more than the burst waits for a full bucket, not forever.
        assert!(b.take(rate, 1e9, t0).unwrap_err() <= Duration::from_secs_f64(4.097));
        let off = Rate::per_second(0.0, 0.0);
        assert!((0..1000).all(|_| b.take(off, 1e6, t0).is_ok()));
    }
}
