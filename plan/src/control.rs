//! The operator's verbs as annotations on a plan's object (design `kube-store.md` §4.4): what
//! `fleet.skoala.io/paused`, `pause-reason`, `resume`, `approved-stage`, `abort`, `rollback`
//! and `force` ask of a rollout, decided from the annotations, the rollout's head and what the
//! coordinator handled last. Pure: the coordinator applies the [`Verb`]s it gets through the
//! same transitions as `skoalactl`'s, and stores the returned [`Observed`] with them.
//!
//! The annotations are git's, so they are *levels* where git means a state (`paused`,
//! `approved-stage`, `abort`, `rollback`): evaluated again after every change they ask for
//! nothing once the rollout is where they say. `resume` is an *event*: a value not handled yet
//! resumes once. Values are outside input: anything but the exact forms below is refused with
//! an [`Error`] naming the annotation, and a refused annotation changes nothing (a malformed
//! `paused` does not lift a pause, as an absent one would).
//!
//! | annotation | value | asks for |
//! |---|---|---|
//! | `paused` | `"true"` | a pause ([`PauseOrigin::Annotation`]) while not paused |
//! | `paused` | `"false"` or absent | lifting a pause an operator or this annotation made; never the failure budget's or a canary's |
//! | `pause-reason` | text, ≤ [`MAX_REASON`] characters, no control characters | the reason of that pause |
//! | `resume` | a new token, printable ASCII, ≤ [`MAX_NONCE`] | one resume of any pause, acknowledging the failures so far |
//! | `approved-stage` | decimal digits, fits `u32` | approving every stage up to it when the plan reaches it |
//! | `abort` | `"true"` / `"false"` | an abort (terminal) |
//! | `rollback` | `"true"` / `"false"` | a rollback ignoring windows (terminal; wins over `abort`) |
//! | `force` | `"true"` / `"false"` | accepting the plan despite skew ([`force`]; read at acceptance only) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rollout::{PauseOrigin, Phase, Rollout, RolloutHead, TransitionError};

/// The prefix of every annotation this module reads; an unknown key under it is refused.
pub const PREFIX: &str = "fleet.skoala.io/";
pub const PAUSED: &str = "fleet.skoala.io/paused";
pub const PAUSE_REASON: &str = "fleet.skoala.io/pause-reason";
pub const RESUME: &str = "fleet.skoala.io/resume";
pub const APPROVED_STAGE: &str = "fleet.skoala.io/approved-stage";
pub const ABORT: &str = "fleet.skoala.io/abort";
pub const ROLLBACK: &str = "fleet.skoala.io/rollback";
pub const FORCE: &str = "fleet.skoala.io/force";

/// The annotations this module knows.
pub const ANNOTATIONS: [&str; 7] = [
    PAUSED,
    PAUSE_REASON,
    RESUME,
    APPROVED_STAGE,
    ABORT,
    ROLLBACK,
    FORCE,
];

/// The longest `pause-reason`, in characters: it becomes the phase's reason, shown on one line.
pub const MAX_REASON: usize = 256;
/// The longest `resume` token: a timestamp or a UUID fits; it is stored in the plan's status.
pub const MAX_NONCE: usize = 128;

/// The reason of a pause asked for by `paused: "true"` without a `pause-reason`.
pub const DEFAULT_REASON: &str = "paused by the fleet.skoala.io/paused annotation";

/// Why an annotation asks for nothing: its value is malformed, or what it asks for does not
/// apply to the rollout as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{annotation}: {value:?} is not \"true\" or \"false\"")]
    NotABool {
        annotation: &'static str,
        value: String,
    },
    #[error("{annotation}: {value:?} is not a stage number (decimal digits only)")]
    NotANumber {
        annotation: &'static str,
        value: String,
    },
    #[error(
        "{annotation}: {value:?} is larger than any stage can be ({})",
        u32::MAX
    )]
    TooLarge {
        annotation: &'static str,
        value: String,
    },
    #[error("{annotation}: empty")]
    Empty { annotation: &'static str },
    #[error("{annotation}: {chars} characters, at most {max}")]
    TooLong {
        annotation: &'static str,
        chars: usize,
        max: usize,
    },
    #[error("{annotation}: {value:?} holds a character other than printable ASCII")]
    NotPrintableAscii {
        annotation: &'static str,
        value: String,
    },
    #[error("{annotation}: control characters (line breaks, tabs) are not allowed")]
    ControlCharacter { annotation: &'static str },
    #[error("{0:?} is not an annotation skoala knows (expected one of {ANNOTATIONS:?})")]
    Unknown(String),
    #[error("{annotation}: {source}")]
    Refused {
        annotation: &'static str,
        #[source]
        source: TransitionError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the coordinator handled last of the annotations that are not plain levels; it keeps
/// it in the plan's status (`status.control`) and passes it back to [`requested`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// The `resume` value already handled: only a different one resumes again, so a stale
    /// token left in git never lifts a later pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_resume: Option<String>,
    /// The `approved-stage` value already recorded, so a pre-approval is announced once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_through: Option<u32>,
}

/// One thing the annotations ask of the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `paused: "true"`: pause with this reason ([`PauseOrigin::Annotation`]).
    Pause { reason: String },
    /// `paused: "false"` or absent: lift a pause a human asked for ([`Rollout::unpause`]).
    Unpause,
    /// A new `resume` token: resume any pause, acknowledging failures ([`Rollout::resume`]).
    Resume { nonce: String },
    /// `approved-stage` covers the stage the plan awaits.
    Approve { through: u32 },
    /// `approved-stage` changed and covers nothing awaited yet: a pre-approval, recorded; it
    /// takes effect when the plan reaches a stage it covers.
    PreApprove { through: u32 },
    /// `abort: "true"`.
    Abort,
    /// `rollback: "true"`: workers first, ignoring windows, as `skoalactl plan rollback`.
    Rollback,
}

impl Verb {
    /// Applies the verb to `rollout` through the rollout's own transitions, which refuse what
    /// does not apply (an abort of a rolled-back plan) as they do for `skoalactl`.
    pub fn apply(&self, rollout: &mut Rollout) -> Result<(), TransitionError> {
        match self {
            Verb::Pause { reason } => rollout.pause(reason, PauseOrigin::Annotation),
            Verb::Unpause => rollout.unpause(),
            Verb::Resume { .. } => rollout.resume(),
            Verb::Approve { through } => match rollout.phase {
                Phase::AwaitingApproval { stage } if stage <= *through => {
                    rollout.approve().map(drop)
                }
                ref other => Err(TransitionError::NothingToApprove(other.kind())),
            },
            Verb::PreApprove { .. } => Ok(()),
            Verb::Abort => rollout.abort(),
            Verb::Rollback => rollout.start_rollback(true),
        }
    }

    /// The annotation that asked for the verb.
    pub fn annotation(&self) -> &'static str {
        match self {
            Verb::Pause { .. } | Verb::Unpause => PAUSED,
            Verb::Resume { .. } => RESUME,
            Verb::Approve { .. } | Verb::PreApprove { .. } => APPROVED_STAGE,
            Verb::Abort => ABORT,
            Verb::Rollback => ROLLBACK,
        }
    }
}

/// What the annotations ask for now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requested {
    /// To apply in this order (each was checked against the rollout as the ones before it
    /// leave it).
    pub verbs: Vec<Verb>,
    /// Annotations that ask for nothing, and why: shown as a condition and an event.
    pub refused: Vec<Error>,
    /// What to store as handled once the verbs are applied.
    pub observed: Observed,
}

/// Interprets `annotations` against the rollout's `head` and what was handled before.
///
/// Level annotations already in effect ask for nothing, so calling this again after the verbs
/// are applied returns no verbs; call it whenever the annotations change *and* after a step
/// changes the phase (a pre-approval applies when the plan reaches the stage). Annotations
/// outside [`PREFIX`] are not this module's and are skipped.
pub fn requested(
    annotations: &BTreeMap<String, String>,
    head: &RolloutHead,
    observed: &Observed,
) -> Requested {
    let mut out = Requested {
        observed: observed.clone(),
        ..Requested::default()
    };
    for key in annotations.keys() {
        if key.starts_with(PREFIX) && !ANNOTATIONS.contains(&key.as_str()) {
            out.refused.push(Error::Unknown(key.clone()));
        }
    }
    // A refused value counts as not given, except for `paused`, where "not given" means "lift
    // the pause": a malformed `paused` must change nothing.
    let paused = flag(annotations, PAUSED);
    let reason = valid(text(annotations, PAUSE_REASON), &mut out.refused);
    let nonce = valid(token(annotations, RESUME), &mut out.refused);
    let approved = valid(stage(annotations, APPROVED_STAGE), &mut out.refused);
    let abort = valid(flag(annotations, ABORT), &mut out.refused) == Some(true);
    let rollback = valid(flag(annotations, ROLLBACK), &mut out.refused) == Some(true);
    let paused = match paused {
        Ok(p) => Some(p),
        Err(e) => {
            out.refused.push(e);
            None
        }
    };

    // Each verb is checked on a copy that the verbs before it have changed: the copy has no
    // workers, which no check below needs (a rollback still running workers is refused when
    // the coordinator applies it to the whole rollout).
    let mut copy = Rollout::join(head.clone(), Vec::new());
    let mut verbs = Vec::new();
    let mut try_verb =
        |verb: Verb, copy: &mut Rollout, refused: &mut Vec<Error>| match verb.apply(copy) {
            Ok(()) => verbs.push(verb),
            Err(source) => refused.push(Error::Refused {
                annotation: verb.annotation(),
                source,
            }),
        };

    if let Some(nonce) = nonce
        && observed.observed_resume.as_ref() != Some(&nonce)
    {
        // Handled now whatever the phase: a token that found the plan running must not resume
        // a pause that comes later.
        out.observed.observed_resume = Some(nonce.clone());
        try_verb(Verb::Resume { nonce }, &mut copy, &mut out.refused);
    }
    if let Some(through) = approved {
        match copy.phase {
            Phase::AwaitingApproval { stage } if stage <= through => {
                try_verb(Verb::Approve { through }, &mut copy, &mut out.refused)
            }
            _ if observed.approved_through != Some(through) => {
                try_verb(Verb::PreApprove { through }, &mut copy, &mut out.refused)
            }
            _ => {}
        }
        out.observed.approved_through = Some(through);
    }
    // Terminal verbs: a rollback supersedes an abort (rolling back an aborted plan is allowed,
    // aborting a rollback would stop it), and either supersedes the pause levels, which would
    // otherwise flip a rolling-back plan between paused and rolling back on every evaluation.
    if rollback {
        if !matches!(copy.phase, Phase::RollingBack | Phase::RolledBack) {
            try_verb(Verb::Rollback, &mut copy, &mut out.refused);
        }
    } else if abort {
        if copy.phase != Phase::Aborted {
            try_verb(Verb::Abort, &mut copy, &mut out.refused);
        }
    } else if !copy.phase.is_terminal() {
        // A terminal plan starts nothing again: as paused as it can be, and nothing to lift.
        match (paused, &copy.phase) {
            (Some(Some(true)), Phase::Paused { .. }) => {}
            (Some(Some(true)), _) => {
                let reason = reason.unwrap_or_else(|| DEFAULT_REASON.to_string());
                try_verb(Verb::Pause { reason }, &mut copy, &mut out.refused)
            }
            (Some(None | Some(false)), Phase::Paused { origin, .. }) if origin.is_requested() => {
                try_verb(Verb::Unpause, &mut copy, &mut out.refused)
            }
            _ => {}
        }
    }
    out.verbs = verbs;
    out
}

/// The value of a well-formed annotation; a malformed one is refused and counts as absent.
fn valid<T>(value: Result<Option<T>>, refused: &mut Vec<Error>) -> Option<T> {
    value.unwrap_or_else(|e| {
        refused.push(e);
        None
    })
}

/// `force`, read when the plan is accepted: whether to accept it despite skew.
pub fn force(annotations: &BTreeMap<String, String>) -> Result<bool> {
    Ok(flag(annotations, FORCE)?.unwrap_or(false))
}

/// `"true"` or `"false"` exactly: YAML's `yes`, `on`, `True` and friends are refused rather
/// than guessed at, since a guess wrong about `abort` cannot be taken back.
fn flag(annotations: &BTreeMap<String, String>, annotation: &'static str) -> Result<Option<bool>> {
    match annotations.get(annotation).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(value) => Err(Error::NotABool {
            annotation,
            value: value.to_string(),
        }),
    }
}

/// A stage number: ASCII decimal digits only (no sign, no spaces, no other script's digits).
fn stage(annotations: &BTreeMap<String, String>, annotation: &'static str) -> Result<Option<u32>> {
    let Some(value) = annotations.get(annotation) else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::NotANumber {
            annotation,
            value: value.clone(),
        });
    }
    value.parse().map(Some).map_err(|_| Error::TooLarge {
        annotation,
        value: value.clone(),
    })
}

/// Prose for humans: any script, one line, bounded.
fn text(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
) -> Result<Option<String>> {
    let Some(value) = annotations.get(annotation) else {
        return Ok(None);
    };
    let chars = value.chars().count();
    if value.trim().is_empty() {
        return Err(Error::Empty { annotation });
    }
    if chars > MAX_REASON {
        return Err(Error::TooLong {
            annotation,
            chars,
            max: MAX_REASON,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(Error::ControlCharacter { annotation });
    }
    Ok(Some(value.clone()))
}

/// A token compared for equality only: printable ASCII without spaces, bounded, so what is
/// stored and shown is what was typed (no look-alike characters, no invisible ones).
fn token(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
) -> Result<Option<String>> {
    let Some(value) = annotations.get(annotation) else {
        return Ok(None);
    };
    if value.is_empty() {
        return Err(Error::Empty { annotation });
    }
    let chars = value.chars().count();
    if chars > MAX_NONCE {
        return Err(Error::TooLong {
            annotation,
            chars,
            max: MAX_NONCE,
        });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::NotPrintableAscii {
            annotation,
            value: value.clone(),
        });
    }
    Ok(Some(value.clone()))
}
