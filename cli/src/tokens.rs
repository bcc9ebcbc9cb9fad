//! `skoalactl token create|list|revoke`.

use std::time::Duration;

use serde::Serialize;
use skoala_proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo};

use crate::connect::{Admin, explain_status};
use crate::output::{self, Format, dash, time_s};

/// A token as printed (`-o json|yaml`); never contains the secret except in `create`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub id: String,
    pub created: Option<String>,
    pub expires: Option<String>,
    pub uses_allowed: u32,
    pub uses_left: u32,
    pub revoked: bool,
    pub expired: bool,
    pub description: String,
}

fn view(t: &TokenInfo) -> TokenView {
    TokenView {
        id: t.id.clone(),
        created: time_s(t.created_unix),
        expires: time_s(t.expires_unix),
        uses_allowed: t.uses_allowed,
        uses_left: t.uses_left,
        revoked: t.revoked,
        expired: t.expires_unix <= jiff::Timestamp::now().as_second(),
        description: t.description.clone(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    token: String,
    #[serde(flatten)]
    info: TokenView,
}

/// `skoalactl token create`. In table mode only the token goes to stdout (so
/// `TOKEN=$(skoalactl token create)` works); the details go to stderr.
pub async fn create(
    admin: &mut Admin,
    ttl: Duration,
    uses: u32,
    description: String,
    format: Format,
) -> anyhow::Result<()> {
    let resp = admin
        .client
        .create_token(CreateTokenRequest {
            ttl_seconds: ttl.as_secs() as i64,
            uses,
            description,
        })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let info = view(&resp.info.unwrap_or_default());
    if format == Format::Table {
        println!("{}", resp.token);
        eprintln!(
            "join token {} created: {} use(s), expires {}. It is shown only once.\n\
             join a cluster: skoala-agent --coordinator {} --ca-file ca.pem --token <token>",
            info.id,
            info.uses_allowed,
            info.expires.as_deref().unwrap_or("-"),
            admin.endpoint
        );
        return Ok(());
    }
    output::structured(
        format,
        &Created {
            token: resp.token,
            info,
        },
    )?;
    Ok(())
}

/// `skoalactl token list`.
pub async fn list(admin: &mut Admin, format: Format) -> anyhow::Result<()> {
    let resp = admin
        .client
        .list_tokens(ListTokensRequest {})
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?
        .into_inner();
    let views: Vec<TokenView> = resp.tokens.iter().map(view).collect();
    if output::structured(format, &views)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|t| {
            let state = if t.revoked {
                "revoked"
            } else if t.expired {
                "expired"
            } else if t.uses_left == 0 {
                "used up"
            } else {
                "valid"
            };
            vec![
                t.id.clone(),
                state.into(),
                format!("{}/{}", t.uses_left, t.uses_allowed),
                t.expires.clone().unwrap_or_else(|| "-".into()),
                dash(&t.description),
            ]
        })
        .collect();
    output::table(
        &["ID", "STATE", "USES LEFT", "EXPIRES", "DESCRIPTION"],
        &rows,
    );
    Ok(())
}

/// `skoalactl token revoke ID`.
pub async fn revoke(admin: &mut Admin, id: String) -> anyhow::Result<()> {
    admin
        .client
        .revoke_token(RevokeTokenRequest { id: id.clone() })
        .await
        .map_err(|s| explain_status(&admin.endpoint, s))?;
    let shown = id.split_once('.').map(|(i, _)| i).unwrap_or(&id);
    println!("join token {shown} revoked");
    Ok(())
}
