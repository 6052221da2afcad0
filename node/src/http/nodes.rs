//! Cluster administration (admin certificates only): cluster status, nodes (list, inspect,
//! availability, promote, demote, remove), join-token rotation.

use coffer_api::time::rfc3339;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_api::cluster::{
    Availability, ClusterStatus, Compacted, JoinTokenResponse, NodeInfo, NodeList, NodeRole as WireRole, NodeUpdate,
    RaftRole, StateDigestInfo,
};
use coffer_api::error::{CodedError, ErrorBody};
use std::collections::BTreeMap;

use coffer_api::rules as validate;
use coffer_api::time::now_millis;
use coffer_raft_store::model::{self, Command, NodeRecord};

use crate::http::auth::{AdminCaller, AdminWriter};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::manager::leader_ops::{LeaderOp, OpResult};
use crate::manager::Manager;

type S = State<Arc<Manager>>;

#[utoipa::path(get, operation_id = "clusterDigest", path = "/v1/cluster/digest", tag = "cluster", responses((status = 200, body = StateDigestInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
/// A digest of this manager's applied state (its own, not the leader's: it is for telling
/// whether managers agree).
pub async fn digest(State(m): S, _a: AdminCaller) -> Result<Json<StateDigestInfo>, ApiError> {
    let reader = m.reader.clone();
    let d = tokio::task::spawn_blocking(move || reader.digest())
        .await
        .map_err(|e| ApiError::internal("computing the state digest", e))??;
    let sha256 = d.sha256.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Json(StateDigestInfo { node_id: m.id, applied_index: d.applied_index, sha256, records: d.records }))
}

#[utoipa::path(post, operation_id = "compactLog", path = "/v1/cluster/compact", tag = "cluster", responses((status = 200, body = Compacted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// Builds a Raft snapshot on this manager now and purges its log up to it (each manager
/// keeps its own log: `coffer cluster compact` asks every member).
pub async fn compact(State(m): S, _a: AdminCaller) -> Result<Json<Compacted>, ApiError> {
    let done = crate::manager::compaction::compact_now(&m).await?;
    tracing::info!(snapshot_index = done.snapshot_index, purged_index = ?done.purged_index, "log compacted on request");
    Ok(Json(done))
}

#[utoipa::path(get, operation_id = "clusterStatus", path = "/v1/cluster/status", tag = "cluster", responses((status = 200, body = ClusterStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn status(State(m): S, _a: AdminCaller) -> Result<Json<ClusterStatus>, ApiError> {
    let mut s = m.status()?;
    // Ask the other members whether they are locked (autolock): a locked manager answers
    // nothing else, and this is what tells an operator which ones wait for a key.
    let probes = s.members.iter().filter(|x| x.id != m.id).map(|x| {
        let (client, url) = (m.peers.probe(), format!("https://{}/readyz", x.addr));
        async move {
            let r = client.get(url).timeout(std::time::Duration::from_secs(1)).send().await.ok()?;
            let ok = r.status().is_success();
            let body = r.bytes().await.ok()?;
            let code = serde_json::from_slice::<ErrorBody>(&body).ok().map(|b| b.error.code);
            Some(!ok && code == Some(coffer_api::error::ErrorCode::Locked))
        }
    });
    let answers = futures_util::future::join_all(probes).await;
    for (member, locked) in s.members.iter_mut().filter(|x| x.id != m.id).zip(answers) {
        member.locked = locked;
    }
    if let Some(me) = s.members.iter_mut().find(|x| x.id == m.id) {
        me.locked = Some(false);
    }
    Ok(Json(s))
}

fn node_info(m: &Manager, rec: NodeRecord) -> NodeInfo {
    let metrics = m.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let raft = if rec.role != model::NodeRole::Manager {
        RaftRole::None
    } else if metrics.current_leader == Some(rec.id) {
        RaftRole::Leader
    } else if membership.voter_ids().any(|v| v == rec.id) {
        RaftRole::Voter
    } else if membership.get_node(&rec.id).is_some() {
        RaftRole::Learner
    } else {
        RaftRole::None
    };
    NodeInfo {
        id: rec.id,
        role: match rec.role {
            model::NodeRole::Manager => WireRole::Manager,
            model::NodeRole::Worker => WireRole::Worker,
        },
        hostname: rec.hostname,
        addr: rec.addr,
        availability: match rec.availability {
            model::Availability::Active => coffer_api::cluster::Availability::Active,
            model::Availability::Drain => coffer_api::cluster::Availability::Drain,
            model::Availability::Pause => coffer_api::cluster::Availability::Pause,
        },
        status: match rec.status {
            model::NodeStatus::Ready => coffer_api::cluster::NodeStatus::Ready,
            model::NodeStatus::Down => coffer_api::cluster::NodeStatus::Down,
        },
        raft,
        labels: rec.labels,
        cert_serial: rec.cert_serial,
        removed: rec.removed,
        joined_at_ms: rec.joined_at,
        joined_at: rfc3339(rec.joined_at),
    }
}

#[utoipa::path(get, operation_id = "listNodes", path = "/v1/nodes", tag = "cluster", responses((status = 200, body = NodeList)))]
pub async fn list_nodes(State(m): S, _a: AdminCaller) -> Result<Json<NodeList>, ApiError> {
    m.linearizable().await?;
    let nodes = m.reader.nodes()?.into_iter().filter(|n| !n.removed).map(|n| node_info(&m, n)).collect();
    Ok(Json(NodeList { nodes }))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::invalid(format!("node id {id:?} is not a number")))
}

#[utoipa::path(get, operation_id = "inspectNode", path = "/v1/nodes/{id}", tag = "cluster", params(("id" = u64, Path)), responses((status = 200, body = NodeInfo), (status = 404, body = ErrorBody)))]
pub async fn inspect_node(State(m): S, _a: AdminCaller, Path(id): Path<String>) -> Result<Json<NodeInfo>, ApiError> {
    let id = parse_id(&id)?;
    m.linearizable().await?;
    let rec = m.reader.node(id)?.ok_or_else(|| ApiError::not_found(format!("no node {id}")))?;
    Ok(Json(node_info(&m, rec)))
}

async fn simple_op(m: &Arc<Manager>, op: LeaderOp) -> Result<StatusCode, ApiError> {
    m.leader_op(op).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, operation_id = "updateNode", path = "/v1/nodes/{id}", tag = "cluster", params(("id" = u64, Path)), request_body = NodeUpdate, responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn update_node(
    State(m): S,
    _a: AdminWriter,
    Path(id): Path<String>,
    ApiJson(u): ApiJson<NodeUpdate>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if u.availability.is_none() && u.label_add.is_empty() && u.label_rm.is_empty() {
        return Err(ApiError::invalid("nothing to update: give availability, label_add or label_rm"));
    }
    validate::labels(&u.label_add)?;
    for k in &u.label_rm {
        validate::labels(&BTreeMap::from([(k.clone(), String::new())]))?;
    }
    let availability = u.availability.map(|a| match a {
        Availability::Active => model::Availability::Active,
        Availability::Drain => model::Availability::Drain,
        Availability::Pause => model::Availability::Pause,
    });
    // One command: the change happens whole or not at all.
    let cmd = Command::SetNodeSpec { id, availability, add: u.label_add, remove: u.label_rm, at: now_millis() };
    m.propose(cmd).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?force=true`: remove a manager that still votes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, operation_id = "removeNode", path = "/v1/nodes/{id}", tag = "cluster", params(("id" = u64, Path), ("force" = Option<bool>, Query, description = "also a manager that still votes")), responses((status = 204), (status = 409, description = "a voting manager without force, or the last voting manager", body = ErrorBody)))]
pub async fn remove_node(
    State(m): S,
    _a: AdminWriter,
    Path(id): Path<String>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    let id = parse_id(&id)?;
    simple_op(&m, if q.force { LeaderOp::RemoveForced(id) } else { LeaderOp::Remove(id) }).await
}

#[utoipa::path(post, operation_id = "promoteNode", path = "/v1/nodes/{id}/promote", tag = "cluster", params(("id" = u64, Path)), responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn promote(State(m): S, _a: AdminWriter, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    simple_op(&m, LeaderOp::Promote(parse_id(&id)?)).await
}

#[utoipa::path(post, operation_id = "demoteNode", path = "/v1/nodes/{id}/demote", tag = "cluster", params(("id" = u64, Path)), responses((status = 204), (status = 409, description = "the last voting manager", body = ErrorBody)))]
pub async fn demote(State(m): S, _a: AdminWriter, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    simple_op(&m, LeaderOp::Demote(parse_id(&id)?)).await
}

fn parse_role(role: &str) -> Result<WireRole, ApiError> {
    match role {
        "worker" => Ok(WireRole::Worker),
        "manager" => Ok(WireRole::Manager),
        other => Err(ApiError::invalid(format!("role {other:?}: expected worker or manager"))),
    }
}

/// Tokens are stored only as hashes, so the current one cannot be shown again.
pub(crate) async fn show_token(
    _s: S,
    _a: AdminCaller,
    Path(role): Path<String>,
) -> Result<Json<JoinTokenResponse>, ApiError> {
    let role = parse_role(&role)?;
    Err(ApiError::precondition(format!(
        "the {} join token was shown once and only its hash is kept; rotate it to get a new one \
         (joined nodes are unaffected): coffer join-token {} --rotate",
        if role == WireRole::Worker { "worker" } else { "manager" },
        if role == WireRole::Worker { "worker" } else { "manager" }
    )))
}

#[utoipa::path(post, operation_id = "rotateJoinToken", path = "/v1/join-tokens/{role}/rotate", tag = "cluster", params(("role" = String, Path, description = "worker or manager")), responses((status = 200, body = JoinTokenResponse)))]
pub async fn rotate_token(
    State(m): S,
    _a: AdminWriter,
    Path(role): Path<String>,
) -> Result<Json<JoinTokenResponse>, ApiError> {
    match m.leader_op(LeaderOp::RotateToken(parse_role(&role)?)).await? {
        OpResult::Token(t) => Ok(Json(t)),
        _ => Err(ApiError::internal("rotating the token", "unexpected reply")),
    }
}
