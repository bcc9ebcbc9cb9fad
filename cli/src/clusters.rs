//! `skoalactl clusters` and `skoalactl cluster revoke|rejoin|label|rename`.

use std::collections::BTreeMap;

use serde::Serialize;
use skoala_proto::v1::{
    AllowRejoinRequest, Cluster, ClusterIdentity, ListClustersRequest, ReleaseInventory,
    RevokeClusterRequest, UpdateClusterRequest,
};

use skoala_support::names;

use crate::connect::{Admin, explain_status};
use crate::output::{self, Format, age_ms, dash, time_ms, time_s};

/// The release each kind of cluster carries (DESIGN: `skoala` on the control plane,
/// `skoala-init` on working clusters).
const CONTROL_PLANE_RELEASE: &str = "skoala";
const WORKER_RELEASE: &str = "skoala-init";

/// One cluster as printed (`-o json|yaml`). Field names are part of the CLI's contract.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub name: String,
    /// UID of the cluster's kube-system namespace.
    pub id: String,
    pub control_plane: bool,
    pub labels: BTreeMap<String, String>,
    /// What the agent asked for instead of `name` and `labels`, not applied (an operator
    /// applies it with `cluster label` or `cluster rename`).
    pub proposed: Option<ProposedView>,
    pub connected: bool,
    pub last_heartbeat: Option<String>,
    pub agent_version: String,
    pub helm_version: String,
    /// The engine release of this cluster (`skoala-init`, or `skoala` on the control plane).
    pub release: Option<ReleaseView>,
    /// Every release the agent reports.
    pub releases: Vec<ReleaseView>,
    pub revoked: bool,
    pub registered: Option<String>,
    pub certificate_serial: String,
    pub certificate_not_after: Option<String>,
}

/// An agent's proposed name and labels.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProposedView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// `k=v,k=v`.
fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// One Helm release.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseView {
    pub release: String,
    pub namespace: String,
    pub chart: String,
    pub version: String,
    pub app_version: String,
    pub revision: i32,
    pub status: String,
    pub image_tags: BTreeMap<String, String>,
    pub updated: Option<String>,
}

fn release_view(r: &ReleaseInventory) -> ReleaseView {
    ReleaseView {
        release: r.release.clone(),
        namespace: r.namespace.clone(),
        chart: r.chart_name.clone(),
        version: r.chart_version.clone(),
        app_version: r.app_version.clone(),
        revision: r.revision,
        status: r.status.clone(),
        image_tags: r.image_tags.clone().into_iter().collect(),
        updated: time_s(r.updated_unix),
    }
}

fn view(c: Cluster) -> ClusterView {
    let identity = c.identity.unwrap_or_default();
    let releases: Vec<ReleaseView> = c.releases.iter().map(release_view).collect();
    let wanted = if c.control_plane {
        CONTROL_PLANE_RELEASE
    } else {
        WORKER_RELEASE
    };
    ClusterView {
        name: identity.name,
        id: identity.cluster_id,
        control_plane: c.control_plane,
        labels: identity.labels.into_iter().collect(),
        proposed: c.proposed.map(|p: ClusterIdentity| ProposedView {
            name: p.name,
            labels: p.labels.into_iter().collect(),
        }),
        connected: c.connected,
        last_heartbeat: time_ms(c.last_heartbeat_unix_ms),
        agent_version: c.agent_version,
        helm_version: c.helm_version,
        release: releases.iter().find(|r| r.release == wanted).cloned(),
        releases,
        revoked: c.revoked,
        registered: time_s(c.registered_unix),
        certificate_serial: c.certificate_serial,
        certificate_not_after: time_s(c.certificate_not_after_unix),
    }
}

/// `skoalactl clusters`.
pub async fn list(admin: &mut Admin, format: Format) -> anyhow::Result<()> {
    let resp = admin
        .client
        .list_clusters(ListClustersRequest {})
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let heartbeats: Vec<i64> = resp
        .clusters
        .iter()
        .map(|c| c.last_heartbeat_unix_ms)
        .collect();
    let views: Vec<ClusterView> = resp.clusters.into_iter().map(view).collect();
    if output::structured(format, &views)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .zip(heartbeats)
        .map(|(v, hb)| {
            let state = if v.revoked {
                "revoked"
            } else if v.connected {
                "connected"
            } else {
                "disconnected"
            };
            // Only what differs from the cluster's own name and labels.
            let proposed = v.proposed.as_ref().map(|p| {
                let mut parts = Vec::new();
                if p.name != v.name {
                    parts.push(format!("name {}", p.name));
                }
                if p.labels != v.labels {
                    parts.push(format!("labels {}", dash(&labels_text(&p.labels))));
                }
                parts.join(" ")
            });
            vec![
                if v.control_plane {
                    format!("{} (control plane)", v.name)
                } else {
                    v.name.clone()
                },
                v.id.clone(),
                state.to_string(),
                age_ms(hb),
                dash(&v.agent_version),
                dash(&v.helm_version),
                v.release
                    .as_ref()
                    .map(|r| format!("{} {}", r.release, r.version))
                    .unwrap_or_else(|| "-".into()),
                v.release
                    .as_ref()
                    .map(|r| r.status.clone())
                    .unwrap_or_else(|| "-".into()),
                dash(&labels_text(&v.labels)),
                dash(&proposed.unwrap_or_default()),
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!(
            "no clusters yet: create a join token with `skoalactl token create` and start an agent"
        );
        return Ok(());
    }
    output::table(
        &[
            "NAME",
            "ID",
            "STATE",
            "HEARTBEAT",
            "AGENT",
            "HELM",
            "RELEASE",
            "STATUS",
            "LABELS",
            "PROPOSED",
        ],
        &rows,
    );
    Ok(())
}

/// `skoalactl cluster revoke NAME|ID`.
pub async fn revoke(admin: &mut Admin, cluster: String) -> anyhow::Result<()> {
    let resp = admin
        .client
        .revoke_cluster(RevokeClusterRequest {
            cluster: cluster.clone(),
        })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    println!(
        "cluster {cluster} ({}) revoked: its agent is disconnected and can never connect or register again",
        resp.cluster_id
    );
    Ok(())
}

/// `skoalactl cluster rejoin NAME|ID`.
pub async fn rejoin(admin: &mut Admin, cluster: String) -> anyhow::Result<()> {
    let resp = admin
        .client
        .allow_rejoin(AllowRejoinRequest {
            cluster: cluster.clone(),
        })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    println!(
        "cluster {cluster} ({}) may register again: its certificates are revoked; restart its agent with a join token (--token)",
        resp.cluster_id
    );
    Ok(())
}

/// What `cluster label` asks for: `key=value` sets, `key-` removes.
fn label_changes(args: &[String]) -> anyhow::Result<UpdateClusterRequest> {
    let mut req = UpdateClusterRequest::default();
    for arg in args {
        if let Some((k, v)) = arg.split_once('=') {
            req.set_labels.insert(k.to_string(), v.to_string());
        } else if let Some(k) = arg.strip_suffix('-') {
            req.remove_labels.push(k.to_string());
        } else {
            anyhow::bail!("{arg:?}: expected KEY=VALUE to set a label or KEY- to remove one");
        }
    }
    if req.set_labels.is_empty() && req.remove_labels.is_empty() {
        anyhow::bail!("nothing to change: give KEY=VALUE or KEY-");
    }
    Ok(req)
}

/// `skoalactl cluster label NAME|ID KEY=VALUE... KEY-...`.
pub async fn label(admin: &mut Admin, cluster: String, changes: Vec<String>) -> anyhow::Result<()> {
    let req = UpdateClusterRequest {
        cluster: cluster.clone(),
        ..label_changes(&changes)?
    };
    update(admin, req).await
}

/// `skoalactl cluster rename NAME|ID NEW_NAME`.
pub async fn rename(admin: &mut Admin, cluster: String, new_name: String) -> anyhow::Result<()> {
    let req = UpdateClusterRequest {
        cluster,
        new_name,
        ..Default::default()
    };
    update(admin, req).await
}

async fn update(admin: &mut Admin, req: UpdateClusterRequest) -> anyhow::Result<()> {
    let c = admin
        .client
        .update_cluster(req)
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let v = view(c);
    let line = format!(
        "cluster {} ({}): labels {}",
        v.name,
        v.id,
        dash(&labels_text(&v.labels))
    );
    println!("{}", names::printable(&line));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arguments_set_and_remove() {
        let req =
            label_changes(&["ring=canary".into(), "tier-".into(), "empty=".into()]).expect("valid");
        assert_eq!(
            req.set_labels.get("ring").map(String::as_str),
            Some("canary")
        );
        assert_eq!(req.set_labels.get("empty").map(String::as_str), Some(""));
        assert_eq!(req.remove_labels, vec!["tier".to_string()]);
        assert!(label_changes(&["ring".into()]).is_err());
        assert!(label_changes(&[]).is_err());
    }
}
