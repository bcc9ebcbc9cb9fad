//! Fault injection: fail the next N matching requests with a status, add latency, or stop
//! answering altogether and come back later with the same state.
//!
//! Tests hold a [`Faults`] handle (from `Cluster::faults()`); other processes use the admin
//! endpoint `/_sim/faults` (see [`Faults::apply_command`]), which is never itself affected by
//! faults so that a stopped cluster can always be resumed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A rule failing the next `remaining` requests whose method and path match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailRule {
    /// HTTP method to match (`None`: any).
    pub method: Option<String>,
    /// Substring the request path must contain (`""`: any path).
    pub path: String,
    /// HTTP status to answer with (a `Status` body with a matching reason is sent).
    pub status: u16,
    /// How many more matching requests fail; the rule is gone at 0.
    pub remaining: u32,
}

/// Extra latency before matching requests are served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyRule {
    /// HTTP method to match (`None`: any).
    pub method: Option<String>,
    /// Substring the request path must contain (`""`: any path).
    pub path: String,
    /// The added delay, in milliseconds.
    pub millis: u64,
}

/// Every fault in force, as the admin endpoint reports it.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaultsSnapshot {
    /// Failure rules, first match wins.
    pub fail: Vec<FailRule>,
    /// Latency rules; every matching one adds its delay.
    pub latency: Vec<LatencyRule>,
    /// Connections are dropped unanswered ([`Faults::stop`]).
    pub stopped: bool,
    /// Requests are held unanswered ([`Faults::freeze`]).
    #[serde(default)]
    pub frozen: bool,
}

/// A command for the admin endpoint (`POST /_sim/faults`, JSON body), e.g.
/// `{"action":"fail","method":"PATCH","path":"/secrets","status":500,"count":2}`,
/// `{"action":"latency","path":"","millis":300}`, `{"action":"stop"}`, `{"action":"freeze"}`,
/// `{"action":"resume"}`, `{"action":"clear"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum FaultCommand {
    /// Adds a [`FailRule`].
    Fail {
        /// HTTP method to match (absent: any).
        method: Option<String>,
        /// Substring the request path must contain (absent: any path).
        #[serde(default)]
        path: String,
        /// HTTP status to answer with.
        status: u16,
        /// How many matching requests fail (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// Adds a [`LatencyRule`].
    Latency {
        /// HTTP method to match (absent: any).
        method: Option<String>,
        /// Substring the request path must contain (absent: any path).
        #[serde(default)]
        path: String,
        /// The added delay, in milliseconds.
        millis: u64,
    },
    /// Drops every connection unanswered ([`Faults::stop`]).
    Stop,
    /// Holds every request unanswered ([`Faults::freeze`]).
    Freeze,
    /// Answers again, with the state as it was ([`Faults::resume`]).
    Resume,
    /// Removes every rule and resumes ([`Faults::clear`]).
    Clear,
}

fn one() -> u32 {
    1
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Serve it now.
    Pass,
    /// Serve it after this long.
    Delay(Duration),
    /// Answer with this status and a `Status` body.
    Fail(u16),
    /// Drop the connection without an answer.
    Drop,
    /// Hold the request until the cluster is resumed (then serve it).
    Hold,
}

struct State {
    snapshot: FaultsSnapshot,
    cut: CancellationToken,
    /// Cancelled (and replaced) on every resume: held requests wait for it.
    resumed: CancellationToken,
    /// Requests a latency rule has delayed, by path: a test waits for a slow request to be in
    /// flight.
    delayed: std::collections::HashMap<String, u64>,
}

/// Handle to one cluster's fault injector; cheap to clone.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

fn matches(method: &Option<String>, path: &str, req_method: &str, req_path: &str) -> bool {
    method
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case(req_method))
        && req_path.contains(path)
}

impl Faults {
    /// No faults: every request passes.
    pub fn new() -> Self {
        Faults {
            state: Arc::new(Mutex::new(State {
                snapshot: FaultsSnapshot::default(),
                cut: CancellationToken::new(),
                resumed: CancellationToken::new(),
                delayed: Default::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the next `count` requests with `method` (any when `None`) whose path contains
    /// `path`, answering `status`.
    pub fn fail_next(&self, method: Option<&str>, path: &str, status: u16, count: u32) {
        self.lock().snapshot.fail.push(FailRule {
            method: method.map(String::from),
            path: path.into(),
            status,
            remaining: count,
        });
    }

    /// Delays every matching request by `delay` until [`Faults::clear`].
    pub fn add_latency(&self, method: Option<&str>, path: &str, delay: Duration) {
        self.lock().snapshot.latency.push(LatencyRule {
            method: method.map(String::from),
            path: path.into(),
            millis: delay.as_millis() as u64,
        });
    }

    /// Removes all fail and latency rules (does not resume a stopped cluster).
    pub fn clear(&self) {
        let mut s = self.lock();
        s.snapshot.fail.clear();
        s.snapshot.latency.clear();
    }

    /// Stops answering: open connections (watches included) are cut and every new request's
    /// connection is dropped unanswered, until [`Faults::resume`]. State is kept.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.snapshot.stopped = true;
        s.cut.cancel();
        s.cut = CancellationToken::new();
        // Requests held by a freeze are dropped too.
        s.resumed.cancel();
        s.resumed = CancellationToken::new();
    }

    /// Stops answering without closing anything: requests (new and in flight on open
    /// connections) are held unanswered until [`Faults::resume`], like an API server that hangs.
    /// Clients see their own timeouts.
    pub fn freeze(&self) {
        self.lock().snapshot.frozen = true;
    }

    /// Answers again, with the state the cluster had when it stopped; held requests proceed.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.snapshot.stopped = false;
        s.snapshot.frozen = false;
        s.resumed.cancel();
        s.resumed = CancellationToken::new();
    }

    /// Completes when the cluster is resumed (immediately when it is not frozen).
    pub(crate) async fn until_resumed(&self) {
        let token = {
            let s = self.lock();
            if !s.snapshot.frozen {
                return;
            }
            s.resumed.clone()
        };
        token.cancelled().await;
    }

    /// Whether connections are being dropped ([`Faults::stop`]).
    pub fn is_stopped(&self) -> bool {
        self.lock().snapshot.stopped
    }

    /// How many requests whose path contains `path` latency rules have delayed so far: one
    /// that is counted has reached the server and is being held there.
    pub fn delayed(&self, path: &str) -> u64 {
        self.lock()
            .delayed
            .iter()
            .filter(|(p, _)| p.contains(path))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every fault in force now.
    pub fn snapshot(&self) -> FaultsSnapshot {
        self.lock().snapshot.clone()
    }

    /// Applies an admin-endpoint command.
    pub fn apply_command(&self, cmd: FaultCommand) {
        match cmd {
            FaultCommand::Fail {
                method,
                path,
                status,
                count,
            } => self.fail_next(method.as_deref(), &path, status, count),
            FaultCommand::Latency {
                method,
                path,
                millis,
            } => self.add_latency(method.as_deref(), &path, Duration::from_millis(millis)),
            FaultCommand::Stop => self.stop(),
            FaultCommand::Freeze => self.freeze(),
            FaultCommand::Resume => self.resume(),
            FaultCommand::Clear => self.clear(),
        }
    }

    /// The token cancelled at the next [`Faults::stop`] (long-running responses watch it).
    pub(crate) fn cut_token(&self) -> CancellationToken {
        self.lock().cut.clone()
    }

    /// Decides the fate of one request (and consumes one use of a matching fail rule).
    pub(crate) fn verdict(&self, method: &str, path: &str) -> Verdict {
        let mut s = self.lock();
        if s.snapshot.stopped {
            return Verdict::Drop;
        }
        if s.snapshot.frozen {
            return Verdict::Hold;
        }
        if let Some(i) = s
            .snapshot
            .fail
            .iter()
            .position(|r| r.remaining > 0 && matches(&r.method, &r.path, method, path))
        {
            let rule = &mut s.snapshot.fail[i];
            rule.remaining -= 1;
            let status = rule.status;
            if rule.remaining == 0 {
                s.snapshot.fail.remove(i);
            }
            return Verdict::Fail(status);
        }
        let delay: u64 = s
            .snapshot
            .latency
            .iter()
            .filter(|r| matches(&r.method, &r.path, method, path))
            .map(|r| r.millis)
            .sum();
        if delay > 0 {
            *s.delayed.entry(path.to_string()).or_default() += 1;
            Verdict::Delay(Duration::from_millis(delay))
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rules_are_consumed() {
        let f = Faults::new();
        f.fail_next(Some("PATCH"), "/secrets", 500, 2);
        assert_eq!(f.verdict("GET", "/api/v1/secrets"), Verdict::Pass);
        assert_eq!(
            f.verdict("PATCH", "/api/v1/namespaces/a/secrets/x"),
            Verdict::Fail(500)
        );
        assert_eq!(
            f.verdict("patch", "/api/v1/namespaces/a/secrets/x"),
            Verdict::Fail(500)
        );
        assert_eq!(
            f.verdict("PATCH", "/api/v1/namespaces/a/secrets/x"),
            Verdict::Pass
        );
    }

    #[test]
    fn stop_cuts_and_resume_restores() {
        let f = Faults::new();
        let token = f.cut_token();
        f.stop();
        assert!(token.is_cancelled());
        assert_eq!(f.verdict("GET", "/api"), Verdict::Drop);
        f.resume();
        assert_eq!(f.verdict("GET", "/api"), Verdict::Pass);
        f.freeze();
        assert_eq!(f.verdict("GET", "/api"), Verdict::Hold);
        f.resume();
        f.add_latency(None, "", Duration::from_millis(5));
        assert_eq!(
            f.verdict("GET", "/api"),
            Verdict::Delay(Duration::from_millis(5))
        );
    }

    #[test]
    fn only_the_requests_a_latency_rule_delays_are_counted() {
        let f = Faults::new();
        f.add_latency(None, "/upgradeplans/p/status", Duration::from_millis(5));
        assert_eq!(f.verdict("GET", "/upgradeplans/p"), Verdict::Pass);
        assert_eq!(f.delayed("upgradeplans"), 0);
        assert_eq!(
            f.verdict("PATCH", "/namespaces/a/upgradeplans/p/status"),
            Verdict::Delay(Duration::from_millis(5))
        );
        assert_eq!(f.delayed("/namespaces/a/upgradeplans/p/status"), 1);
        assert_eq!(f.delayed("/namespaces/b/"), 0);
    }

    #[test]
    fn commands_parse() {
        let c: FaultCommand =
            serde_json::from_str(r#"{"action":"fail","path":"/x","status":503}"#).expect("parses");
        let f = Faults::new();
        f.apply_command(c);
        assert_eq!(f.snapshot().fail[0].remaining, 1);
    }
}
