//! Autolock on an unlocked manager: turning it on or off and rotating the unlock key
//! (admin certificates only, on the leader), and `POST /v1/unlock`, which has nothing to do
//! here. A locked manager's own surface is `locked.rs`.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use coffer_api::cluster::{AutolockUpdate, UnlockKeyIssued, UnlockRequest};
use coffer_api::error::{CodedError, ErrorBody};

use crate::http::auth::AdminWriter;
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::manager::leader_ops::{LeaderOp, OpResult};
use crate::manager::Manager;

type S = State<Arc<Manager>>;

fn issued(r: OpResult) -> Result<Json<UnlockKeyIssued>, ApiError> {
    match r {
        OpResult::UnlockKey(k) => Ok(Json(k)),
        _ => Err(ApiError::internal("changing autolock", "unexpected reply")),
    }
}

#[utoipa::path(patch, operation_id = "updateAutolock", path = "/v1/cluster/autolock", tag = "cluster",
    description = "Turns autolock on (the answer holds the new unlock key, shown once) or off, for every manager.",
    request_body = AutolockUpdate, responses((status = 200, body = UnlockKeyIssued), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(m): S,
    _a: AdminWriter,
    ApiJson(u): ApiJson<AutolockUpdate>,
) -> Result<Json<UnlockKeyIssued>, ApiError> {
    issued(m.leader_op(LeaderOp::Autolock { enabled: u.enabled }).await?)
}

#[utoipa::path(post, operation_id = "rotateUnlockKey", path = "/v1/cluster/unlock-key/rotate", tag = "cluster",
    description = "A new unlock key (shown once). Each manager re-wraps its store under it; one that is down or \
        locked still opens with the previous key until it has applied the rotation.",
    responses((status = 200, body = UnlockKeyIssued), (status = 409, body = ErrorBody)))]
pub async fn rotate(State(m): S, _a: AdminWriter) -> Result<Json<UnlockKeyIssued>, ApiError> {
    issued(m.leader_op(LeaderOp::RotateUnlockKey).await?)
}

#[utoipa::path(post, operation_id = "unlock", path = "/v1/unlock", tag = "cluster",
    description = "Unlocks a manager that restarted locked (autolock); admin certificate only. Wrong keys are \
        refused with `unlock_failed` and paced.",
    request_body = UnlockRequest, responses((status = 204), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn unlock(_s: S, _a: AdminWriter, ApiJson(_u): ApiJson<UnlockRequest>) -> Result<(), ApiError> {
    Err(ApiError::precondition("this manager is not locked"))
}
