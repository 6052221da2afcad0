//! `/v1/tokens`: API tokens for tooling. Managed with an admin certificate only (a token
//! cannot mint tokens); a revocation takes effect on every reachable manager before the
//! call returns.

use coffer_api::time::rfc3339;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_api::error::ErrorBody;
use coffer_api::tokens::{ApiTokenCreate, ApiTokenCreated, ApiTokenInfo, ApiTokenList, TokenScope};
use coffer_raft_store::model::{self, ApiTokenRecord, Command};

use crate::http::error::ApiError;
use coffer_api::rules as validate;
use coffer_api::time::now_millis;

use crate::http::auth::{AdminCaller, AdminWriter};
use crate::http::extract::ApiJson;
use crate::manager::Manager;
use crate::trust::api_token::ApiToken;

type S = State<Arc<Manager>>;

fn wire_scope(s: model::TokenScope) -> TokenScope {
    match s {
        model::TokenScope::ReadOnly => TokenScope::ReadOnly,
        model::TokenScope::ReadWrite => TokenScope::ReadWrite,
    }
}

#[utoipa::path(post, operation_id = "createApiToken", path = "/v1/tokens", tag = "tokens", request_body = ApiTokenCreate,
    responses((status = 201, body = ApiTokenCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(m): S,
    _a: AdminWriter,
    ApiJson(req): ApiJson<ApiTokenCreate>,
) -> Result<(StatusCode, Json<ApiTokenCreated>), ApiError> {
    validate::name("token", &req.name)?;
    let token = ApiToken::generate();
    let scope = match req.scope {
        TokenScope::ReadOnly => model::TokenScope::ReadOnly,
        TokenScope::ReadWrite => model::TokenScope::ReadWrite,
    };
    let rec = ApiTokenRecord {
        id: token.id().to_string(),
        name: req.name.clone(),
        scope,
        hash: token.hash(),
        created_at: now_millis(),
        revoked: false,
    };
    m.propose(Command::CreateApiToken(rec)).await?;
    tracing::info!(token_id = token.id(), name = %req.name, "api token created");
    let created = ApiTokenCreated {
        id: token.id().to_string(),
        name: req.name,
        scope: req.scope,
        token: token.reveal().to_string(),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, operation_id = "listApiTokens", path = "/v1/tokens", tag = "tokens", responses((status = 200, body = ApiTokenList)))]
pub async fn list(State(m): S, _a: AdminCaller) -> Result<Json<ApiTokenList>, ApiError> {
    m.linearizable().await?;
    let tokens = m
        .reader
        .api_tokens()?
        .into_iter()
        .map(|t| ApiTokenInfo {
            id: t.id,
            name: t.name,
            scope: wire_scope(t.scope),
            created_at_ms: t.created_at,
            created_at: rfc3339(t.created_at),
            revoked: t.revoked,
        })
        .collect();
    Ok(Json(ApiTokenList { tokens }))
}

#[utoipa::path(delete, operation_id = "revokeApiToken", path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "token id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(State(m): S, _a: AdminWriter, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    m.propose(Command::RevokeApiToken { id: id.clone() }).await?;
    crate::manager::membership::wait_applied_everywhere(&m).await;
    tracing::info!(token_id = %id, "api token revoked");
    Ok(StatusCode::NO_CONTENT)
}
