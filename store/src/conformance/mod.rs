//! The store conformance suite: every contract of the [`Store`] traits, as async functions
//! generic over a [`Factory`], so each backend proves the same behaviour the coordinator relies
//! on (design `kube-store.md` §8).
//!
//! A backend crate gets the whole suite, one `#[tokio::test]` per contract named by its
//! sentence, with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```text
//! skoala_store::conformance_tests!(MyFactory::new().await);
//! ```
//!
//! and a subset by naming the contracts (a slow backend, or one that cannot be made to refuse
//! a write, [`Factory::refuse`]):
//!
//! ```text
//! skoala_store::conformance_tests!(MyFactory::new().await; names_are_unique, refusals_are_distinguished);
//! ```
//!
//! The factory expression is evaluated once per test: each contract gets a store of its own.
//! A contract states what every backend keeps; what one backend does beyond it (SQLite deletes
//! exactly the rows older than a cutoff, the kube store whole segments) is that backend's own
//! test.
//!
//! # Layout
//!
//! - `mod.rs`: [`Factory`], [`Refusal`], the [`conformance_tests!`](crate::conformance_tests)
//!   macro and the records the contracts share;
//! - `identity.rs`: tokens, registration, identity, certificates, admins, revocations and
//!   `clusters_version` ([`IdentityStore`](crate::IdentityStore));
//! - `plans.rs`: plans, rollout writes, plan events, the audit log and retention
//!   ([`PlanStore`](crate::PlanStore), [`AuditLog`](crate::AuditLog),
//!   [`Retention`](crate::Retention));
//! - `migrate.rs`: a snapshot moved between stores ([`Migrate`](crate::Migrate)).

use std::future::Future;

use skoala_plan::TargetPhase;

use crate::{Migrate, PlanRecord, RolloutRecord, RolloutWrite, Store, TargetRecord};

mod identity;
mod migrate;
mod plans;

pub use identity::*;
pub use migrate::*;
pub use plans::*;

/// Makes the stores a contract runs against.
pub trait Factory: Send + Sync {
    /// The backend under test.
    type Store: Store + Migrate;
    /// A new, empty store.
    fn fresh(&self) -> impl Future<Output = Self::Store> + Send;
    /// The same store after the coordinator restarted: `store` is dropped and what it
    /// acknowledged is read back by a new instance (SQLite opens the file again; a kube store
    /// starts a new client against the same API server).
    fn reopen(&self, store: Self::Store) -> impl Future<Output = Self::Store> + Send;
    /// Makes `store` refuse, from now on, the writes `refusal` names, as a full disk or an API
    /// server answering with an error would: the contracts that a refused write leaves
    /// nothing behind need one. A backend that cannot be made to (a real control plane) leaves
    /// those contracts out of its list and panics here.
    fn refuse(&self, store: &Self::Store, refusal: Refusal) -> impl Future<Output = ()> + Send;
}

/// A write a backend is made to refuse ([`Factory::refuse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Every plan event appended.
    Events,
    /// Every write of this cluster's entry in a plan's rollout.
    Target(String),
}

/// One `#[tokio::test]` per contract of the suite, named by its sentence, each on a store from
/// `$factory` (an expression evaluated in each test); with a list after `;`, only those. The
/// calling crate needs `tokio` (its `macros` and `rt` features).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(
            $factory;
            // identity.rs
            tokens_are_used_up_and_survive_reopen,
            the_same_cluster_may_retry_with_its_own_token,
            refusals_are_distinguished,
            a_first_use_is_recorded_exactly_while_a_same_token_retry_would_read_it,
            a_live_cluster_is_registered_again_only_with_its_key_or_an_operator,
            names_are_unique,
            only_a_join_or_an_operator_sets_name_and_labels,
            admins_are_named_unique_while_live_and_revoked_by_name,
            retention_deletes_admins_once_their_certificate_expired_revoked_or_not,
            revocations_are_answered_kept_and_never_undone,
            clusters_version_moves_on_identity_changes_and_not_on_state,
            joining_again_with_another_token_spends_one_of_its_uses,
            // plans.rs
            one_active_plan_rollouts_and_events_persist,
            a_write_changes_the_targets_it_names_and_no_other,
            a_refused_write_stores_none_of_its_parts_and_keeps_the_earlier_ones,
            every_start_named_is_stored_and_a_refused_one_is_not,
            a_plan_is_stored_with_its_events_or_not_at_all,
            plan_events_are_paged_by_plan_after_id_and_limit,
            audit_ids_increase_and_pages_follow_after_id_and_limit,
            retention_keeps_recent_rows_and_the_active_plans_whole_history,
            // migrate.rs
            a_migration_copies_every_record_verbatim_and_ids_continue,
            a_migration_into_a_store_that_holds_records_is_refused,
        );
    };
    ($factory:expr; $($contract:ident),+ $(,)?) => {
        $(
            #[::tokio::test]
            async fn $contract() {
                $crate::conformance::$contract(&$factory).await
            }
        )+
    };
}

/// Target `id` of a rollout, pending, at place `order`, its progress a JSON object that notes
/// `note`. A progress is always the JSON of an object (`skoala_plan::rollout::Progress`), and
/// a store may keep it as one: the kube store keeps it as a field of the cluster's status.
fn target(id: &str, order: u32, note: &str) -> TargetRecord {
    TargetRecord {
        cluster_id: id.into(),
        order,
        phase: TargetPhase::Pending,
        progress: format!("{{\"note\":\"{note}\"}}"),
    }
}

/// A write of `plan`'s rollout without events.
fn write(plan: &str, head: Option<&str>, targets: Vec<TargetRecord>) -> RolloutWrite {
    RolloutWrite {
        plan: plan.into(),
        head: head.map(Into::into),
        targets,
        events: Vec::new(),
    }
}

/// Plan `name` with head `{}` and one target, `w1`. Its document is a plan document, as every
/// document the coordinator stores is one it parsed: the kube store keeps its spec as the
/// `UpgradePlan`'s.
fn plan(name: &str, active: bool) -> PlanRecord {
    PlanRecord {
        name: name.into(),
        document: format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: {name}}}\nspec: {{version: 1.2.3}}\n"
        ),
        rollout: RolloutRecord {
            head: "{}".into(),
            targets: vec![target("w1", 0, "{}")],
        },
        active,
        created_ms: 1,
        updated_ms: 1,
    }
}

#[cfg(test)]
mod tests {
    /// A contract missing from [`conformance_tests!`](crate::conformance_tests)'s list would
    /// run on no backend (a name in the list without a function does not compile).
    #[test]
    fn every_contract_is_in_the_suites_list() {
        let source = include_str!("mod.rs");
        let list = &source[source
            .find("macro_rules! conformance_tests")
            .expect("the macro")..];
        let list = &list[..list.find("($factory:expr; $(").expect("its second arm")];
        let mut contracts = 0;
        for module in [
            include_str!("identity.rs"),
            include_str!("plans.rs"),
            include_str!("migrate.rs"),
        ] {
            for line in module.lines() {
                let Some(signature) = line.strip_prefix("pub async fn ") else {
                    continue;
                };
                let name = signature.split('<').next().unwrap_or(signature);
                assert!(
                    list.contains(&format!(" {name},\n")),
                    "{name} is not in the list"
                );
                contracts += 1;
            }
        }
        assert!(contracts > 10, "the contracts were found: {contracts}");
    }
}
