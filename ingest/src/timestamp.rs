//! Step 7: when an event happened, from what the client and capture said.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

/// Events further in the future than this are clamped to `now`.
const FUTURE_LIMIT: Duration = Duration::hours(23);
/// Epoch numbers above this are milliseconds (year 5138 in seconds).
const EPOCH_MS_THRESHOLD: f64 = 1e11;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub timestamp: OffsetDateTime,
    /// Set when the client's time was more than 23 h ahead and `now` was used instead.
    pub clamped_from_future: bool,
}

/// What the rules read; `timestamp` is the client's text as capture kept it.
pub(crate) struct Inputs<'a> {
    pub now: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
    pub timestamp: Option<&'a str>,
    pub offset_ms: Option<f64>,
    pub ignore_sent_at: bool,
}

pub(crate) fn resolve(i: Inputs<'_>) -> Resolved {
    let candidate = if let Some(offset) = i.offset_ms.filter(|o| o.is_finite()) {
        i.now - Duration::milliseconds(offset as i64)
    } else if let Some(ts) = i.timestamp.and_then(parse) {
        match i.sent_at {
            // The client's clock may be off; what matters is how long before sending the
            // event happened, measured on the client's own clock.
            Some(sent_at) if !i.ignore_sent_at => i.now + (ts - sent_at),
            _ => ts,
        }
    } else {
        i.now
    };
    if candidate - i.now > FUTURE_LIMIT {
        Resolved { timestamp: i.now, clamped_from_future: true }
    } else {
        Resolved { timestamp: candidate, clamped_from_future: false }
    }
}

/// RFC 3339 (also with `+HH` or `+HHMM` offsets), date-time with a space (UTC), and
/// epoch seconds or milliseconds.
pub(crate) fn parse(text: &str) -> Option<OffsetDateTime> {
    let t = text.trim();
    if let Ok(n) = t.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let nanos = if n > EPOCH_MS_THRESHOLD { n * 1e6 } else { n * 1e9 };
        return OffsetDateTime::from_unix_timestamp_nanos(nanos as i128).ok();
    }
    let iso = t.replacen(' ', "T", 1);
    if let Ok(v) = OffsetDateTime::parse(&iso, &Rfc3339) {
        return Some(v);
    }
    if let Some(fixed) = expand_short_offset(&iso) {
        if let Ok(v) = OffsetDateTime::parse(&fixed, &Rfc3339) {
            return Some(v);
        }
    }
    let naive = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
    PrimitiveDateTime::parse(&iso, naive).ok().map(PrimitiveDateTime::assume_utc)
}

/// `...+02` and `...+0200` into `...+02:00`.
fn expand_short_offset(s: &str) -> Option<String> {
    let sign_at = s.rfind(['+', '-']).filter(|&i| i > 10)?;
    let (head, offset) = s.split_at(sign_at);
    let digits = &offset[1..];
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match digits.len() {
        2 => Some(format!("{head}{}{digits}:00", &offset[..1])),
        4 => Some(format!("{head}{}{}:{}", &offset[..1], &digits[..2], &digits[2..])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-05-01 12:00:00 UTC);

    fn at(timestamp: Option<&str>, sent_at: Option<OffsetDateTime>, offset_ms: Option<f64>) -> Resolved {
        resolve(Inputs { now: NOW, sent_at, timestamp, offset_ms, ignore_sent_at: false })
    }

    #[test]
    fn formats() {
        let expect = datetime!(2024-05-01 10:00:00 UTC);
        for text in [
            "2024-05-01T10:00:00Z",
            "2024-05-01T12:00:00+02:00",
            "2024-05-01T12:00:00+02",
            "2024-05-01T12:00:00+0200",
            "2024-05-01 10:00:00",
            "2024-05-01 10:00:00+00:00",
            "1714557600",
            "1714557600000",
            "1714557600000.0",
        ] {
            assert_eq!(parse(text), Some(expect), "{text}");
        }
        assert_eq!(parse("2024-05-01T10:00:00.250Z"), Some(datetime!(2024-05-01 10:00:00.25 UTC)));
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse("-5"), None);
    }

    #[test]
    fn offset_wins() {
        let r = at(Some("2020-01-01T00:00:00Z"), Some(NOW), Some(1500.0));
        assert_eq!(r.timestamp, NOW - Duration::milliseconds(1500));
    }

    #[test]
    fn clock_skew_is_corrected_with_sent_at() {
        // The client's clock is 1 h fast: it says it sent at 13:00 an event of 12:59:50.
        let r = at(Some("2024-05-01T12:59:50Z"), Some(datetime!(2024-05-01 13:00:00 UTC)), None);
        assert_eq!(r.timestamp, datetime!(2024-05-01 11:59:50 UTC));
        let ignored = resolve(Inputs {
            now: NOW,
            sent_at: Some(datetime!(2024-05-01 13:00:00 UTC)),
            timestamp: Some("2024-05-01T12:59:50Z"),
            offset_ms: None,
            ignore_sent_at: true,
        });
        assert_eq!(ignored.timestamp, datetime!(2024-05-01 12:59:50 UTC));
    }

    #[test]
    fn timestamp_alone_then_now() {
        assert_eq!(at(Some("2024-04-30T00:00:00Z"), None, None).timestamp, datetime!(2024-04-30 00:00:00 UTC));
        assert_eq!(at(None, None, None).timestamp, NOW);
        assert_eq!(at(Some("not a time"), None, None).timestamp, NOW);
    }

    #[test]
    fn far_future_is_clamped_with_a_warning() {
        let r = at(Some("2024-05-03T00:00:00Z"), None, None);
        assert_eq!(r, Resolved { timestamp: NOW, clamped_from_future: true });
        let near = at(Some("2024-05-02T10:00:00Z"), None, None);
        assert!(!near.clamped_from_future, "22 h ahead is allowed");
    }
}
