//! Per-key fixed-window request rate limiting, as the original gateway-server does it.
//!
//! Each key (the authenticated client id, else the caller's address) has a window that opens at
//! its first request and lasts `window`. Up to `max_requests` requests are allowed within a
//! window; later ones fail with [`Error::RateLimited`] whose `retry_after_secs` is the time left
//! in the window rounded up to whole seconds (the HTTP `Retry-After` value). The first request
//! at or after the window's end opens a new window. Rejected requests count too, but that makes
//! no difference: a window only ever admits its first `max_requests`.
//!
//! Time is passed in (`now`), so behaviour is deterministic under test. Windows that have ended
//! are dropped by [`RateLimiter::sweep`], which the server calls periodically (the original:
//! every 60 s), so memory is bounded by the keys seen within one window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The original's default: 100 requests per key per minute.
pub const DEFAULT_MAX_REQUESTS: u32 = 100;
/// The original's default window: 60 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// How often the original sweeps ended windows.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// One key's current window.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    count: u32,
}

/// A thread-safe fixed-window rate limiter keyed by string.
#[derive(Debug)]
pub struct RateLimiter {
    max_requests: u32,
    window: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

impl Default for RateLimiter {
    /// [`DEFAULT_MAX_REQUESTS`] per [`DEFAULT_WINDOW`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_REQUESTS, DEFAULT_WINDOW)
    }
}

impl RateLimiter {
    /// A limiter allowing `max_requests` per key in each `window`. With `max_requests == 0` every
    /// request is limited; with a zero `window` none is.
    pub fn new(max_requests: u32, window: Duration) -> Self {
        Self {
            max_requests,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The number of requests allowed per window.
    pub fn max_requests(&self) -> u32 {
        self.max_requests
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts a request for `key` at `now`: `Ok` if it is within the limit, else
    /// [`Error::RateLimited`] with the whole seconds (rounded up) until the key's window ends.
    pub fn check(&self, key: &str, now: Instant) -> Result<()> {
        let mut windows = self.lock();
        let fresh = Window {
            start: now,
            count: 0,
        };
        // Look up before inserting so the common case does not allocate the key.
        if !windows.contains_key(key) {
            windows.insert(key.to_string(), fresh);
        }
        let Some(window) = windows.get_mut(key) else {
            return Err(Error::internal("rate-limit window vanished under its lock"));
        };
        if now.saturating_duration_since(window.start) >= self.window {
            *window = fresh;
        }
        window.count = window.count.saturating_add(1);
        if window.count <= self.max_requests {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(window.start);
        let remaining = self.window.saturating_sub(elapsed);
        Err(Error::RateLimited {
            retry_after_secs: ceil_secs(remaining).max(1),
        })
    }

    /// Drops the windows that have ended by `now`.
    pub fn sweep(&self, now: Instant) {
        let window = self.window;
        self.lock()
            .retain(|_, w| now.saturating_duration_since(w.start) < window);
    }

    /// The number of keys with a window (ended or not) held in memory.
    pub fn tracked_keys(&self) -> usize {
        self.lock().len()
    }

    /// The map, even if another thread panicked while holding it (the counts stay usable).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `d` in whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(r: Result<()>) -> u64 {
        match r {
            Err(Error::RateLimited { retry_after_secs }) => retry_after_secs,
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[test]
    fn reference_vector_one_per_ten_seconds() {
        let limiter = RateLimiter::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(limiter.check("client-a", t0).is_ok());
        assert_eq!(retry_after(limiter.check("client-a", t0)), 10);
        assert_eq!(
            retry_after(limiter.check("client-a", t0 + Duration::from_secs(5))),
            5
        );
        // Another key has its own window.
        assert!(limiter.check("client-b", t0).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        let limiter = RateLimiter::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        limiter.check("k", t0).unwrap();
        assert_eq!(
            retry_after(limiter.check("k", t0 + Duration::from_millis(9_001))),
            1
        );
        assert_eq!(
            retry_after(limiter.check("k", t0 + Duration::from_millis(4_500))),
            6
        );
    }

    #[test]
    fn window_resets_after_it_ends() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(limiter.check("k", t0 + Duration::from_secs(i)).is_ok());
        }
        assert!(limiter.check("k", t0 + Duration::from_secs(59)).is_err());
        // Exactly at the end of the window a new one opens.
        let t1 = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check("k", t1).is_ok());
        }
        assert_eq!(retry_after(limiter.check("k", t1)), 60);
    }

    #[test]
    fn error_is_rate_limited_code() {
        let limiter = RateLimiter::new(0, Duration::from_secs(1));
        let e = limiter.check("k", Instant::now()).unwrap_err();
        assert_eq!(e.code(), "RATE_LIMITED");
    }

    #[test]
    fn zero_window_never_limits() {
        let limiter = RateLimiter::new(1, Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check("k", t0).is_ok());
        }
    }

    #[test]
    fn sweep_drops_ended_windows() {
        let limiter = RateLimiter::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        limiter.check("old", t0).unwrap();
        limiter.check("new", t0 + Duration::from_secs(5)).unwrap();
        limiter.sweep(t0 + Duration::from_secs(10));
        assert_eq!(limiter.tracked_keys(), 1);
        // "new" still limited within its window.
        assert!(limiter.check("new", t0 + Duration::from_secs(14)).is_err());
        limiter.sweep(t0 + Duration::from_secs(15));
        assert_eq!(limiter.tracked_keys(), 0);
    }

    #[test]
    fn thread_safe_counts() {
        let limiter = std::sync::Arc::new(RateLimiter::new(100, Duration::from_secs(60)));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| limiter.check("shared", t0).is_ok())
                        .count()
                })
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 100);
    }
}
