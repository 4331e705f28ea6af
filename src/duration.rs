//! The one checked parser and adder for durations and times that come from
//! outside: requests (`ttl`, `issued_within`, policy explain `ttl`/`now`),
//! files (config durations, policy test files) and vendors (expiry times a
//! plugin returns). Everything is bounded before use, so no later arithmetic
//! on `OffsetDateTime`, `SystemTime` or `i64` seconds can overflow or wrap:
//!
//! - a duration is ASCII, at most [`MAX_TEXT`] characters, and at most
//!   [`MAX`] (100 years) long; requests are further bounded by the role's
//!   `max_ttl`, and TTLs by a 1 s minimum;
//! - a time given as Unix seconds lies in years 1970..=9999;
//! - additions to times are checked (`None` instead of a panic).
//!
//! Callers turn the `String` errors into a 400 naming the field (or a
//! config error naming the key).
//!
//! Must not import: http, store, policy.

use std::time::Duration;

use time::OffsetDateTime;

/// The longest duration lessor accepts anywhere: 100 years (`100y`, of
/// 365.25 days).
pub const MAX: Duration = Duration::from_secs(3_155_760_000);

/// Longest duration text accepted (longer input is refused unread).
pub const MAX_TEXT: usize = 64;

/// Latest Unix time accepted from outside: 9999-12-31T23:59:59Z.
pub const MAX_UNIX: i64 = 253_402_300_799;

/// The input as an error message may quote it: at most [`MAX_TEXT`]
/// characters, control characters escaped.
fn quote(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_TEXT).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX_TEXT {
        out.push('…');
    }
    out
}

/// Parses `10m`, `1h30m`, `90s` (humantime units), refusing anything over
/// [`MAX`], non-ASCII text (`１０m`) and text over [`MAX_TEXT`] characters.
pub fn parse(s: &str) -> Result<Duration, String> {
    if s.len() > MAX_TEXT {
        return Err(format!("`{}` is not a duration (longer than {MAX_TEXT} characters); write e.g. 10m, 1h, 90s", quote(s)));
    }
    if !s.is_ascii() {
        return Err(format!("`{}` is not a duration (use ASCII digits and units); write e.g. 10m, 1h, 90s", quote(s)));
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{}` is not a duration ({e}); write e.g. 10m, 1h, 90s", quote(s)))?;
    if d > MAX {
        return Err(format!("`{}` is longer than the 100-year limit on durations", quote(s)));
    }
    Ok(d)
}

/// A requested TTL: [`parse`], then at least 1 s and at most `max` (the
/// role's `max_ttl`; `what` names it in the message).
pub fn parse_ttl(s: &str, max: Duration, what: &str) -> Result<Duration, String> {
    let d = parse(s)?;
    check_ttl(d, max, what)?;
    Ok(d)
}

/// Bounds an already parsed TTL the same way as [`parse_ttl`].
pub fn check_ttl(d: Duration, max: Duration, what: &str) -> Result<(), String> {
    if d < Duration::from_secs(1) {
        return Err("ttl must be at least 1s".into());
    }
    if d > max {
        return Err(format!("ttl {} exceeds {what} max {}", crate::fmt_duration(d), crate::fmt_duration(max)));
    }
    Ok(())
}

/// Whole seconds as `i64` (a bounded duration always fits; saturates
/// otherwise, never wraps negative).
pub fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// `t + d`, or `None` where that leaves the representable range.
pub fn add(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    t.checked_add(time::Duration::try_from(d).ok()?)
}

/// `t - d`, or `None` where that leaves the representable range.
pub fn sub(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    t.checked_sub(time::Duration::try_from(d).ok()?)
}

/// A time given as Unix seconds: years 1970..=9999.
pub fn unix_time(secs: i64) -> Result<OffsetDateTime, String> {
    if !(0..=MAX_UNIX).contains(&secs) {
        return Err(format!("{secs} is not a Unix time between 1970 and 9999 (seconds since 1970-01-01T00:00:00Z)"));
    }
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| format!("{secs} is not a Unix time: {e}"))
}

/// An expiry a vendor returned, bounded by what lessor asked for: never
/// later than `asked`. An expiry already in the past is kept (the lease
/// falls due at once, which only removes access) and logged.
pub fn vendor_expiry(returned: OffsetDateTime, asked: OffsetDateTime, now: OffsetDateTime, role: &str) -> OffsetDateTime {
    if returned < now {
        tracing::warn!(role, returned = %returned, "the vendor returned an expiry in the past; the lease falls due at once");
    }
    returned.min(asked)
}

/// Serde for config durations (`with = "crate::duration::serde"`): the
/// humantime text, parsed and bounded by [`parse`].
pub mod serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }
}

/// Serde for optional config durations (`with = "crate::duration::serde_opt"`).
pub mod serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::parse(&s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_durations_are_refused_with_a_reason() {
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse(" 1h30m ").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("100y").unwrap(), MAX, "100 years is the limit itself");
        for (bad, why) in [
            ("100000y", "100-year limit"),
            ("18446744073709551616s", "not a duration"),
            ("1e309", "not a duration"),
            ("-1s", "not a duration"),
            ("", "not a duration"),
            ("１０m", "ASCII"),
            ("ten", "not a duration"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let huge = "9".repeat(10_000);
        let e = parse(&huge).unwrap_err();
        assert!(e.contains("longer than 64 characters") && e.len() < 200, "{e}");
    }

    #[test]
    fn ttls_are_bounded_by_one_second_and_the_role() {
        let max = Duration::from_secs(3600);
        assert_eq!(parse_ttl("0s", max, "role `r`").unwrap_err(), "ttl must be at least 1s");
        assert_eq!(parse_ttl("2h", max, "role `r`").unwrap_err(), "ttl 2h exceeds role `r` max 1h");
        assert_eq!(parse_ttl("1h", max, "role `r`").unwrap(), max);
    }

    #[test]
    fn time_arithmetic_is_checked() {
        let now = OffsetDateTime::now_utc();
        assert!(add(now, MAX).is_some());
        assert!(add(now, Duration::from_secs(u64::MAX)).is_none());
        assert!(sub(now, Duration::from_secs(100_000 * 366 * 86_400)).is_none());
        assert_eq!(secs_i64(Duration::from_secs(u64::MAX)), i64::MAX);
        assert!(unix_time(-1).is_err());
        assert!(unix_time(MAX_UNIX + 1).is_err());
        assert!(unix_time(i64::MAX).is_err());
        assert_eq!(unix_time(0).unwrap(), OffsetDateTime::UNIX_EPOCH);
    }

    #[test]
    fn vendor_expiries_never_exceed_what_was_asked() {
        let now = OffsetDateTime::now_utc();
        let asked = now + time::Duration::minutes(10);
        let far = OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT);
        assert_eq!(vendor_expiry(far, asked, now, "r"), asked);
        let sooner = now + time::Duration::minutes(5);
        assert_eq!(vendor_expiry(sooner, asked, now, "r"), sooner);
        let past = now - time::Duration::minutes(5);
        assert_eq!(vendor_expiry(past, asked, now, "r"), past, "kept: the lease falls due at once");
    }
}
