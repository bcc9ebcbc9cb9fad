//! Plans, their rollouts and their events on the API server (design §2.2 *Plans*, §3.3): the
//! head in `UpgradePlan.status`, each target in its `FleetCluster.status.plans[]`, events in
//! `FleetLog` segments, the active-plan pointer in the `skoala-fleet-state` ConfigMap.

use std::sync::Arc;

use skoala_store::{Cutoffs, PlanEventRecord, PlanRecord, RolloutWrite, StoreError};

use super::shared::Shared;

/// The plan part of the store.
pub(super) struct Plans {
    #[allow(dead_code)]
    shared: Arc<Shared>,
}

fn todo() -> StoreError {
    StoreError::Corrupt("the kube store's plan part is not built yet".into())
}

impl Plans {
    pub async fn load(shared: Arc<Shared>) -> Result<Self, StoreError> {
        Ok(Plans { shared })
    }
    pub async fn put_plan(
        &self,
        _plan: PlanRecord,
        _events: Vec<PlanEventRecord>,
    ) -> Result<i64, StoreError> {
        Err(todo())
    }
    pub async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        Err(todo())
    }
    pub async fn save_rollout(&self, _write: RolloutWrite) -> Result<i64, StoreError> {
        Err(todo())
    }
    pub async fn append_events(&self, _events: Vec<PlanEventRecord>) -> Result<i64, StoreError> {
        Err(todo())
    }
    pub async fn events(
        &self,
        _plan: String,
        _after_id: i64,
        _limit: u32,
    ) -> Result<Vec<PlanEventRecord>, StoreError> {
        Err(todo())
    }
    pub async fn mean_upgrade_ms(&self) -> Result<Option<i64>, StoreError> {
        Err(todo())
    }
    /// How many plan events retention deleted.
    pub async fn prune(&self, _cutoffs: &Cutoffs) -> Result<usize, StoreError> {
        Err(todo())
    }
}
