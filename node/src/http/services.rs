//! `/v1/services`: create, list, inspect, update, remove. Secret references are resolved
//! by name here and checked again by the state machine when the spec commits (a secret
//! removed in between makes the write fail, not dangle).

use coffer_api::time::rfc3339;
use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_api::error::{ErrorBody, ErrorCode};
use coffer_api::services::{SecretRefInfo, SecretRefSpec, ServiceCreate, ServiceInfo, ServiceList, ServiceUpdate};
use coffer_raft_store::model::{
    Applied, ApplyError, Command, RuntimeOptions, SecretRef, ServiceRecord, ServiceRuntime, ServiceSpec,
};

use crate::http::error::ApiError;
use coffer_api::error::CodedError;
use coffer_api::rules as validate;
use coffer_api::time::now_millis;

use crate::http::auth::{Operator, Writer};
use crate::http::extract::ApiJson;
use crate::local::ids::new_id;
use crate::manager::error::OpError;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

/// Files are readable by their owner only unless the service says otherwise. Swarm's default
/// is 0444, in a mount private to the container; ours sit on the worker's host, where any
/// local user could read a world-readable file.
const DEFAULT_MODE: u32 = 0o400;

pub(crate) fn resolve(m: &Manager, spec: &SecretRefSpec) -> Result<SecretRef, ApiError> {
    validate::name("secret", &spec.source)?;
    let secret = m
        .reader
        .secret_by_name(&spec.source)?
        .ok_or_else(|| ApiError::not_found(format!("secret {:?} does not exist; create it first", spec.source)))?;
    let target = spec.target.clone().unwrap_or_else(|| spec.source.clone());
    validate::target(&target)?;
    let mode = spec.mode.unwrap_or(DEFAULT_MODE);
    validate::mode(mode)?;
    if let Some(v) = spec.version {
        if !secret.versions.iter().any(|x| x.version == v) {
            return Err(ApiError::not_found(format!("secret {:?} has no version {v}", spec.source)));
        }
    }
    Ok(SecretRef {
        secret_id: secret.id,
        target,
        uid: spec.uid.unwrap_or(0),
        gid: spec.gid.unwrap_or(0),
        mode,
        pinned_version: spec.version,
    })
}

fn check_targets(refs: &[SecretRef]) -> Result<(), ApiError> {
    // A worker matches a redemption's values by secret: one secret at two targets (one
    // pinned, say) would be given one value for both.
    let mut secrets = BTreeSet::new();
    for r in refs {
        if !secrets.insert(r.secret_id.as_str()) {
            return Err(ApiError::invalid(format!(
                "a service references each secret once; give the second target its own secret (target {:?})",
                r.target
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for r in refs {
        if !seen.insert(r.target.as_str()) {
            return Err(ApiError::invalid(format!("two secrets would be written to the same target {:?}", r.target)));
        }
    }
    // A target cannot be both a file and the directory of another (`a` and `a/b`).
    for a in &seen {
        for b in &seen {
            if b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'/' {
                return Err(ApiError::invalid(format!("target {a:?} would be a file and the directory of {b:?}")));
            }
        }
    }
    Ok(())
}

fn check_constraints(c: &[String]) -> Result<(), ApiError> {
    validate::constraints(c)?;
    Ok(())
}

pub(crate) fn info(m: &Manager, s: ServiceRecord) -> Result<ServiceInfo, ApiError> {
    let secrets = s
        .spec
        .secrets
        .iter()
        .map(|r| {
            let name = m.reader.secret(&r.secret_id)?.map(|x| x.name).unwrap_or_default();
            Ok(SecretRefInfo {
                secret_id: r.secret_id.clone(),
                secret_name: name,
                target: r.target.clone(),
                uid: r.uid,
                gid: r.gid,
                mode: r.mode,
                version: r.pinned_version,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let run = crate::http::run::of_service(m, &s.id)?;
    Ok(ServiceInfo {
        id: s.id,
        name: s.name,
        replicas: s.spec.replicas,
        constraints: s.spec.constraints,
        secrets,
        labels: s.spec.labels,
        spec_version: s.spec_version,
        created_at_ms: s.created_at,
        created_at: rfc3339(s.created_at),
        updated_at_ms: s.updated_at,
        updated_at: rfc3339(s.updated_at),
        run,
    })
}

/// A service by id, or else by name.
pub fn find_service(m: &Manager, key: &str) -> Result<ServiceRecord, ApiError> {
    if let Some(s) = m.reader.service(key)? {
        return Ok(s);
    }
    m.reader.service_by_name(key)?.ok_or_else(|| ApiError::not_found(format!("no service {key:?}")))
}

#[utoipa::path(post, operation_id = "createService", path = "/v1/services", tag = "services", request_body = ServiceCreate,
    responses((status = 201, body = ServiceInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(m): S,
    _w: Writer,
    ApiJson(req): ApiJson<ServiceCreate>,
) -> Result<(StatusCode, Json<ServiceInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(create_service(&m, req, None).await?)))
}

/// Creates a service, with what it runs when `runtime` is given (the Docker API's), in one
/// commit. The caller has checked that it may write.
pub(crate) async fn create_service(
    m: &Manager,
    req: ServiceCreate,
    runtime: Option<ServiceRuntime>,
) -> Result<ServiceInfo, ApiError> {
    validate::name("service", &req.name)?;
    let replicas = req.replicas.unwrap_or(1);
    validate::replicas(replicas)?;
    validate::labels(&req.labels)?;
    check_constraints(&req.constraints)?;
    let native = crate::http::run::from_spec(&req.run)?;
    m.linearizable().await?;
    let secrets = req.secrets.iter().map(|s| resolve(m, s)).collect::<Result<Vec<_>, _>>()?;
    check_targets(&secrets)?;
    let id = new_id();
    let at = now_millis();
    let spec = ServiceSpec { replicas, constraints: req.constraints, secrets, labels: req.labels };
    let (name, spec2) = (req.name.clone(), spec.clone());
    let cmd = match (runtime, native) {
        (Some(runtime), _) => Command::CreateServiceWithRuntime { id: id.clone(), name, spec: spec2, runtime, at },
        (None, Some((runtime, options))) => {
            Command::CreateServiceWithOptions { id: id.clone(), name, spec: spec2, runtime, options, at }
        }
        (None, None) => Command::CreateService { id: id.clone(), name, spec: spec2, at },
    };
    m.propose(cmd).await?;
    tracing::info!(service = %req.name, %id, "service created");
    let rec = ServiceRecord { id, name: req.name, spec, spec_version: 1, created_at: at, updated_at: at };
    info(m, rec)
}

#[utoipa::path(get, operation_id = "listServices", path = "/v1/services", tag = "services", responses((status = 200, body = ServiceList)))]
pub async fn list(State(m): S, _o: Operator) -> Result<Json<ServiceList>, ApiError> {
    m.linearizable().await?;
    let mut services = m.reader.services()?.into_iter().map(|s| info(&m, s)).collect::<Result<Vec<_>, _>>()?;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(ServiceList { services }))
}

#[utoipa::path(get, operation_id = "inspectService", path = "/v1/services/{service}", tag = "services",
    params(("service" = String, Path, description = "id or name")),
    responses((status = 200, body = ServiceInfo), (status = 404, body = ErrorBody)))]
pub async fn inspect(State(m): S, _o: Operator, Path(key): Path<String>) -> Result<Json<ServiceInfo>, ApiError> {
    m.linearizable().await?;
    let s = find_service(&m, &key)?;
    info(&m, s).map(Json)
}

#[utoipa::path(patch, operation_id = "updateService", path = "/v1/services/{service}", tag = "services", request_body = ServiceUpdate,
    params(("service" = String, Path, description = "id or name")),
    responses((status = 200, body = ServiceInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "changed meanwhile (expected_version)", body = ErrorBody)))]
pub async fn update(
    State(m): S,
    _w: Writer,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<ServiceUpdate>,
) -> Result<Json<ServiceInfo>, ApiError> {
    if let Some(r) = req.replicas {
        validate::replicas(r)?;
    }
    if let Some(c) = &req.constraints {
        check_constraints(c)?;
    }
    crate::http::run::check_update(&req)?;
    let run = if req.changes_run() { RunChange::Native(&req) } else { RunChange::Keep };
    let change = |m: &Manager, current: &ServiceRecord, spec: &mut ServiceSpec| {
        if let Some(r) = req.replicas {
            spec.replicas = r;
        }
        if let Some(c) = &req.constraints {
            spec.constraints = c.clone();
        }
        for name in &req.secret_rm {
            let secret = m.reader.secret_by_name(name)?;
            let before = spec.secrets.len();
            if let Some(s) = secret {
                spec.secrets.retain(|r| r.secret_id != s.id);
            }
            if spec.secrets.len() == before {
                return Err(ApiError::invalid(format!(
                    "service {:?} does not reference secret {name:?}",
                    current.name
                )));
            }
        }
        for add in &req.secret_add {
            spec.secrets.push(resolve(m, add)?);
        }
        Ok(())
    };
    update_service(&m, &key, req.expected_version, change, run).await.map(Json)
}

/// What a service update does to what the service runs.
pub(crate) enum RunChange<'a> {
    Keep,
    /// The Docker API's: replaces the runtime record (Coffer's options stay).
    Docker(ServiceRuntime),
    /// The native API's: changes the fields the update names.
    Native(&'a ServiceUpdate),
}

/// Changes a service's spec with `change` (applied to the current spec) and what it runs
/// as `run` says, in one commit. With `expected_version`, a
/// concurrent change makes it fail with `conflict`; without, it is retried on the new spec.
/// The caller has checked that it may write.
pub(crate) async fn update_service<F>(
    m: &Manager,
    key: &str,
    expected_version: Option<u64>,
    change: F,
    run: RunChange<'_>,
) -> Result<ServiceInfo, ApiError>
where
    F: Fn(&Manager, &ServiceRecord, &mut ServiceSpec) -> Result<(), ApiError>,
{
    let attempts = if expected_version.is_some() { 1 } else { 3 };
    for attempt in 1..=attempts {
        m.linearizable().await?;
        let current = find_service(m, key)?;
        if let Some(v) = expected_version {
            if v != current.spec_version {
                return Err(ApiError::with_code(
                    ErrorCode::Conflict,
                    format!("service changed meanwhile: expected spec version {v}, found {}", current.spec_version),
                ));
            }
        }
        let mut spec = current.spec.clone();
        change(m, &current, &mut spec)?;
        validate::replicas(spec.replicas)?;
        check_constraints(&spec.constraints)?;
        validate::labels(&spec.labels)?;
        check_targets(&spec.secrets)?;
        let at = now_millis();
        let (id, expected_version, spec2) = (current.id.clone(), current.spec_version, spec.clone());
        let cmd = match &run {
            RunChange::Keep => Command::UpdateService { id, expected_version, spec: spec2, at },
            RunChange::Docker(r) => {
                Command::UpdateServiceWithRuntime { id, expected_version, spec: spec2, runtime: r.clone(), at }
            }
            RunChange::Native(u) => {
                let mut runtime = m.reader.service_runtime(&current.id)?.unwrap_or_default();
                let mut options: RuntimeOptions = m.reader.service_options(&current.id)?.unwrap_or_default();
                crate::http::run::apply_update(u, &mut runtime, &mut options)?;
                Command::UpdateServiceWithOptions { id, expected_version, spec: spec2, runtime, options, at }
            }
        };
        match m.write(cmd).await? {
            Ok(Applied::ServiceVersion { version, .. }) => {
                tracing::info!(service = %current.name, version, "service updated");
                let rec = ServiceRecord { spec, spec_version: version, updated_at: at, ..current };
                return info(m, rec);
            }
            Ok(other) => return Err(ApiError::internal("updating a service", format!("unexpected result {other:?}"))),
            Err(ApplyError::VersionConflict { .. }) if attempt < attempts => continue,
            Err(e) => return Err(OpError::from(e).into()),
        }
    }
    Err(ApiError::conflict("the service kept changing; retry"))
}

#[utoipa::path(delete, operation_id = "removeService", path = "/v1/services/{service}", tag = "services",
    params(("service" = String, Path, description = "id or name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(State(m): S, _w: Writer, Path(key): Path<String>) -> Result<StatusCode, ApiError> {
    m.linearizable().await?;
    let s = find_service(&m, &key)?;
    m.propose(Command::RemoveService { id: s.id.clone() }).await?;
    tracing::info!(service = %s.name, "service removed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(secret: &str, target: &str) -> SecretRef {
        SecretRef { secret_id: secret.into(), target: target.into(), uid: 0, gid: 0, mode: 0o400, pinned_version: None }
    }

    #[test]
    fn a_service_gives_each_secret_and_each_target_once() {
        assert!(check_targets(&[r("a", "db"), r("b", "conf/tls.pem")]).is_ok());
        for (bad, why) in [
            (vec![r("a", "db"), r("a", "db-again")], "one secret at two targets"),
            (vec![r("a", "db"), r("b", "db")], "two secrets at one target"),
            (vec![r("a", "conf"), r("b", "conf/tls.pem")], "a file and a directory"),
        ] {
            assert!(check_targets(&bad).is_err(), "{why}");
        }
    }
}
