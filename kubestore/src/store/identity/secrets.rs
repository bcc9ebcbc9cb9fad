//! Join tokens and admins as Secrets (design §2.1): one Secret per token, one per operator
//! name holding every certificate record of that name, each labelled with its kind so the
//! coordinator lists only these (never the values backups, whose data would sit in its
//! memory).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::core::ObjectMeta;
use serde::{Deserialize, Serialize};
use skoala_store::{AdminRecord, StoreError, TokenRecord};

/// The label naming what a fleet Secret holds.
pub(super) const KIND_LABEL: &str = "fleet.skoala.io/kind";
/// [`KIND_LABEL`]'s value on a join token.
pub(super) const JOIN_TOKEN: &str = "join-token";
/// [`KIND_LABEL`]'s value on an operator's certificates.
pub(super) const ADMIN: &str = "admin";
/// The selector of every Secret the identity part keeps in its cache.
pub(super) const SELECTOR: &str = "fleet.skoala.io/kind in (join-token,admin)";

/// A token as stored: the record without `uses_left`, which is derived from the clusters
/// that spent a use, and the uses spent before a migration from another store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub record: TokenRecord,
    pub spent_before_migration: u32,
    pub resource_version: Option<String>,
}

/// Every certificate record of one operator name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Admin {
    pub name: String,
    /// In the order they were recorded.
    pub records: Vec<AdminRecord>,
    pub resource_version: Option<String>,
}

/// The Secret holding token `id`.
pub(super) fn token_name(id: &str) -> String {
    format!("skoala-fleet-token-{id}")
}

/// The Secret holding admin `name`'s certificates.
pub(super) fn admin_name(name: &str) -> String {
    format!("skoala-fleet-admin-{name}")
}

fn meta(name: String, kind: &str, resource_version: Option<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some([(KIND_LABEL.to_string(), kind.to_string())].into()),
        resource_version,
        ..ObjectMeta::default()
    }
}

fn bytes(s: impl Into<String>) -> ByteString {
    ByteString(s.into().into_bytes())
}

impl Token {
    /// The Secret to create or replace.
    pub fn secret(&self) -> Secret {
        let t = &self.record;
        let data: BTreeMap<String, ByteString> = [
            ("id", t.id.clone()),
            ("sha256", t.secret_sha256.clone()),
            ("created", t.created_unix.to_string()),
            ("expires", t.expires_unix.to_string()),
            ("usesAllowed", t.uses_allowed.to_string()),
            (
                "usesSpentBeforeMigration",
                self.spent_before_migration.to_string(),
            ),
            ("revoked", t.revoked.to_string()),
            ("description", t.description.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), bytes(v)))
        .collect();
        Secret {
            metadata: meta(token_name(&t.id), JOIN_TOKEN, self.resource_version.clone()),
            type_: Some("fleet.skoala.io/join-token".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The token a Secret holds; `uses_left` is left at `uses_allowed`, for the cache to
    /// derive.
    pub fn from_secret(s: &Secret) -> Result<Self, StoreError> {
        let data = Data::of(s);
        let uses_allowed = data.number("usesAllowed")?;
        Ok(Token {
            record: TokenRecord {
                id: data.text("id")?,
                secret_sha256: data.text("sha256")?,
                created_unix: data.number("created")?,
                expires_unix: data.number("expires")?,
                uses_allowed,
                uses_left: uses_allowed,
                revoked: data.number("revoked")?,
                description: data.optional("description")?.unwrap_or_default(),
            },
            spent_before_migration: data
                .optional("usesSpentBeforeMigration")?
                .map(|v| data.parse("usesSpentBeforeMigration", &v))
                .transpose()?
                .unwrap_or(0),
            resource_version: s.metadata.resource_version.clone(),
        })
    }
}

/// One certificate record of an admin Secret's `certificates` (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminCert {
    serial: String,
    created_unix: i64,
    not_after_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_unix: Option<i64>,
}

impl Admin {
    /// The Secret to create or replace.
    pub fn secret(&self) -> Secret {
        let certs: Vec<AdminCert> = self
            .records
            .iter()
            .map(|a| AdminCert {
                serial: a.serial_hex.clone(),
                created_unix: a.created_unix,
                not_after_unix: a.not_after_unix,
                revoked_unix: a.revoked_unix,
            })
            .collect();
        let certs = serde_json::to_string(&certs).expect("records serialise");
        Secret {
            metadata: meta(admin_name(&self.name), ADMIN, self.resource_version.clone()),
            type_: Some("fleet.skoala.io/admin".into()),
            data: Some(
                [
                    ("name".to_string(), bytes(self.name.clone())),
                    ("certificates".to_string(), bytes(certs)),
                ]
                .into(),
            ),
            ..Secret::default()
        }
    }

    /// The admin a Secret holds.
    pub fn from_secret(s: &Secret) -> Result<Self, StoreError> {
        let data = Data::of(s);
        let name = data.text("name")?;
        let certs: Vec<AdminCert> = serde_json::from_str(&data.text("certificates")?)
            .map_err(|e| data.corrupt(format!("certificates: {e}")))?;
        Ok(Admin {
            records: certs
                .into_iter()
                .map(|c| AdminRecord {
                    name: name.clone(),
                    serial_hex: c.serial,
                    created_unix: c.created_unix,
                    not_after_unix: c.not_after_unix,
                    revoked_unix: c.revoked_unix,
                })
                .collect(),
            name,
            resource_version: s.metadata.resource_version.clone(),
        })
    }
}

/// A Secret's `data`, read with errors that name the Secret and the key.
struct Data<'a> {
    secret: &'a str,
    data: &'a BTreeMap<String, ByteString>,
}

impl<'a> Data<'a> {
    fn of(s: &'a Secret) -> Self {
        static EMPTY: BTreeMap<String, ByteString> = BTreeMap::new();
        Data {
            secret: s.metadata.name.as_deref().unwrap_or("?"),
            data: s.data.as_ref().unwrap_or(&EMPTY),
        }
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt(format!("Secret {}: {what}", self.secret))
    }

    fn optional(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.data
            .get(key)
            .map(|v| {
                String::from_utf8(v.0.clone())
                    .map_err(|_| self.corrupt(format!("{key} is not text")))
            })
            .transpose()
    }

    fn text(&self, key: &str) -> Result<String, StoreError> {
        self.optional(key)?
            .ok_or_else(|| self.corrupt(format!("{key} is missing")))
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, v: &str) -> Result<T, StoreError> {
        v.trim()
            .parse()
            .map_err(|_| self.corrupt(format!("{key} is not what it should be: {v:?}")))
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<T, StoreError> {
        self.parse(key, &self.text(key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_and_an_admin_read_back_as_written() {
        let token = Token {
            record: TokenRecord {
                id: "0a1b2c3d4e5f".into(),
                secret_sha256: "ab".repeat(32),
                created_unix: 900,
                expires_unix: 1_500,
                uses_allowed: 7,
                uses_left: 7,
                revoked: true,
                description: "the lab".into(),
            },
            spent_before_migration: 2,
            resource_version: None,
        };
        assert_eq!(Token::from_secret(&token.secret()).expect("read"), token);
        let admin = Admin {
            name: "alice".into(),
            records: vec![AdminRecord {
                name: "alice".into(),
                serial_hex: "a1".into(),
                created_unix: 1_000,
                not_after_unix: 2_000,
                revoked_unix: Some(1_500),
            }],
            resource_version: None,
        };
        assert_eq!(Admin::from_secret(&admin.secret()).expect("read"), admin);
    }

    #[test]
    fn a_secret_missing_a_field_is_refused_naming_it() {
        let mut secret = Admin {
            name: "alice".into(),
            records: Vec::new(),
            resource_version: None,
        }
        .secret();
        secret.data.as_mut().expect("data").remove("certificates");
        let refused = Admin::from_secret(&secret)
            .expect_err("refused")
            .to_string();
        assert!(
            refused.contains("skoala-fleet-admin-alice") && refused.contains("certificates"),
            "{refused}"
        );
    }
}
