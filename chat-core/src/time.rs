//! Physical timestamps as they travel on the wire.
//!
//! We write ISO-8601 UTC strings with milliseconds (`2025-11-12T10:00:00.123Z`). We read
//! ISO-8601 strings with or without an offset (naive ones are UTC), and Unix numbers
//! (seed 002): seconds as an integer or a float, or milliseconds when the magnitude says so
//! (more than 10^11, i.e. beyond the year 5138 in seconds).

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Earliest accepted time: 0000-01-01T00:00:00Z (ISO-8601 cannot write earlier years plainly).
const MIN_MS: i64 = -62_167_219_200_000;
/// Latest accepted time: 9999-12-31T23:59:59.999Z (so everything we accept we can write back).
const MAX_MS: i64 = 253_402_300_799_999;

/// Numbers whose magnitude is above this are read as milliseconds, not seconds.
const MILLIS_THRESHOLD: f64 = 1.0e11;

/// A physical time: milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// Why a timestamp could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {0:?} is neither ISO-8601 nor a Unix time")]
pub struct BadTimestamp(pub String);

impl Timestamp {
    /// A timestamp from milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// This timestamp moved by `delta_ms` milliseconds (saturating).
    pub fn offset(self, delta_ms: i64) -> Self {
        Timestamp(self.0.saturating_add(delta_ms))
    }

    /// Reads an ISO-8601 / RFC 3339 string; a string without offset is taken as UTC.
    pub fn parse_iso(s: &str) -> Result<Self, BadTimestamp> {
        let t = s.trim();
        if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
            return Self::in_range(dt.timestamp_millis(), s);
        }
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
                return Self::in_range(n.and_utc().timestamp_millis(), s);
            }
        }
        for fmt in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
            if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
                return Self::in_range(dt.timestamp_millis(), s);
            }
        }
        Err(BadTimestamp(s.chars().take(64).collect()))
    }

    fn in_range(ms: i64, original: &str) -> Result<Self, BadTimestamp> {
        if (MIN_MS..=MAX_MS).contains(&ms) {
            Ok(Timestamp(ms))
        } else {
            Err(BadTimestamp(original.chars().take(64).collect()))
        }
    }

    /// Reads a Unix time given as seconds (or milliseconds, when larger than 10^11).
    pub fn from_unix_f64(v: f64) -> Result<Self, BadTimestamp> {
        if !v.is_finite() {
            return Err(BadTimestamp(v.to_string()));
        }
        let ms = if v.abs() > MILLIS_THRESHOLD {
            v
        } else {
            v * 1000.0
        };
        if !(MIN_MS as f64..=MAX_MS as f64).contains(&ms) {
            return Err(BadTimestamp(v.to_string()));
        }
        Ok(Timestamp(ms.round() as i64))
    }

    /// Reads a Unix time given as an integer number of seconds (or milliseconds).
    pub fn from_unix_i64(v: i64) -> Result<Self, BadTimestamp> {
        let ms = if (v as f64).abs() > MILLIS_THRESHOLD {
            v
        } else {
            v.saturating_mul(1000)
        };
        if !(MIN_MS..=MAX_MS).contains(&ms) {
            return Err(BadTimestamp(v.to_string()));
        }
        Ok(Timestamp(ms))
    }

    /// The ISO-8601 UTC form with milliseconds, as we put it on the wire.
    pub fn to_iso(self) -> String {
        match Utc.timestamp_millis_opt(self.0).single() {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => "1970-01-01T00:00:00.000Z".to_string(),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_iso())
    }
}

struct TimestampVisitor;

impl Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ISO-8601 string or a Unix time in seconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
        Timestamp::parse_iso(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
        Timestamp::from_unix_i64(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
        let v = i64::try_from(v).map_err(|_| E::custom(BadTimestamp(v.to_string())))?;
        Timestamp::from_unix_i64(v).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
        Timestamp::from_unix_f64(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TimestampVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip_keeps_millis() {
        let t = Timestamp(1_762_941_600_123);
        assert_eq!(t.to_iso(), "2025-11-12T10:00:00.123Z");
        assert_eq!(Timestamp::parse_iso(&t.to_iso()), Ok(t));
    }

    #[test]
    fn accepts_seed_variants() {
        let want = Timestamp(1_762_941_600_000);
        for s in [
            "2025-11-12T10:00:00Z",
            "2025-11-12T10:00:00",
            "2025-11-12T10:00:00.000000",
            "2025-11-12T07:00:00-03:00",
            "2025-11-12 10:00:00",
        ] {
            assert_eq!(Timestamp::parse_iso(s), Ok(want), "{s}");
        }
        assert_eq!(Timestamp::from_unix_i64(1_762_941_600), Ok(want));
        assert_eq!(Timestamp::from_unix_f64(1_762_941_600.0), Ok(want));
        assert_eq!(Timestamp::from_unix_i64(1_762_941_600_000), Ok(want));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Timestamp::parse_iso("yesterday").is_err());
        assert!(Timestamp::from_unix_f64(f64::NAN).is_err());
        assert!(Timestamp::from_unix_f64(1e300).is_err());
        assert!(Timestamp::from_unix_i64(i64::MAX).is_err());
        // Everything accepted can be written back and read again.
        assert!(Timestamp::from_unix_i64(260_000_000_000_000).is_err());
        let last = Timestamp::from_unix_i64(253_402_300_799_999).unwrap();
        assert_eq!(Timestamp::parse_iso(&last.to_iso()), Ok(last));
    }
}
