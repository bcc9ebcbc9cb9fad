//! Tokens, registration, clusters, certificates and admins on the API server (design §2.2,
//! §3.2): `FleetCluster` objects and Secrets, read from the leader's cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use skoala_store::{
    AdminRecord, CertRecord, Claim, ClusterRecord, ClusterState, Cutoffs, Identity, Pruned,
    RegisterError, Registered, Registration, StoreError, TokenRecord,
};

use super::shared::Shared;

/// The identity part of the store.
pub(super) struct Identities {
    #[allow(dead_code)]
    shared: Arc<Shared>,
}

fn todo() -> StoreError {
    StoreError::Corrupt("the kube store's identity part is not built yet".into())
}

impl Identities {
    pub async fn load(shared: Arc<Shared>) -> Result<Self, StoreError> {
        Ok(Identities { shared })
    }
    pub async fn insert_token(&self, _token: TokenRecord) -> Result<(), StoreError> {
        Err(todo())
    }
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Err(todo())
    }
    pub async fn revoke_token(&self, _id: String) -> Result<bool, StoreError> {
        Err(todo())
    }
    pub async fn admit(&self, _claim: Claim) -> Result<(), RegisterError> {
        Err(todo().into())
    }
    pub async fn register(&self, _r: Registration) -> Result<Registered, RegisterError> {
        Err(todo().into())
    }
    pub async fn allow_rejoin(&self, _id: String, _now: i64) -> Result<bool, StoreError> {
        Err(todo())
    }
    pub async fn cluster(&self, _id: String) -> Result<Option<ClusterRecord>, StoreError> {
        Err(todo())
    }
    pub async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Err(todo())
    }
    pub fn clusters_version(&self) -> u64 {
        0
    }
    pub async fn set_cluster_state(&self, _id: String, _s: ClusterState) -> Result<(), StoreError> {
        Err(todo())
    }
    pub async fn set_cluster_identity(
        &self,
        _id: String,
        _name: String,
        _labels: BTreeMap<String, String>,
    ) -> Result<Option<String>, StoreError> {
        Err(todo())
    }
    pub async fn propose_identity(
        &self,
        _id: String,
        _p: Option<Identity>,
    ) -> Result<(), StoreError> {
        Err(todo())
    }
    pub async fn revoke_cluster(&self, _id: String, _now: i64) -> Result<bool, StoreError> {
        Err(todo())
    }
    pub async fn certificate(&self, _serial: String) -> Result<Option<CertRecord>, StoreError> {
        Err(todo())
    }
    pub async fn record_certificate(&self, _cert: CertRecord) -> Result<(), StoreError> {
        Err(todo())
    }
    pub async fn certificate_used(&self, _serial: String, _now: i64) -> Result<(), StoreError> {
        Err(todo())
    }
    pub async fn insert_admin(&self, _a: AdminRecord, _now: i64) -> Result<bool, StoreError> {
        Err(todo())
    }
    pub async fn admin(&self, _serial: String) -> Result<Option<AdminRecord>, StoreError> {
        Err(todo())
    }
    pub async fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        Err(todo())
    }
    pub async fn revoke_admin(&self, _name: String, _now: i64) -> Result<u32, StoreError> {
        Err(todo())
    }
    /// Certificate records and admins retention lets go; `audit` and `events` stay 0.
    pub async fn prune(&self, _cutoffs: &Cutoffs) -> Result<Pruned, StoreError> {
        Err(todo())
    }
}
