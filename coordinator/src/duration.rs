//! Human durations on the command line (`90s`, `15m`, `24h`, `1h 30m`, ISO 8601 `PT1H`),
//! parsed with jiff's friendly format so every skoala binary accepts the same spellings.

use std::time::Duration;

/// Parses a positive duration; for clap's `value_parser`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let span: jiff::Span = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a duration (try 90s, 15m, 24h, 30d): {e}"))?;
    // A day is 24 hours here: these are lifetimes, not calendar dates.
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    if d.is_negative() || d.is_zero() {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    Ok(d.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_spellings() {
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert!(parse("0s").is_err());
        assert!(parse("soon").is_err());
    }
}
