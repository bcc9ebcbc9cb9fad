//! Joining the fleet: a join token and a CSR in, a client certificate out.

use skoala_proto::v1::agent_gateway_client::AgentGatewayClient;
use skoala_proto::v1::{ClusterIdentity, RegisterRequest};

use crate::credentials::{Credentials, CredentialsError, PendingKey};
use crate::transport::{self, CoordinatorAddr, TransportError};

/// Why `Register` did not give the agent an identity.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Worth retrying: the coordinator was unreachable or briefly unavailable.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Worth retrying: the call failed with a status that says "later".
    #[error("registration failed, will retry: {code:?}: {message}")]
    Unavailable {
        /// The gRPC status code.
        code: tonic::Code,
        /// The coordinator's message.
        message: String,
    },
    /// Not worth retrying with the same token: the coordinator said no.
    #[error("the coordinator refused the registration ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The coordinator's message (which token problem).
        message: String,
    },
    /// The certificate or CA sent back cannot be used with our key.
    #[error("the coordinator's answer is unusable: {0}")]
    BadAnswer(#[from] CredentialsError),
}

impl RegisterError {
    /// Whether retrying later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport(_) | Self::Unavailable { .. })
    }
}

/// Registers `identity` with `token`; returns the new credentials (not yet stored).
pub async fn register(
    addr: &CoordinatorAddr,
    token: &str,
    identity: &ClusterIdentity,
    agent_version: &str,
) -> Result<Credentials, RegisterError> {
    let pending = PendingKey::generate(&identity.cluster_id)?;
    let channel = transport::connect(addr, &addr.ca_pem, None).await?;
    let mut client = AgentGatewayClient::new(channel);
    let response = client
        .register(RegisterRequest {
            token: token.to_string(),
            csr_pem: pending.csr_pem.clone(),
            identity: Some(identity.clone()),
            agent_version: agent_version.to_string(),
        })
        .await
        .map_err(|status| {
            let (code, message) = (status.code(), status.message().to_string());
            match code {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
                | tonic::Code::Aborted
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled => RegisterError::Unavailable { code, message },
                _ => RegisterError::Refused { code, message },
            }
        })?
        .into_inner();
    // Trust the bundle the coordinator sends (it may list a next CA during rotation), but only
    // because it came over a connection verified against --ca-file.
    let ca = if response.ca_bundle_pem.trim().is_empty() {
        addr.ca_pem.clone()
    } else {
        response.ca_bundle_pem
    };
    let creds = pending.complete(&response.certificate_pem, &ca)?;
    if creds.cluster_id != identity.cluster_id {
        return Err(CredentialsError::OtherCluster {
            stored: creds.cluster_id,
            actual: identity.cluster_id.clone(),
        }
        .into());
    }
    Ok(creds)
}
