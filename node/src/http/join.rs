//! Joining and renewing: the CA certificate and the join (no certificate: the token is the
//! credential), and certificate renewal (nodes).

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::Json;
use coffer_api::cluster::{JoinRequest, JoinResponse, NodeRole, RenewRequest, RenewResponse};
use coffer_api::error::CodedError;

use crate::http::auth::NodeCaller;
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::server::PeerAddr;
use crate::manager::leader_ops::{self, LeaderOp, OpResult};
use crate::manager::Manager;

type S = State<Arc<Manager>>;

pub(crate) async fn ca(State(m): S) -> Result<String, ApiError> {
    std::fs::read_to_string(m.data_dir.ca_cert()).map_err(|e| ApiError::internal("reading the CA certificate", e))
}

pub(crate) async fn join(
    State(m): S,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    ApiJson(mut req): ApiJson<JoinRequest>,
) -> Result<Json<JoinResponse>, ApiError> {
    // A worker only dials out: the address it reports is nothing to dial, while the one
    // its join came from tells an operator where it runs.
    // (As ip:0, which leaders of every version read as an address.)
    if req.role == NodeRole::Worker {
        req.advertise_addr = std::net::SocketAddr::new(peer.ip().to_canonical(), 0).to_string();
    }
    // Refuse bad tokens here, before the leader spends a quorum read on them. (The
    // leader checks again, on current state: a token rotated a moment ago fails there.)
    leader_ops::check_join_token(&m.cluster()?, &req)?;
    match m.leader_op(LeaderOp::Join(req)).await? {
        OpResult::Joined(r) => Ok(Json(r)),
        _ => Err(ApiError::internal("joining", "unexpected reply")),
    }
}

pub(crate) async fn renew(
    State(m): S,
    caller: NodeCaller,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    // Renewal is due from half a certificate's life (nodes renew between 50% and 80% of
    // it): a certificate younger than 40% of its life is not renewed, so a node (or
    // whoever holds its key) cannot mint certificates at will.
    let (from, to) = caller.cert_validity;
    let from = crate::trust::pki::issued_at(from).min(to);
    let due = from + (to - from) * 2 / 5;
    let now = i64::try_from(coffer_api::time::now_millis() / 1000).unwrap_or(i64::MAX);
    if now < due {
        return Err(ApiError::precondition(format!(
            "this certificate is not due for renewal before {}",
            coffer_api::time::rfc3339(u64::try_from(due).unwrap_or(0).saturating_mul(1000))
        )));
    }
    let op = LeaderOp::Renew { node_id: caller.node_id, role: caller.role, csr_pem: req.csr_pem };
    match m.leader_op(op).await? {
        OpResult::Renewed(r) => Ok(Json(r)),
        _ => Err(ApiError::internal("renewing", "unexpected reply")),
    }
}
