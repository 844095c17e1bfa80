//! Time on tidemark's timeline: microseconds since the Unix epoch, UTC.
//!
//! Every timestamp in the journal (commit times, capture times, coverage) is a
//! [`Timestamp`]. Users name moments with [`TimeSpec`]: RFC 3339, a time relative to
//! now (`-5m`), or `latest`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

/// A moment in UTC, microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The earliest representable moment.
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    /// The latest representable moment.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// Wraps microseconds since the Unix epoch.
    pub const fn from_micros(us: i64) -> Self {
        Timestamp(us)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let us = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        };
        Timestamp(us)
    }

    /// This moment moved back by `d`, saturating at [`Timestamp::MIN`].
    pub fn saturating_sub(self, d: Duration) -> Self {
        let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(us))
    }

    /// RFC 3339 with microseconds, e.g. `2026-11-30T10:00:00.500000Z`.
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
            None => format!("@{}us", self.0),
        }
    }
}

/// As RFC 3339 text (`restore --json`, recovery points in reports).
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A moment as a user names it on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    /// The newest moment the journal covers for the source in question.
    Latest,
    /// A fixed moment.
    At(Timestamp),
}

/// A time string that is none of the accepted forms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad time `{input}`: {reason}; use RFC 3339 (2026-11-30T10:00:00.5Z), a time relative to now (-5m, -2h, -1d) or `latest`")]
pub struct TimeParseError {
    input: String,
    reason: &'static str,
}

impl TimeSpec {
    /// Parses `latest`, an RFC 3339 time, or `-<duration>` relative to `now`
    /// (units as in `humantime`: s, m, h, d, w; combinations like `-1h30m`).
    pub fn parse(input: &str, now: Timestamp) -> Result<Self, TimeParseError> {
        let s = input.trim();
        let err = |reason| TimeParseError {
            input: input.to_string(),
            reason,
        };
        if s.eq_ignore_ascii_case("latest") {
            return Ok(TimeSpec::Latest);
        }
        if let Some(rel) = s.strip_prefix('-') {
            let d = humantime::parse_duration(rel.trim())
                .map_err(|_| err("not a duration after `-`"))?;
            return Ok(TimeSpec::At(now.saturating_sub(d)));
        }
        if s.starts_with('+') {
            return Err(err("times in the future cannot be named"));
        }
        let t = DateTime::parse_from_rfc3339(s).map_err(|_| err("not RFC 3339"))?;
        Ok(TimeSpec::At(Timestamp::from_micros(
            t.with_timezone(&Utc).timestamp_micros(),
        )))
    }
}

/// Parses a duration such as `7d`, `12h` or `30m` (for config values).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("bad duration `{s}` ({e}); use forms like 30m, 12h, 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_micros(1_764_496_800_000_000); // 2025-11-30T10:00:00Z

    #[test]
    fn parses_rfc3339_with_fraction_and_offset() {
        let t = TimeSpec::parse("2026-11-30T10:00:00.5Z", NOW).unwrap();
        let TimeSpec::At(t) = t else {
            panic!("expected a fixed time")
        };
        assert_eq!(t.to_rfc3339(), "2026-11-30T10:00:00.500000Z");
        let t2 = TimeSpec::parse("2026-11-30T11:00:00.5+01:00", NOW).unwrap();
        assert_eq!(t2, TimeSpec::At(t));
    }

    #[test]
    fn parses_relative_and_latest() {
        assert_eq!(
            TimeSpec::parse("-5m", NOW).unwrap(),
            TimeSpec::At(Timestamp::from_micros(NOW.as_micros() - 300_000_000))
        );
        assert_eq!(
            TimeSpec::parse("-2h", NOW).unwrap(),
            TimeSpec::At(Timestamp::from_micros(NOW.as_micros() - 7_200_000_000))
        );
        assert_eq!(TimeSpec::parse("LATEST", NOW).unwrap(), TimeSpec::Latest);
    }

    #[test]
    fn rejects_bad_strings_with_a_hint() {
        for bad in ["yesterday", "-5 parsecs", "2026-13-01T00:00:00Z", "+5m", ""] {
            let e = TimeSpec::parse(bad, NOW).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
            assert!(e.contains("RFC 3339"), "{e}");
        }
    }
}
