//! Release profiles: which Helm release is upgraded where, and which values carry the version.
//!
//! The built-in profile is DaoCloud's microservice engine: `skoala` in the control plane,
//! `skoala-init` in every working cluster, both in `skoala-system`.

/// One release of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseProfile {
    /// The Helm release name.
    pub release: &'static str,
    /// The namespace it lives in.
    pub namespace: &'static str,
    /// The chart's name in the repository.
    pub chart: &'static str,
    /// Value keys set to `v<version>` on upgrade.
    pub image_tag_keys: &'static [&'static str],
    /// Jobs deleted before the upgrade because their spec is immutable.
    pub delete_jobs: &'static [&'static str],
}

/// A control-plane release and the worker release that must carry the same version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Upgraded first, by the coordinator itself.
    pub control_plane: ReleaseProfile,
    /// Upgraded in every working cluster, by its agent.
    pub worker: ReleaseProfile,
}

/// The microservice engine: `skoala` + `skoala-init`.
///
/// `seata-operator.image.tag` exists only in newer `skoala-init` charts; setting a value a chart
/// does not use is harmless in Helm, so it is always set rather than guessed per version.
pub const SKOALA: Profile = Profile {
    control_plane: ReleaseProfile {
        release: "skoala",
        namespace: "skoala-system",
        chart: "skoala",
        image_tag_keys: &["hive.image.tag", "sesame.image.tag"],
        delete_jobs: &[],
    },
    worker: ReleaseProfile {
        release: "skoala-init",
        namespace: "skoala-system",
        chart: "skoala-init",
        image_tag_keys: &[
            "nacos-operator.image.tag",
            "skoala-agent.image.tag",
            "sentinel-operator.image.tag",
            "seata-operator.image.tag",
        ],
        delete_jobs: &["gateway-api-admission", "gateway-api-admission-patch"],
    },
};
