//! Docker's `/services`, mapped onto Coffer's: `Spec.Name`, `Labels`,
//! `Mode.Replicated.Replicas`, `TaskTemplate.Placement.Constraints` and
//! `TaskTemplate.ContainerSpec.Secrets[]` become the service's spec; the image, command,
//! arguments and environment what it runs; everything else of the spec is kept as sent and
//! shown back. Only replicated services exist.
//!
//! A secret file's mode loses its bits for others: on a worker the file sits on the host,
//! beside every local user, not in a container's private mount as in Swarm (whose default,
//! 0444, every `docker service create` sends).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_api::error::ErrorCode;
use coffer_api::services::{SecretRefSpec, ServiceCreate};
use coffer_api::time::rfc3339;
use coffer_raft_store::model::{NodeStatus, ObservedState, ServiceRecord, ServiceRuntime, TaskState};
use serde_json::{json, Map, Value};

use crate::http::auth::{Operator, Writer};
use crate::http::docker::shapes::{IdResponse, ObjectVersion, Service, ServiceStatus, UpdateResponse};
use crate::http::docker::{docker_wording, err, find, query_filters, query_flag, query_param, query_version};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::services::RunChange;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

/// What a Docker service spec says, in Coffer's terms.
#[derive(Debug)]
struct Parsed {
    create: ServiceCreate,
    runtime: ServiceRuntime,
}

fn bad(message: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, message)
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(format!("{what} must be a list of strings"))))
            .collect(),
        Some(_) => Err(bad(format!("{what} must be a list of strings"))),
    }
}

fn id_number(v: Option<&Value>, what: &str) -> Result<Option<u32>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| bad(format!("{what} {s:?} is not a number"))),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(format!("{what} is out of range"))),
        Some(_) => Err(bad(format!("{what} must be a string"))),
    }
}

/// `node.role == manager` as Coffer writes it: `node.role==manager`.
fn constraint(c: &str) -> String {
    for op in ["==", "!="] {
        if let Some((k, v)) = c.split_once(op) {
            return format!("{}{op}{}", k.trim(), v.trim());
        }
    }
    c.trim().to_string()
}

fn secret_ref(m: &Manager, s: &Value) -> Result<SecretRefSpec, ApiError> {
    let name = s.get("SecretName").and_then(Value::as_str).filter(|n| !n.is_empty());
    let id = s.get("SecretID").and_then(Value::as_str).filter(|n| !n.is_empty());
    let source = match (name, id) {
        (Some(n), Some(id)) => {
            let rec = m
                .reader
                .secret_by_name(n)?
                .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("secret {n} not found")))?;
            if rec.id != id {
                return Err(bad(format!("secret {n}: SecretID {id} is another secret's")));
            }
            n.to_string()
        }
        (Some(n), None) => n.to_string(),
        (None, Some(id)) => {
            m.reader.secret(id)?.ok_or_else(|| err(StatusCode::NOT_FOUND, format!("secret {id} not found")))?.name
        }
        (None, None) => return Err(bad("a secret reference needs SecretName or SecretID")),
    };
    let file = s
        .get("File")
        .filter(|f| !f.is_null())
        .ok_or_else(|| bad(format!("secret {source}: only file secrets (File) are supported, not runtime secrets")))?;
    let target = file.get("Name").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_string);
    let mode = match file.get("Mode") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad("File.Mode must be a number"))?)
        }
    };
    Ok(SecretRefSpec {
        source,
        target,
        uid: id_number(file.get("UID"), "File.UID")?,
        gid: id_number(file.get("GID"), "File.GID")?,
        // Others never read a secret on a worker's host.
        mode: mode.map(|m| m & 0o770),
        version: None,
    })
}

/// ContainerSpec fields that change who or how a container runs, which Coffer's workers do
/// not apply: refused when set, rather than kept, shown back by `inspect`, and ignored.
const NOT_APPLIED: &[&str] = &[
    "User",
    "Groups",
    "Dir",
    "Hostname",
    "ReadOnly",
    "Mounts",
    "Privileges",
    "CapabilityAdd",
    "CapabilityDrop",
    "Sysctls",
    "Ulimits",
    "Init",
    "StopSignal",
    "StopGracePeriod",
    "TTY",
    "OpenStdin",
    "Healthcheck",
    "Configs",
];

fn not_applied(cs: &Value) -> Result<(), ApiError> {
    for field in NOT_APPLIED {
        let set = match cs.get(field) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(bad(format!(
                "ContainerSpec.{field} is not supported: Coffer's workers run the image with its own user, \
                 a writable root and the task's secrets as the only mount; remove it"
            )));
        }
    }
    Ok(())
}

fn parse(m: &Manager, spec: &Value) -> Result<Parsed, ApiError> {
    let obj = spec.as_object().ok_or_else(|| bad("the service spec must be a JSON object"))?;
    let name = obj.get("Name").and_then(Value::as_str).unwrap_or_default().to_string();
    if coffer_api::rules::name("service", &name).is_err() {
        return Err(bad(super::secrets::BAD_NAME));
    }
    let labels = match obj.get("Labels") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| bad("Labels must map strings to strings"))?,
    };
    let replicas = match obj.get("Mode") {
        None | Some(Value::Null) => 1,
        Some(mode) if mode.get("Replicated").is_some() => match mode["Replicated"].get("Replicas") {
            None | Some(Value::Null) => 1,
            Some(r) => {
                r.as_u64().and_then(|r| u32::try_from(r).ok()).ok_or_else(|| bad("Replicas must be a number"))?
            }
        },
        Some(_) => return Err(bad("Coffer runs replicated services only (no global services or jobs)")),
    };
    let tt = obj.get("TaskTemplate").filter(|v| !v.is_null());
    let cs = tt.and_then(|t| t.get("ContainerSpec")).filter(|v| !v.is_null());
    let placement = tt.and_then(|t| t.get("Placement"));
    let constraints = strings(placement.and_then(|p| p.get("Constraints")), "Placement.Constraints")?;
    let secrets = match cs.and_then(|c| c.get("Secrets")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(|s| secret_ref(m, s)).collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("ContainerSpec.Secrets must be a list")),
    };
    if let Some(cs) = cs {
        not_applied(cs)?;
    }
    let image = cs.and_then(|c| c.get("Image")).and_then(Value::as_str).filter(|i| !i.is_empty()).map(str::to_string);
    let runtime = ServiceRuntime {
        image,
        command: strings(cs.and_then(|c| c.get("Command")), "ContainerSpec.Command")?,
        args: strings(cs.and_then(|c| c.get("Args")), "ContainerSpec.Args")?,
        env: strings(cs.and_then(|c| c.get("Env")), "ContainerSpec.Env")?,
        docker_spec: Some(spec.to_string()),
    };
    // The native API's rules: an image reference, `KEY=VALUE` entries (a bad one would
    // otherwise reach a worker's engine and come back in its error, value and all).
    let run = coffer_api::services::RunSpec {
        image: runtime.image.clone(),
        command: runtime.command.clone(),
        args: runtime.args.clone(),
        env: runtime.env.clone(),
        ..Default::default()
    };
    coffer_api::rules::run_spec(&run).map_err(|e| bad(e.message))?;
    let create = ServiceCreate {
        name,
        replicas: Some(replicas),
        constraints: constraints.iter().map(|c| constraint(c)).collect(),
        secrets,
        labels,
        // What it runs is `runtime`, Docker's record; Coffer's own options stay default.
        run: Default::default(),
    };
    Ok(Parsed { create, runtime })
}

fn object<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("made an object above")
}

fn set_list(map: &mut Map<String, Value>, key: &str, list: &[String]) {
    if list.is_empty() {
        map.remove(key);
    } else {
        map.insert(key.into(), json!(list));
    }
}

/// Docker's spec of `rec`: Coffer's state for what Coffer acts on, the rest as last sent.
fn render_spec(m: &Manager, rec: &ServiceRecord, runtime: Option<&ServiceRuntime>) -> Result<Value, ApiError> {
    let mut spec: Map<String, Value> = runtime
        .and_then(|r| r.docker_spec.as_deref())
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    spec.insert("Name".into(), json!(rec.name));
    spec.insert("Labels".into(), json!(rec.spec.labels));
    spec.insert("Mode".into(), json!({"Replicated": {"Replicas": rec.spec.replicas}}));
    let tt = object(&mut spec, "TaskTemplate");
    let mut refs = Vec::new();
    for r in &rec.spec.secrets {
        let name = m.reader.secret(&r.secret_id)?.map(|s| s.name).unwrap_or_default();
        refs.push(json!({
            "File": {"Name": r.target, "UID": r.uid.to_string(), "GID": r.gid.to_string(), "Mode": r.mode},
            "SecretID": r.secret_id,
            "SecretName": name,
        }));
    }
    {
        let cs = object(tt, "ContainerSpec");
        match runtime.and_then(|r| r.image.clone()) {
            Some(i) => cs.insert("Image".into(), json!(i)),
            None => cs.remove("Image"),
        };
        let empty = ServiceRuntime::default();
        let rt = runtime.unwrap_or(&empty);
        set_list(cs, "Command", &rt.command);
        set_list(cs, "Args", &rt.args);
        set_list(cs, "Env", &rt.env);
        if refs.is_empty() {
            cs.remove("Secrets");
        } else {
            cs.insert("Secrets".into(), Value::Array(refs));
        }
    }
    set_list(object(tt, "Placement"), "Constraints", &rec.spec.constraints);
    Ok(Value::Object(spec))
}

/// A task's spec in Docker's shape: its service's `TaskTemplate`.
pub(crate) fn task_template(m: &Manager, rec: &ServiceRecord) -> Result<Value, ApiError> {
    let runtime = m.reader.service_runtime(&rec.id)?;
    let spec = render_spec(m, rec, runtime.as_ref())?;
    Ok(spec.get("TaskTemplate").cloned().unwrap_or(Value::Null))
}

/// Tasks running per service: placed on a ready node, desired running, and reported running
/// (or ready, where no container runs) by their worker. Read once per list.
fn running_tasks(m: &Manager) -> Result<BTreeMap<String, u64>, ApiError> {
    let ready: BTreeSet<u64> =
        m.reader.nodes()?.into_iter().filter(|n| !n.removed && n.status == NodeStatus::Ready).map(|n| n.id).collect();
    let mut out = BTreeMap::new();
    for t in m.reader.tasks()?.into_iter().filter(|t| t.desired == TaskState::Running) {
        let status = m.reader.task_status(&t.id)?.filter(|s| Some(s.node_id) == t.node_id);
        let up = status.is_some_and(|s| matches!(s.state, ObservedState::Running | ObservedState::Ready));
        if up && t.node_id.is_some_and(|n| ready.contains(&n)) {
            *out.entry(t.service_id).or_default() += 1;
        }
    }
    Ok(out)
}

fn shape(m: &Manager, rec: ServiceRecord, running: Option<&BTreeMap<String, u64>>) -> Result<Service, ApiError> {
    let runtime = m.reader.service_runtime(&rec.id)?;
    let spec = render_spec(m, &rec, runtime.as_ref())?;
    let service_status = running.map(|r| ServiceStatus {
        running_tasks: r.get(&rec.id).copied().unwrap_or(0),
        desired_tasks: u64::from(rec.spec.replicas),
        completed_tasks: 0,
    });
    Ok(Service {
        id: rec.id,
        version: ObjectVersion { index: rec.spec_version },
        created_at: rfc3339(rec.created_at),
        updated_at: rfc3339(rec.updated_at),
        spec,
        endpoint: json!({"Spec": {}}),
        service_status,
    })
}

/// A service by full id, exact name, or unique id prefix.
pub(crate) fn lookup(m: &Manager, key: &str) -> Result<ServiceRecord, ApiError> {
    let exact = match m.reader.service(key)? {
        Some(s) => Some(s),
        None => m.reader.service_by_name(key)?,
    };
    find("service", key, exact, || Ok(m.reader.services()?), |s| &s.id)
}

#[utoipa::path(post, operation_id = "dockerServiceCreate", path = "/services/create", tag = "docker",
    request_body(content = Object, description = "Docker's ServiceSpec"),
    responses((status = 201, body = IdResponse), (status = 400, body = super::DockerErrorBody),
        (status = 404, body = super::DockerErrorBody), (status = 409, body = super::DockerErrorBody)))]
pub async fn create(
    State(m): S,
    _w: Writer,
    ApiJson(spec): ApiJson<Value>,
) -> Result<(StatusCode, Json<IdResponse>), ApiError> {
    m.linearizable().await?;
    let p = parse(&m, &spec)?;
    let name = p.create.name.clone();
    let created = crate::http::services::create_service(&m, p.create, Some(p.runtime))
        .await
        .map_err(|e| docker_wording("service", e, &name))?;
    Ok((StatusCode::CREATED, Json(IdResponse { id: created.id, warnings: None })))
}

#[utoipa::path(get, operation_id = "dockerServiceList", path = "/services", tag = "docker",
    params(("filters" = Option<String>, Query, description = "JSON: id, name, label, mode"),
        ("status" = Option<bool>, Query, description = "include ServiceStatus")),
    responses((status = 200, body = Vec<Service>), (status = 400, body = super::DockerErrorBody)))]
pub async fn list(State(m): S, _o: Operator, RawQuery(q): RawQuery) -> Result<Json<Vec<Service>>, ApiError> {
    let f = query_filters(&q, &["id", "name", "label", "mode"])?;
    let with_status = query_flag(&q, "status");
    m.linearizable().await?;
    let running = if with_status { Some(running_tasks(&m)?) } else { None };
    let mut out = Vec::new();
    for s in m.reader.services()? {
        let keep = f.prefix("id", &s.id)
            && f.prefix("name", &s.name)
            && f.labels("label", &s.spec.labels)
            && f.exact("mode", "replicated");
        if keep {
            out.push(shape(&m, s, running.as_ref())?);
        }
    }
    Ok(Json(out))
}

#[utoipa::path(get, operation_id = "dockerServiceInspect", path = "/services/{id}", tag = "docker",
    params(("id" = String, Path, description = "id, name or unique id prefix")),
    responses((status = 200, body = Service), (status = 404, body = super::DockerErrorBody)))]
pub async fn inspect(State(m): S, _o: Operator, Path(key): Path<String>) -> Result<Json<Service>, ApiError> {
    m.linearizable().await?;
    let s = lookup(&m, &key)?;
    Ok(Json(shape(&m, s, None)?))
}

/// The whole new spec, based on `?version=` (the service's `Version.Index`).
#[utoipa::path(post, operation_id = "dockerServiceUpdate", path = "/services/{id}/update", tag = "docker",
    request_body(content = Object, description = "Docker's ServiceSpec, whole"),
    params(("id" = String, Path), ("version" = u64, Query)),
    responses((status = 200, body = UpdateResponse), (status = 400, body = super::DockerErrorBody),
        (status = 404, body = super::DockerErrorBody), (status = 409, body = super::DockerErrorBody)))]
pub async fn update(
    State(m): S,
    _w: Writer,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(spec): ApiJson<Value>,
) -> Result<Json<UpdateResponse>, ApiError> {
    let version = query_version(&q, "service")?;
    if query_param(&q, "rollback").is_some_and(|r| !r.is_empty()) {
        return Err(err(StatusCode::NOT_IMPLEMENTED, "rollback is not supported: send the previous spec"));
    }
    m.linearizable().await?;
    let current = lookup(&m, &key)?;
    let p = parse(&m, &spec)?;
    if p.create.name != current.name {
        return Err(bad("renaming a service is not supported"));
    }
    let wanted = p.create;
    let change = |m: &Manager, _: &ServiceRecord, s: &mut coffer_raft_store::model::ServiceSpec| {
        s.replicas = wanted.replicas.unwrap_or(1);
        s.constraints = wanted.constraints.clone();
        s.labels = wanted.labels.clone();
        let mut refs =
            wanted.secrets.iter().map(|r| crate::http::services::resolve(m, r)).collect::<Result<Vec<_>, _>>()?;
        // Docker has no pinned versions: a reference that stays (same secret, same target)
        // keeps the pin it had.
        for r in &mut refs {
            if let Some(old) = s.secrets.iter().find(|o| o.secret_id == r.secret_id && o.target == r.target) {
                r.pinned_version = old.pinned_version;
            }
        }
        s.secrets = refs;
        Ok(())
    };
    match crate::http::services::update_service(&m, &current.id, Some(version), change, RunChange::Docker(p.runtime))
        .await
    {
        Ok(_) => Ok(Json(UpdateResponse { warnings: None })),
        Err(e) if e.0.code == ErrorCode::Conflict => Err(err(StatusCode::CONFLICT, "update out of sequence")),
        Err(e) => Err(e),
    }
}

#[utoipa::path(delete, operation_id = "dockerServiceRemove", path = "/services/{id}", tag = "docker",
    params(("id" = String, Path)), responses((status = 200), (status = 404, body = super::DockerErrorBody)))]
pub async fn remove(State(m): S, w: Writer, Path(key): Path<String>) -> Result<StatusCode, ApiError> {
    m.linearizable().await?;
    let s = lookup(&m, &key)?;
    crate::http::services::remove(State(m), w, Path(s.id)).await?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_lose_their_spaces_and_nothing_else() {
        assert_eq!(constraint("node.role == manager"), "node.role==manager");
        assert_eq!(constraint(" node.labels.zone!= a "), "node.labels.zone!=a");
        assert_eq!(constraint("node.hostname==w1"), "node.hostname==w1");
    }
}
