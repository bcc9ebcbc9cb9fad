//! Why an operator's request on plans was refused or could not be served.
//!
//! Domain errors, not transport ones: the admin API maps each kind to a gRPC code in one place
//! (`crate::admin_api`), and the messages are what the operator reads.

use skoala_store::StoreError;

use super::charts::ChartsError;

/// An orchestrator error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan document is not YAML of an `UpgradePlan`.
    #[error("invalid plan document: {0}")]
    Document(#[source] serde_yaml::Error),
    /// The plan document breaks a rule (each field named).
    #[error(transparent)]
    Invalid(#[from] skoala_plan::validate::PlanErrors),
    /// `serve` was started without a control-plane cluster, which every plan upgrades first.
    #[error(
        "the coordinator has no control-plane cluster (serve --kubeconfig): a plan upgrades it first"
    )]
    NoControlPlane,
    /// The plan's selection matches no registered working cluster.
    #[error("spec.clusters: the selection matches no registered working cluster")]
    NothingSelected,
    /// The fleet is skewed and the plan would not converge it to the control plane's version.
    #[error(
        "the fleet is skewed ({clusters}) and the plan targets {version} rather than the control plane's {control_plane}: converge first, or apply with --force"
    )]
    Skewed {
        /// The skewed clusters' names, comma-separated.
        clusters: String,
        version: String,
        /// The control plane's version, `(none)` when unknown.
        control_plane: String,
    },
    /// The coordinator's helm cannot be run to check or pull the plan's charts.
    #[error("the coordinator cannot run helm ({helm}) to check the plan's charts: {source}")]
    Helm {
        helm: String,
        #[source]
        source: skoala_upgrade::HelmError,
    },
    /// The plan's charts are missing or cannot be fetched.
    #[error(transparent)]
    Charts(#[from] ChartsError),
    /// Another plan is still running: one plan at a time.
    #[error(
        "plan {active} is still active ({phase}); one plan at a time: wait for it, or `skoalactl plan abort {active}`"
    )]
    Busy { active: String, phase: &'static str },
    /// A plan of that name exists with another document.
    #[error("plan {0} {why}", why = skoala_plan::IMMUTABLE_PLAN)]
    Immutable(String),
    /// The plan exists, but a newer one superseded it.
    #[error("plan {0} is not the active plan (a newer plan superseded it)")]
    NotActive(String),
    /// No plan of that name.
    #[error("no plan named {0:?}")]
    NotFound(String),
    /// The rollout does not allow the verb in its current phase.
    #[error(transparent)]
    Refused(skoala_plan::TransitionError),
    /// On the kube store, the annotation a verb writes on the plan's object is owned by another
    /// field manager (git's, or `kubectl`'s): the verb would be undone at its next sync.
    #[error(
        "this plan's {what} is managed by {manager}: change it there (in git), or pass --force (which that tool may undo at its next sync)"
    )]
    Managed {
        /// What the verb changes (`pause`, `approval`, …).
        what: &'static str,
        manager: String,
    },
    /// The stored plan is in a form this coordinator cannot read.
    #[error("plan {0} is stored in a form this coordinator cannot read")]
    Unreadable(String),
    /// The store failed; nothing was changed by the request.
    #[error("the coordinator's store is unavailable: {0}")]
    Store(#[from] StoreError),
}

/// `Result` with the orchestrator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
