//! The HTTP surface of a manager: Raft RPC and forwarding (managers only), join and CA
//! (no certificate: the token is the credential), renewal (nodes), the admin API (admin
//! certificates), and health. Every handler names the caller role it needs in its
//! signature ([`crate::auth`]).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use coffer_api::cluster::{
    ClusterStatus, JoinRequest, JoinResponse, JoinTokenResponse, NodeInfo, NodeList, NodeRole as WireRole, NodeUpdate,
    RaftRole, RenewRequest, RenewResponse,
};
use coffer_raft_store::model::{self, Command, NodeRecord};
use coffer_raft_store::NodeId;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api_error::ApiError;
use crate::auth::{AdminCaller, ManagerCaller, NodeCaller};
use crate::leader_ops::{LeaderOp, OpResult};
use crate::manager::Manager;

use crate::raft_net::receive_snapshot;
use crate::{secrets_api, services_api, tokens_api, worker_api};
use coffer_api::error::ErrorBody;

type S = State<Arc<Manager>>;

pub fn router(m: Arc<Manager>) -> Router {
    let limit = m.config.max_body_bytes;
    let raft = Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/propose", post(propose))
        .route("/raft/read-index", post(read_index))
        .route("/raft/applied", post(applied))
        .route("/raft/heartbeat", post(worker_api::forwarded_heartbeat))
        .route("/raft/op", post(op))
        // Raft batches can exceed the API's body limit.
        .layer(DefaultBodyLimit::max(64 << 20))
        .route("/raft/snapshot", post(snapshot));
    let api = Router::new()
        .route("/v1/ca", get(ca))
        .route("/v1/join", post(join))
        .route("/v1/renew", post(renew))
        .route("/v1/cluster/status", get(status))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(inspect_node).patch(update_node).delete(remove_node))
        .route("/v1/nodes/{id}/promote", post(promote))
        .route("/v1/nodes/{id}/demote", post(demote))
        .route("/v1/join-tokens/{role}", get(show_token))
        .route("/v1/join-tokens/{role}/rotate", post(rotate_token))
        .route("/v1/secrets", post(secrets_api::create).get(secrets_api::list))
        .route("/v1/secrets/{secret}", get(secrets_api::inspect).delete(secrets_api::remove))
        .route("/v1/secrets/{secret}/rotate", post(secrets_api::rotate))
        .route("/v1/secrets/{secret}/labels", put(secrets_api::set_labels))
        .route("/v1/services", post(services_api::create).get(services_api::list))
        .route(
            "/v1/services/{service}",
            get(services_api::inspect).patch(services_api::update).delete(services_api::remove),
        )
        .route("/v1/services/{service}/tasks", get(worker_api::service_tasks))
        .route("/v1/worker/assignments", get(worker_api::assignments))
        .route("/v1/worker/heartbeat", post(worker_api::heartbeat))
        .route("/v1/worker/grants", post(worker_api::grants))
        .route("/v1/worker/redeem", post(worker_api::redeem))
        .route("/v1/tokens", post(tokens_api::create).get(tokens_api::list))
        .route("/v1/tokens/{id}", delete(tokens_api::revoke))
        .route(
            "/v1/openapi.json",
            get(|| async { ([("content-type", "application/json")], crate::openapi::document()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit));
    raft.merge(api).fallback(|| async { ApiError::not_found("no such endpoint") }).with_state(m)
}

// ---------------------------------------------------------------------------------------
// Raft RPC: postcard bodies, manager certificates only.

fn postcard_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    postcard::from_bytes(body).map_err(|e| ApiError::invalid(format!("malformed rpc body: {e}")))
}

fn postcard_reply<T: Serialize>(value: &T) -> Response {
    match postcard::to_allocvec(value) {
        Ok(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        Err(e) => ApiError::internal("encoding an rpc reply", e).into_response(),
    }
}

async fn append(State(m): S, _c: ManagerCaller, body: Bytes) -> Result<Response, ApiError> {
    let req: AppendEntriesRequest<coffer_raft_store::TypeConfig> = postcard_body(&body)?;
    Ok(postcard_reply(&m.raft.append_entries(req).await))
}

async fn vote(State(m): S, _c: ManagerCaller, body: Bytes) -> Result<Response, ApiError> {
    let req: VoteRequest<NodeId> = postcard_body(&body)?;
    Ok(postcard_reply(&m.raft.vote(req).await))
}

async fn snapshot(State(m): S, _c: ManagerCaller, body: Body) -> Result<Response, ApiError> {
    let (vote, snap) = receive_snapshot(&m.inbox, body).await.map_err(ApiError::invalid)?;
    let received = snap.snapshot.path().to_path_buf();
    let reply = m.raft.install_full_snapshot(vote, snap).await;
    // Installed (copied into the store's own snapshot dir) or refused as stale: either
    // way the received file has served its purpose.
    let _ = std::fs::remove_file(received);
    Ok(postcard_reply(&reply))
}

/// A write forwarded by a follower; the follower authenticated and authorized the caller.
async fn propose(State(m): S, _c: ManagerCaller, body: Bytes) -> Result<Response, ApiError> {
    let cmd: Command = postcard_body(&body)?;
    if !m.is_leader() {
        return Err(ApiError::unavailable("not the leader"));
    }
    match m.raft.client_write(cmd).await {
        Ok(r) => Ok(postcard_reply(&r.data)),
        Err(e) => Err(ApiError::unavailable(format!("write not committed: {e}"))),
    }
}

/// The leader's read index, for a follower's linearizable read.
async fn read_index(State(m): S, _c: ManagerCaller) -> Response {
    // Shared with this leader's own reads: concurrent followers' requests cost one quorum round.
    let me = (m.id, m.advertise.clone());
    let r: Result<Option<u64>, String> =
        m.read_batch.read_index(|| m.fetch_read_index(me)).await.map_err(|e| e.message);
    postcard_reply(&r)
}

/// The index this manager has applied (the leader waits on it after a removal).
async fn applied(State(m): S, _c: ManagerCaller) -> Response {
    postcard_reply(&m.raft.metrics().borrow().last_applied.map(|l| l.index))
}

async fn op(State(m): S, _c: ManagerCaller, Json(op): Json<LeaderOp>) -> Result<Json<OpResult>, ApiError> {
    if !m.is_leader() {
        return Err(ApiError::unavailable("not the leader"));
    }
    crate::leader_ops::execute(&m, op).await.map(Json)
}

// ---------------------------------------------------------------------------------------
// Join, CA, renewal.

async fn ca(State(m): S) -> Result<String, ApiError> {
    std::fs::read_to_string(m.data_dir.ca_cert()).map_err(|e| ApiError::internal("reading the CA certificate", e))
}

async fn join(State(m): S, Json(req): Json<JoinRequest>) -> Result<Json<JoinResponse>, ApiError> {
    // Refuse bad tokens here, before the leader spends a quorum read on them. (The
    // leader checks again, on current state: a token rotated a moment ago fails there.)
    crate::leader_ops::check_join_token(&m.cluster()?, &req)?;
    match m.leader_op(LeaderOp::Join(req)).await? {
        OpResult::Joined(r) => Ok(Json(r)),
        _ => Err(ApiError::internal("joining", "unexpected reply")),
    }
}

async fn renew(
    State(m): S,
    caller: NodeCaller,
    Json(req): Json<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let op = LeaderOp::Renew { node_id: caller.node_id, role: caller.role, csr_pem: req.csr_pem };
    match m.leader_op(op).await? {
        OpResult::Renewed(r) => Ok(Json(r)),
        _ => Err(ApiError::internal("renewing", "unexpected reply")),
    }
}

// ---------------------------------------------------------------------------------------
// Admin API.

#[utoipa::path(get, path = "/v1/cluster/status", tag = "cluster", responses((status = 200, body = ClusterStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn status(State(m): S, _a: AdminCaller) -> Result<Json<ClusterStatus>, ApiError> {
    m.status().map(Json)
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
    }
}

#[utoipa::path(get, path = "/v1/nodes", tag = "cluster", responses((status = 200, body = NodeList)))]
pub async fn list_nodes(State(m): S, _a: AdminCaller) -> Result<Json<NodeList>, ApiError> {
    m.linearizable().await?;
    let nodes = m.reader.nodes()?.into_iter().filter(|n| !n.removed).map(|n| node_info(&m, n)).collect();
    Ok(Json(NodeList { nodes }))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::invalid(format!("node id {id:?} is not a number")))
}

#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "cluster", params(("id" = u64, Path)), responses((status = 200, body = NodeInfo), (status = 404, body = ErrorBody)))]
pub async fn inspect_node(State(m): S, _a: AdminCaller, Path(id): Path<String>) -> Result<Json<NodeInfo>, ApiError> {
    let id = parse_id(&id)?;
    m.linearizable().await?;
    let rec = m.reader.node(id)?.ok_or_else(|| ApiError::not_found(format!("no node {id}")))?;
    Ok(Json(node_info(&m, rec)))
}

async fn simple_op(m: &Arc<Manager>, op: LeaderOp) -> Result<StatusCode, ApiError> {
    m.leader_op(op).await.map(|_| StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/v1/nodes/{id}", tag = "cluster", params(("id" = u64, Path)), request_body = NodeUpdate, responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn update_node(
    State(m): S,
    _a: AdminCaller,
    Path(id): Path<String>,
    Json(u): Json<NodeUpdate>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let availability = u.availability.ok_or_else(|| ApiError::invalid("nothing to update: give availability"))?;
    simple_op(&m, LeaderOp::SetAvailability { node_id: id, availability }).await
}

#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "cluster", params(("id" = u64, Path)), responses((status = 204), (status = 409, description = "the last voting manager", body = ErrorBody)))]
pub async fn remove_node(State(m): S, _a: AdminCaller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    simple_op(&m, LeaderOp::Remove(parse_id(&id)?)).await
}

#[utoipa::path(post, path = "/v1/nodes/{id}/promote", tag = "cluster", params(("id" = u64, Path)), responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn promote(State(m): S, _a: AdminCaller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    simple_op(&m, LeaderOp::Promote(parse_id(&id)?)).await
}

#[utoipa::path(post, path = "/v1/nodes/{id}/demote", tag = "cluster", params(("id" = u64, Path)), responses((status = 204), (status = 409, description = "the last voting manager", body = ErrorBody)))]
pub async fn demote(State(m): S, _a: AdminCaller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
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
async fn show_token(_s: S, _a: AdminCaller, Path(role): Path<String>) -> Result<Json<JoinTokenResponse>, ApiError> {
    let role = parse_role(&role)?;
    Err(ApiError::precondition(format!(
        "the {} join token was shown once and only its hash is kept; rotate it to get a new one \
         (joined nodes are unaffected): coffer join-token {} --rotate",
        if role == WireRole::Worker { "worker" } else { "manager" },
        if role == WireRole::Worker { "worker" } else { "manager" }
    )))
}

#[utoipa::path(post, path = "/v1/join-tokens/{role}/rotate", tag = "cluster", params(("role" = String, Path, description = "worker or manager")), responses((status = 200, body = JoinTokenResponse)))]
pub async fn rotate_token(
    State(m): S,
    _a: AdminCaller,
    Path(role): Path<String>,
) -> Result<Json<JoinTokenResponse>, ApiError> {
    match m.leader_op(LeaderOp::RotateToken(parse_role(&role)?)).await? {
        OpResult::Token(t) => Ok(Json(t)),
        _ => Err(ApiError::internal("rotating the token", "unexpected reply")),
    }
}

/// Prometheus scrapes with an admin certificate or an API token (read-only will do).
async fn metrics(State(m): S, _o: crate::auth::Operator) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&m)?;
    Ok(([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

async fn readyz(State(m): S) -> Result<&'static str, ApiError> {
    let s = m.status()?;
    if s.healthy {
        Ok("ready")
    } else {
        Err(ApiError::unavailable("no leader known, or committed entries not yet applied"))
    }
}
