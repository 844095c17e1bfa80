//! Log sequence numbers and PostgreSQL timestamps.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A PostgreSQL write-ahead-log position (`XLogRecPtr`).
///
/// Guarantees: it is a plain 64-bit byte position; ordering of `Lsn` values
/// is the ordering of positions in the WAL. [`Lsn::ZERO`] (`0/0`) is
/// PostgreSQL's `InvalidXLogRecPtr`, which the server reads as "no
/// position". `Display` and [`FromStr`] use PostgreSQL's `X/Y` form (upper
/// 32 bits and lower 32 bits in hexadecimal), so a value round-trips through
/// its text form and is accepted by `pg_lsn` in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid / zero position `0/0`.
    pub const ZERO: Lsn = Lsn(0);

    /// Returns the raw 64-bit position.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Returns `true` for `0/0`, which PostgreSQL treats as "no position".
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

impl fmt::Display for Lsn {
    /// Formats as `X/Y`, upper-case hexadecimal without leading zeros, exactly
    /// like PostgreSQL's `pg_lsn` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Error returned when a string is not a valid `X/Y` LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers of at most 8 digits separated by '/', e.g. 16/B374D848")]
pub struct ParseLsnError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    /// Parses `X/Y` where each side is 1–8 hexadecimal digits (either case).
    /// Anything else, including surrounding whitespace, is rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_string(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let part = |p: &str| -> Result<u64, ParseLsnError> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u64::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((part(hi)? << 32) | part(lo)?))
    }
}

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// A PostgreSQL protocol timestamp: microseconds since 2000-01-01 00:00 UTC.
///
/// Guarantees: it stores exactly what the server sent (or what will be sent),
/// so no precision is lost; conversions to and from [`SystemTime`] are exact
/// to the microsecond and saturate instead of panicking on overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The current wall-clock time, as used for the client time field of a
    /// standby status update.
    pub fn now() -> PgTimestamp {
        PgTimestamp::from_system_time(SystemTime::now())
    }

    /// Converts a [`SystemTime`], saturating at the `i64` range.
    pub fn from_system_time(t: SystemTime) -> PgTimestamp {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
        match t.duration_since(pg_epoch) {
            Ok(d) => PgTimestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => PgTimestamp(
                i64::try_from(e.duration().as_micros())
                    .map(|v| -v)
                    .unwrap_or(i64::MIN),
            ),
        }
    }

    /// Converts to a [`SystemTime`]. Values outside what `SystemTime` can
    /// represent saturate to the PostgreSQL epoch offset by the largest
    /// representable amount rather than panicking.
    pub fn to_system_time(self) -> SystemTime {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
        let d = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            pg_epoch.checked_add(d).unwrap_or(pg_epoch)
        } else {
            pg_epoch.checked_sub(d).unwrap_or(pg_epoch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_roundtrip() {
        for s in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let l: Lsn = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
    }

    #[test]
    fn lsn_rejects_garbage() {
        for s in [
            "",
            "/",
            "1/",
            "/1",
            "1",
            "1/2/3",
            "G/0",
            "123456789/0",
            " 1/0",
            "1/0 ",
            "-1/0",
            "+1/0",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn timestamp_conversion() {
        let t = PgTimestamp(0).to_system_time();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            PG_EPOCH_OFFSET_SECS
        );
        let ts = PgTimestamp(123_456_789);
        assert_eq!(PgTimestamp::from_system_time(ts.to_system_time()), ts);
        let neg = PgTimestamp(-5_000_000);
        assert_eq!(PgTimestamp::from_system_time(neg.to_system_time()), neg);
        assert!(PgTimestamp::now().0 > 0);
    }
}
