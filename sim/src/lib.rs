//! skoala-sim: emulated Kubernetes API servers for tests and the demo, a Helm chart repository
//! server, and (later) the fleet load generator.

pub mod chart_repo;
