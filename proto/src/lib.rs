//! The wire contract between `skoala-agent`, `skoala-coordinator` and `skoalactl`:
//! package `skoala.fleet.v1`, generated from the `.proto` files next to this crate.
//!
//! Only additive changes are allowed within `v1`; see `skoala/fleet/v1/agent.proto`.

#![forbid(unsafe_code)]

/// `skoala.fleet.v1`: messages, the `AgentGateway` service and the `FleetAdmin` service.
#[allow(
    missing_docs,
    clippy::allow_attributes_without_reason,
    reason = "generated code: the .proto files document the contract, and the generator writes \
              its own allow attributes"
)]
#[allow(
    clippy::large_enum_variant,
    reason = "generated code: a oneof holding a large message (Task) next to small ones is \
              normal for protobuf; boxing it would change the generated API"
)]
pub mod v1 {
    tonic::include_proto!("skoala.fleet.v1");
}

pub use v1::*;
