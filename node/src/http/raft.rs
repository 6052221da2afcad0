//! Raft RPC and what followers forward to the leader: postcard bodies, manager
//! certificates only (AppendEntries, Vote, snapshots, proposals, read indexes, applied
//! indexes, forwarded heartbeats, leader operations).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_api::error::CodedError;
use coffer_raft_store::model::Command;
use coffer_raft_store::NodeId;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::auth::ManagerCaller;
use crate::http::error::ApiError;
use crate::manager::forward;
use crate::manager::group_commit::Committed;
use crate::manager::leader_ops::{self, LeaderOp, OpResult};
use crate::manager::raft_net::receive_snapshot;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

pub(crate) fn postcard_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    postcard::from_bytes(body).map_err(|e| ApiError::invalid(format!("malformed rpc body: {e}")))
}

pub(crate) fn postcard_reply<T: Serialize>(value: &T) -> Response {
    match postcard::to_allocvec(value) {
        Ok(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        Err(e) => ApiError::internal("encoding an rpc reply", e).into_response(),
    }
}

pub(crate) async fn append(State(m): S, _c: ManagerCaller, body: Bytes) -> Result<Response, ApiError> {
    let began = std::time::Instant::now();
    let req: AppendEntriesRequest<coffer_raft_store::TypeConfig> = postcard_body(&body)?;
    let heartbeat = req.entries.is_empty();
    let reply = m.raft.append_entries(req).await;
    if !heartbeat {
        m.metrics.stages.observe("follower_append", began.elapsed());
    }
    Ok(postcard_reply(&reply))
}

pub(crate) async fn vote(State(m): S, _c: ManagerCaller, body: Bytes) -> Result<Response, ApiError> {
    let req: VoteRequest<NodeId> = postcard_body(&body)?;
    Ok(postcard_reply(&m.raft.vote(req).await))
}

pub(crate) async fn snapshot(State(m): S, _c: ManagerCaller, body: Body) -> Result<Response, ApiError> {
    let (vote, snap) = receive_snapshot(&m.inbox, body.into_data_stream()).await.map_err(ApiError::invalid)?;
    let received = snap.snapshot.path().to_path_buf();
    let reply = m.raft.install_full_snapshot(vote, snap).await;
    // Installed (copied into the store's own snapshot dir) or refused as stale: either
    // way the received file has served its purpose.
    let _ = std::fs::remove_file(received);
    Ok(postcard_reply(&reply))
}

/// A write forwarded by a follower; the follower authenticated and authorized the caller.
pub(crate) async fn propose(State(m): S, _c: ManagerCaller, body: Bytes) -> Result<Response, ApiError> {
    let cmd: Command = postcard_body(&body)?;
    if !m.is_leader() {
        return Err(ApiError::unavailable("not the leader"));
    }
    // With this leader's own writes: forwarded ones join the same group commit.
    match m.group.commit(&m.raft, cmd).await {
        Committed::Applied(r) => Ok(postcard_reply(&coffer_raft_store::Response(r))),
        Committed::NotLeader(_) => Err(ApiError::unavailable("not the leader")),
        Committed::Failed(e) => Err(ApiError::unavailable(e)),
    }
}

/// Writes forwarded together by a follower (see `manager::forward`): each joins this
/// leader's group commit, and each is answered on its own, in order.
pub(crate) async fn propose_batch(State(m): S, _c: ManagerCaller, body: Bytes) -> Result<Response, ApiError> {
    let cmds: Vec<Command> = postcard_body(&body)?;
    if cmds.len() > forward::MAX_COMMANDS {
        return Err(ApiError::invalid(format!(
            "{} forwarded writes in one batch; at most {}",
            cmds.len(),
            forward::MAX_COMMANDS
        )));
    }
    if !m.is_leader() {
        return Err(ApiError::unavailable("not the leader"));
    }
    let outcomes = futures_util::future::join_all(cmds.into_iter().map(|cmd| m.group.commit(&m.raft, cmd))).await;
    let reply: forward::BatchReply = outcomes
        .into_iter()
        .map(|o| match o {
            Committed::Applied(r) => Ok(r),
            Committed::NotLeader(_) => Err("not the leader".to_string()),
            Committed::Failed(e) => Err(e),
        })
        .collect();
    Ok(postcard_reply(&reply))
}

/// The leader's read index, for a follower's linearizable read.
pub(crate) async fn read_index(State(m): S, _c: ManagerCaller) -> Response {
    // Concurrent followers' requests cost one quorum round.
    // Never forwarded from here, and batched apart from this manager's own reads (which
    // may wait on another manager): a caller that took this manager for the leader asks
    // again, and no two managers ever wait on each other.
    let r: Result<Option<u64>, String> =
        m.served_batch.read_index(|| m.own_read_index(false)).await.map_err(|e| e.message);
    postcard_reply(&r)
}

/// The index this manager has applied (the leader waits on it after a removal).
pub(crate) async fn applied(State(m): S, _c: ManagerCaller) -> Response {
    postcard_reply(&m.raft.metrics().borrow().last_applied.map(|l| l.index))
}

pub(crate) async fn op(State(m): S, _c: ManagerCaller, Json(op): Json<LeaderOp>) -> Result<Json<OpResult>, ApiError> {
    if !m.is_leader() {
        return Err(ApiError::unavailable("not the leader"));
    }
    Ok(Json(leader_ops::execute(&m, op).await?))
}
