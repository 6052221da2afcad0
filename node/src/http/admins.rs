//! `/v1/admins`: admin credentials as named, revocable records (admin certificates only).
//! Issuing signs the operator's CSR (the key never reaches the cluster) and records the
//! certificate's serial as the one accepted for its name; re-issuing a name replaces it;
//! revoking refuses the credential on every reachable manager before the call returns,
//! and is refused for the last one left.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_api::cluster::{AdminInfo, AdminIssue, AdminIssued, AdminList};
use coffer_api::error::{CodedError, ErrorBody};
use coffer_api::rules as validate;
use coffer_api::time::{now_millis, rfc3339};
use coffer_raft_store::model::{AdminCredentialRecord, Command};

use crate::http::auth::{AdminCaller, AdminWriter};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::manager::values::cluster_ca;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

/// Default validity of an issued admin certificate.
const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest validity that may be asked for.
const MAX_TTL: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

fn info(r: AdminCredentialRecord) -> AdminInfo {
    AdminInfo {
        name: r.name,
        serial: r.serial_hex,
        created_at_ms: r.created_at,
        created_at: rfc3339(r.created_at),
        expires_at_ms: r.expires_at,
        expires_at: rfc3339(r.expires_at),
        revoked: r.revoked,
    }
}

#[utoipa::path(post, operation_id = "issueAdmin", path = "/v1/admins", tag = "cluster", request_body = AdminIssue,
    responses((status = 201, body = AdminIssued), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn issue(
    State(m): S,
    by: AdminWriter,
    ApiJson(req): ApiJson<AdminIssue>,
) -> Result<(StatusCode, Json<AdminIssued>), ApiError> {
    validate::name("admin", &req.name)?;
    let ttl = req.ttl_secs.map(Duration::from_secs).unwrap_or(DEFAULT_TTL);
    if ttl < Duration::from_secs(60) || ttl > MAX_TTL {
        return Err(ApiError::invalid("ttl_secs must be between 60 seconds and 2 years"));
    }
    m.linearizable().await?;
    let cluster = m.cluster()?;
    let issued = cluster_ca(&cluster)?
        .sign_admin_csr(&req.csr_pem, &req.name, &cluster.id, ttl)
        .map_err(|e| ApiError::invalid(format!("certificate signing request: {e}")))?;
    let expires_at = u64::try_from(issued.not_after_unix).unwrap_or(0).saturating_mul(1000);
    let rec = AdminCredentialRecord {
        name: req.name.clone(),
        serial_hex: issued.serial_hex.clone(),
        created_at: now_millis(),
        expires_at,
        revoked: false,
    };
    m.propose(Command::PutAdminCredential(rec)).await?;
    // A re-issued name's previous certificate is refused from now on, everywhere.
    crate::manager::membership::wait_applied_everywhere(&m).await;
    tracing::info!(admin = %req.name, by = %by.0, serial = %issued.serial_hex, "admin credential issued");
    let out = AdminIssued {
        name: req.name,
        cert_pem: issued.cert_pem,
        ca_pem: cluster.ca_cert_pem,
        serial: issued.serial_hex,
        expires_at_ms: expires_at,
        expires_at: rfc3339(expires_at),
    };
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, operation_id = "listAdmins", path = "/v1/admins", tag = "cluster", responses((status = 200, body = AdminList)))]
pub async fn list(State(m): S, _a: AdminCaller) -> Result<Json<AdminList>, ApiError> {
    m.linearizable().await?;
    let admins = m.reader.admin_credentials()?.into_iter().map(info).collect();
    Ok(Json(AdminList { admins }))
}

#[utoipa::path(delete, operation_id = "revokeAdmin", path = "/v1/admins/{name}", tag = "cluster",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "the last admin credential", body = ErrorBody)))]
pub async fn revoke(State(m): S, by: AdminWriter, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    m.propose(Command::RevokeAdminCredential { name: name.clone() }).await?;
    crate::manager::membership::wait_applied_everywhere(&m).await;
    tracing::info!(admin = %name, by = %by.0, "admin credential revoked");
    Ok(StatusCode::NO_CONTENT)
}
