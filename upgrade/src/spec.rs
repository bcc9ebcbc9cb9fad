//! What to upgrade: the release spec, and its validation.
//!
//! A [`ReleaseSpec`] is the whole input of one upgrade besides the operation id: which release,
//! which chart from where, which version, which value keys carry the image tags, extra values,
//! the CRD policy, the Jobs to delete first, and the timeout. Validation rejects anything that
//! could make helm or the API misinterpret a name, before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use skoala_plan::profile::{ReleaseProfile, SKOALA};

/// Where the chart comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChartSource {
    /// A Helm chart repository: `helm repo add <name> <url>` + `helm repo update`, then the
    /// chart `<name>/<chart>` at the spec's version.
    Repository {
        /// Local repository name (`skoala`).
        name: String,
        /// Repository URL (`https://release.daocloud.io/chartrepo/skoala`).
        url: String,
    },
    /// A packaged chart delivered by the caller (the relay path, for clusters that cannot reach
    /// any repository). Refused unless its sha256 matches.
    Archive {
        /// Path of the `.tgz`.
        path: PathBuf,
        /// Expected lower-case hex sha256 of the file.
        sha256: String,
    },
}

/// When the chart's CRDs (every `crds/` folder of the chart and its subcharts) are applied.
/// CRDs are never deleted, whatever the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CrdPolicy {
    /// Server-side apply before `helm upgrade`: new templates may use new CRD fields.
    #[default]
    Before,
    /// Server-side apply after a successful `helm upgrade`.
    After,
    /// Leave CRDs alone (Helm itself never upgrades them).
    Skip,
}

/// One release to upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseSpec {
    /// Helm release name (`skoala-init`).
    pub release: String,
    /// Release namespace (`skoala-system`).
    pub namespace: String,
    /// Chart name (`skoala-init`).
    pub chart: String,
    /// Where the chart comes from.
    pub source: ChartSource,
    /// Target chart version, exactly (`0.19.2`); no ranges.
    pub version: String,
    /// Dotted value keys that carry image tags (`skoala-agent.image.tag`); each is set to
    /// [`ReleaseSpec::image_tag`].
    pub image_tag_keys: Vec<String>,
    /// The tag to set; `None` means `v<version>`.
    pub image_tag: Option<String>,
    /// Extra values (a YAML mapping) laid over the backup, under the image tags. They may hold
    /// secrets: they only ever reach helm through a 0600 file, and never appear in messages.
    pub extra_values: Option<serde_yaml::Mapping>,
    /// When to apply the chart's CRDs.
    pub crd_policy: CrdPolicy,
    /// Jobs in the release namespace to delete before the upgrade (their pod templates are
    /// immutable, so `helm upgrade` cannot patch them).
    pub delete_jobs: Vec<String>,
    /// Bound on `helm upgrade --wait` and on `helm rollback --wait`, each.
    pub timeout: Duration,
    /// Roll a failed upgrade back to the revision before (the plan's `rollbackOnFailure`,
    /// default on). Off, the release is left as helm left it for an operator to inspect, and
    /// the outcome is [`crate::Outcome::Failed`]. Recovering a crashed attempt's `pending-*`
    /// release is not a failure of this operation and always rolls back.
    pub rollback_on_failure: bool,
    /// The sha256 (lower-case hex) the fetched archive must have, whatever the source: a plan
    /// pins it for a repository over plain http, whose answers anyone on the path could
    /// change. Checked in the chart step, before anything changes. `None`: not pinned.
    pub chart_sha256: Option<String>,
}

impl ReleaseSpec {
    /// The spec of the documented procedure for `release` from a repository: tags default to
    /// `v<version>`, CRDs before the upgrade, no Jobs deleted, a 5 minute timeout.
    pub fn new(
        release: impl Into<String>,
        namespace: impl Into<String>,
        source: ChartSource,
        version: impl Into<String>,
    ) -> Self {
        let release = release.into();
        Self {
            chart: release.clone(),
            release,
            namespace: namespace.into(),
            source,
            version: version.into(),
            image_tag_keys: Vec::new(),
            image_tag: None,
            extra_values: None,
            crd_policy: CrdPolicy::Before,
            delete_jobs: Vec::new(),
            timeout: Duration::from_secs(300),
            rollback_on_failure: true,
            chart_sha256: None,
        }
    }

    /// The spec for one release of a profile (`skoala_plan::profile`, the one description
    /// of which release lives where and which values carry its version).
    pub fn from_profile(
        profile: &ReleaseProfile,
        source: ChartSource,
        version: impl Into<String>,
    ) -> Self {
        Self {
            chart: profile.chart.into(),
            image_tag_keys: profile
                .image_tag_keys
                .iter()
                .map(|k| k.to_string())
                .collect(),
            delete_jobs: profile.delete_jobs.iter().map(|j| j.to_string()).collect(),
            ..Self::new(profile.release, profile.namespace, source, version)
        }
    }

    /// `skoala-init` in `skoala-system`, as DESIGN.md documents it ([`SKOALA`]'s worker): the
    /// image tags of nacos-operator, skoala-agent, sentinel-operator (and seata-operator from
    /// 0.20), and the two immutable gateway-api-admission Jobs deleted first.
    pub fn skoala_init(source: ChartSource, version: impl Into<String>) -> Self {
        let mut spec = Self::from_profile(&SKOALA.worker, source, version);
        // The documented procedure sets seata-operator's tag only for charts that have it.
        if !version_at_least(&spec.version, &[0, 20]) {
            spec.image_tag_keys
                .retain(|k| !k.starts_with("seata-operator."));
        }
        spec
    }

    /// `skoala` in `skoala-system` (the control plane, [`SKOALA`]'s): the image tags of hive
    /// and sesame.
    pub fn skoala(source: ChartSource, version: impl Into<String>) -> Self {
        Self::from_profile(&SKOALA.control_plane, source, version)
    }

    /// The image tag the upgrade sets: [`ReleaseSpec::image_tag`] or `v<version>`.
    pub fn tag(&self) -> String {
        self.image_tag
            .clone()
            .unwrap_or_else(|| format!("v{}", self.version))
    }

    /// Checks every field; the error names the field and why, never a value of `extra_values`.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_names()?;
        chart_name(&self.chart)?;
        exact_version(&self.version)?;
        if let Some(tag) = &self.image_tag {
            image_tag(tag)?;
        }
        match &self.source {
            ChartSource::Repository { name, url } => {
                dns_label("repository name", name, 63)?;
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || url.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(SpecError::new(
                        "repository url",
                        "must be an http(s) URL without spaces",
                    ));
                }
            }
            ChartSource::Archive { sha256, .. } => {
                if !is_sha256(sha256) {
                    return Err(SpecError::new("archive sha256", "must be 64 hex digits"));
                }
            }
        }
        if let Some(pinned) = &self.chart_sha256
            && !is_sha256(pinned)
        {
            return Err(SpecError::new("chart sha256", "must be 64 hex digits"));
        }
        Ok(())
    }

    /// Checks what a rollback uses (it ignores the chart, its source and the version): the
    /// release and namespace names, the tag keys, the Jobs and the timeout.
    pub fn validate_names(&self) -> Result<(), SpecError> {
        dns_label("release", &self.release, 53)?;
        dns_label("namespace", &self.namespace, 63)?;
        for key in &self.image_tag_keys {
            value_key(key)?;
        }
        for job in &self.delete_jobs {
            dns_label("delete_jobs", job, 63)?;
        }
        if self.timeout.is_zero() {
            return Err(SpecError::new("timeout", "must be positive"));
        }
        Ok(())
    }
}

/// 64 hex digits.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A spec field that is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid release spec: {field} {reason}")]
pub struct SpecError {
    /// The field.
    pub field: &'static str,
    /// Why it is refused.
    pub reason: String,
}

impl SpecError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

fn dns_label(field: &'static str, s: &str, max: usize) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{s:?} must be a DNS label (a-z, 0-9, '-', at most {max} characters)"),
        ))
    }
}

fn chart_name(s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 250
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.starts_with('-');
    ok.then_some(())
        .ok_or_else(|| SpecError::new("chart", format!("{s:?} is not a chart name")))
}

fn exact_version(s: &str) -> Result<(), SpecError> {
    let core = s.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        SpecError::new(
            "version",
            format!("{s:?} must be an exact semantic version like 0.19.2"),
        )
    })
}

fn image_tag(s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !s.starts_with(['.', '-']);
    ok.then_some(())
        .ok_or_else(|| SpecError::new("image_tag", format!("{s:?} is not an image tag")))
}

/// A dotted values path; each segment a plain key (no escapes, no list indexes).
fn value_key(s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(()).ok_or_else(|| {
        SpecError::new(
            "image_tag_keys",
            format!("{s:?} must be a dotted values path like skoala-agent.image.tag"),
        )
    })
}

/// `version >= min` comparing the leading numeric components (`0.20.0` vs `[0, 20]`).
pub(crate) fn version_at_least(version: &str, min: &[u64]) -> bool {
    let have: Vec<u64> = version
        .split(['.', '-', '+'])
        .map_while(|p| p.parse().ok())
        .collect();
    have.as_slice() >= min
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> ChartSource {
        ChartSource::Repository {
            name: "skoala".into(),
            url: "https://release.daocloud.io/chartrepo/skoala".into(),
        }
    }

    #[test]
    fn skoala_init_spec_follows_the_documented_procedure() {
        let spec = ReleaseSpec::skoala_init(repo(), "0.19.2");
        spec.validate().expect("valid");
        assert_eq!(spec.tag(), "v0.19.2");
        assert_eq!(spec.image_tag_keys.len(), 3);
        assert_eq!(spec.crd_policy, CrdPolicy::Before);
        assert_eq!(
            spec.delete_jobs,
            ["gateway-api-admission", "gateway-api-admission-patch"]
        );
        let newer = ReleaseSpec::skoala_init(repo(), "0.20.0");
        assert!(newer.image_tag_keys.iter().any(|k| k.starts_with("seata")));
    }

    #[test]
    fn validation_rejects_what_could_be_misread() {
        let ok = ReleaseSpec::skoala(repo(), "0.19.2");
        ok.validate().expect("valid");
        let cases: Vec<(&str, ReleaseSpec)> = vec![
            (
                "release",
                ReleaseSpec {
                    release: "Skoala".into(),
                    ..ok.clone()
                },
            ),
            (
                "release",
                ReleaseSpec {
                    release: "-x".into(),
                    ..ok.clone()
                },
            ),
            (
                "namespace",
                ReleaseSpec {
                    namespace: "a b".into(),
                    ..ok.clone()
                },
            ),
            (
                "version",
                ReleaseSpec {
                    version: "^0.19".into(),
                    ..ok.clone()
                },
            ),
            (
                "version",
                ReleaseSpec {
                    version: "0.19".into(),
                    ..ok.clone()
                },
            ),
            (
                "version",
                ReleaseSpec {
                    version: "--devel".into(),
                    ..ok.clone()
                },
            ),
            (
                "image_tag",
                ReleaseSpec {
                    image_tag: Some("v1,x=y".into()),
                    ..ok.clone()
                },
            ),
            (
                "image_tag_keys",
                ReleaseSpec {
                    image_tag_keys: vec!["a..b".into()],
                    ..ok.clone()
                },
            ),
            (
                "image_tag_keys",
                ReleaseSpec {
                    image_tag_keys: vec!["a=b".into()],
                    ..ok.clone()
                },
            ),
            (
                "timeout",
                ReleaseSpec {
                    timeout: Duration::ZERO,
                    ..ok.clone()
                },
            ),
            (
                "repository url",
                ReleaseSpec {
                    source: ChartSource::Repository {
                        name: "skoala".into(),
                        url: "file:///etc".into(),
                    },
                    ..ok.clone()
                },
            ),
            (
                "archive sha256",
                ReleaseSpec {
                    source: ChartSource::Archive {
                        path: "x.tgz".into(),
                        sha256: "abc".into(),
                    },
                    ..ok.clone()
                },
            ),
        ];
        for (field, spec) in cases {
            let err = spec.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn version_comparison() {
        assert!(version_at_least("0.20.0", &[0, 20]));
        assert!(version_at_least("1.0.0", &[0, 20]));
        assert!(!version_at_least("0.19.2", &[0, 20]));
    }
}
