//! Keeps refusals from flooding the audit log.
//!
//! A port scanner, a token-guessing loop, or a thousand agents retrying with an expired
//! certificate would otherwise write an audit row per attempt. Per kind, the first
//! [`PER_WINDOW`] refusals of each [`WINDOW`] are written in full; the rest are counted and
//! summarised in the next entry of that kind after the window. Metrics still count every
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
}
