//! Typed durations and sizes for pipeline files.
//!
//! - [`HumanDuration`] is a [`std::time::Duration`] written the way people write one: `5s`,
//!   `250ms`, `1h30m`, `7d` (humantime syntax; units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, `w`
//!   and their long spellings). A bare number is refused, because `5` could mean seconds or
//!   milliseconds. It serialises in the compact form `1h30m`.
//! - [`HumanSize`] is a byte count: an integer (bytes) or a number with a unit — decimal `B`,
//!   `KB`, `MB`, `GB`, `TB`, `PB` (powers of 1000) or binary `KiB`, `MiB`, `GiB`, `TiB`, `PiB`
//!   (powers of 1024), case-insensitive, with optional spaces and a decimal fraction
//!   (`1.5GiB`). The value must come out as a whole number of bytes that fits in 64 bits; an
//!   overflow is an error, never a silent saturation. It serialises as the largest unit that
//!   divides it exactly (`64MiB`), or as an integer.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written in human form (`5s`, `250ms`, `1h30m`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{text:?} has no unit: write a duration such as \"{trimmed}s\" or \"{trimmed}ms\""
            ));
        }
        humantime::parse_duration(trimmed).map(Self).map_err(|e| {
            format!("{text:?} is not a duration ({e}); write e.g. \"5s\", \"250ms\" or \"1h30m\"")
        })
    }
}

impl fmt::Display for HumanDuration {
    /// The compact form: `0s`, `250ms`, `1h30m`, `7d`, `1s500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u128); 7] = [
            ("d", 86_400_000_000_000),
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ];
        let mut rest = self.0.as_nanos();
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, nanos) in UNITS {
            let n = rest / nanos;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest -= n * nanos;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\", \"250ms\" or \"1h30m\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a duration such as \"{v}s\" or \"{v}ms\""
                )))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} is not a duration: write e.g. \"5s\", \"250ms\" or \"1h30m\""
                )))
            }
        }

        // `any`, so a bare number reaches `visit_u64` and gets the "no unit" message.
        deserializer.deserialize_any(DurationVisitor)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration with a unit: \"5s\", \"250ms\", \"1h30m\", \"7d\".",
            "type": "string",
            "pattern": DURATION_PATTERN,
            "examples": ["5s", "250ms", "1h30m", "7d"],
        })
    }
}

/// What editors accept as a duration: numbers each followed by a unit.
const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*[A-Za-zµ]+\s*)+$";

/// A number of bytes written in human form (`64MiB`, `1GB`, or an integer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanSize(pub u64);

impl HumanSize {
    /// `n` bytes.
    pub const fn bytes(n: u64) -> Self {
        Self(n)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Size units by their lowercase spelling (matched case-insensitively).
const SIZE_UNITS: [(&str, u64); 11] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("pib", 1 << 50),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("pb", 1_000_000_000_000_000),
];

/// The units used when printing, largest first, binary before decimal.
const DISPLAY_UNITS: [(&str, u64); 10] = [
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("PB", 1_000_000_000_000_000),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
];

impl FromStr for HumanSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const HINT: &str = "write e.g. \"64MiB\", \"1GB\" or a number of bytes";
        let trimmed = text.trim();
        let number_len = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(number_len);
        let unit = unit.trim();
        let factor = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(_, factor)| *factor)
                .ok_or_else(|| format!("{text:?} has an unknown size unit {unit:?}; {HINT}"))?
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || fraction.contains('.')
            || (number.contains('.') && fraction.is_empty())
        {
            return Err(format!("{text:?} is not a size; {HINT}"));
        }
        // Exact arithmetic: digits as an integer, scaled down by 10^(fraction digits).
        let too_large = || format!("{text:?} is too large (at most {} bytes)", u64::MAX);
        let digits: u128 = format!("{whole}{fraction}")
            .parse()
            .map_err(|_| too_large())?;
        let scale = 10u128
            .checked_pow(u32::try_from(fraction.len()).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
        let scaled = digits
            .checked_mul(u128::from(factor))
            .ok_or_else(too_large)?;
        if scaled % scale != 0 {
            return Err(format!("{text:?} is not a whole number of bytes"));
        }
        u64::try_from(scaled / scale)
            .map(Self)
            .map_err(|_| too_large())
    }
}

impl fmt::Display for HumanSize {
    /// The largest unit that divides the size exactly (`64MiB`, `1GB`), else bytes (`1000001`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DISPLAY_UNITS
            .iter()
            .find(|(_, factor)| self.0 != 0 && self.0.is_multiple_of(*factor))
        {
            Some((unit, factor)) => write!(f, "{}{unit}", self.0 / factor),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for HumanSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if DISPLAY_UNITS
            .iter()
            .any(|(_, factor)| self.0 != 0 && self.0.is_multiple_of(*factor))
        {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = HumanSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or \"1GB\", or a number of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanSize, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanSize, E> {
                Ok(HumanSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanSize, E> {
                u64::try_from(v)
                    .map(HumanSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative, found {v}")))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

impl JsonSchema for HumanSize {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a number of bytes, or a number with a unit (B, KB, MB, GB, TB, PB in powers of 1000; KiB, MiB, GiB, TiB, PiB in powers of 1024).",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
            ],
            "examples": ["64MiB", "1GB", 1048576],
        })
    }
}

/// What editors accept as a size string.
const SIZE_PATTERN: &str = r"^\s*[0-9]+(\.[0-9]+)?\s*([KkMmGgTtPp][Ii]?)?[Bb]?\s*$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, expected, printed) in [
            ("5s", Duration::from_secs(5), "5s"),
            ("250ms", Duration::from_millis(250), "250ms"),
            ("1h30m", Duration::from_secs(5400), "1h30m"),
            ("1h 30m", Duration::from_secs(5400), "1h30m"),
            ("7d", Duration::from_secs(7 * 86_400), "7d"),
            ("1.5s", Duration::from_millis(1500), "1s500ms"),
            (" 2 days ", Duration::from_secs(2 * 86_400), "2d"),
            ("0s", Duration::ZERO, "0s"),
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0, expected, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<HumanDuration>().unwrap(), d, "{printed}");
        }
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        let e = "5".parse::<HumanDuration>().unwrap_err();
        assert!(e.contains("no unit") && e.contains("\"5s\""), "{e}");
        let e = "5 fortnights".parse::<HumanDuration>().unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        assert!("".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes, printed) in [
            ("64MiB", 64 << 20, "64MiB"),
            ("64 mib", 64 << 20, "64MiB"),
            ("1GB", 1_000_000_000, "1GB"),
            ("1gb", 1_000_000_000, "1GB"),
            ("1.5GiB", 3 << 29, "1536MiB"),
            ("0.5KB", 500, "500"),
            ("1024", 1024, "1KiB"),
            ("7B", 7, "7"),
            ("16PiB", 16 << 50, "16PiB"),
            ("0", 0, "0"),
        ] {
            let s: HumanSize = text.parse().unwrap();
            assert_eq!(s.0, bytes, "{text}");
            assert_eq!(s.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<HumanSize>().unwrap(), s, "{printed}");
        }
    }

    #[test]
    fn bad_sizes_are_refused_not_saturated() {
        for (text, needle) in [
            ("64 MiBs", "unknown size unit \"MiBs\""),
            ("64 M", "unknown size unit \"M\""),
            ("lots", "unknown size unit"),
            ("", "not a size"),
            ("1.2.3KB", "not a size"),
            ("1.B", "not a size"),
            ("1.3B", "whole number of bytes"),
            ("16385PiB", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
        ] {
            let e = text.parse::<HumanSize>().unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn serde_forms() {
        let size: HumanSize = serde_json::from_str("1048576").unwrap();
        assert_eq!(size, HumanSize::mib(1));
        assert_eq!(serde_json::to_string(&size).unwrap(), "\"1MiB\"");
        assert_eq!(serde_json::to_string(&HumanSize(1001)).unwrap(), "1001");
        assert!(serde_json::from_str::<HumanSize>("-1").is_err());
        let d: HumanDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        let e = serde_json::from_str::<HumanDuration>("5").unwrap_err();
        assert!(e.to_string().contains("no unit"), "{e}");
    }
}
