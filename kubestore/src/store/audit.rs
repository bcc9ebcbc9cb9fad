//! The audit log on `FleetLog` segments (design §2.2, *Audit*).

use std::sync::Arc;

use skoala_store::{AuditRecord, Cutoffs, NewAudit, StoreError};

use super::shared::Shared;

/// The audit part of the store.
pub(super) struct Audit {
    #[allow(dead_code)]
    shared: Arc<Shared>,
}

fn todo() -> StoreError {
    StoreError::Corrupt("the kube store's audit part is not built yet".into())
}

impl Audit {
    pub async fn load(shared: Arc<Shared>) -> Result<Self, StoreError> {
        Ok(Audit { shared })
    }
    pub async fn append(&self, _event: NewAudit) -> Result<i64, StoreError> {
        Err(todo())
    }
    pub async fn page(&self, _after_id: i64, _limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        Err(todo())
    }
    /// How many audit entries retention deleted.
    pub async fn prune(&self, _cutoffs: &Cutoffs) -> Result<usize, StoreError> {
        Err(todo())
    }
}
