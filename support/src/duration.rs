//! Human durations: the one parser behind every duration on a skoala command line
//! (`--cert-ttl 24h`, `--heartbeat 10s`, `skoalactl token create --ttl 1h`) and in plan
//! documents (`window.duration`, `expectedDuration`).
//!
//! Accepted spellings (jiff's "friendly" format and ISO 8601, case-insensitive):
//!
//! | spelling | examples |
//! |---|---|
//! | a number and a unit | `90s`, `15m`, `4h`, `2d`, `1w`, `500ms` |
//! | several units, with or without spaces | `1h30m`, `1h 30m`, `1 hour 30 minutes` |
//! | a fraction of the smallest unit | `1.5h`, `0.5s` |
//! | ISO 8601 | `PT90M`, `PT1H30M`, `P2D` |
//!
//! Days are 24 hours and weeks 7 days (these are lifetimes and lengths, not calendar dates);
//! months and years are refused, having no fixed length. Surrounding whitespace is ignored. A
//! duration must be positive: zero and negative ones (`-1h`, `1h ago`) are refused.

use std::time::Duration;

/// Why a text is not a positive duration.
#[derive(Debug, thiserror::Error)]
pub enum ParseDurationError {
    /// Not a duration at all, or one with a unit of no fixed length (months, years).
    #[error("{text:?} is not a duration (try 90s, 15m, 1h30m, 24h, 30d)")]
    Invalid {
        /// The text as given.
        text: String,
        /// jiff's reason.
        #[source]
        source: jiff::Error,
    },
    /// Zero or negative.
    #[error("{text:?}: the duration must be positive")]
    NotPositive {
        /// The text as given.
        text: String,
    },
}

/// Parses a positive duration (see the module doc for the spellings). Fits clap's
/// `value_parser`.
pub fn parse(text: &str) -> Result<Duration, ParseDurationError> {
    let invalid = |source| ParseDurationError::Invalid {
        text: text.to_string(),
        source,
    };
    let span: jiff::Span = text.trim().parse().map_err(invalid)?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(invalid)?;
    if signed.is_negative() || signed.is_zero() {
        return Err(ParseDurationError::NotPositive {
            text: text.to_string(),
        });
    }
    Ok(signed.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> u64 {
        parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .as_secs()
    }

    /// Every spelling one of the three parsers this one replaced accepted (the coordinator's
    /// and `skoalactl`'s, the agent's, plan windows'), and what it meant there.
    #[test]
    fn every_spelling_accepted_before_still_is() {
        for (text, want) in [
            ("90s", 90),
            ("10s", 10),
            ("15m", 15 * 60),
            ("90m", 90 * 60),
            ("1h", 3600),
            ("4h", 4 * 3600),
            ("24h", 24 * 3600),
            ("1h30m", 90 * 60),
            ("1h 30m", 90 * 60),
            ("1 hour 30 minutes", 90 * 60),
            ("2d", 2 * 86400),
            ("30d", 30 * 86400),
            ("365d", 365 * 86400),
            ("PT4H", 4 * 3600),
            ("PT90M", 90 * 60),
            ("pt1h30m", 90 * 60),
            ("P2D", 2 * 86400),
            (" 4h ", 4 * 3600),
            ("1.5h", 5400),
        ] {
            assert_eq!(secs(text), want, "{text:?}");
        }
        assert_eq!(parse("500ms").expect("ms"), Duration::from_millis(500));
        assert_eq!(secs("1w"), 7 * 86400);
    }

    #[test]
    fn zero_negative_and_calendar_units_are_refused() {
        for text in ["0s", "-1h", "1h ago", "PT0S"] {
            assert!(
                matches!(parse(text), Err(ParseDurationError::NotPositive { .. })),
                "{text:?}"
            );
        }
        for text in ["soon", "", "1 month", "1y", "P1M", "10"] {
            assert!(
                matches!(parse(text), Err(ParseDurationError::Invalid { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_message_names_the_text_and_examples() {
        let e = parse("soon").expect_err("not a duration");
        assert_eq!(
            e.to_string(),
            "\"soon\" is not a duration (try 90s, 15m, 1h30m, 24h, 30d)"
        );
    }
}
