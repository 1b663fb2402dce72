//! Times of the usage log and of `--since`/`--until`, as milliseconds since the Unix epoch.
//!
//! Pure: "now" is a parameter. A time without a zone is UTC, as the log writes it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DD`, or `YYYY-MM-DD[T ]HH:MM[:SS[.frac]]`, optionally ending in `Z` or an offset
/// `±HH:MM` / `±HHMM`. `None` for anything else, including impossible dates.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let (date, rest) = text.split_at_checked(10)?;
    let days = parse_date(date)?;
    let mut ms = days * 86_400_000;
    if rest.is_empty() {
        return Some(ms);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, offset_ms) = split_zone(rest)?;
    ms += parse_clock(clock)?;
    Some(ms - offset_ms)
}

fn parse_date(date: &str) -> Option<i64> {
    let b = date.as_bytes();
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = number(&date[0..4])?;
    let month = number(&date[5..7])?;
    let day = number(&date[8..10])?;
    let valid = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
    valid.then(|| days_from_civil(year, month, day))
}

/// ASCII digits only (no sign, no spaces).
fn number(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Splits `HH:MM[:SS[.f]]` from its zone; returns the zone's offset east of UTC.
fn split_zone(text: &str) -> Option<(&str, i64)> {
    if let Some(clock) = text.strip_suffix(['Z', 'z']) {
        return Some((clock, 0));
    }
    let Some(at) = text.rfind(['+', '-']) else {
        return Some((text, 0));
    };
    let (clock, zone) = text.split_at(at);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits = zone[1..].replace(':', "");
    if digits.len() != 4 {
        return None;
    }
    let (hours, minutes) = (number(&digits[..2])?, number(&digits[2..])?);
    (hours < 24 && minutes < 60).then_some((clock, sign * (hours * 60 + minutes) * 60_000))
}

fn parse_clock(clock: &str) -> Option<i64> {
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.split(':');
    let hours = number(parts.next()?)?;
    let minutes = number(parts.next()?)?;
    let seconds = parts.next().map_or(Some(0), number)?;
    let two = |s: &str| s.len() == 2;
    let shape = hms.split(':').all(two) && parts.next().is_none();
    let in_range = hours < 24 && minutes < 60 && seconds <= 60;
    if !shape || !in_range || (clock.contains('.') && number(frac).is_none()) {
        return None;
    }
    // Milliseconds: the first three digits of the fraction.
    let millis = format!("{frac:0<3}")[..3].parse::<i64>().ok()?;
    Some(((hours * 60 + minutes) * 60 + seconds) * 1000 + millis)
}

/// RFC 3339 UTC with milliseconds, as the log writes times.
pub fn format_timestamp(ms: i64) -> String {
    let at = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    humantime::format_rfc3339_millis(at).to_string()
}

/// Milliseconds since the epoch of `now` (0 before the epoch).
pub fn epoch_ms(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A `--since`/`--until` value: a time ([`parse_timestamp`]) or a duration before `now`
/// (`90m`, `1h`, `2days`, humantime's syntax).
pub fn parse_bound(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Some(ms) = parse_timestamp(text.trim()) {
        return Ok(ms);
    }
    match humantime::parse_duration(text.trim()) {
        Ok(ago) => Ok(now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))),
        Err(_) => Err(format!(
            "{text:?} is neither a time (2026-11-29, 2026-11-29T17:00:00Z, \
             \"2026-11-29 17:00\") nor a duration before now (90m, 1h, 7days)"
        )),
    }
}

/// The lines a report covers: those whose `ts` (the end of their interval) is at or after
/// `since` and before `until`. A line's interval may begin before `since`; it is counted
/// whole, so sums over adjacent windows add up to the sum over both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Window {
    /// Fails when `since` is not before `until`.
    pub fn new(since: Option<i64>, until: Option<i64>) -> Result<Window, String> {
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                return Err(format!(
                    "--since ({}) is not before --until ({})",
                    format_timestamp(s),
                    format_timestamp(u)
                ));
            }
        }
        Ok(Window { since, until })
    }

    pub fn contains(&self, ts_ms: i64) -> bool {
        self.since.is_none_or(|s| ts_ms >= s) && self.until.is_none_or(|u| ts_ms < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_436_493_774; // 2025-11-29T17:14:53.774Z

    #[test]
    fn parses_what_the_log_writes_and_what_people_type() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2025-11-29T17:14:53.774Z"), Some(NOW));
        assert_eq!(parse_timestamp("2025-11-29 17:14:53.774"), Some(NOW));
        assert_eq!(parse_timestamp("2025-11-29T18:14:53.774+01:00"), Some(NOW));
        assert_eq!(parse_timestamp("2025-11-29T16:14:53.774-0100"), Some(NOW));
        assert_eq!(parse_timestamp("2025-11-29T17:14:53.774123456Z"), Some(NOW));
        assert_eq!(parse_timestamp("2025-11-29T17:14Z"), Some(NOW - 53_774));
        assert_eq!(
            parse_timestamp("2025-11-29"),
            Some(NOW - (17 * 3600 + 14 * 60 + 53) * 1000 - 774)
        );
        assert_eq!(parse_timestamp("2024-02-29"), Some(19_782 * 86_400_000));
    }

    #[test]
    fn rejects_impossible_or_odd_times() {
        for bad in [
            "",
            "2025",
            "2025-13-01",
            "2025-02-29",
            "2025-11-31",
            "2025-11-29T24:00:00Z",
            "2025-11-29T17:60Z",
            "2025-11-29T7:14:53Z",
            "2025-11-29T17:14:53.Z",
            "2025-11-29T17:14:53+1",
            "2025-11-29X17:14",
            "+025-11-29",
            "2025-11-29T17:14:53Zjunk",
            "ünïcödé!!!!",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_back_as_the_log_does() {
        assert_eq!(format_timestamp(NOW), "2025-11-29T17:14:53.774Z");
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn bounds_are_times_or_durations_before_now() {
        assert_eq!(parse_bound("1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_bound("90m", NOW), Ok(NOW - 5_400_000));
        assert_eq!(parse_bound("2025-11-29T17:14:53.774Z", 0), Ok(NOW));
        let err = parse_bound("last tuesday", NOW).unwrap_err();
        assert!(err.contains("neither a time"), "{err}");
    }

    #[test]
    fn windows_include_since_and_exclude_until() {
        let w = Window::new(Some(10), Some(20)).unwrap();
        assert!(!w.contains(9));
        assert!(w.contains(10));
        assert!(w.contains(19));
        assert!(!w.contains(20));
        assert!(Window::default().contains(i64::MIN));
        assert!(Window::new(Some(20), Some(20)).is_err());
        assert!(Window::new(Some(21), Some(20)).is_err());
    }
}
