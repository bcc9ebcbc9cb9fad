//! The annotations of a plan's object as verbs: every annotation against every phase, the
//! values that must be refused, and the rule that a level annotation asks for nothing once it is
//! in effect.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use skoala_plan::control::{
    self, ABORT, APPROVED_STAGE, Error, FORCE, Observed, PAUSE_REASON, PAUSED, RESUME, ROLLBACK,
    Requested, Verb,
};
use skoala_plan::rollout::Progress;
use skoala_plan::{PauseOrigin, Phase, Rollout, RolloutHead, TargetState};

/// Every phase a head can be in, paused ones once per origin, with the column names of the
/// table below.
fn phases() -> Vec<(&'static str, Phase)> {
    let paused = |origin| Phase::Paused {
        reason: "why".into(),
        origin,
    };
    vec![
        ("controlPlane", Phase::ControlPlane),
        ("awaiting1", Phase::AwaitingApproval { stage: 1 }),
        ("workers", Phase::Workers),
        ("paused:operator", paused(PauseOrigin::Operator)),
        ("paused:budget", paused(PauseOrigin::Budget)),
        ("paused:canary", paused(PauseOrigin::Canary)),
        ("paused:annotation", paused(PauseOrigin::Annotation)),
        ("succeeded", Phase::Succeeded),
        (
            "degraded",
            Phase::Degraded {
                reason: "offline: w1".into(),
            },
        ),
        (
            "failed",
            Phase::Failed {
                reason: "the control plane failed".into(),
            },
        ),
        ("aborted", Phase::Aborted),
        ("rollingBack", Phase::RollingBack),
        ("rolledBack", Phase::RolledBack),
    ]
}

fn head(phase: Phase) -> RolloutHead {
    let state = if phase == Phase::ControlPlane {
        TargetState::Pending
    } else {
        TargetState::Succeeded {
            revision_before: Some(1),
        }
    };
    RolloutHead {
        plan: "p".into(),
        phase,
        control_plane: Progress {
            state,
            attempts: 1,
            stage: Some(0),
        },
        approved: Vec::new(),
        failures_acknowledged: 0,
        enrolled_once: true,
        rollback_ignores_windows: false,
        rolling_back: false,
        next_order: 0,
    }
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The verbs by short name, then one `x` per refusal; `-` for nothing.
fn summary(r: &Requested) -> String {
    let verbs = r.verbs.iter().map(|v| match v {
        Verb::Pause { .. } => "pause",
        Verb::Unpause => "unpause",
        Verb::Resume { .. } => "resume",
        Verb::Approve { .. } => "approve",
        Verb::PreApprove { .. } => "preapprove",
        Verb::Abort => "abort",
        Verb::Rollback => "rollback",
    });
    let all: Vec<&str> = verbs.chain(r.refused.iter().map(|_| "x")).collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join("+")
    }
}

/// What the coordinator handled before each row: resume token `n0`, and for one row an
/// approval already recorded.
fn observed(approved_through: Option<u32>) -> Observed {
    Observed {
        observed_resume: Some("n0".into()),
        approved_through,
    }
}

type Row = (
    &'static [(&'static str, &'static str)],
    Option<u32>,
    [&'static str; 13],
);

/// One row per set of annotations (with the approval already recorded, if any), one column per
/// phase, in the order of [`phases`]: controlPlane, awaiting1, workers, paused by operator,
/// budget, canary, annotation, succeeded, degraded, failed, aborted, rollingBack, rolledBack.
/// A cell is the verbs asked for, then an `x` per refusal.
#[rustfmt::skip]
const TABLE: &[Row] = &[
    // Absent `paused` is "not paused": it lifts a human's pause, and only that.
    (&[], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    (&[(PAUSED, "true")], None,
        ["pause", "pause", "pause", "-", "-", "-", "-", "pause", "pause", "-", "-", "pause", "-"]),
    (&[(PAUSED, "false")], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    (&[(PAUSED, "true"), (PAUSE_REASON, "freeze")], None,
        ["pause", "pause", "pause", "-", "-", "-", "-", "pause", "pause", "-", "-", "pause", "-"]),
    (&[(PAUSE_REASON, "freeze")], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    // A new token resumes any pause once; one that finds nothing paused is refused, and spent.
    (&[(RESUME, "n1")], None,
        ["x", "x", "x", "resume", "resume", "resume", "resume", "x", "x", "x", "x", "x", "x"]),
    (&[(RESUME, "n0")], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    (&[(RESUME, "n1"), (PAUSED, "true")], None,
        ["pause+x", "pause+x", "pause+x", "resume+pause", "resume+pause", "resume+pause", "resume+pause", "pause+x", "pause+x", "x", "x", "pause+x", "x"]),
    // approved-stage approves the awaited stage it covers, else is announced once.
    (&[(APPROVED_STAGE, "1")], None,
        ["preapprove", "approve", "preapprove", "preapprove+unpause", "preapprove", "preapprove", "preapprove+unpause", "preapprove", "preapprove", "preapprove", "preapprove", "preapprove", "preapprove"]),
    (&[(APPROVED_STAGE, "1")], Some(1),
        ["-", "approve", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    (&[(APPROVED_STAGE, "0")], None,
        ["preapprove", "preapprove", "preapprove", "preapprove+unpause", "preapprove", "preapprove", "preapprove+unpause", "preapprove", "preapprove", "preapprove", "preapprove", "preapprove", "preapprove"]),
    (&[(APPROVED_STAGE, "1"), (PAUSED, "true")], Some(1),
        ["pause", "approve+pause", "pause", "-", "-", "-", "-", "pause", "pause", "-", "-", "pause", "-"]),
    // Terminal verbs: refused where the plan is already otherwise finished for good.
    (&[(ABORT, "true")], None,
        ["abort", "abort", "abort", "abort", "abort", "abort", "abort", "abort", "abort", "x", "-", "abort", "x"]),
    (&[(ABORT, "false")], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    (&[(ABORT, "true"), (PAUSED, "true")], None,
        ["abort", "abort", "abort", "abort", "abort", "abort", "abort", "abort", "abort", "x", "-", "abort", "x"]),
    (&[(ROLLBACK, "true")], None,
        ["rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "-", "-"]),
    (&[(ROLLBACK, "true"), (ABORT, "true"), (PAUSED, "true")], None,
        ["rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "rollback", "-", "-"]),
    (&[(ROLLBACK, "false")], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    // force is read at acceptance, not here; other tools' annotations are not ours.
    (&[(FORCE, "true")], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
    (&[("kubectl.kubernetes.io/last-applied-configuration", "{}")], None,
        ["-", "-", "-", "unpause", "-", "-", "unpause", "-", "-", "-", "-", "-", "-"]),
];

#[test]
fn every_annotation_asks_for_what_the_table_says_in_every_phase() {
    let phases = phases();
    let mut wrong = Vec::new();
    for (pairs, approved_through, expected) in TABLE {
        let a = annotations(pairs);
        for ((name, phase), want) in phases.iter().zip(expected) {
            let got = summary(&control::requested(
                &a,
                &head(phase.clone()),
                &observed(*approved_through),
            ));
            if got != *want {
                wrong.push(format!("{pairs:?} in {name}: {got}, expected {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn applied_verbs_leave_nothing_more_to_ask() {
    for (pairs, approved_through, _) in TABLE {
        let a = annotations(pairs);
        for (name, phase) in phases() {
            let head = head(phase);
            let first = control::requested(&a, &head, &observed(*approved_through));
            let mut r = Rollout::join(head, Vec::new());
            for verb in &first.verbs {
                verb.apply(&mut r)
                    .unwrap_or_else(|e| panic!("{pairs:?} in {name}: {verb:?} refused: {e}"));
            }
            let (head, _) = r.split();
            let again = control::requested(&a, &head, &first.observed);
            assert_eq!(again.verbs, [], "{pairs:?} in {name}, then {:?}", r.phase);
        }
    }
}

#[test]
fn a_paused_annotation_set_to_false_never_resumes_the_budget_or_a_canary() {
    for origin in [PauseOrigin::Budget, PauseOrigin::Canary] {
        let phase = Phase::Paused {
            reason: "3 clusters failed".into(),
            origin,
        };
        for a in [annotations(&[(PAUSED, "false")]), annotations(&[])] {
            let r = control::requested(&a, &head(phase.clone()), &Observed::default());
            assert_eq!(r.verbs, [], "{origin:?} {a:?}");
            // Nor does the verb, applied by hand.
            let mut rollout = Rollout::join(head(phase.clone()), Vec::new());
            assert!(Verb::Unpause.apply(&mut rollout).is_err(), "{origin:?}");
        }
    }
}

#[test]
fn a_pause_carries_the_annotated_reason_and_its_origin() {
    let a = annotations(&[(PAUSED, "true"), (PAUSE_REASON, "Wartung für Kunden ✓")]);
    let r = control::requested(&a, &head(Phase::Workers), &Observed::default());
    assert_eq!(
        r.verbs,
        [Verb::Pause {
            reason: "Wartung für Kunden ✓".into()
        }]
    );
    let mut rollout = Rollout::join(head(Phase::Workers), Vec::new());
    r.verbs[0].apply(&mut rollout).expect("pauses");
    assert_eq!(
        rollout.phase,
        Phase::Paused {
            reason: "Wartung für Kunden ✓".into(),
            origin: PauseOrigin::Annotation
        }
    );
    let r = control::requested(
        &annotations(&[(PAUSED, "true")]),
        &head(Phase::Workers),
        &Observed::default(),
    );
    assert_eq!(
        r.verbs,
        [Verb::Pause {
            reason: control::DEFAULT_REASON.into()
        }]
    );
}

#[test]
fn a_resume_token_is_handled_once_even_when_nothing_was_paused() {
    let a = annotations(&[(RESUME, "2026-12-05T02:31:00Z")]);
    let r = control::requested(&a, &head(Phase::Workers), &Observed::default());
    assert_eq!(r.verbs, []);
    assert_eq!(
        r.observed.observed_resume.as_deref(),
        Some("2026-12-05T02:31:00Z")
    );
    // The budget pauses the plan later: the old token left in git does not lift it.
    let budget = Phase::Paused {
        reason: "3 clusters failed".into(),
        origin: PauseOrigin::Budget,
    };
    let later = control::requested(&a, &head(budget), &r.observed);
    assert_eq!(later.verbs, []);
    assert_eq!(later.refused, []);
}

/// An annotation, its value, and the error it must get.
type Case = (&'static str, String, fn(&Error) -> bool);

/// Malformed values: each refused with its own error, and the annotation changes nothing.
#[test]
fn malformed_values_are_refused_with_a_specific_error_and_change_nothing() {
    let long = |n| "x".repeat(n);
    let cases: Vec<Case> = vec![
        (PAUSED, "yes".into(), |e| {
            matches!(e, Error::NotABool { .. })
        }),
        (PAUSED, "True".into(), |e| {
            matches!(e, Error::NotABool { .. })
        }),
        (PAUSED, "1".into(), |e| matches!(e, Error::NotABool { .. })),
        (PAUSED, "".into(), |e| matches!(e, Error::NotABool { .. })),
        (PAUSED, " true".into(), |e| {
            matches!(e, Error::NotABool { .. })
        }),
        (PAUSED, "ｔｒｕｅ".into(), |e| {
            matches!(e, Error::NotABool { .. })
        }),
        (ABORT, "yes".into(), |e| matches!(e, Error::NotABool { .. })),
        (ROLLBACK, "on".into(), |e| {
            matches!(e, Error::NotABool { .. })
        }),
        (APPROVED_STAGE, "-1".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, "+1".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, "1.0".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, "0x1".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, " 1".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, "".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, "yes".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, "١".into(), |e| {
            matches!(e, Error::NotANumber { .. })
        }),
        (APPROVED_STAGE, "4294967296".into(), |e| {
            matches!(e, Error::TooLarge { .. })
        }),
        (
            APPROVED_STAGE,
            "99999999999999999999999999999999".into(),
            |e| matches!(e, Error::TooLarge { .. }),
        ),
        (RESUME, "".into(), |e| matches!(e, Error::Empty { .. })),
        (RESUME, "a b".into(), |e| {
            matches!(e, Error::NotPrintableAscii { .. })
        }),
        (RESUME, "résumé".into(), |e| {
            matches!(e, Error::NotPrintableAscii { .. })
        }),
        (RESUME, "x\u{200b}".into(), |e| {
            matches!(e, Error::NotPrintableAscii { .. })
        }),
        (RESUME, long(129), |e| {
            matches!(e, Error::TooLong { chars: 129, .. })
        }),
        (PAUSE_REASON, "one\ntwo".into(), |e| {
            matches!(e, Error::ControlCharacter { .. })
        }),
        (PAUSE_REASON, "  ".into(), |e| {
            matches!(e, Error::Empty { .. })
        }),
        (PAUSE_REASON, "é".repeat(257), |e| {
            matches!(e, Error::TooLong { chars: 257, .. })
        }),
        ("fleet.skoala.io/pasued", "true".into(), |e| {
            matches!(e, Error::Unknown(_))
        }),
    ];
    // In the phase where the annotation would otherwise act (and where an absent `paused`
    // would lift the pause, which a malformed one must not).
    let phase_for = |key: &str| match key {
        APPROVED_STAGE => Phase::AwaitingApproval { stage: 0 },
        RESUME | PAUSED => Phase::Paused {
            reason: "why".into(),
            origin: PauseOrigin::Operator,
        },
        _ => Phase::Workers,
    };
    for (key, value, is_expected) in cases {
        let mut a = annotations(&[(key, &value)]);
        if key == PAUSE_REASON {
            a.insert(PAUSED.into(), "true".into());
        }
        if key == RESUME {
            a.insert(PAUSED.into(), "true".into());
        }
        let r = control::requested(&a, &head(phase_for(key)), &Observed::default());
        assert!(
            matches!(&r.refused[..], [e] if is_expected(e)),
            "{key}={value:?}: {:?}",
            r.refused
        );
        let message = r.refused[0].to_string();
        assert!(message.contains(key), "{message}");
        let acted = r.verbs.iter().any(|v| v.annotation() == key);
        assert!(!acted, "{key}={value:?} acted: {:?}", r.verbs);
        if key == PAUSE_REASON {
            // The pause itself still happens, with the default reason.
            assert_eq!(
                r.verbs,
                [Verb::Pause {
                    reason: control::DEFAULT_REASON.into()
                }]
            );
        }
        assert_eq!(r.observed, Observed::default(), "{key}={value:?}");
    }
}

#[test]
fn the_widest_well_formed_values_are_accepted() {
    let a = annotations(&[
        (APPROVED_STAGE, "4294967295"),
        (RESUME, &"x".repeat(128)),
        (PAUSE_REASON, &"é".repeat(256)),
        (PAUSED, "true"),
    ]);
    let r = control::requested(
        &a,
        &head(Phase::AwaitingApproval { stage: 7 }),
        &observed(None),
    );
    // Only the resume is refused, and for the phase, not its value: nothing was paused.
    assert!(
        matches!(
            &r.refused[..],
            [Error::Refused {
                annotation: RESUME,
                ..
            }]
        ),
        "{:?}",
        r.refused
    );
    assert_eq!(summary(&r), "approve+pause+x");
    assert_eq!(r.observed.observed_resume, Some("x".repeat(128)));
}

#[test]
fn force_is_true_or_false_exactly() {
    assert_eq!(control::force(&annotations(&[])), Ok(false));
    assert_eq!(control::force(&annotations(&[(FORCE, "true")])), Ok(true));
    assert_eq!(control::force(&annotations(&[(FORCE, "false")])), Ok(false));
    assert!(matches!(
        control::force(&annotations(&[(FORCE, "yes")])),
        Err(Error::NotABool {
            annotation: FORCE,
            ..
        })
    ));
}
