//! Operation ids: the one name an operation has in the rollout, on the wire, in the cluster's
//! operation record and backups, and in the coordinator's backup store.
//!
//! Two forms, and nothing else:
//!
//! - a rollout's operation, `<plan>.<target>.<kind>-<attempt>`
//!   (`to-0-19-2.control-plane.upgrade-1`): deterministic, so a coordinator restarted after persisting a rollout re-sends the same id
//!   and the executor recognises an operation it already ran (invariant 2);
//! - a `skoalactl plan check` preflight, `preflight_<plan>_<nonce>.<target>`: never equal to a
//!   rollout's id, because a plan name is a DNS-1123 label and holds no `_`.
//!
//! Invariant: every part is free of `.` (and the plan of `_`), and the id as a whole is a safe
//! file and object name wherever it is recorded. [`OperationId::from_str`] refuses anything
//! else, so `id.to_string().parse() == Ok(id)` for every id this module builds.

use std::fmt;
use std::str::FromStr;

use crate::target::Target;

/// What every preflight id starts with.
const PREFLIGHT_PREFIX: &str = "preflight_";

/// What a rollout's operation does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    Upgrade,
    Rollback,
}

impl OperationKind {
    /// The name in the id (`upgrade`, `rollback`).
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Upgrade => "upgrade",
            OperationKind::Rollback => "rollback",
        }
    }
}

/// The id of one operation. See the module docs for the two forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OperationId {
    /// An upgrade or rollback the rollout started.
    Rollout {
        plan: String,
        target: Target,
        kind: OperationKind,
        /// The target's upgrade attempt (1, 2, ...) the operation belongs to.
        attempt: u32,
    },
    /// One cluster's answer to one `plan check`.
    Preflight {
        plan: String,
        /// Makes each check's ids unique (the coordinator's clock and a counter).
        nonce: String,
        target: Target,
    },
}

impl OperationId {
    /// `<plan>.<target>.upgrade-<attempt>`.
    pub fn upgrade(plan: &str, target: Target, attempt: u32) -> Self {
        OperationId::Rollout {
            plan: plan.into(),
            target,
            kind: OperationKind::Upgrade,
            attempt,
        }
    }

    /// `<plan>.<target>.rollback-<attempt>`.
    pub fn rollback(plan: &str, target: Target, attempt: u32) -> Self {
        OperationId::Rollout {
            plan: plan.into(),
            target,
            kind: OperationKind::Rollback,
            attempt,
        }
    }

    /// `preflight_<plan>_<nonce>.<target>`.
    pub fn preflight(plan: &str, nonce: &str, target: Target) -> Self {
        OperationId::Preflight {
            plan: plan.into(),
            nonce: nonce.into(),
            target,
        }
    }

    /// The plan the operation belongs to.
    pub fn plan(&self) -> &str {
        match self {
            OperationId::Rollout { plan, .. } | OperationId::Preflight { plan, .. } => plan,
        }
    }

    /// The cluster it runs on.
    pub fn target(&self) -> &Target {
        match self {
            OperationId::Rollout { target, .. } | OperationId::Preflight { target, .. } => target,
        }
    }

    /// Whether `id` is a preflight's id. The prefix alone decides (no rollout id can have it),
    /// which keeps this cheap enough for every message an agent sends.
    pub fn is_preflight(id: &str) -> bool {
        id.starts_with(PREFLIGHT_PREFIX)
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperationId::Rollout {
                plan,
                target,
                kind,
                attempt,
            } => write!(f, "{plan}.{target}.{}-{attempt}", kind.as_str()),
            OperationId::Preflight {
                plan,
                nonce,
                target,
            } => write!(f, "{PREFLIGHT_PREFIX}{plan}_{nonce}.{target}"),
        }
    }
}

/// Why a text is not an operation id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{id:?} is not an operation id (<plan>.<target>.<kind>-<attempt> or preflight_<plan>_<nonce>.<target>): {reason}"
)]
pub struct OperationIdError {
    pub id: String,
    pub reason: &'static str,
}

impl FromStr for OperationId {
    type Err = OperationIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let bad = |reason| OperationIdError {
            id: id.into(),
            reason,
        };
        if let Some(rest) = id.strip_prefix(PREFLIGHT_PREFIX) {
            let (stem, target) = rest.split_once('.').ok_or(bad("no target"))?;
            let (plan, nonce) = stem.split_once('_').ok_or(bad("no nonce"))?;
            check_plan(plan).map_err(bad)?;
            if nonce.is_empty() {
                return Err(bad("empty nonce"));
            }
            return Ok(OperationId::Preflight {
                plan: plan.into(),
                nonce: nonce.into(),
                target: parse_target(target).map_err(bad)?,
            });
        }
        let mut parts = id.split('.');
        let (Some(plan), Some(target), Some(last), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three dot-separated parts"));
        };
        check_plan(plan).map_err(bad)?;
        let (kind, attempt) = last.rsplit_once('-').ok_or(bad("no -<attempt>"))?;
        let kind = match kind {
            "upgrade" => OperationKind::Upgrade,
            "rollback" => OperationKind::Rollback,
            _ => return Err(bad("the kind is neither upgrade nor rollback")),
        };
        // Digits only, no leading zero: one text per id.
        let canonical = !attempt.is_empty()
            && attempt.bytes().all(|b| b.is_ascii_digit())
            && (attempt == "0" || !attempt.starts_with('0'));
        let attempt = attempt
            .parse()
            .ok()
            .filter(|_| canonical)
            .ok_or(bad("the attempt is not a number"))?;
        Ok(OperationId::Rollout {
            plan: plan.into(),
            target: parse_target(target).map_err(bad)?,
            kind,
            attempt,
        })
    }
}

fn check_plan(plan: &str) -> Result<(), &'static str> {
    if plan.is_empty() {
        Err("empty plan name")
    } else if plan.contains(['_', '.']) {
        Err("a plan name holds no '_' or '.'")
    } else {
        Ok(())
    }
}

fn parse_target(target: &str) -> Result<Target, &'static str> {
    if target.is_empty() || target.contains('.') {
        return Err("the target is empty or holds a '.'");
    }
    Ok(if target == Target::CONTROL_PLANE {
        Target::ControlPlane
    } else {
        Target::Worker(target.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> Target {
        Target::Worker(id.into())
    }

    #[test]
    fn formats_both_forms() {
        let cases = [
            (
                OperationId::upgrade("to-0-19-2", Target::ControlPlane, 1),
                "to-0-19-2.control-plane.upgrade-1",
            ),
            (
                OperationId::rollback("p", worker("6f1c-uid"), 3),
                "p.6f1c-uid.rollback-3",
            ),
            (
                OperationId::preflight("p", "1700000000000-7", Target::ControlPlane),
                "preflight_p_1700000000000-7.control-plane",
            ),
            (
                OperationId::preflight("to-1", "5-0", worker("c1")),
                "preflight_to-1_5-0.c1",
            ),
        ];
        for (id, text) in cases {
            assert_eq!(id.to_string(), text);
            assert_eq!(text.parse::<OperationId>(), Ok(id), "{text}");
        }
    }

    #[test]
    fn every_built_id_round_trips() {
        let plans = ["p", "to-0-19-2", "a1", "x-y-z-0"];
        let targets = [
            Target::ControlPlane,
            worker("c1"),
            worker("3f9a2c1e-0b7d-4c55-9e0a-1d2b3c4d5e6f"),
            worker("control-plane-2"),
        ];
        let attempts = [0, 1, 2, 9, 10, 99, u32::MAX];
        let nonces = ["0-0", "1700000000000-42", "n"];
        let mut seen = 0;
        for plan in plans {
            for target in &targets {
                for attempt in attempts {
                    for id in [
                        OperationId::upgrade(plan, target.clone(), attempt),
                        OperationId::rollback(plan, target.clone(), attempt),
                    ] {
                        let text = id.to_string();
                        assert!(!OperationId::is_preflight(&text), "{text}");
                        assert_eq!(text.parse::<OperationId>().as_ref(), Ok(&id), "{text}");
                        assert_eq!(id.plan(), plan);
                        assert_eq!(id.target(), target);
                        seen += 1;
                    }
                }
                for nonce in nonces {
                    let id = OperationId::preflight(plan, nonce, target.clone());
                    let text = id.to_string();
                    assert!(OperationId::is_preflight(&text), "{text}");
                    assert_eq!(text.parse::<OperationId>().as_ref(), Ok(&id), "{text}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 4 * 4 * (7 * 2 + 3));
    }

    #[test]
    fn refuses_malformed_ids() {
        for text in [
            "",
            "op-1",
            "p.c1",
            "p.c1.upgrade",
            "p.c1.upgrade-",
            "p.c1.upgrade-x",
            "p.c1.upgrade--1",
            "p.c1.upgrade-+1",
            "p.c1.upgrade-01",
            "p.c1.upgrade-4294967296",
            "p.c1.install-1",
            "p.c1.upgrade-1.extra",
            ".c1.upgrade-1",
            "p..upgrade-1",
            "p_x.c1.upgrade-1",
            "preflight_",
            "preflight_p",
            "preflight_p.c1",
            "preflight_p_.c1",
            "preflight__n.c1",
            "preflight_p_n.",
            "preflight_p_n.c1.c2",
        ] {
            let err = text.parse::<OperationId>().expect_err(text);
            assert_eq!(err.id, text);
        }
    }

    #[test]
    fn rollout_and_preflight_ids_never_meet() {
        // A rollout id never starts with the preflight prefix: its plan holds no '_'.
        assert!("preflight_p_n.c1".parse::<OperationId>().is_ok());
        assert!(!OperationId::is_preflight("preflight.c1.upgrade-1"));
        assert_eq!(
            "preflight.c1.upgrade-1".parse::<OperationId>(),
            Ok(OperationId::upgrade("preflight", worker("c1"), 1))
        );
    }
}
