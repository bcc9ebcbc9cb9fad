//! [`Migrate`] for the kube store (design §6): the export reads the leader's copies (and every
//! log segment); the import writes into a namespace that holds no fleet records: first the
//! state ConfigMap marked *migrating*, then in §6's order — tokens and admins, clusters with
//! their certificate records, plans with their targets, events and audit with their ids —
//! then reads every class back from the API server and compares the counts, and only then
//! writes the ConfigMap's registry and drops the mark, the commit point: until then no plan is
//! listed, a second import is refused rather than merged, and a store opened on the namespace
//! (a coordinator started on it) refuses it as a migration that did not finish.
//!
//! The import's own copies are not updated: what it wrote is read by a store opened again
//! (as `migrate` does, and as a coordinator does at start).

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use skoala_store::{Counts, Migrate, Snapshot, StoreError};

use super::KubeStore;
use super::shared::api_error;
use crate::crd::{FleetCluster, FleetLog, Kind, Stream, UpgradePlan};
use crate::log;

/// What a migration's state ConfigMap names as where the fleet came from.
pub const MIGRATED_FROM: &str = "skoala-coordinator migrate";

impl Migrate for KubeStore {
    async fn export(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            tokens: self.identity.tokens().await?,
            admins: self.identity.admins().await?,
            clusters: self.identity.export_clusters(),
            plans: self.plans.plans().await?,
            plan_events: self.plans.events(String::new(), 0, u32::MAX).await?,
            audit: self.audit.page(0, u32::MAX).await?,
        })
    }

    async fn import(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.shared.check_fence()?;
        if let Some(what) = self.holds_records().await? {
            return Err(StoreError::NotEmpty(what));
        }
        self.plans.begin_import(MIGRATED_FROM).await?;
        let mut plans = snapshot.plans.clone();
        plans.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
        self.identity.import(&snapshot).await?;
        let registered: HashSet<String> = snapshot
            .clusters
            .iter()
            .map(|c| c.record.id.clone())
            .collect();
        let targets = self
            .plans
            .import(&plans, &snapshot.plan_events, &registered)
            .await?;
        self.audit.import(&snapshot.audit).await?;
        let wrote = Counts {
            certificates: snapshot
                .clusters
                .iter()
                .map(|c| c.certificates.len().min(super::identity::MAX_CERTIFICATES))
                .sum(),
            targets,
            ..snapshot.counts()
        };
        let found = self.read_back(&snapshot).await?;
        if found != wrote {
            return Err(StoreError::Unverified(format!(
                "wrote {wrote}; read back {found}"
            )));
        }
        self.plans.commit_import(&plans, MIGRATED_FROM).await
    }
}

impl KubeStore {
    /// What in the namespace makes it no migration target, if anything: a token, admin or
    /// cluster, a plan (accepted or only applied), a log segment, the state ConfigMap.
    pub async fn holds_records(&self) -> Result<Option<String>, StoreError> {
        if let Some(what) = self.identity.holds_records() {
            return Ok(Some(what));
        }
        if let Some(what) = self.plans.holds_records() {
            return Ok(Some(what));
        }
        if self.audit.holds_records() {
            return Ok(Some("the audit log has entries".into()));
        }
        let client = self.shared.client.clone();
        let ns = &self.shared.namespace;
        let one = ListParams::default().limit(1);
        let plans: Api<UpgradePlan> = Kind::UpgradePlan.api(client.clone(), ns);
        if let Some(p) = plans
            .list_metadata(&one)
            .await
            .map_err(|e| api_error("listing upgrade plans", e))?
            .items
            .first()
        {
            return Ok(Some(format!(
                "UpgradePlan {} exists",
                p.metadata.name.as_deref().unwrap_or_default()
            )));
        }
        let logs: Api<FleetLog> = Kind::FleetLog.api(client.clone(), ns);
        if !logs
            .list_metadata(&one)
            .await
            .map_err(|e| api_error("listing log segments", e))?
            .items
            .is_empty()
        {
            return Ok(Some("a FleetLog segment exists".into()));
        }
        let maps: Api<ConfigMap> = Api::namespaced(client, ns);
        if maps
            .get_opt(super::plans::STATE_CONFIG_MAP)
            .await
            .map_err(|e| api_error("reading the fleet's state ConfigMap", e))?
            .is_some()
        {
            return Ok(Some(format!(
                "ConfigMap {} exists",
                super::plans::STATE_CONFIG_MAP
            )));
        }
        Ok(None)
    }

    /// Every class of record as the API server holds it now, counted: tokens (whose uses left
    /// must be the snapshot's), admins, registered clusters and their certificate records, the snapshot's plans
    /// that exist as accepted objects, every cluster's plan entries, and the entries of every
    /// log segment (decoded, so a segment that does not read back counts for nothing).
    async fn read_back(&self, snapshot: &Snapshot) -> Result<Counts, StoreError> {
        let client = self.shared.client.clone();
        let ns = &self.shared.namespace;
        let all = ListParams::default();
        let fresh = super::identity::Identities::load(Arc::clone(&self.shared)).await?;
        let mut tokens: Vec<(String, u32)> = fresh
            .tokens()
            .await?
            .into_iter()
            .map(|t| (t.id, t.uses_left))
            .collect();
        tokens.sort();
        let mut expected: Vec<(String, u32)> = snapshot
            .tokens
            .iter()
            .map(|t| (t.id.clone(), t.uses_left))
            .collect();
        expected.sort();
        if tokens != expected {
            return Err(StoreError::Unverified(format!(
                "the tokens' uses left read back as {tokens:?}, not {expected:?}"
            )));
        }
        let exported = fresh.export_clusters();
        let clusters: Api<FleetCluster> = Kind::FleetCluster.api(client.clone(), ns);
        let targets = clusters
            .list(&all)
            .await
            .map_err(|e| api_error("listing fleet clusters", e))?
            .items
            .iter()
            .filter_map(|c| c.status.as_ref())
            .map(|s| s.plans.len())
            .sum();
        let plans: Api<UpgradePlan> = Kind::UpgradePlan.api(client.clone(), ns);
        let plans = plans
            .list(&all)
            .await
            .map_err(|e| api_error("listing upgrade plans", e))?
            .items;
        let logs: Api<FleetLog> = Kind::FleetLog.api(client, ns);
        let mut plan_events = 0;
        let mut audit = 0;
        for segment in logs
            .list(&all)
            .await
            .map_err(|e| api_error("listing log segments", e))?
            .items
        {
            match segment.spec.stream {
                Stream::Events => {
                    plan_events += log::decode::<log::Event>(&segment.spec).map_or(0, |e| e.len())
                }
                Stream::Audit => {
                    audit += log::decode::<log::Audit>(&segment.spec).map_or(0, |e| e.len())
                }
            }
        }
        Ok(Counts {
            tokens: tokens.len(),
            admins: fresh.admins().await?.len(),
            clusters: exported.len(),
            certificates: exported.iter().map(|c| c.certificates.len()).sum(),
            plans: plans
                .iter()
                .filter(|p| {
                    p.status.as_ref().is_some_and(|s| s.accepted.is_some())
                        && snapshot
                            .plans
                            .iter()
                            .any(|x| Some(x.name.as_str()) == p.metadata.name.as_deref())
                })
                .count(),
            targets,
            plan_events,
            audit,
        })
    }
}
