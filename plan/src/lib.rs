//! Fleet upgrade plans as pure logic: the `UpgradePlan` document, its validation, maintenance
//! windows, and the release profile. No I/O here: the coordinator orchestrates, `skoalactl`
//! builds and checks documents, and both share this crate so a plan means the same thing on
//! both sides.
//!
//! It also holds the words every crate uses, as types, so that each is spelled once:
//! [`PhaseKind`] (a plan phase's name, and which phases are finished or terminal),
//! [`OperationId`] (formats and parses the ids of operations) and [`ReleaseStatus`] (Helm's
//! release status).
//!
//! # Layout
//!
//! - [`document`]: the `UpgradePlan` document as written (shape only); [`validate`](mod@validate): its
//!   meaning, a checked [`Plan`];
//! - [`window`]: maintenance windows and whether an upgrade may start; [`waiting`]: why a plan
//!   with nothing in flight waits;
//! - [`rollout`]: the rollout state machine, and its split into a head and per-worker entries
//!   for stores that keep them apart;
//! - [`control`]: the verbs a plan's object asks for through its `fleet.skoala.io/*`
//!   annotations;
//! - [`skew`](mod@skew): which clusters are not on the version; [`profile`]: what "on the version" means
//!   for the release;
//! - [`operation`], [`target`], [`release_status`], [`clock`]: the shared words and the clock.
//!
//! ```
//! use skoala_plan::{UpgradePlan, validate};
//!
//! let doc = UpgradePlan::from_yaml(r#"
//! apiVersion: fleet.skoala.io/v1alpha1
//! kind: UpgradePlan
//! metadata: {name: skoala-0-19-2}
//! spec:
//!   version: 0.19.2
//!   window: {schedule: "0 2 * * SAT", duration: 4h, timeZone: Asia/Shanghai}
//!   strategy: {canary: 1, maxConcurrency: 10%, maxFailures: 2}
//! "#)?;
//! let plan = validate(&doc)?;
//! assert_eq!(plan.max_concurrency.resolve(300), 30);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![allow(
    missing_docs,
    reason = "public items not all documented yet; each is, crate by crate (issue 13 item 9)"
)]
#![forbid(unsafe_code)]

pub mod clock;
pub mod control;
pub mod document;
pub mod operation;
pub mod profile;
pub mod release_status;
pub mod rollout;
pub mod skew;
pub mod target;
pub mod validate;
pub mod waiting;
pub mod window;

/// Why an accepted plan's document cannot change, after "plan NAME ": the coordinator's
/// refusal of `plan apply` and the `UpgradePlan` CRD's rule say the same words.
pub const IMMUTABLE_PLAN: &str =
    "exists with a different document; plans are immutable, apply it under a new name";

pub use clock::{Clock, ManualClock, SystemClock};
pub use document::UpgradePlan;
pub use operation::{OperationId, OperationKind};
pub use release_status::ReleaseStatus;
pub use rollout::{
    Carried, FleetView, InFlight, Outcome, PauseOrigin, Phase, PhaseKind, Rollout, RolloutHead,
    Target, TargetEntry, TargetPhase, TargetState, TransitionError, WorkerView,
};
pub use skew::{ClusterRelease, ReleaseState, SkewReport, skew};
pub use validate::{Plan, PlanErrors, validate};
pub use window::{Interval, StartDecision, Window};
