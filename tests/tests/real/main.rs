//! The real-cluster tier: real kube-apiservers with RBAC and admission, etcd, the
//! controller-manager, the scheduler and kwok's fake nodes (`skoala_realkube`), built from
//! source by `scripts/install-kube.sh`. Our charts are installed into them with the real helm as
//! the README says, and our binaries run with exactly their chart's ServiceAccount's rights
//! (`skoala_e2e::real::pod`), never as admin.
//!
//! What runs here is what the emulator cannot prove: RBAC on every request, admission
//! (PodSecurity, ServiceAccount), real controllers and rollout status, real watch semantics.
//! `sim_parity` keeps the emulator honest against the same scenarios.

#![forbid(unsafe_code)]

mod agent_token;
mod agent_upgrade;
mod cluster;
mod coordinator_in_cluster;
mod crds;
mod fleet_log;
mod fleet_secrets;
mod lease;
mod mixed_fleet;
mod plan_failover;
mod plan_gitops;
mod rbac;
mod sim_parity;
mod store_columns;
mod store_conformance;
mod store_kube;
