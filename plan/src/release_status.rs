//! Helm's release status, as a type: what Helm writes into each revision of a release
//! (`info.status` of its release record, the `status` label of its release Secret).
//!
//! It lives in this pure crate because every layer judges it — the executor (`upgrade/`:
//! may this release be upgraded, recovered, rolled back?), the skew check here, the
//! coordinator's metrics and `skoalactl` — and this crate is the one they all depend on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The status of a release revision. Helm 3 and 4 spell the same set; a text Helm may add
/// later is kept as [`ReleaseStatus::Other`], so nothing is lost on the way to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ReleaseStatus {
    #[default]
    Unknown,
    Deployed,
    Uninstalled,
    Superseded,
    Failed,
    Uninstalling,
    PendingInstall,
    PendingUpgrade,
    PendingRollback,
    /// A text this version does not know (an inventory that carried no status: empty).
    Other(String),
}

impl ReleaseStatus {
    /// Every status Helm defines.
    pub const KNOWN: [ReleaseStatus; 9] = [
        ReleaseStatus::Unknown,
        ReleaseStatus::Deployed,
        ReleaseStatus::Uninstalled,
        ReleaseStatus::Superseded,
        ReleaseStatus::Failed,
        ReleaseStatus::Uninstalling,
        ReleaseStatus::PendingInstall,
        ReleaseStatus::PendingUpgrade,
        ReleaseStatus::PendingRollback,
    ];

    /// Helm's spelling (`deployed`, `pending-upgrade`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            ReleaseStatus::Unknown => "unknown",
            ReleaseStatus::Deployed => "deployed",
            ReleaseStatus::Uninstalled => "uninstalled",
            ReleaseStatus::Superseded => "superseded",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Uninstalling => "uninstalling",
            ReleaseStatus::PendingInstall => "pending-install",
            ReleaseStatus::PendingUpgrade => "pending-upgrade",
            ReleaseStatus::PendingRollback => "pending-rollback",
            ReleaseStatus::Other(s) => s,
        }
    }

    /// Reads Helm's spelling; never fails (see [`ReleaseStatus::Other`]).
    pub fn parse(s: &str) -> Self {
        match s {
            "unknown" => ReleaseStatus::Unknown,
            "deployed" => ReleaseStatus::Deployed,
            "uninstalled" => ReleaseStatus::Uninstalled,
            "superseded" => ReleaseStatus::Superseded,
            "failed" => ReleaseStatus::Failed,
            "uninstalling" => ReleaseStatus::Uninstalling,
            "pending-install" => ReleaseStatus::PendingInstall,
            "pending-upgrade" => ReleaseStatus::PendingUpgrade,
            "pending-rollback" => ReleaseStatus::PendingRollback,
            other => ReleaseStatus::Other(other.into()),
        }
    }

    /// `deployed`: the one healthy status of a release's latest revision.
    pub fn is_deployed(&self) -> bool {
        *self == ReleaseStatus::Deployed
    }

    /// `pending-*`: a helm command is writing this revision right now — or died doing so.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            ReleaseStatus::PendingInstall
                | ReleaseStatus::PendingUpgrade
                | ReleaseStatus::PendingRollback
        )
    }

    /// A revision that was once the deployed one (`deployed` now, or `superseded` by a later
    /// one): what a rollback may return to.
    pub fn was_deployed(&self) -> bool {
        matches!(self, ReleaseStatus::Deployed | ReleaseStatus::Superseded)
    }
}

impl fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReleaseStatus {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ReleaseStatus::parse(s))
    }
}

impl From<String> for ReleaseStatus {
    fn from(s: String) -> Self {
        match ReleaseStatus::parse(&s) {
            ReleaseStatus::Other(_) => ReleaseStatus::Other(s),
            known => known,
        }
    }
}

impl From<&str> for ReleaseStatus {
    fn from(s: &str) -> Self {
        ReleaseStatus::parse(s)
    }
}

impl From<ReleaseStatus> for String {
    fn from(s: ReleaseStatus) -> Self {
        match s {
            ReleaseStatus::Other(s) => s,
            known => known.as_str().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_spellings_round_trip() {
        let texts = [
            "unknown",
            "deployed",
            "uninstalled",
            "superseded",
            "failed",
            "uninstalling",
            "pending-install",
            "pending-upgrade",
            "pending-rollback",
        ];
        assert_eq!(texts.len(), ReleaseStatus::KNOWN.len());
        for (text, status) in texts.iter().zip(ReleaseStatus::KNOWN) {
            assert_eq!(status.as_str(), *text);
            assert_eq!(ReleaseStatus::parse(text), status);
            assert_eq!(ReleaseStatus::from(text.to_string()), status);
            let json = serde_json::to_string(&status).expect("json");
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<ReleaseStatus>(&json).expect("json"),
                status
            );
        }
    }

    #[test]
    fn unknown_texts_are_kept() {
        let s = ReleaseStatus::parse("pending-something");
        assert_eq!(s, ReleaseStatus::Other("pending-something".into()));
        assert_eq!(s.to_string(), "pending-something");
        assert!(!s.is_pending() && !s.is_deployed());
        assert_eq!(ReleaseStatus::parse("").to_string(), "");
    }

    #[test]
    fn classes() {
        let pending: Vec<_> = ReleaseStatus::KNOWN
            .iter()
            .filter(|s| s.is_pending())
            .map(ReleaseStatus::as_str)
            .collect();
        assert_eq!(
            pending,
            ["pending-install", "pending-upgrade", "pending-rollback"]
        );
        let was: Vec<_> = ReleaseStatus::KNOWN
            .iter()
            .filter(|s| s.was_deployed())
            .map(ReleaseStatus::as_str)
            .collect();
        assert_eq!(was, ["deployed", "superseded"]);
    }
}
