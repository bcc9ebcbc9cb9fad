//! `skoalactl audit`: the coordinator's log of security-relevant events.

use serde::Serialize;
use skoala_proto::v1::ListAuditRequest;

use crate::connect::{Admin, explain_status};
use crate::output::{self, Format, dash, time_ms};

/// One audit event as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditView {
    pub id: i64,
    pub at: Option<String>,
    pub kind: String,
    pub cluster_id: String,
    pub peer: String,
    pub detail: String,
}

/// `skoalactl audit`: every event after `after` (pages through the coordinator's limit).
pub async fn list(admin: &mut Admin, after: i64, format: Format) -> anyhow::Result<()> {
    let mut events = Vec::new();
    let mut after_id = after;
    loop {
        let page = admin
            .client
            .list_audit(ListAuditRequest { after_id, limit: 0 })
            .await
            .map_err(|s| explain_status(&admin.endpoint, s))?
            .into_inner()
            .events;
        let Some(last) = page.last() else { break };
        after_id = last.id;
        events.extend(page.into_iter().map(|e| AuditView {
            id: e.id,
            at: time_ms(e.at_unix_ms),
            kind: e.kind,
            cluster_id: e.cluster_id,
            peer: e.peer,
            detail: e.detail,
        }));
    }
    if output::structured(format, &events)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.at.clone().unwrap_or_default(),
                e.kind.clone(),
                dash(&e.cluster_id),
                dash(&e.peer),
                e.detail.clone(),
            ]
        })
        .collect();
    output::table(&["ID", "TIME", "KIND", "CLUSTER", "PEER", "DETAIL"], &rows);
    Ok(())
}
