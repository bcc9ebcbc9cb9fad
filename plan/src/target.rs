//! Where an operation runs: the control plane or one working cluster.

use serde::{Deserialize, Serialize};

/// What a cluster upgrade is aimed at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    ControlPlane,
    Worker(String),
}

impl Target {
    /// How the control plane is named where a cluster id would stand (operation ids, events).
    /// No working cluster has this id: theirs are kube-system UIDs.
    pub const CONTROL_PLANE: &str = "control-plane";
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::ControlPlane => f.write_str(Target::CONTROL_PLANE),
            Target::Worker(id) => f.write_str(id),
        }
    }
}
