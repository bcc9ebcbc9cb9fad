//! Keeping the agent's credentials in a Secret in its own namespace, so a restarted agent (a new
//! pod) resumes with the same identity instead of registering again.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::credentials::{Credentials, CredentialsError};

/// The default name of the identity Secret.
pub const DEFAULT_SECRET_NAME: &str = "skoala-fleet-agent-identity";

const KEY: &str = "tls.key";
const CERT: &str = "tls.crt";
const CA: &str = "ca.crt";

/// Why the identity Secret could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API server refused or failed the call.
    #[error("Secret {namespace}/{name}: {source}")]
    Kube {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// The agent's namespace is missing.
    #[error(
        "namespace {namespace} does not exist: create it (the agent keeps its identity Secret there) or pass --namespace"
    )]
    NoNamespace {
        /// The namespace asked for.
        namespace: String,
    },
    /// The Secret exists but lacks one of its keys (edited by hand?).
    #[error("Secret {namespace}/{name} lacks the data key {key}")]
    Incomplete {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The missing data key.
        key: &'static str,
    },
    /// The Secret's key, certificate or CA cannot be used.
    #[error("Secret {namespace}/{name} holds unusable credentials: {source}")]
    Invalid {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What is wrong with them.
        source: CredentialsError,
    },
}

/// Reads and writes the identity Secret.
#[derive(Clone)]
pub struct IdentityStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl IdentityStore {
    /// The store for Secret `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// `namespace/name`, for messages.
    pub fn location(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn kube_err(&self, source: kube::Error) -> StoreError {
        StoreError::Kube {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Checks that the Secret's namespace exists, so a registration (which spends the join
    /// token) is not attempted when its result could not be stored.
    pub async fn check_namespace(&self) -> Result<(), StoreError> {
        let namespaces: Api<Namespace> = Api::all(self.api.clone().into_client());
        match namespaces.get_opt(&self.namespace).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(StoreError::NoNamespace {
                namespace: self.namespace.clone(),
            }),
            // Allowed to write Secrets but not to read namespaces: let the write decide.
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
            Err(e) => Err(self.kube_err(e)),
        }
    }

    /// The stored credentials; `None` if the Secret does not exist (never registered).
    pub async fn load(&self) -> Result<Option<Credentials>, StoreError> {
        let Some(secret) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.kube_err(e))?
        else {
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        let get = |key: &'static str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .ok_or_else(|| StoreError::Incomplete {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    key,
                })
        };
        let creds =
            Credentials::from_pem(&get(KEY)?, &get(CERT)?, &get(CA)?).map_err(|source| {
                StoreError::Invalid {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    source,
                }
            })?;
        Ok(Some(creds))
    }

    /// Creates or replaces the Secret with `creds`.
    pub async fn save(&self, creds: &Credentials) -> Result<(), StoreError> {
        let data: BTreeMap<String, ByteString> = [
            (KEY, creds.key_pem()),
            (CERT, creds.cert_pem.as_str()),
            (CA, creds.ca_pem.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        // Two attempts: a concurrent writer (a second replica during a rollout) bumps the
        // resourceVersion between our read and our write at most once in practice.
        let mut last = None;
        for _ in 0..2 {
            let result = match self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.kube_err(e))?
            {
                Some(mut existing) => {
                    existing.data = Some(data.clone());
                    existing.string_data = None;
                    self.api
                        .replace(&self.name, &PostParams::default(), &existing)
                        .await
                }
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                "skoala-agent".to_string(),
                            )])),
                            ..ObjectMeta::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(data.clone()),
                        ..Secret::default()
                    };
                    self.api.create(&PostParams::default(), &secret).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    last = Some(kube::Error::Api(status));
                }
                Err(e) => return Err(self.kube_err(e)),
            }
        }
        Err(self.kube_err(last.expect("loop ran")))
    }
}
