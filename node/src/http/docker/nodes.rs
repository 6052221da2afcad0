//! Docker's `/nodes` (list, inspect, update availability and labels, remove; admin
//! certificates only, as the native API) and `/tasks` (list, inspect).
//!
//! A task's state on a ready node is what its worker reported (`running` for a container
//! that runs, or for files kept where no container runs); `pending` while no node fits,
//! `orphaned` while its node is down.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_api::rules as validate;
use coffer_api::time::{now_millis, rfc3339};
use coffer_raft_store::model::{
    self, Command, NodeRecord, ObservedState, ServiceRecord, TaskRecord, TaskState, TaskStatusRecord,
};
use serde_json::Value;

use crate::http::auth::{AdminCaller, AdminWriter, Operator};
use crate::http::docker::shapes::{
    Engine, ManagerStatus, Node, NodeDescription, NodeSpec, NodeSpecIn, NodeStatus, ObjectVersion, Platform, Task,
    TaskStatus,
};
use crate::http::docker::{err, find, query_filters, query_flag, query_version};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::local::ids::NodeHex;
use crate::manager::leader_ops::LeaderOp;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

fn role_word(r: model::NodeRole) -> &'static str {
    match r {
        model::NodeRole::Manager => "manager",
        model::NodeRole::Worker => "worker",
    }
}

fn availability_word(a: model::Availability) -> &'static str {
    match a {
        model::Availability::Active => "active",
        model::Availability::Drain => "drain",
        model::Availability::Pause => "pause",
    }
}

fn shape_node(m: &Manager, n: NodeRecord, leader: Option<u64>) -> Node {
    let ready = n.status == model::NodeStatus::Ready;
    let host = n.addr.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| n.addr.clone());
    let manager_status = (n.role == model::NodeRole::Manager).then(|| ManagerStatus {
        leader: leader == Some(n.id),
        reachability: if ready || n.id == m.id { "reachable" } else { "unreachable" }.into(),
        addr: n.addr.clone(),
    });
    Node {
        id: NodeHex(n.id).to_string(),
        version: ObjectVersion { index: n.updated_at },
        created_at: rfc3339(n.joined_at),
        updated_at: rfc3339(n.updated_at),
        spec: NodeSpec {
            name: String::new(),
            labels: n.labels,
            role: role_word(n.role).into(),
            availability: availability_word(n.availability).into(),
        },
        description: NodeDescription {
            hostname: n.hostname,
            platform: Platform { architecture: std::env::consts::ARCH.into(), os: "linux".into() },
            engine: Engine { engine_version: format!("coffer {}", env!("CARGO_PKG_VERSION")), labels: BTreeMap::new() },
        },
        status: NodeStatus { state: if ready { "ready" } else { "down" }.into(), addr: host },
        manager_status,
    }
}

/// A node by hex id, unique hex id prefix, or unique hostname, as Docker looks them up.
fn lookup_node(m: &Manager, key: &str) -> Result<NodeRecord, ApiError> {
    let nodes: Vec<NodeRecord> = m.reader.nodes()?.into_iter().filter(|n| !n.removed).collect();
    let key_l = key.to_ascii_lowercase();
    if let Some(n) = nodes.iter().find(|n| NodeHex(n.id).to_string() == key_l) {
        return Ok(n.clone());
    }
    let by_prefix: Vec<&NodeRecord> =
        nodes.iter().filter(|n| !key.is_empty() && NodeHex(n.id).to_string().starts_with(&key_l)).collect();
    let by_name: Vec<&NodeRecord> = nodes.iter().filter(|n| n.hostname == key).collect();
    match (by_prefix.as_slice(), by_name.as_slice()) {
        ([n], _) | ([], [n]) => Ok((*n).clone()),
        ([], []) => Err(err(StatusCode::NOT_FOUND, format!("node {key} not found"))),
        _ => Err(err(StatusCode::NOT_FOUND, format!("node {key} is ambiguous"))),
    }
}

fn leader(m: &Manager) -> Option<u64> {
    m.leader().map(|(id, _)| id)
}

#[utoipa::path(get, operation_id = "dockerNodeList", path = "/nodes", tag = "docker",
    params(("filters" = Option<String>, Query, description = "JSON: id, name, role, membership, label, node.label")),
    responses((status = 200, body = Vec<Node>), (status = 400, body = super::DockerErrorBody)))]
pub async fn list(State(m): S, _a: AdminCaller, RawQuery(q): RawQuery) -> Result<Json<Vec<Node>>, ApiError> {
    let f = query_filters(&q, &["id", "name", "role", "membership", "label", "node.label"])?;
    m.linearizable().await?;
    let l = leader(&m);
    let out = m
        .reader
        .nodes()?
        .into_iter()
        .filter(|n| !n.removed)
        .filter(|n| f.prefix("id", &NodeHex(n.id).to_string()) && f.prefix("name", &n.hostname))
        .filter(|n| f.exact("role", role_word(n.role)) && f.exact("membership", "accepted"))
        .filter(|n| f.labels("node.label", &n.labels) && f.labels("label", &BTreeMap::new()))
        .map(|n| shape_node(&m, n, l))
        .collect();
    Ok(Json(out))
}

#[utoipa::path(get, operation_id = "dockerNodeInspect", path = "/nodes/{id}", tag = "docker",
    params(("id" = String, Path, description = "id, unique id prefix, or hostname")),
    responses((status = 200, body = Node), (status = 404, body = super::DockerErrorBody)))]
pub async fn inspect(State(m): S, _a: AdminCaller, Path(key): Path<String>) -> Result<Json<Node>, ApiError> {
    m.linearizable().await?;
    let n = lookup_node(&m, &key)?;
    Ok(Json(shape_node(&m, n, leader(&m))))
}

/// Availability and labels (the whole set) change in one commit; a role change is a
/// promotion or demotion. `?version=` must be the node's `Version.Index`.
#[utoipa::path(post, operation_id = "dockerNodeUpdate", path = "/nodes/{id}/update", tag = "docker", request_body = NodeSpecIn,
    params(("id" = String, Path), ("version" = u64, Query)),
    responses((status = 200), (status = 400, body = super::DockerErrorBody), (status = 404, body = super::DockerErrorBody)))]
pub async fn update(
    State(m): S,
    _a: AdminWriter,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(spec): ApiJson<NodeSpecIn>,
) -> Result<StatusCode, ApiError> {
    let version = query_version(&q, "node")?;
    let n = lookup_node(&m, &key)?;
    if version != n.updated_at {
        return Err(err(StatusCode::CONFLICT, "update out of sequence"));
    }
    if spec.name.as_deref().is_some_and(|n| !n.is_empty()) {
        return Err(err(StatusCode::BAD_REQUEST, "node names are not supported: nodes go by their hostname"));
    }
    let availability = match spec.availability.as_deref() {
        None | Some("") => None,
        Some("active") => Some(model::Availability::Active),
        Some("drain") => Some(model::Availability::Drain),
        Some("pause") => Some(model::Availability::Pause),
        Some(other) => return Err(err(StatusCode::BAD_REQUEST, format!("invalid availability {other:?}"))),
    };
    let role = match spec.role.as_deref() {
        None | Some("") => None,
        Some("manager") => Some(model::NodeRole::Manager),
        Some("worker") => Some(model::NodeRole::Worker),
        Some(other) => return Err(err(StatusCode::BAD_REQUEST, format!("invalid role {other:?}"))),
    };
    let (add, remove) = match spec.labels {
        Some(wanted) => {
            validate::labels(&wanted)?;
            let remove: Vec<String> = n.labels.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
            (wanted, remove)
        }
        None => (BTreeMap::new(), Vec::new()),
    };
    if availability.is_some_and(|a| a != n.availability) || add != n.labels || !remove.is_empty() {
        let cmd = Command::SetNodeSpec { id: n.id, availability, add, remove, at: now_millis() };
        m.propose(cmd).await?;
    }
    match role {
        Some(r) if r != n.role => {
            let op = if r == model::NodeRole::Manager { LeaderOp::Promote(n.id) } else { LeaderOp::Demote(n.id) };
            m.leader_op(op).await?;
        }
        _ => {}
    }
    Ok(StatusCode::OK)
}

#[utoipa::path(delete, operation_id = "dockerNodeRemove", path = "/nodes/{id}", tag = "docker",
    params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 200), (status = 404, body = super::DockerErrorBody), (status = 409, body = super::DockerErrorBody)))]
pub async fn remove(
    State(m): S,
    _a: AdminWriter,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    let n = lookup_node(&m, &key)?;
    let op = if query_flag(&q, "force") { LeaderOp::RemoveForced(n.id) } else { LeaderOp::Remove(n.id) };
    m.leader_op(op).await?;
    Ok(StatusCode::OK)
}

/// What the tasks listing needs of each service: its record and task template.
struct ServiceView {
    rec: ServiceRecord,
    template: Value,
}

/// Docker's state, message and error of a task placed on a ready node, from what its
/// worker reported.
fn reported(status: Option<&TaskStatusRecord>) -> (&'static str, String, Option<String>) {
    let Some(s) = status else { return ("assigned", "its worker has not reported yet".into(), None) };
    match &s.state {
        ObservedState::Pending => ("preparing", "the worker fetches the task's secrets".into(), None),
        ObservedState::Starting => ("starting", "starting its container".into(), None),
        ObservedState::Running => ("running", "its container runs".into(), None),
        ObservedState::Ready => {
            ("running", "the worker keeps the task's secret files; no container runs here".into(), None)
        }
        ObservedState::Exited(0) => ("complete", "its container exited; restarting".into(), None),
        ObservedState::Exited(code) => {
            ("failed", "its container exited; restarting".into(), Some(format!("task: non-zero exit ({code})")))
        }
        ObservedState::Failed(m) => ("failed", "the worker could not start it".into(), Some(m.clone())),
    }
}

fn shape_task(
    t: TaskRecord,
    svc: Option<&ServiceView>,
    node: Option<&NodeRecord>,
    status: Option<&TaskStatusRecord>,
) -> Task {
    let status = status.filter(|s| Some(s.node_id) == t.node_id);
    let (state, message, err) = match (&t.desired, t.node_id, node) {
        (TaskState::Shutdown, _, _) => ("shutdown", "the task was stopped".to_string(), None),
        (_, None, _) => ("pending", "no suitable node".to_string(), None),
        (_, Some(_), Some(n)) if !n.removed && n.status == model::NodeStatus::Ready => reported(status),
        _ => ("orphaned", "its node is down".to_string(), None),
    };
    let at = status.map_or(t.updated_at, |s| s.at.max(t.updated_at));
    Task {
        id: t.id,
        version: ObjectVersion { index: t.updated_at },
        created_at: rfc3339(t.updated_at),
        updated_at: rfc3339(t.updated_at),
        labels: BTreeMap::new(),
        spec: svc.map(|s| s.template.clone()).unwrap_or(Value::Null),
        service_id: t.service_id,
        // Docker's slots count from 1 (slot 0 names a global service's task by node).
        slot: t.slot.saturating_add(1),
        node_id: t.node_id.map(|n| NodeHex(n).to_string()).unwrap_or_default(),
        status: TaskStatus { timestamp: rfc3339(at), state: state.into(), message, err },
        desired_state: match t.desired {
            TaskState::Running => "running",
            TaskState::Shutdown => "shutdown",
        }
        .into(),
    }
}

fn service_views(m: &Manager) -> Result<BTreeMap<String, ServiceView>, ApiError> {
    let mut out = BTreeMap::new();
    for rec in m.reader.services()? {
        let template = super::services::task_template(m, &rec)?;
        out.insert(rec.id.clone(), ServiceView { rec, template });
    }
    Ok(out)
}

#[utoipa::path(get, operation_id = "dockerTaskList", path = "/tasks", tag = "docker",
    params(("filters" = Option<String>, Query, description = "JSON: id, name, service, node, label, desired-state, _up-to-date")),
    responses((status = 200, body = Vec<Task>), (status = 400, body = super::DockerErrorBody)))]
pub async fn list_tasks(State(m): S, _o: Operator, RawQuery(q): RawQuery) -> Result<Json<Vec<Task>>, ApiError> {
    let f = query_filters(&q, &["id", "name", "service", "node", "label", "desired-state", "_up-to-date"])?;
    m.linearizable().await?;
    let services = service_views(&m)?;
    let nodes: BTreeMap<u64, NodeRecord> = m.reader.nodes()?.into_iter().map(|n| (n.id, n)).collect();
    let mut out = Vec::new();
    for t in m.reader.tasks()? {
        let svc = services.get(&t.service_id);
        let node = t.node_id.and_then(|n| nodes.get(&n));
        let svc_name = svc.map(|s| s.rec.name.as_str()).unwrap_or_default();
        let service_ok = f.get("service").is_none_or(|want| {
            want.iter()
                .any(|w| *w == t.service_id || w == svc_name || (!w.is_empty() && t.service_id.starts_with(w.as_str())))
        });
        let node_ok = f.get("node").is_none_or(|want| {
            want.iter()
                .any(|w| node.is_some_and(|n| NodeHex(n.id).to_string().starts_with(w.as_str()) || n.hostname == *w))
        });
        let desired = if t.desired == TaskState::Running { "running" } else { "shutdown" };
        let up_to_date = svc.is_some_and(|s| s.rec.spec_version == t.spec_version) && t.desired == TaskState::Running;
        let keep = service_ok
            && node_ok
            && f.prefix("id", &t.id)
            && f.prefix("name", &format!("{svc_name}.{}", t.slot + 1))
            && f.labels("label", &BTreeMap::new())
            && f.exact("desired-state", desired)
            && f.get("_up-to-date").is_none_or(|_| up_to_date);
        if keep {
            let status = m.reader.task_status(&t.id)?;
            out.push(shape_task(t, svc, node, status.as_ref()));
        }
    }
    Ok(Json(out))
}

#[utoipa::path(get, operation_id = "dockerTaskInspect", path = "/tasks/{id}", tag = "docker",
    params(("id" = String, Path)), responses((status = 200, body = Task), (status = 404, body = super::DockerErrorBody)))]
pub async fn inspect_task(State(m): S, _o: Operator, Path(key): Path<String>) -> Result<Json<Task>, ApiError> {
    m.linearizable().await?;
    let t = find("task", &key, m.reader.task(&key)?, || Ok(m.reader.tasks()?), |t| &t.id)?;
    let svc = m.reader.service(&t.service_id)?;
    let view = match svc {
        Some(rec) => Some(ServiceView { template: super::services::task_template(&m, &rec)?, rec }),
        None => None,
    };
    let node = match t.node_id {
        Some(n) => m.reader.node(n)?,
        None => None,
    };
    let status = m.reader.task_status(&t.id)?;
    Ok(Json(shape_task(t, view.as_ref(), node.as_ref(), status.as_ref())))
}
