//! Time. The orchestrator's clock is the system clock, or — for tests only — a file holding an
//! RFC 3339 timestamp (`serve --clock-file`), so maintenance windows are tested by rewriting
//! the file instead of waiting for a real Saturday night. Records (audit, events, heartbeats)
//! are stamped with real time ([`now_ms`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Timestamp;
use skoala_plan::{Clock, SystemClock};
pub use skoala_support::time::{now_ms, now_unix};

/// Reads "now" from a file on every call. An unreadable or unparsable file keeps the last good
/// time (a test rewriting the file must never make time jump to the real clock).
pub struct FileClock {
    path: PathBuf,
    last: Mutex<Timestamp>,
}

impl FileClock {
    pub fn new(path: PathBuf) -> Self {
        let clock = FileClock {
            path,
            last: Mutex::new(Timestamp::now()),
        };
        clock.now();
        clock
    }
}

impl Clock for FileClock {
    fn now(&self) -> Timestamp {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match std::fs::read_to_string(&self.path) {
            Ok(text) => match text.trim().parse::<Timestamp>() {
                Ok(t) => *last = t,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "clock file is not an RFC 3339 timestamp; keeping the last time")
                }
            },
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the clock file; keeping the last time")
            }
        }
        *last
    }
}

/// The clock `serve` uses.
pub fn from_flag(clock_file: Option<PathBuf>) -> Arc<dyn Clock> {
    match clock_file {
        Some(p) => Arc::new(FileClock::new(p)),
        None => Arc::new(SystemClock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_moves_when_the_file_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("now");
        std::fs::write(&path, "2026-11-28T01:00:00Z").expect("write");
        let clock = FileClock::new(path.clone());
        assert_eq!(clock.now().to_string(), "2026-11-28T01:00:00Z");
        std::fs::write(&path, "2026-11-28T03:30:00+08:00\n").expect("write");
        assert_eq!(clock.now().to_string(), "2026-11-27T19:30:00Z");
        std::fs::write(&path, "garbage").expect("write");
        assert_eq!(
            clock.now().to_string(),
            "2026-11-27T19:30:00Z",
            "a bad file keeps the last time"
        );
    }
}
