//! `/v1/secrets`: create, list (name and label filters), inspect, rotate, relabel, remove.
//!
//! Values arrive base64 in a create or rotate request, are sealed with the cluster value
//! key here (`manager::values`) and proposed; no response of this module carries one.

use coffer_api::time::rfc3339;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use coffer_api::error::ErrorBody;
use coffer_api::secrets::{
    SecretCreate, SecretInfo, SecretLabels, SecretList, SecretRotate, SecretVersionCreated, SecretVersionInfo,
};
use coffer_raft_store::model::{Applied, Command, SecretRecord};
use zeroize::Zeroizing;

use crate::http::error::ApiError;
use coffer_api::error::CodedError;
use coffer_api::rules as validate;
use coffer_api::time::now_millis;

use crate::http::auth::{Operator, Writer};
use crate::http::extract::ApiJson;
use crate::local::ids::new_id;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

fn decode_value(data: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    // Check the encoded length first: no allocation for a value that is too large.
    if data.len() > validate::MAX_SECRET_BYTES.div_ceil(3) * 4 + 4 {
        validate::secret_size(data.len() / 4 * 3)?;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| ApiError::invalid("data is not valid base64 (standard alphabet, padded)"))?;
    Ok(Zeroizing::new(bytes))
}

/// A secret by id, or else by name.
pub fn find_secret(m: &Manager, key: &str) -> Result<SecretRecord, ApiError> {
    if let Some(s) = m.reader.secret(key)? {
        return Ok(s);
    }
    m.reader.secret_by_name(key)?.ok_or_else(|| ApiError::not_found(format!("no secret {key:?}")))
}

/// Names of the services referencing each secret id (read once per request, not once
/// per secret listed).
fn users(m: &Manager) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for svc in m.reader.services()? {
        for r in &svc.spec.secrets {
            let names = out.entry(r.secret_id.clone()).or_default();
            if !names.contains(&svc.name) {
                names.push(svc.name.clone());
            }
        }
    }
    Ok(out)
}

fn info(users: &BTreeMap<String, Vec<String>>, s: SecretRecord) -> Result<SecretInfo, ApiError> {
    let used_by = users.get(&s.id).cloned().unwrap_or_default();
    Ok(SecretInfo {
        latest_version: s.latest_version().unwrap_or(0),
        versions: s
            .versions
            .iter()
            .map(|v| SecretVersionInfo {
                version: v.version,
                created_at_ms: v.created_at,
                created_at: rfc3339(v.created_at),
                size: v.size,
            })
            .collect(),
        id: s.id,
        name: s.name,
        labels: s.labels,
        created_at_ms: s.created_at,
        created_at: rfc3339(s.created_at),
        updated_at_ms: s.updated_at,
        updated_at: rfc3339(s.updated_at),
        used_by,
    })
}

#[utoipa::path(post, operation_id = "createSecret", path = "/v1/secrets", tag = "secrets", request_body = SecretCreate,
    responses((status = 201, body = SecretVersionCreated), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn create(
    State(m): S,
    _w: Writer,
    ApiJson(req): ApiJson<SecretCreate>,
) -> Result<(StatusCode, Json<SecretVersionCreated>), ApiError> {
    validate::name("secret", &req.name)?;
    validate::labels(&req.labels)?;
    let value = decode_value(&req.data)?;
    let size = validate::secret_size(value.len())?;
    let id = new_id();
    let began = std::time::Instant::now();
    let sealed = m.value_sealer()?.seal(&id, &value)?;
    m.metrics.stages.observe("seal", began.elapsed());
    drop(value);
    let cmd = Command::CreateSecret {
        id: id.clone(),
        name: req.name.clone(),
        labels: req.labels,
        value: sealed,
        size,
        at: now_millis(),
    };
    match m.propose(cmd).await? {
        Applied::SecretVersion { version, .. } => {
            tracing::info!(secret = %req.name, %id, "secret created");
            Ok((StatusCode::CREATED, Json(SecretVersionCreated { id, name: req.name, version })))
        }
        other => Err(ApiError::internal("creating a secret", format!("unexpected result {other:?}"))),
    }
}

/// `?name=PREFIX` and `?label=K` / `?label=K=V` (repeatable; all must match).
#[utoipa::path(get, operation_id = "listSecrets", path = "/v1/secrets", tag = "secrets",
    params(("name" = Option<String>, Query, description = "name prefix"),
        ("label" = Option<Vec<String>>, Query, description = "K or K=V; repeat for several")),
    responses((status = 200, body = SecretList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(m): S,
    _o: Operator,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SecretList>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    let mut prefix = None;
    let mut labels: Vec<(String, Option<String>)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "name" => prefix = Some(v),
            "label" => match v.split_once('=') {
                Some((k, v)) => labels.push((k.to_string(), Some(v.to_string()))),
                None => labels.push((v, None)),
            },
            other => return Err(ApiError::invalid(format!("unknown filter {other:?}: use name or label"))),
        }
    }
    m.linearizable().await?;
    let users = users(&m)?;
    let mut secrets = Vec::new();
    for s in m.reader.secrets()? {
        let name_ok = prefix.as_ref().is_none_or(|p| s.name.starts_with(p.as_str()));
        let labels_ok = labels.iter().all(|(k, v)| match (s.labels.get(k), v) {
            (Some(actual), Some(want)) => actual == want,
            (Some(_), None) => true,
            (None, _) => false,
        });
        if name_ok && labels_ok {
            secrets.push(info(&users, s)?);
        }
    }
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(SecretList { secrets }))
}

#[utoipa::path(get, operation_id = "inspectSecret", path = "/v1/secrets/{secret}", tag = "secrets",
    params(("secret" = String, Path, description = "id or name")),
    responses((status = 200, body = SecretInfo), (status = 404, body = ErrorBody)))]
pub async fn inspect(State(m): S, _o: Operator, Path(key): Path<String>) -> Result<Json<SecretInfo>, ApiError> {
    m.linearizable().await?;
    let s = find_secret(&m, &key)?;
    info(&users(&m)?, s).map(Json)
}

#[utoipa::path(post, operation_id = "rotateSecret", path = "/v1/secrets/{secret}/rotate", tag = "secrets", request_body = SecretRotate,
    params(("secret" = String, Path, description = "id or name")),
    responses((status = 201, body = SecretVersionCreated), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn rotate(
    State(m): S,
    _w: Writer,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<SecretRotate>,
) -> Result<(StatusCode, Json<SecretVersionCreated>), ApiError> {
    let value = decode_value(&req.data)?;
    let size = validate::secret_size(value.len())?;
    m.linearizable().await?;
    let s = find_secret(&m, &key)?;
    let began = std::time::Instant::now();
    let sealed = m.value_sealer()?.seal(&s.id, &value)?;
    m.metrics.stages.observe("seal", began.elapsed());
    drop(value);
    match m.propose(Command::RotateSecret { id: s.id.clone(), value: sealed, size, at: now_millis() }).await? {
        Applied::SecretVersion { version, .. } => {
            tracing::info!(secret = %s.name, version, "secret rotated");
            Ok((StatusCode::CREATED, Json(SecretVersionCreated { id: s.id, name: s.name, version })))
        }
        other => Err(ApiError::internal("rotating a secret", format!("unexpected result {other:?}"))),
    }
}

#[utoipa::path(put, operation_id = "setSecretLabels", path = "/v1/secrets/{secret}/labels", tag = "secrets", request_body = SecretLabels,
    params(("secret" = String, Path, description = "id or name")),
    responses((status = 200, body = SecretInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_labels(
    State(m): S,
    _w: Writer,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<SecretLabels>,
) -> Result<Json<SecretInfo>, ApiError> {
    validate::labels(&req.labels)?;
    m.linearizable().await?;
    let mut s = find_secret(&m, &key)?;
    let at = now_millis();
    m.propose(Command::SetSecretLabels { id: s.id.clone(), labels: req.labels.clone(), at }).await?;
    s.labels = req.labels;
    s.updated_at = at;
    info(&users(&m)?, s).map(Json)
}

#[utoipa::path(delete, operation_id = "removeSecret", path = "/v1/secrets/{secret}", tag = "secrets",
    params(("secret" = String, Path, description = "id or name")),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, description = "referenced by services (named in the message)", body = ErrorBody)))]
pub async fn remove(State(m): S, _w: Writer, Path(key): Path<String>) -> Result<StatusCode, ApiError> {
    m.linearizable().await?;
    let s = find_secret(&m, &key)?;
    m.propose(Command::RemoveSecret { id: s.id.clone() }).await?;
    tracing::info!(secret = %s.name, "secret removed");
    Ok(StatusCode::NO_CONTENT)
}
