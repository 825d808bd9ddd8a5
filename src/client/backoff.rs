//! Capped exponential backoff for reconnecting to the gateway.
//!
//! The `n`-th consecutive failure waits `min(base × 2^(n-1), max)` — the original client's
//! `min(1000 × 2^retryCount, 30000)` ms with the defaults (1 s, 30 s) — shortened by up to
//! `jitter` (a fraction, 0.2 by default) so that many clients cut off together do not all
//! return in the same instant. A success resets it.

use std::time::Duration;

/// Backoff settings and state.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The largest fraction of a delay removed at random (0 = none).
    pub jitter: f64,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Delays from `base` doubling up to `max`, with the default jitter.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: 0.2,
            failures: 0,
        }
    }

    /// The same without jitter (for tests and predictable tools).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = 0.0;
        self
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exponent = self.failures.min(31);
        self.failures = self.failures.saturating_add(1);
        let full = self
            .base
            .checked_mul(1u32 << exponent)
            .map_or(self.max, |d| d.min(self.max));
        if self.jitter <= 0.0 {
            return full;
        }
        // Randomness from a fresh UUID: no extra dependency, and plenty for spreading retries.
        let random = (uuid::Uuid::new_v4().as_u128() as u64) as f64 / u64::MAX as f64;
        full.mul_f64(1.0 - self.jitter.min(1.0) * random)
    }

    /// Counts a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default().without_jitter();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.failures(), 7);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(30));
        let mut j = Backoff::default();
        for _ in 0..20 {
            let d = j.next_delay();
            assert!(
                d <= Duration::from_secs(30) && d >= Duration::from_millis(800),
                "{d:?}"
            );
        }
    }
}
