//! The worker session on a manager: assignments (long poll), heartbeats, grants (leader
//! only) and redemption (any manager). Worker certificates only, each worker sees only its
//! own tasks; and `service ps` for operators.

use coffer_api::time::rfc3339;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use base64::Engine;
use coffer_api::error::ErrorBody;
use coffer_api::worker::{
    AssignedSecret, AssignedTask, Assignment, GrantList, GrantRequest, HeartbeatReply, RedeemRequest, Redeemed,
    RedeemedSecret, TaskInfo, TaskList, TaskRunState,
};
use coffer_raft_store::model::TaskState;
use coffer_raft_store::NodeId;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use coffer_api::error::CodedError;

use crate::http::auth::{ManagerCaller, NodeCaller, Operator};
use crate::http::extract::ApiJson;
use crate::manager::grants;
use crate::manager::raft_net::{post_postcard, PeerError};
use crate::manager::Manager;
use crate::manager::{forward_error, LEADER_LOSS_WAIT};
use crate::trust::pki::Role;

type S = State<Arc<Manager>>;

/// How long an assignments request waits for a change before answering anyway.
const LONG_POLL: Duration = Duration::from_secs(20);
/// How often a waiting long poll checks that this manager still knows a leader.
const LEADER_CHECK: Duration = Duration::from_secs(1);
/// How long a woken long poll lets further placement changes land before it answers.
const COALESCE: Duration = Duration::from_millis(10);

/// Whether this manager is in touch with a working leader: a follower that knows one, or
/// a leader that a quorum acknowledged recently. A leader cut off from the others must
/// not keep workers (their heartbeats, their long polls) while the real leader moves
/// their tasks away.
fn in_touch(m: &Manager) -> bool {
    let metrics = m.raft.metrics();
    let x = metrics.borrow();
    if x.current_leader.is_none() {
        return false;
    }
    if x.current_leader != Some(m.id) {
        return true;
    }
    x.millis_since_quorum_ack.is_some_and(|ms| ms <= QUORUM_FRESH_MS)
}

/// How old a leader's last quorum acknowledgement may be (a few heartbeats).
const QUORUM_FRESH_MS: u64 = 1000;

fn worker(caller: &NodeCaller) -> Result<NodeId, ApiError> {
    if caller.role != Role::Worker {
        return Err(ApiError::forbidden("this endpoint is for workers"));
    }
    Ok(caller.node_id)
}

/// The tasks assigned to `node`, as the worker needs them.
pub fn assignment_of(m: &Manager, node: NodeId) -> Result<Assignment, ApiError> {
    let mut tasks = Vec::new();
    for t in m.reader.tasks_of_node(node)? {
        if t.desired != TaskState::Running {
            continue;
        }
        let Some(svc) = m.reader.service(&t.service_id)? else { continue };
        let mut secrets = Vec::new();
        for (secret_id, version) in &grants::current_versions(m, &t)? {
            let Some(r) = svc.spec.secrets.iter().find(|r| &r.secret_id == secret_id) else { continue };
            let name = m.reader.secret(secret_id)?.map(|s| s.name).unwrap_or_default();
            secrets.push(AssignedSecret {
                secret_id: secret_id.clone(),
                secret_name: name,
                version: *version,
                target: r.target.clone(),
                uid: r.uid,
                gid: r.gid,
                mode: r.mode,
            });
        }
        let run = crate::http::run::of_service(m, &svc.id)?;
        tasks.push(AssignedTask {
            task_id: t.id,
            service_id: svc.id,
            service_name: svc.name,
            slot: t.slot,
            secrets,
            run,
        });
    }
    tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let digest = Sha256::digest(serde_json::to_vec(&tasks).map_err(|e| ApiError::internal("fingerprint", e))?);
    let fingerprint = data_encoding::HEXLOWER.encode(&digest[..12]);
    let managers =
        m.raft.metrics().borrow().membership_config.membership().nodes().map(|(_, n)| n.addr.clone()).collect();
    let heartbeat_ms = m.cluster()?.settings.worker_heartbeat_ms;
    Ok(Assignment { fingerprint, tasks, leader_addr: m.leader().map(|l| l.1), managers, heartbeat_ms })
}

#[derive(Debug, Deserialize)]
pub struct Since {
    since: Option<String>,
}

#[utoipa::path(get, operation_id = "getAssignments", path = "/v1/worker/assignments", tag = "worker",
    params(("since" = Option<String>, Query, description = "fingerprint of the assignment the worker has")),
    responses((status = 200, body = Assignment), (status = 403, body = ErrorBody)))]
pub async fn assignments(
    State(m): S,
    caller: NodeCaller,
    Query(q): Query<Since>,
) -> Result<Json<Assignment>, ApiError> {
    let node = worker(&caller)?;
    let deadline = Instant::now() + LONG_POLL;
    // A manager that restarted or joined a moment ago may know the leader and still lag
    // it: answer from a state at least as new as the leader's commit.
    m.linearizable().await?;
    // Wake only when placement changes (tasks, services, secret versions, nodes), not on
    // every applied entry: a burst of unrelated writes costs long polls nothing.
    let mut placement = m.reader.watch_placement();
    loop {
        // A manager that has lost the leader has a state that may be stale: send the
        // worker elsewhere rather than keep it on assignments the leader has moved.
        if !in_touch(&m) {
            return Err(ApiError::unavailable("this manager is not in touch with a leader; try another manager"));
        }
        placement.borrow_and_update();
        let a = assignment_of(&m, node)?;
        if q.since.as_deref() != Some(a.fingerprint.as_str()) {
            return Ok(Json(a));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Json(a));
            }
            match tokio::time::timeout(left.min(LEADER_CHECK), placement.changed()).await {
                Ok(Ok(())) => {
                    // Let a burst of placement changes (one scheduling pass) land first.
                    tokio::time::sleep(COALESCE).await;
                    break;
                }
                Ok(Err(_)) => return Err(ApiError::unavailable("this manager is shutting down")),
                Err(_) if !in_touch(&m) => {
                    return Err(ApiError::unavailable("this manager lost the leader; try another manager"))
                }
                Err(_) => {}
            }
        }
    }
}

#[utoipa::path(post, operation_id = "sendHeartbeat", path = "/v1/worker/heartbeat", tag = "worker", responses((status = 200, body = HeartbeatReply)))]
pub async fn heartbeat(State(m): S, caller: NodeCaller) -> Result<Json<HeartbeatReply>, ApiError> {
    let node = worker(&caller)?;
    record_heartbeat(&m, node).await?;
    Ok(Json(HeartbeatReply { leader_addr: m.leader().map(|l| l.1) }))
}

/// Liveness lives on the leader; a follower passes the heartbeat on. If it cannot, the
/// worker is told so and moves to another manager.
async fn record_heartbeat(m: &Manager, node: NodeId) -> Result<(), ApiError> {
    if m.is_leader() {
        if !in_touch(m) {
            return Err(ApiError::unavailable("this leader has lost its quorum; try another manager"));
        }
        m.liveness.seen(node);
        return Ok(());
    }
    let leader = m.leader().ok_or_else(|| ApiError::unavailable("this manager knows no leader"))?;
    // Within the worker's own timeout for the call (its heartbeat interval), so that an
    // election does not move every session to another manager. Read only when the leader
    // is gone: the cluster record is not read on every heartbeat.
    let wait = || {
        let every = m.cluster().map(|c| c.settings.worker_heartbeat_ms).unwrap_or(2000);
        HEARTBEAT_LOSS_WAIT.min(Duration::from_millis(every.saturating_mul(3) / 4))
    };
    match to_leader::<_, ()>(m, leader, "/raft/heartbeat", &node, wait, HEARTBEAT_CALL).await {
        Ok(Some(())) => Ok(()),
        // Elected here meanwhile.
        Ok(None) => {
            m.liveness.seen(node);
            Ok(())
        }
        Err(e) => Err(ApiError::unavailable(format!("cannot reach the leader: {}", e.message))),
    }
}

/// How long a forwarded heartbeat waits, at most, for a new leader when the old one cannot
/// be reached, and how long the call to the leader may take.
const HEARTBEAT_LOSS_WAIT: Duration = Duration::from_millis(1500);
const HEARTBEAT_CALL: Duration = Duration::from_secs(2);

/// Sends `body` to `path` on the leader over this manager's link; when the leader cannot be
/// reached (it died), once more to the leader an election names within `wait()`. Only for
/// requests that are safe to send twice. `Ok(None)`: this manager was elected meanwhile,
/// and the caller serves the request itself.
async fn to_leader<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    m: &Manager,
    leader: (NodeId, String),
    path: &str,
    body: &Req,
    wait: impl FnOnce() -> Duration,
    timeout: Duration,
) -> Result<Option<Resp>, crate::manager::error::OpError> {
    let send = |(id, addr): (NodeId, String)| async move {
        post_postcard::<_, Resp>(&m.peers, &format!("https://{addr}{path}"), Some(id), body, timeout).await
    };
    match send(leader.clone()).await {
        Err(PeerError::Unreachable(e)) => match m.replacement(leader.0, wait()).await {
            Some(next) if next.0 == m.id => Ok(None),
            Some(next) => send(next).await.map(Some).map_err(forward_error),
            None => Err(forward_error(PeerError::Unreachable(e))),
        },
        r => r.map(Some).map_err(forward_error),
    }
}

/// How long a call relayed to the leader may take.
const LEADER_CALL: Duration = Duration::from_secs(5);

/// A heartbeat forwarded by a follower.
pub async fn forwarded_heartbeat(
    State(m): S,
    _c: ManagerCaller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let node: NodeId = postcard::from_bytes(&body).map_err(|_| ApiError::invalid("malformed heartbeat"))?;
    if !m.is_leader() || !in_touch(&m) {
        return Err(ApiError::unavailable("not the leader"));
    }
    m.liveness.seen(node);
    Ok(axum::response::IntoResponse::into_response((
        [("content-type", "application/octet-stream")],
        postcard::to_allocvec(&()).unwrap_or_default(),
    )))
}

#[utoipa::path(post, operation_id = "issueGrants", path = "/v1/worker/grants", tag = "worker", request_body = GrantRequest,
    responses((status = 200, body = GrantList), (status = 403, body = ErrorBody),
        (status = 421, description = "not the leader", body = ErrorBody)))]
pub async fn grants(
    State(m): S,
    caller: NodeCaller,
    ApiJson(req): ApiJson<GrantRequest>,
) -> Result<Json<GrantList>, ApiError> {
    let node = worker(&caller)?;
    if req.task_ids.len() > MAX_GRANTS {
        return Err(ApiError::invalid("at most 1024 tasks per request"));
    }
    if m.is_leader() {
        return Ok(Json(GrantList { grants: grants::issue(&m, node, &req.task_ids).await? }));
    }
    // A follower asks the leader on the worker's behalf, over its link, as it passes on
    // heartbeats: the worker needs no connection of its own to the leader. Only the leader
    // issues grants, for tasks it has placed on this worker (the node the follower vouches
    // for from the worker's certificate, checked here).
    let leader =
        m.leader().ok_or_else(|| ApiError::unavailable("this manager knows no leader; try another manager"))?;
    let request = (node, req.task_ids);
    let grants = match to_leader(&m, leader, "/raft/grants", &request, || LEADER_LOSS_WAIT, LEADER_CALL).await? {
        Some(grants) => grants,
        None => grants::issue(&m, node, &request.1).await?,
    };
    Ok(Json(GrantList { grants }))
}

const MAX_GRANTS: usize = 1024;

/// Grants asked for by a follower on behalf of a worker whose session it holds.
pub async fn relayed_grants(State(m): S, _c: ManagerCaller, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let (node, task_ids): (NodeId, Vec<String>) =
        postcard::from_bytes(&body).map_err(|_| ApiError::invalid("malformed grant request"))?;
    if task_ids.len() > MAX_GRANTS {
        return Err(ApiError::invalid("at most 1024 tasks per request"));
    }
    let grants = grants::issue(&m, node, &task_ids).await?;
    let bytes = postcard::to_allocvec(&grants).map_err(|e| ApiError::internal("encoding grants", e))?;
    Ok(axum::response::IntoResponse::into_response(([("content-type", "application/octet-stream")], bytes)))
}

#[utoipa::path(post, operation_id = "redeemGrant", path = "/v1/worker/redeem", tag = "worker", request_body = RedeemRequest,
    responses((status = 200, body = Redeemed), (status = 403, description = "grant refused", body = ErrorBody)))]
pub async fn redeem(
    State(m): S,
    caller: NodeCaller,
    ApiJson(req): ApiJson<RedeemRequest>,
) -> Result<Json<Redeemed>, ApiError> {
    let node = worker(&caller)?;
    // Checked against a linearizable view: a grant whose term was superseded or whose task
    // moved is refused as soon as that change is committed, even here on a follower that
    // has not applied it yet, and a version rotated since the grant was issued is served
    // at its new version. A deposed leader cannot get a read index from a quorum, so it
    // cannot honour its own old grants either.
    m.linearizable().await?;
    let ok = match grants::verify(&m, node, &req.grant) {
        Ok(ok) => ok,
        Err(e) => {
            m.metrics.redemptions_refused.inc();
            grants::audit_refusal(&m, node, &req.grant, &e).await;
            return Err(e.into());
        }
    };
    let sealer = m.value_sealer()?;
    // Read everything first, audit, then answer: no value leaves without its record.
    let mut sealed = Vec::new();
    for (id, version) in &ok.versions {
        let v = m
            .reader
            .secret_value(id, *version)?
            .ok_or_else(|| ApiError::not_found(format!("secret {id} version {version} is gone")))?;
        sealed.push((id.clone(), *version, v));
    }
    grants::audit(&m, &ok).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secrets = Vec::new();
    for (id, version, v) in sealed {
        let plain = sealer.open(&id, &v)?;
        secrets.push(RedeemedSecret { secret_id: id, version, data: b64.encode(plain.as_slice()) });
    }
    m.metrics.redemptions_ok.inc();
    Ok(Json(Redeemed { task_id: ok.body.task_id, secrets }))
}

#[utoipa::path(get, operation_id = "listServiceTasks", path = "/v1/services/{service}/tasks", tag = "services",
    params(("service" = String, Path, description = "id or name")),
    responses((status = 200, body = TaskList), (status = 404, body = ErrorBody)))]
pub async fn service_tasks(State(m): S, _o: Operator, Path(key): Path<String>) -> Result<Json<TaskList>, ApiError> {
    m.linearizable().await?;
    let svc = crate::http::services::find_service(&m, &key)?;
    let mut tasks = Vec::new();
    for t in m.reader.tasks()?.into_iter().filter(|t| t.service_id == svc.id) {
        let host = match t.node_id {
            Some(n) => m.reader.node(n)?.map(|r| r.hostname),
            None => None,
        };
        let status = m.reader.task_status(&t.id)?.filter(|s| Some(s.node_id) == t.node_id);
        tasks.push(TaskInfo {
            status: status.as_ref().map_or(TaskRunState::Pending, |s| crate::http::task_status::to_api(&s.state)),
            status_at_ms: status.map(|s| s.at),
            task_id: t.id,
            slot: t.slot,
            node_id: t.node_id,
            node_hostname: host,
            secret_versions: t.secret_versions,
            updated_at_ms: t.updated_at,
            updated_at: rfc3339(t.updated_at),
        });
    }
    tasks.sort_by_key(|t| t.slot);
    Ok(Json(TaskList { tasks }))
}
