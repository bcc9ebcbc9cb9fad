//! What one joined agent may cost the coordinator: per-session quotas.
//!
//! An agent certificate lives in a cluster we do not control. Whatever that cluster sends, one
//! session must not starve the others, fill the disk or grow the coordinator's memory:
//!
//! - task messages (accepted, step progress, results), chart requests and backup uploads draw
//!   from a token bucket ([`Limits::rate`] per second, bursts of [`Limits::burst`]); a real
//!   agent sends a dozen per operation;
//! - chart transfers in flight are capped ([`Limits::charts_in_flight`]): each holds an open
//!   file and a task streaming it;
//! - backup bytes being written are capped ([`Limits::upload_bytes_in_flight`]);
//! - a message over a quota, or about an operation the cluster was never sent, is dropped and
//!   counted; past [`Limits::hard_limit`] dropped messages the session is closed.
//!
//! The session audits the first drop of each kind and summarises the rest when it ends
//! ([`Quota::summary`]), so a flood costs a few audit rows, not one per message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The quotas of one session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sustained task messages, chart requests and backup uploads per second.
    pub rate: f64,
    /// How many of those may come at once before the rate applies.
    pub burst: f64,
    /// Chart transfers streaming at once.
    pub charts_in_flight: u32,
    /// Backup bytes being stored at once. At least one full backup
    /// ([`crate::backups::MAX_VALUES`]).
    pub upload_bytes_in_flight: u32,
    /// Dropped messages after which the session is closed.
    pub hard_limit: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: 50.0,
            burst: 200.0,
            charts_in_flight: 2,
            upload_bytes_in_flight: 4 * 1024 * 1024,
            hard_limit: 1000,
        }
    }
}

/// Why a message was dropped: the audit kind it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dropped {
    /// About an operation never sent to this cluster, or already finished.
    UnexpectedOperation,
    /// Over the message rate, or over an in-flight cap.
    OverQuota,
}

impl Dropped {
    /// The audit kind.
    pub fn kind(self) -> &'static str {
        match self {
            Dropped::UnexpectedOperation => "session.unexpected_operation",
            Dropped::OverQuota => "session.quota_exceeded",
        }
    }
}

/// What a drop means for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// The first drop of its kind in this session: audit it.
    First,
    /// Counted; summarised when the session ends.
    Counted,
    /// Past the hard limit: close the session.
    Close,
}

/// One session's quotas and what it has dropped.
pub struct Quota {
    limits: Limits,
    tokens: f64,
    refilled: Instant,
    charts: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    dropped: BTreeMap<Dropped, u64>,
}

impl Quota {
    /// Fresh quotas, the bucket full.
    pub fn new(limits: Limits, now: Instant) -> Quota {
        Quota {
            limits,
            tokens: limits.burst,
            refilled: now,
            charts: Arc::new(Semaphore::new(limits.charts_in_flight as usize)),
            uploads: Arc::new(Semaphore::new(limits.upload_bytes_in_flight as usize)),
            dropped: BTreeMap::new(),
        }
    }

    /// Takes one token for a costly message; `false`: over the rate, drop it.
    pub fn message(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * self.limits.rate).min(self.limits.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A slot for one chart transfer, held until it ends; `None`: too many at once.
    pub fn chart(&self) -> Option<OwnedSemaphorePermit> {
        self.charts.clone().try_acquire_owned().ok()
    }

    /// Room for `bytes` of backup being stored, held until stored; `None`: over the cap.
    pub fn upload(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.max(1)).ok()?;
        self.uploads.clone().try_acquire_many_owned(n).ok()
    }

    /// Counts one dropped message.
    pub fn strike(&mut self, why: Dropped) -> Strike {
        let n = self.dropped.entry(why).or_default();
        *n += 1;
        let first = *n == 1;
        if self.total() > self.limits.hard_limit {
            Strike::Close
        } else if first {
            Strike::First
        } else {
            Strike::Counted
        }
    }

    fn total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// The drops not audited one by one (all but the first of each kind), in words; `None`
    /// when there are none.
    pub fn summary(&self) -> Option<String> {
        let rest: Vec<String> = self
            .dropped
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(why, n)| format!("{} more {}", n - 1, why.kind()))
            .collect();
        (!rest.is_empty()).then(|| format!("dropped in this session: {}", rest.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn small() -> Limits {
        Limits {
            rate: 10.0,
            burst: 5.0,
            charts_in_flight: 1,
            upload_bytes_in_flight: 100,
            hard_limit: 3,
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut q = Quota::new(small(), t0);
        assert_eq!((0..10).filter(|_| q.message(t0)).count(), 5, "the burst");
        assert!(!q.message(t0), "empty");
        // 10/s: one more after 100 ms, never more than the burst after a long pause.
        assert!(q.message(t0 + Duration::from_millis(100)));
        assert!(!q.message(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| q.message(later)).count(), 5);
    }

    #[test]
    fn in_flight_caps_hold_until_released() {
        let q = Quota::new(small(), Instant::now());
        let chart = q.chart().expect("one chart");
        assert!(q.chart().is_none(), "a second at once is refused");
        drop(chart);
        assert!(q.chart().is_some(), "free again");
        let a = q.upload(60).expect("60 bytes");
        assert!(q.upload(60).is_none(), "120 > 100");
        assert!(q.upload(101).is_none(), "never more than the cap");
        drop(a);
        assert!(q.upload(100).is_some());
    }

    #[test]
    fn the_first_drop_of_each_kind_is_audited_and_the_hard_limit_closes() {
        let mut q = Quota::new(small(), Instant::now());
        assert_eq!(q.strike(Dropped::UnexpectedOperation), Strike::First);
        assert_eq!(q.strike(Dropped::UnexpectedOperation), Strike::Counted);
        assert_eq!(q.strike(Dropped::OverQuota), Strike::First);
        assert_eq!(
            q.summary().as_deref(),
            Some("dropped in this session: 1 more session.unexpected_operation")
        );
        assert_eq!(q.strike(Dropped::OverQuota), Strike::Close, "4 > 3");
    }
}
