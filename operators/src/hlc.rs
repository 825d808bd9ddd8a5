//! Hybrid logical clock (HLC), bit-compatible with the original LakeSync.
//!
//! A timestamp is a `u64`: bits 63..16 hold wall-clock milliseconds since the Unix epoch
//! (48 bits, valid until the year 10889) and bits 15..0 a logical counter. Timestamps compare as
//! plain integers.
//!
//! [`Hlc::now`] is strictly monotonic per clock: `w = max(physical, last.wall)`; if `w` equals
//! the last wall the counter increments, otherwise it resets to 0. [`Hlc::recv`] folds in a
//! remote timestamp: it is rejected when its wall is more than [`MAX_DRIFT_MS`] ahead of the
//! *physical* clock (exactly 5000 ms ahead is accepted; the state is then unchanged). Otherwise
//! with `lw = max(physical, last.wall)`: a remote wall above `lw` gives `(remote.wall,
//! remote.counter + 1)`; an equal wall gives `(lw, max(last.counter, remote.counter) + 1)`; else
//! `(lw, last.counter + 1)` — the counter is *not* reset when the physical clock advanced, as in
//! the original. Whenever a counter would pass 65535 the wall advances by one and the counter is 0.
//!
//! The wall clock is injectable ([`WallClock`]) so tests and replays are deterministic. The clock
//! state is one atomic word; `now` and `recv` are lock-free and safe to share across threads.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The largest allowed lead of a remote wall clock over the local physical clock.
pub const MAX_DRIFT_MS: u64 = 5000;
/// The largest logical counter value.
pub const MAX_COUNTER: u16 = u16::MAX;
/// The largest wall-clock value that fits in 48 bits.
pub const MAX_WALL_MS: u64 = (1 << 48) - 1;

/// A 64-bit HLC timestamp: 48 bits of wall milliseconds, 16 bits of counter.
///
/// Serialises as a decimal string, as the original's JSON does for its BigInt HLCs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HlcTimestamp(pub u64);

impl HlcTimestamp {
    /// The zero timestamp: before every other.
    pub const ZERO: Self = Self(0);

    /// Encodes a wall time and counter. A wall above [`MAX_WALL_MS`] is rejected.
    pub fn new(wall_ms: u64, counter: u16) -> Result<Self> {
        if wall_ms > MAX_WALL_MS {
            return Err(Error::invalid(
                "hlc",
                format!("wall clock {wall_ms} ms does not fit in 48 bits"),
            ));
        }
        Ok(Self::from_parts(wall_ms, counter))
    }

    /// Encodes parts known to be in range (the wall is truncated to 48 bits).
    const fn from_parts(wall_ms: u64, counter: u16) -> Self {
        Self(((wall_ms & MAX_WALL_MS) << 16) | counter as u64)
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub const fn wall_ms(self) -> u64 {
        self.0 >> 16
    }

    /// Logical counter.
    pub const fn counter(self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }

    /// The raw 64-bit value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for HlcTimestamp {
    type Err = Error;

    /// Parses the decimal form used in JSON, e.g. `"65536000000"`.
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(
                "hlc",
                format!("{s:?} is not a decimal integer"),
            ));
        }
        s.parse::<u64>().map(Self).map_err(|_| {
            Error::invalid(
                "hlc",
                format!("{s:?} does not fit in an unsigned 64-bit HLC"),
            )
        })
    }
}

impl Serialize for HlcTimestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HlcTimestamp {
    /// Accepts the decimal string form and, for leniency, a non-negative JSON integer.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Int(u64),
        }
        match Repr::deserialize(d)? {
            Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Repr::Int(n) => Ok(Self(n)),
        }
    }
}

/// A source of physical time in milliseconds since the Unix epoch.
pub trait WallClock: Send + Sync {
    /// The current physical time.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that reads whatever was last set: for tests and deterministic replays.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A manual clock at `ms`.
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    /// Moves the clock to `ms` (backwards too).
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: WallClock + ?Sized> WallClock for std::sync::Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A hybrid logical clock over a [`WallClock`].
#[derive(Debug)]
pub struct Hlc<C: WallClock = SystemClock> {
    clock: C,
    last: AtomicU64,
}

impl Default for Hlc<SystemClock> {
    fn default() -> Self {
        Self::new(SystemClock)
    }
}

impl<C: WallClock> Hlc<C> {
    /// A clock whose last timestamp is zero.
    pub fn new(clock: C) -> Self {
        Self {
            clock,
            last: AtomicU64::new(0),
        }
    }

    /// The last timestamp issued or received.
    pub fn last(&self) -> HlcTimestamp {
        HlcTimestamp(self.last.load(Ordering::SeqCst))
    }

    /// The physical clock's current reading.
    pub fn physical_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Issues a new timestamp, strictly greater than every earlier one from this clock.
    pub fn now(&self) -> HlcTimestamp {
        self.update(|prev, physical| Ok(advance(prev, physical.max(prev.wall_ms()), 0)))
            .unwrap_or(HlcTimestamp::ZERO)
    }

    /// Folds in a remote timestamp and returns the new local one.
    ///
    /// Fails with [`Error::ClockDrift`] (state unchanged) when the remote wall is more than
    /// [`MAX_DRIFT_MS`] ahead of the physical clock.
    pub fn recv(&self, remote: HlcTimestamp) -> Result<HlcTimestamp> {
        self.update(|prev, physical| {
            let remote_wall = remote.wall_ms();
            let ahead_ms = remote_wall.saturating_sub(physical);
            if ahead_ms > MAX_DRIFT_MS {
                return Err(Error::ClockDrift {
                    ahead_ms,
                    max_drift_ms: MAX_DRIFT_MS,
                });
            }
            let local_wall = physical.max(prev.wall_ms());
            Ok(if remote_wall > local_wall {
                bump(remote_wall, u32::from(remote.counter()) + 1)
            } else if remote_wall == local_wall {
                bump(
                    local_wall,
                    u32::from(prev.counter().max(remote.counter())) + 1,
                )
            } else {
                bump(local_wall, u32::from(prev.counter()) + 1)
            })
        })
    }

    /// Applies `step` to the last timestamp with a compare-and-swap loop.
    fn update(
        &self,
        step: impl Fn(HlcTimestamp, u64) -> Result<HlcTimestamp>,
    ) -> Result<HlcTimestamp> {
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let next = step(HlcTimestamp(prev), self.clock.now_ms())?;
            match self
                .last
                .compare_exchange(prev, next.0, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(next),
                Err(actual) => prev = actual,
            }
        }
    }
}

/// `now`'s step: same wall → counter + 1, new wall → counter `fresh`.
fn advance(prev: HlcTimestamp, wall: u64, fresh: u16) -> HlcTimestamp {
    if wall == prev.wall_ms() {
        bump(wall, u32::from(prev.counter()) + 1)
    } else {
        HlcTimestamp::from_parts(wall, fresh)
    }
}

/// `(wall, counter)`, carrying a counter overflow into the wall.
fn bump(wall: u64, counter: u32) -> HlcTimestamp {
    if counter > u32::from(MAX_COUNTER) {
        HlcTimestamp::from_parts(wall + 1, 0)
    } else {
        HlcTimestamp::from_parts(wall, counter as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn hlc(w: u64, c: u16) -> HlcTimestamp {
        HlcTimestamp::new(w, c).unwrap()
    }

    fn clock_at(ms: u64) -> (Arc<ManualClock>, Hlc<Arc<ManualClock>>) {
        let clock = Arc::new(ManualClock::new(ms));
        (clock.clone(), Hlc::new(clock))
    }

    #[test]
    fn vector_a_now_three_times_on_a_fixed_clock() {
        let (_, c) = clock_at(1_000_000);
        let got: Vec<u64> = (0..3).map(|_| c.now().0).collect();
        assert_eq!(got, [65_536_000_000, 65_536_000_001, 65_536_000_002]);
    }

    #[test]
    fn vector_b_recv_ahead_of_local() {
        let (_, c) = clock_at(1_000_000);
        c.now();
        let got = c.recv(hlc(1_000_100, 5)).unwrap();
        assert_eq!(got, hlc(1_000_100, 6));
        assert_eq!(got.0, 65_542_553_606);
    }

    #[test]
    fn vector_c_exactly_5000_ms_ahead_is_accepted() {
        let (_, c) = clock_at(1_000_000);
        assert_eq!(c.recv(hlc(1_005_000, 0)).unwrap().0, 65_863_680_001);
    }

    #[test]
    fn vector_d_5001_ms_ahead_is_rejected_and_state_unchanged() {
        let (_, c) = clock_at(1_000_000);
        let err = c.recv(hlc(1_005_001, 0)).unwrap_err();
        assert_eq!(err.code(), "CLOCK_DRIFT");
        assert_eq!(c.last(), HlcTimestamp::ZERO);
    }

    #[test]
    fn vector_e_recv_counter_overflow_carries_into_wall() {
        let (_, c) = clock_at(1_000_000);
        assert_eq!(c.recv(hlc(1_000_000, 65_535)).unwrap().0, 65_536_065_536);
    }

    #[test]
    fn vector_f_recv_behind_increments_counter_without_reset() {
        let (clock, c) = clock_at(1_000_000);
        c.now();
        c.now();
        clock.set(1_000_010);
        // Local physical time wins; the counter continues from the last one.
        assert_eq!(c.recv(hlc(999_000, 9)).unwrap(), hlc(1_000_010, 2));
    }

    #[test]
    fn vector_g_wall_clock_regression_stays_monotonic() {
        let (clock, c) = clock_at(2_000_000);
        for _ in 0..3 {
            c.now();
        }
        clock.set(1_999_000);
        assert_eq!(c.now(), hlc(2_000_000, 3));
    }

    #[test]
    fn now_counter_overflow() {
        let (_, c) = clock_at(1_000_000);
        for _ in 0..=65_535 {
            c.now();
        }
        assert_eq!(c.last(), hlc(1_000_000, 65_535));
        assert_eq!(c.now(), hlc(1_000_001, 0));
    }

    #[test]
    fn vector_j_encode_decode_extremes() {
        let max = hlc(MAX_WALL_MS, 65_535);
        assert_eq!(max.0, u64::MAX);
        assert_eq!(
            (max.wall_ms(), max.counter()),
            (281_474_976_710_655, 65_535)
        );
        assert_eq!(hlc(0, 0).0, 0);
        assert_eq!(hlc(1_000_000, 0).0, 65_536_000_000);
        assert!(HlcTimestamp::new(MAX_WALL_MS + 1, 0).is_err());
    }

    #[test]
    fn vector_k_compare() {
        assert!(hlc(100, 0) < hlc(100, 1));
        assert!(hlc(100, 1) < hlc(200, 0));
        assert_eq!(hlc(100, 1).cmp(&hlc(100, 1)), std::cmp::Ordering::Equal);
    }

    #[test]
    fn decimal_string_round_trip() {
        let t = hlc(1_700_000_000_123, 7);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{}\"", t.0));
        assert_eq!(serde_json::from_str::<HlcTimestamp>(&json).unwrap(), t);
        assert!("12x".parse::<HlcTimestamp>().is_err());
        assert!("-1".parse::<HlcTimestamp>().is_err());
        assert!("18446744073709551616".parse::<HlcTimestamp>().is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    proptest! {
        /// Whatever the physical clock does, `now` and `recv` never go backwards.
        #[test]
        fn monotonic_under_any_clock(steps in proptest::collection::vec((0u64..3_000_000, any::<bool>(), 0u64..3_010_000, any::<u16>()), 1..200)) {
            let clock = Arc::new(ManualClock::new(0));
            let c = Hlc::new(clock.clone());
            let mut last = HlcTimestamp::ZERO;
            for (physical, is_recv, remote_wall, remote_counter) in steps {
                clock.set(physical);
                let next = if is_recv {
                    match c.recv(HlcTimestamp::new(remote_wall, remote_counter).unwrap()) {
                        Ok(t) => t,
                        Err(e) => {
                            prop_assert_eq!(e.code(), "CLOCK_DRIFT");
                            prop_assert!(remote_wall > physical + MAX_DRIFT_MS);
                            prop_assert_eq!(c.last(), last);
                            continue;
                        }
                    }
                } else {
                    c.now()
                };
                prop_assert!(next > last);
                prop_assert!(next.wall_ms() >= physical.min(next.wall_ms()));
                last = next;
            }
        }

        #[test]
        fn encode_decode_round_trip(wall in 0..=MAX_WALL_MS, counter in any::<u16>()) {
            let t = HlcTimestamp::new(wall, counter).unwrap();
            prop_assert_eq!((t.wall_ms(), t.counter()), (wall, counter));
            prop_assert_eq!(t.to_string().parse::<HlcTimestamp>().unwrap(), t);
        }
    }
}
