//! Docker's `/secrets`: create, list (`id`, `name`, `names`, `label` filters), inspect,
//! update (labels only), remove (refused while a service uses it). Values go in, never out.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_api::error::ErrorCode;
use coffer_api::rules as validate;
use coffer_api::secrets::{SecretCreate, SecretLabels};
use coffer_api::time::rfc3339;
use coffer_raft_store::model::SecretRecord;

use crate::http::auth::{Operator, Writer};
use crate::http::docker::shapes::{IdResponse, ObjectVersion, Secret, SecretSpecIn, SecretSpecOut};
use crate::http::docker::{docker_wording, err, find, query_filters, query_version};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

pub(crate) const BAD_NAME: &str =
    "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]";

/// A secret's `Version.Index`: its last change (a rotation or new labels), in ms.
fn version_of(s: &SecretRecord) -> u64 {
    s.updated_at
}

fn shape(s: SecretRecord) -> Secret {
    Secret {
        version: ObjectVersion { index: version_of(&s) },
        created_at: rfc3339(s.created_at),
        updated_at: rfc3339(s.updated_at),
        spec: SecretSpecOut { name: s.name, labels: s.labels },
        id: s.id,
    }
}

/// A secret by full id, exact name, or unique id prefix, as Docker looks them up.
pub(crate) fn lookup(m: &Manager, key: &str) -> Result<SecretRecord, ApiError> {
    let exact = match m.reader.secret(key)? {
        Some(s) => Some(s),
        None => m.reader.secret_by_name(key)?,
    };
    find("secret", key, exact, || Ok(m.reader.secrets()?), |s| &s.id)
}

fn size_message() -> String {
    format!("secret data must be larger than 0 and less than {} bytes", validate::MAX_SECRET_BYTES)
}

#[utoipa::path(post, operation_id = "dockerSecretCreate", path = "/secrets/create", tag = "docker", request_body = SecretSpecIn,
    responses((status = 201, body = IdResponse), (status = 400, body = super::DockerErrorBody), (status = 409, body = super::DockerErrorBody)))]
pub async fn create(
    State(m): S,
    w: Writer,
    ApiJson(spec): ApiJson<SecretSpecIn>,
) -> Result<(StatusCode, Json<IdResponse>), ApiError> {
    if validate::name("secret", &spec.name).is_err() {
        return Err(err(StatusCode::BAD_REQUEST, BAD_NAME));
    }
    if spec.driver.as_ref().is_some_and(|d| !d.is_null()) {
        return Err(err(StatusCode::BAD_REQUEST, "secret drivers are not supported: Coffer stores every value itself"));
    }
    if spec.templating.as_ref().is_some_and(|d| !d.is_null()) {
        return Err(err(StatusCode::BAD_REQUEST, "secret templating is not supported"));
    }
    let data = spec.data.unwrap_or_default();
    // Docker counts the decoded bytes; the encoded length bounds them before decoding.
    if data.trim().is_empty() || data.len() / 4 * 3 > validate::MAX_SECRET_BYTES + 3 {
        return Err(err(StatusCode::BAD_REQUEST, size_message()));
    }
    let req = SecretCreate { name: spec.name.clone(), labels: spec.labels.unwrap_or_default(), data };
    match crate::http::secrets::create(State(m), w, ApiJson(req)).await {
        Ok((_, Json(created))) => Ok((StatusCode::CREATED, Json(IdResponse { id: created.id, warnings: None }))),
        Err(e) if e.0.code == ErrorCode::PayloadTooLarge || e.0.message.starts_with("a secret value is at most") => {
            Err(err(StatusCode::BAD_REQUEST, size_message()))
        }
        Err(e) => Err(docker_wording("secret", e, &spec.name)),
    }
}

#[utoipa::path(get, operation_id = "dockerSecretList", path = "/secrets", tag = "docker",
    params(("filters" = Option<String>, Query, description = "JSON: id, name (prefix), names (exact), label")),
    responses((status = 200, body = Vec<Secret>), (status = 400, body = super::DockerErrorBody)))]
pub async fn list(State(m): S, _o: Operator, RawQuery(q): RawQuery) -> Result<Json<Vec<Secret>>, ApiError> {
    let f = query_filters(&q, &["id", "name", "names", "label"])?;
    m.linearizable().await?;
    let out = m
        .reader
        .secrets()?
        .into_iter()
        .filter(|s| f.prefix("id", &s.id) && f.prefix("name", &s.name) && f.exact("names", &s.name))
        .filter(|s| f.labels("label", &s.labels))
        .map(shape)
        .collect();
    Ok(Json(out))
}

#[utoipa::path(get, operation_id = "dockerSecretInspect", path = "/secrets/{id}", tag = "docker",
    params(("id" = String, Path, description = "id, name or unique id prefix")),
    responses((status = 200, body = Secret), (status = 404, body = super::DockerErrorBody)))]
pub async fn inspect(State(m): S, _o: Operator, Path(key): Path<String>) -> Result<Json<Secret>, ApiError> {
    m.linearizable().await?;
    Ok(Json(shape(lookup(&m, &key)?)))
}

/// Only labels change; `?version=` must be the secret's `Version.Index`.
#[utoipa::path(post, operation_id = "dockerSecretUpdate", path = "/secrets/{id}/update", tag = "docker", request_body = SecretSpecIn,
    params(("id" = String, Path), ("version" = u64, Query)),
    responses((status = 200), (status = 400, body = super::DockerErrorBody), (status = 404, body = super::DockerErrorBody)))]
pub async fn update(
    State(m): S,
    w: Writer,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(spec): ApiJson<SecretSpecIn>,
) -> Result<StatusCode, ApiError> {
    let version = query_version(&q, "secret")?;
    m.linearizable().await?;
    let current = lookup(&m, &key)?;
    if spec.data.as_ref().is_some_and(|d| !d.is_empty()) || (!spec.name.is_empty() && spec.name != current.name) {
        return Err(err(StatusCode::BAD_REQUEST, "only updates to Labels are allowed"));
    }
    if version != version_of(&current) {
        return Err(err(StatusCode::CONFLICT, "update out of sequence"));
    }
    let labels = SecretLabels { labels: spec.labels.unwrap_or_default() };
    let _ = crate::http::secrets::set_labels(State(m), w, Path(current.id), ApiJson(labels)).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(delete, operation_id = "dockerSecretRemove", path = "/secrets/{id}", tag = "docker",
    params(("id" = String, Path)),
    responses((status = 204), (status = 400, description = "in use", body = super::DockerErrorBody), (status = 404, body = super::DockerErrorBody)))]
pub async fn remove(State(m): S, w: Writer, Path(key): Path<String>) -> Result<StatusCode, ApiError> {
    m.linearizable().await?;
    let s = lookup(&m, &key)?;
    let users: Vec<String> = m
        .reader
        .services()?
        .into_iter()
        .filter(|svc| svc.spec.secrets.iter().any(|r| r.secret_id == s.id))
        .map(|svc| svc.name)
        .collect();
    if !users.is_empty() {
        return Err(in_use(&key, &users));
    }
    match crate::http::secrets::remove(State(m), w, Path(s.id)).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        // A service took it up meanwhile; the state machine refused.
        Err(e) if e.0.code == ErrorCode::SecretInUse => Err(err(StatusCode::BAD_REQUEST, e.0.message)),
        Err(e) => Err(docker_wording("secret", e, &key)),
    }
}

fn in_use(key: &str, users: &[String]) -> ApiError {
    let plural = if users.len() > 1 { "s" } else { "" };
    err(
        StatusCode::BAD_REQUEST,
        format!("secret '{key}' is in use by the following service{plural}: {}", users.join(", ")),
    )
}
