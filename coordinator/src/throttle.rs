//! Keeps refusals from flooding the audit log.
//!
//! A port scanner, a token-guessing loop, or a thousand agents retrying with an expired
//! certificate would otherwise write an audit row per attempt. Per kind, the first
//! [`PER_WINDOW`] refusals of each [`WINDOW`] are written (audit and log) in full; the rest are
//! counted and summarised in the next entry of that kind after the window, or by
//! [`Throttle::overdue`] once the window is over if no other comes. Metrics still count every
//! refusal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one throttling window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Entries written in full per kind and window.
pub const PER_WINDOW: u32 = 20;

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` earlier ones of this kind were dropped and should be mentioned.
    Write { suppressed: u64 },
    /// Drop it (counted for the next summary).
    Suppress,
}

#[derive(Default)]
struct Slot {
    window_start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// Per-kind throttle.
#[derive(Default)]
pub struct Throttle {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Throttle {
    /// Decides for one refusal of `kind` at `now`.
    pub fn check(&self, kind: &str, now: Instant) -> Verdict {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(kind.to_string()).or_default();
        let fresh = slot
            .window_start
            .is_none_or(|start| now.duration_since(start) >= WINDOW);
        if fresh {
            slot.window_start = Some(now);
            slot.written = 0;
        }
        if slot.written < PER_WINDOW {
            slot.written += 1;
            let suppressed = std::mem::take(&mut slot.suppressed);
            Verdict::Write { suppressed }
        } else {
            slot.suppressed += 1;
            Verdict::Suppress
        }
    }
}

impl Throttle {
    /// The kinds whose window is over with refusals not yet mentioned, and how many; each is
    /// reported once (a flood that stopped still gets its summary).
    pub fn overdue(&self, now: Instant) -> Vec<(String, u64)> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = vec![];
        for (kind, slot) in slots.iter_mut() {
            let over = slot
                .window_start
                .is_some_and(|start| now.duration_since(start) >= WINDOW);
            if over && slot.suppressed > 0 {
                due.push((kind.clone(), std::mem::take(&mut slot.suppressed)));
            }
        }
        slots.retain(|_, slot| {
            slot.suppressed > 0
                || slot
                    .window_start
                    .is_some_and(|start| now.duration_since(start) < WINDOW)
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_are_summarised() {
        let t = Throttle::default();
        let start = Instant::now();
        for _ in 0..PER_WINDOW {
            assert_eq!(t.check("tls.x", start), Verdict::Write { suppressed: 0 });
        }
        assert_eq!(t.check("tls.x", start), Verdict::Suppress);
        assert_eq!(t.check("tls.x", start), Verdict::Suppress);
        assert_eq!(
            t.check("tls.other", start),
            Verdict::Write { suppressed: 0 },
            "kinds are independent"
        );
        assert_eq!(
            t.check("tls.x", start + WINDOW),
            Verdict::Write { suppressed: 2 }
        );
    }

    #[test]
    fn a_flood_that_stopped_is_summarised_once_after_its_window() {
        let t = Throttle::default();
        let start = Instant::now();
        for _ in 0..PER_WINDOW + 5 {
            t.check("register.unknown_token", start);
        }
        assert_eq!(t.overdue(start), vec![], "not before the window is over");
        assert_eq!(
            t.overdue(start + WINDOW),
            vec![("register.unknown_token".to_string(), 5)]
        );
        assert_eq!(t.overdue(start + WINDOW * 2), vec![], "reported once");
    }
}
