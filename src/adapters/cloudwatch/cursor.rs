//! Where a CloudWatch source is in one log group: a *floor* and the event ids delivered at or
//! above it, and the rule that decides which events a read delivers.
//!
//! **Invariant.** Every event of the group with `timestamp >= floor` that has been delivered has
//! its id in `seen` (under its timestamp), and no event with `timestamp < floor` is delivered
//! again. A read therefore asks `FilterLogEvents` for `startTime = floor` and delivers an event
//! iff `timestamp >= floor` and its id is not in `seen` ([`GroupCursor::admit`]) — so nothing is
//! delivered twice, whatever order pages arrive in and wherever a read is cut off.
//!
//! **Moving the floor.** After each page the floor rises to `newest - lookback`, where `newest`
//! is the newest timestamp delivered ([`GroupCursor::settle`]), and ids below it are forgotten:
//! an event that shows up later than `lookback` behind the newest event delivered is not picked
//! up. When `seen` holds more than [`MAX_SEEN`] ids the floor rises further, dropping the oldest
//! timestamps whole (never the newest), which narrows the window for very busy groups but keeps
//! the position (and so every checkpoint) bounded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most event ids a group's cursor keeps (about 60 bytes each in the position).
pub const MAX_SEEN: usize = 50_000;

/// One log group's place: see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCursor {
    /// No event with a timestamp below this (ms since the Unix epoch) is read again.
    pub floor: i64,
    /// The ids delivered with a timestamp at or above `floor`, by timestamp (ms).
    #[serde(default, with = "seen_map")]
    pub seen: BTreeMap<i64, Vec<String>>,
}

impl GroupCursor {
    /// A cursor that has delivered nothing, reading from `floor`.
    pub fn starting_at(floor: i64) -> Self {
        Self {
            floor,
            seen: BTreeMap::new(),
        }
    }

    /// The newest timestamp delivered at or above the floor.
    pub fn newest(&self) -> Option<i64> {
        self.seen.keys().next_back().copied()
    }

    /// Whether an event (`timestamp`, `id`) is to be delivered; if so, records it as delivered.
    pub fn admit(&mut self, timestamp: i64, id: &str) -> bool {
        if timestamp < self.floor {
            return false;
        }
        let ids = self.seen.entry(timestamp).or_default();
        if ids.iter().any(|seen| seen == id) {
            return false;
        }
        ids.push(id.to_string());
        true
    }

    /// Whether an event was delivered by the time this cursor was taken: below the floor
    /// (delivered or given up on), or among the ids seen.
    pub fn covers(&self, timestamp: i64, id: &str) -> bool {
        timestamp < self.floor
            || self
                .seen
                .get(&timestamp)
                .is_some_and(|ids| ids.iter().any(|seen| seen == id))
    }

    /// Raises the floor to `newest - lookback_ms` and forgets the ids below it, then keeps at
    /// most `max_seen` ids by raising it further (see the [module docs](self)). Returns whether
    /// the cap raised the floor.
    pub fn settle(&mut self, lookback_ms: i64, max_seen: usize) -> bool {
        if let Some(newest) = self.newest() {
            self.floor = self.floor.max(newest.saturating_sub(lookback_ms));
        }
        self.seen = self.seen.split_off(&self.floor);
        let mut held: usize = self.seen.values().map(Vec::len).sum();
        let mut capped = false;
        while held > max_seen && self.seen.len() > 1 {
            let Some((_, ids)) = self.seen.pop_first() else {
                break;
            };
            held -= ids.len();
            capped = true;
            if let Some(&next) = self.seen.keys().next() {
                self.floor = next;
            }
        }
        capped
    }
}

/// `seen` as a JSON object keyed by the timestamp's decimal text (JSON keys are strings).
mod seen_map {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        seen: &BTreeMap<i64, Vec<String>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        // In the map's numeric order (a map keyed by text would sort "10" before "9").
        serializer.collect_map(seen.iter().map(|(ts, ids)| (ts.to_string(), ids)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<i64, Vec<String>>, D::Error> {
        let text = BTreeMap::<String, Vec<String>>::deserialize(deserializer)?;
        text.into_iter()
            .map(|(ts, ids)| {
                ts.parse::<i64>()
                    .map(|ts| (ts, ids))
                    .map_err(|_| D::Error::custom(format!("{ts:?} is not a timestamp")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_each_event_once_and_nothing_below_the_floor() {
        let mut c = GroupCursor::starting_at(100);
        assert!(!c.admit(99, "a"));
        assert!(c.admit(100, "b"));
        assert!(!c.admit(100, "b"));
        assert!(c.admit(100, "c"));
        assert!(c.admit(250, "d"));
        assert!(c.covers(100, "b") && c.covers(50, "zzz") && !c.covers(250, "e"));
    }

    #[test]
    fn settling_keeps_the_lookback_window_and_forgets_below_it() {
        let mut c = GroupCursor::starting_at(0);
        for (ts, id) in [(1_000, "a"), (5_000, "b"), (9_000, "c"), (9_000, "d")] {
            assert!(c.admit(ts, id));
        }
        assert!(!c.settle(4_000, MAX_SEEN));
        assert_eq!(c.floor, 5_000);
        assert_eq!(c.seen.keys().copied().collect::<Vec<_>>(), [5_000, 9_000]);
        // A late event inside the window is still delivered; one behind it is not.
        assert!(c.admit(6_000, "late"));
        assert!(!c.admit(4_999, "too-late"));
        // Re-reading the window delivers nothing twice.
        assert!(!c.admit(5_000, "b") && !c.admit(9_000, "d"));
        // The floor never goes down.
        let mut again = c.clone();
        again.settle(100_000, MAX_SEEN);
        assert_eq!(again.floor, 5_000);
    }

    #[test]
    fn the_cap_raises_the_floor_by_whole_timestamps_but_keeps_the_newest() {
        let mut c = GroupCursor::starting_at(0);
        for ts in 0..10 {
            for k in 0..3 {
                c.admit(ts, &format!("{ts}-{k}"));
            }
        }
        assert!(c.settle(1_000, 7));
        assert_eq!(c.floor, 8);
        assert_eq!(c.seen.len(), 2);
        let mut one = GroupCursor::starting_at(0);
        for k in 0..10 {
            one.admit(5, &k.to_string());
        }
        one.settle(1_000, 3);
        assert_eq!((one.floor, one.seen[&5].len()), (0, 10));
    }

    #[test]
    fn round_trips_through_json_with_numeric_order() {
        let mut c = GroupCursor::starting_at(-5);
        c.admit(10, "x");
        c.admit(9, "y");
        c.admit(100, "z");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"floor":-5,"seen":{"9":["y"],"10":["x"],"100":["z"]}}"#
        );
        assert_eq!(serde_json::from_str::<GroupCursor>(&json).unwrap(), c);
        assert!(serde_json::from_str::<GroupCursor>(r#"{"floor":0,"seen":{"x":[]}}"#).is_err());
    }
}
