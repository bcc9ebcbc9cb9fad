//! Maintenance windows: when an upgrade may *start* (DESIGN.md invariant 4, "windows are law").
//!
//! A window is a series of intervals `[opens, closes)` in absolute time, generated from a rule
//! written in wall-clock time of an IANA time zone. Two rules are supported:
//!
//! - `schedule` (five-field cron) + `duration`: opens at every occurrence, stays open for the
//!   duration of elapsed time. Cron evaluation, including daylight-saving gaps and folds, is
//!   `croner`'s (Vixie-cron semantics: a fixed-time job in a spring-forward gap runs right after
//!   the gap; in a fall-back fold it runs once).
//! - `days` + `startTime` + `endTime`: opens at `startTime` on each listed day and closes at
//!   `endTime` wall-clock (the next day when `endTime <= startTime`). A wall-clock time that
//!   does not exist (a spring-forward gap) resolves to the instant right after the gap; one that
//!   exists twice resolves to the earlier instant — the same "compatible" rule RFC 5545 uses.
//!
//! Overlapping or touching intervals merge, so "does the upgrade fit before the window closes"
//! asks about the real closing time, not the end of one occurrence.

use std::str::FromStr;

use croner::Cron;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};

/// How far ahead we look for the next opening before calling a window "never opens".
/// A little over a year, so yearly schedules (`0 2 1 1 *`) and leap days are found.
const HORIZON_DAYS: i64 = 400;

/// A window's rule, checked and ready to evaluate.
#[derive(Debug, Clone)]
pub struct Window {
    rule: Rule,
    tz: TimeZone,
    tz_name: String,
}

#[derive(Debug, Clone)]
enum Rule {
    Cron {
        cron: Box<Cron>,
        duration: SignedDuration,
    },
    Days {
        days: Vec<Weekday>,
        start: Time,
        end: Time,
    },
}

/// One opening of a window: `[opens, closes)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// When it opens (inclusive).
    pub opens: Timestamp,
    /// When it closes (exclusive).
    pub closes: Timestamp,
}

impl Interval {
    /// Whether `t` is inside.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.opens <= t && t < self.closes
    }
    /// How long it is open.
    pub fn length(&self) -> SignedDuration {
        self.closes.duration_since(self.opens)
    }
}

/// Whether an upgrade expected to take some time may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartDecision {
    /// Start now; the window closes at `closes` (`None`: no window, never closes).
    Start {
        /// When the window closes (`None`: no window).
        closes: Option<Timestamp>,
    },
    /// Not now. The next opening long enough for the upgrade.
    Wait {
        /// That opening.
        next: Interval,
    },
    /// No opening within the horizon is long enough for the upgrade.
    Never,
}

/// Why a window rule is invalid. The field names are the document's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `timeZone` is not in the bundled IANA database.
    #[error("timeZone: unknown IANA time zone {0:?}")]
    TimeZone(String),
    /// `schedule` has five fields but does not parse.
    #[error("schedule: invalid cron expression {expr:?}: {reason}")]
    Schedule {
        /// The expression.
        expr: String,
        /// The cron parser's reason.
        reason: String,
    },
    /// `schedule` does not have five fields (seconds or years are not accepted).
    #[error(
        "schedule: give exactly five fields (minute hour day-of-month month day-of-week), got {0:?}"
    )]
    ScheduleFields(String),
    /// `duration` is not a positive duration.
    #[error("duration: {0}")]
    Duration(String),
    /// A `days` entry is not a weekday.
    #[error("days: unknown day {0:?} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Day(String),
    /// `startTime` or `endTime` is not `HH:MM`.
    #[error("{field}: expected HH:MM, got {value:?}")]
    Time {
        /// `startTime` or `endTime`.
        field: &'static str,
        /// What was written.
        value: String,
    },
    /// Neither form, or a mix of both; the text says what is missing.
    #[error("give either `schedule` with `duration`, or `days` with `startTime` and `endTime`{0}")]
    Shape(&'static str),
    /// The rule is valid but never opens within the horizon (e.g. February 30).
    #[error("the window never opens (no opening in the next {HORIZON_DAYS} days)")]
    NeverOpens,
}

impl Window {
    /// A cron window: opens at each occurrence of `schedule` and stays open for `duration`.
    pub fn cron(schedule: &str, duration: &str, time_zone: &str) -> Result<Self, WindowError> {
        let Ok(fields) = <[&str; 5]>::try_from(schedule.split_whitespace().collect::<Vec<_>>())
        else {
            return Err(WindowError::ScheduleFields(schedule.to_string()));
        };
        // croner reads an empty list item (`,` or `1,`) as nothing: `* * * * ,` never matches,
        // and proving that costs a walk to croner's year 5000 on every plan apply. Refuse it
        // as the typo it is.
        if let Some(field) = fields.iter().find(|f| f.split(',').any(str::is_empty)) {
            return Err(WindowError::Schedule {
                expr: schedule.to_string(),
                reason: format!("the field {field:?} has an empty item in its list"),
            });
        }
        let cron = Cron::from_str(schedule).map_err(|e| WindowError::Schedule {
            expr: schedule.to_string(),
            reason: e.to_string(),
        })?;
        let duration = parse_duration(duration).map_err(WindowError::Duration)?;
        // Openings are looked for this far ahead, and a longer one would reach past the range
        // of a timestamp when the search starts `duration` before now.
        let longest = SignedDuration::from_hours(24 * HORIZON_DAYS);
        if duration > longest {
            return Err(WindowError::Duration(format!(
                "{duration:#} is longer than {HORIZON_DAYS} days, the furthest a window is looked ahead"
            )));
        }
        if !some_day_matches(schedule, fields)? {
            return Err(WindowError::NeverOpens);
        }
        Self::build(
            Rule::Cron {
                cron: Box::new(cron),
                duration,
            },
            time_zone,
        )
    }

    /// A weekly window: opens at `start` on each of `days`, closes at `end` wall-clock.
    pub fn days(
        days: &[String],
        start: &str,
        end: &str,
        time_zone: &str,
    ) -> Result<Self, WindowError> {
        if days.is_empty() {
            return Err(WindowError::Shape(" (days is empty)"));
        }
        let days = days
            .iter()
            .map(|d| parse_weekday(d).ok_or_else(|| WindowError::Day(d.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let parse_time = |field, value: &str| {
            parse_hh_mm(value).ok_or_else(|| WindowError::Time {
                field,
                value: value.to_string(),
            })
        };
        let start = parse_time("startTime", start)?;
        let end = parse_time("endTime", end)?;
        Self::build(Rule::Days { days, start, end }, time_zone)
    }

    fn build(rule: Rule, time_zone: &str) -> Result<Self, WindowError> {
        let tz =
            TimeZone::get(time_zone).map_err(|_| WindowError::TimeZone(time_zone.to_string()))?;
        let window = Window {
            rule,
            tz,
            tz_name: time_zone.to_string(),
        };
        // A rule that parses but never matches (`0 2 30 2 *`: 30 February) is an error at
        // creation, not a plan that waits forever.
        if window.next_opening(Timestamp::now()).is_none() {
            return Err(WindowError::NeverOpens);
        }
        Ok(window)
    }

    /// The IANA name of the window's time zone.
    pub fn time_zone(&self) -> &str {
        &self.tz_name
    }

    /// The interval containing `t`, if the window is open at `t`.
    pub fn open_at(&self, t: Timestamp) -> Option<Interval> {
        self.merged_from(t).into_iter().find(|i| i.contains(t))
    }

    /// The first opening that starts after `t`, or contains `t`.
    pub fn next_opening(&self, t: Timestamp) -> Option<Interval> {
        self.merged_from(t).into_iter().find(|i| i.closes > t)
    }

    /// May an upgrade expected to take `expected` start at `now`? It may if the window is open
    /// and the upgrade fits before it closes; otherwise the answer names the next opening that
    /// is long enough.
    pub fn decide(&self, now: Timestamp, expected: SignedDuration) -> StartDecision {
        for interval in self.merged_from(now) {
            if interval.closes <= now {
                continue;
            }
            let start = interval.opens.max(now);
            if interval.closes.duration_since(start) >= expected {
                if interval.contains(now) {
                    return StartDecision::Start {
                        closes: Some(interval.closes),
                    };
                }
                return StartDecision::Wait { next: interval };
            }
        }
        StartDecision::Never
    }

    /// All intervals that close after `from - longest possible interval`, up to the horizon,
    /// in order, with overlapping or touching ones merged.
    fn merged_from(&self, from: Timestamp) -> Vec<Interval> {
        let mut raw = self.raw_intervals(from);
        raw.sort_by_key(|i| i.opens);
        let mut merged: Vec<Interval> = Vec::with_capacity(raw.len());
        for i in raw {
            match merged.last_mut() {
                Some(last) if i.opens <= last.closes => last.closes = last.closes.max(i.closes),
                _ => merged.push(i),
            }
        }
        merged
    }

    fn raw_intervals(&self, from: Timestamp) -> Vec<Interval> {
        let horizon = from + SignedDuration::from_hours(24 * HORIZON_DAYS);
        match &self.rule {
            Rule::Cron { cron, duration } => {
                // Start far enough back that an occurrence still open at `from` is included.
                let back = from - *duration;
                let start = back.to_zoned(self.tz.clone());
                let mut out = Vec::new();
                for occurrence in cron.iter_from(start, croner::Direction::Forward) {
                    let opens = occurrence.timestamp();
                    if opens > horizon {
                        break;
                    }
                    out.push(Interval {
                        opens,
                        closes: opens + *duration,
                    });
                    // Bound the work for every-minute schedules: enough to cover merging.
                    if out.len() > 100_000 {
                        break;
                    }
                }
                out
            }
            Rule::Days { days, start, end } => {
                let today = from.to_zoned(self.tz.clone()).date();
                let mut out = Vec::new();
                // From two days back (an overnight window opened yesterday may still be open).
                for offset in -2..=HORIZON_DAYS {
                    let Ok(date) = today.checked_add(offset.days()) else {
                        continue;
                    };
                    if !days.contains(&date.weekday()) {
                        continue;
                    }
                    let end_date = if end <= start {
                        match date.tomorrow() {
                            Ok(d) => d,
                            Err(_) => continue,
                        }
                    } else {
                        date
                    };
                    let (Some(opens), Some(closes)) = (
                        wall_clock(&self.tz, date.to_datetime(*start)),
                        wall_clock(&self.tz, end_date.to_datetime(*end)),
                    ) else {
                        continue;
                    };
                    if closes > opens {
                        out.push(Interval { opens, closes });
                    }
                }
                out
            }
        }
    }
}

/// Whether the date fields of `schedule` (day of month, month, day of week, from its five
/// `fields`) match any day from two days ago to the horizon. A rule whose dates never come
/// (`0 2 30 2 *`: 30 February) is refused by this count of at most 403 days instead of by
/// croner's search, which walks day by day to its year 5000 before it gives up.
fn some_day_matches(schedule: &str, fields: [&str; 5]) -> Result<bool, WindowError> {
    let [_, _, day, month, weekday] = fields;
    let dates = format!("0 0 {day} {month} {weekday}");
    let dates = Cron::from_str(&dates).map_err(|e| WindowError::Schedule {
        expr: schedule.to_string(),
        reason: e.to_string(),
    })?;
    // Dates are civil: any zone tells the same day, month and weekday.
    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    for offset in -2..=HORIZON_DAYS + 1 {
        let Ok(date) = today.checked_add(offset.days()) else {
            continue;
        };
        let Ok(midnight) = date.to_zoned(TimeZone::UTC) else {
            continue;
        };
        if dates.is_time_matching(&midnight).unwrap_or(false) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Resolves a wall-clock time in `tz` to an instant with the "compatible" rule: in a gap, the
/// instant after the gap; in a fold, the earlier instant.
fn wall_clock(tz: &TimeZone, dt: jiff::civil::DateTime) -> Option<Timestamp> {
    tz.to_ambiguous_zoned(dt)
        .compatible()
        .ok()
        .map(|z: Zoned| z.timestamp())
}

/// Parses a plan document's duration (`4h`, `90m`, `1h30m`, `PT4H`; every spelling is listed
/// in [`skoala_support::duration`], which the command lines use too). Must be positive.
pub fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let d = skoala_support::duration::parse(text).map_err(|e| e.to_string())?;
    SignedDuration::try_from(d).map_err(|e| format!("{text:?} is too long: {e}"))
}

fn parse_weekday(text: &str) -> Option<Weekday> {
    let t = text.trim().to_ascii_lowercase();
    let day = match t.get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    };
    // Accept `Sat` and `Saturday`, not `Satx`.
    let full = format!("{day:?}").to_ascii_lowercase();
    (t.len() == 3 || t == full).then_some(day)
}

fn parse_hh_mm(text: &str) -> Option<Time> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() > 2 || m.len() != 2 {
        return None;
    }
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp literal")
    }

    #[test]
    fn a_cron_list_with_an_empty_item_is_refused_at_once() {
        // A fuzz-found input: croner took `30 0 * * ,` as a day-of-week list of nothing.
        for schedule in ["30 0 * * ,", "0 2 * * 1,", "0 2 ,1 * *", "0,,30 2 * * *"] {
            let err = Window::cron(schedule, "80m", "America/New_York").expect_err(schedule);
            assert!(
                matches!(&err, WindowError::Schedule { reason, .. } if reason.contains("empty item")),
                "{schedule}: {err}"
            );
        }
        Window::cron("0,30 2 * * 1,5", "80m", "UTC").expect("lists without empty items");
    }

    #[test]
    fn a_duration_longer_than_the_horizon_is_refused_not_a_panic() {
        // A fuzz-found input: 21494589768 minutes (40,000 years) before now overflowed the
        // timestamp range in the search.
        let err = Window::cron("30 5 * * *", "21494589768m", "America/New_York").expect_err("long");
        assert!(
            matches!(&err, WindowError::Duration(m) if m.contains("400 days")),
            "{err}"
        );
        Window::cron("30 5 * * *", "400d", "UTC").expect("as long as the horizon");
    }

    fn some_day_matches_in(schedule: &str) -> bool {
        let fields = <[&str; 5]>::try_from(schedule.split_whitespace().collect::<Vec<_>>())
            .expect("five fields");
        some_day_matches(schedule, fields).expect(schedule)
    }

    #[test]
    fn dates_that_never_come_are_refused_by_counting_days_not_by_croners_search() {
        for schedule in ["0 2 30 2 *", "0 2 31 4,6,9,11 *", "0 2 31 2 *"] {
            assert!(!some_day_matches_in(schedule), "{schedule}");
            let err = Window::cron(schedule, "80m", "America/New_York").expect_err(schedule);
            assert!(matches!(err, WindowError::NeverOpens), "{schedule}: {err}");
        }
        for schedule in ["0 2 30 2 1", "0 2 L * *", "0 2 1 3 *", "0 2 * * *"] {
            assert!(some_day_matches_in(schedule), "{schedule}");
        }
        // Day of month or day of week (cron's rule): 30 February or any Monday.
        Window::cron("0 2 30 2 1", "80m", "UTC").expect("Mondays come");
        Window::cron("0 2 L * *", "80m", "UTC").expect("the last day of each month");
    }

    #[test]
    fn cron_window_opens_saturday_2am_shanghai_for_4h() {
        let w = Window::cron("0 2 * * SAT", "4h", "Asia/Shanghai").expect("valid");
        // Saturday 2026-11-28 02:00 in Shanghai is Friday 18:00 UTC.
        let opens = at("2026-11-27T18:00:00Z");
        assert_eq!(w.open_at(at("2026-11-27T17:59:59Z")), None);
        let i = w.open_at(opens).expect("open at 02:00");
        assert_eq!(
            i,
            Interval {
                opens,
                closes: at("2026-11-27T22:00:00Z")
            }
        );
        assert_eq!(
            w.open_at(at("2026-11-27T22:00:00Z")),
            None,
            "closes at 06:00, exclusive"
        );
        assert_eq!(
            w.next_opening(at("2026-11-27T22:00:00Z")).map(|i| i.opens),
            Some(at("2026-12-04T18:00:00Z"))
        );
    }

    #[test]
    fn an_upgrade_starts_only_if_it_fits_before_the_window_closes() {
        let w = Window::cron("0 2 * * SAT", "4h", "Asia/Shanghai").expect("valid");
        let ten_min = SignedDuration::from_mins(10);
        // 05:45 local: 15 minutes left, fits.
        assert_eq!(
            w.decide(at("2026-11-27T21:45:00Z"), ten_min),
            StartDecision::Start {
                closes: Some(at("2026-11-27T22:00:00Z"))
            }
        );
        // 05:55 local: 5 minutes left, does not fit: wait for next Saturday.
        match w.decide(at("2026-11-27T21:55:00Z"), ten_min) {
            StartDecision::Wait { next } => assert_eq!(next.opens, at("2026-12-04T18:00:00Z")),
            other => panic!("expected Wait, got {other:?}"),
        }
        // Longer than any opening: never.
        assert_eq!(
            w.decide(at("2026-11-27T18:00:00Z"), SignedDuration::from_hours(5)),
            StartDecision::Never
        );
    }

    #[test]
    fn overnight_days_window_crosses_midnight() {
        let days = vec!["Sat".to_string()];
        let w = Window::days(&days, "22:00", "02:00", "UTC").expect("valid");
        let i = w
            .open_at(at("2026-11-29T01:00:00Z"))
            .expect("still open after midnight");
        assert_eq!(i.opens, at("2026-11-28T22:00:00Z"));
        assert_eq!(i.closes, at("2026-11-29T02:00:00Z"));
    }

    #[test]
    fn daylight_saving_spring_forward_shortens_the_window_and_keeps_wall_clock() {
        // Europe/Berlin jumps 02:00 → 03:00 on Sunday 2026-03-29.
        let days = vec!["Sun".to_string()];
        let w = Window::days(&days, "01:00", "05:00", "Europe/Berlin").expect("valid");
        let i = w.next_opening(at("2026-03-28T12:00:00Z")).expect("opens");
        assert_eq!(i.opens, at("2026-03-29T00:00:00Z"), "01:00 CET");
        assert_eq!(i.closes, at("2026-03-29T03:00:00Z"), "05:00 CEST");
        assert_eq!(
            i.length(),
            SignedDuration::from_hours(3),
            "one hour shorter that night"
        );
        // A week later it is back to 4 hours, in summer time.
        let next = w.next_opening(i.closes).expect("opens again");
        assert_eq!(next.opens, at("2026-04-04T23:00:00Z"));
        assert_eq!(next.length(), SignedDuration::from_hours(4));
    }

    #[test]
    fn daylight_saving_gap_start_resolves_after_the_gap() {
        // 02:30 does not exist in Berlin on 2026-03-29; the window opens at 03:00 CEST.
        let w = Window::cron("30 2 * * SUN", "1h", "Europe/Berlin").expect("valid");
        let i = w.next_opening(at("2026-03-28T12:00:00Z")).expect("opens");
        assert_eq!(i.opens, at("2026-03-29T01:00:00Z"));
    }

    #[test]
    fn daylight_saving_fall_back_opens_once() {
        // 02:30 exists twice in Berlin on 2026-10-25; the window opens once, at the first.
        let w = Window::cron("30 2 * * SUN", "15m", "Europe/Berlin").expect("valid");
        let first = w.next_opening(at("2026-10-24T12:00:00Z")).expect("opens");
        assert_eq!(first.opens, at("2026-10-25T00:30:00Z"));
        let second = w.next_opening(first.closes).expect("opens again");
        assert_eq!(
            second.opens,
            at("2026-11-01T01:30:00Z"),
            "next Sunday, not an hour later"
        );
    }

    #[test]
    fn windows_that_never_open_or_are_malformed_are_rejected_with_the_field() {
        assert_eq!(
            Window::cron("0 2 30 2 *", "1h", "UTC").err(),
            Some(WindowError::NeverOpens)
        );
        assert!(matches!(
            Window::cron("0 2 * *", "1h", "UTC"),
            Err(WindowError::ScheduleFields(_))
        ));
        assert!(matches!(
            Window::cron("0 25 * * *", "1h", "UTC"),
            Err(WindowError::Schedule { .. })
        ));
        assert!(matches!(
            Window::cron("0 2 * * *", "soon", "UTC"),
            Err(WindowError::Duration(_))
        ));
        assert!(matches!(
            Window::cron("0 2 * * *", "-1h", "UTC"),
            Err(WindowError::Duration(_))
        ));
        assert_eq!(
            Window::cron("0 2 * * *", "1h", "Mars/Olympus").err(),
            Some(WindowError::TimeZone("Mars/Olympus".into()))
        );
        assert!(matches!(
            Window::days(&["Caturday".into()], "01:00", "02:00", "UTC"),
            Err(WindowError::Day(_))
        ));
        assert!(matches!(
            Window::days(&["Sat".into()], "1am", "02:00", "UTC"),
            Err(WindowError::Time {
                field: "startTime",
                ..
            })
        ));
    }

    #[test]
    fn touching_occurrences_merge_into_one_opening() {
        // Every hour for an hour: always open, one long interval.
        let w = Window::cron("0 * * * *", "1h", "UTC").expect("valid");
        let i = w.open_at(at("2026-11-25T12:30:00Z")).expect("open");
        assert!(i.length() > SignedDuration::from_hours(24 * 300));
    }

    #[test]
    fn durations_parse_in_friendly_and_iso_forms() {
        assert_eq!(parse_duration("4h"), Ok(SignedDuration::from_hours(4)));
        assert_eq!(parse_duration("1h30m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("PT90M"), Ok(SignedDuration::from_mins(90)));
        assert!(parse_duration("0s").is_err());
    }
}
