//! `skoalactl clusters` and `skoalactl cluster revoke`.

use std::collections::BTreeMap;

use serde::Serialize;
use skoala_proto::v1::{
    AllowRejoinRequest, Cluster, ListClustersRequest, ReleaseInventory, RevokeClusterRequest,
};

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
            let labels: Vec<String> = v
                .labels
                .iter()
                .map(|(k, val)| format!("{k}={val}"))
                .collect();
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
                dash(&labels.join(",")),
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
