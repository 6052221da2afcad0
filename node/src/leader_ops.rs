//! Operations only the leader performs: admitting a joining node, renewing a certificate,
//! membership changes, token rotation. A follower forwards them to the leader over
//! `/raft/op` after it has authenticated the original caller ([`Manager::leader_op`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use coffer_api::cluster::{
    Availability, JoinRequest, JoinResponse, JoinTokenResponse, NodeRole as WireRole, RenewResponse,
};
use coffer_raft_store::model::{self, Command, NodeRecord, NodeStatus};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::api_error::ApiError;
use crate::bootstrap::{cluster_ca, now_millis};
use crate::join_token::JoinToken;
use crate::manager::Manager;
use crate::membership;
use crate::pki::{self, Role};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    Join(JoinRequest),
    Renew { node_id: u64, role: Role, csr_pem: String },
    Promote(u64),
    Demote(u64),
    Remove(u64),
    SetAvailability { node_id: u64, availability: Availability },
    RotateToken(WireRole),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OpResult {
    Joined(JoinResponse),
    Renewed(RenewResponse),
    Token(JoinTokenResponse),
    Done,
}

pub(crate) fn to_model_role(r: WireRole) -> model::NodeRole {
    match r {
        WireRole::Manager => model::NodeRole::Manager,
        WireRole::Worker => model::NodeRole::Worker,
    }
}

/// Runs `op` on this manager, which must be the leader.
pub async fn execute(m: &Arc<Manager>, op: LeaderOp) -> Result<OpResult, ApiError> {
    if !m.is_leader() {
        return Err(ApiError::unavailable("leadership changed; retry"));
    }
    // Decide on current state: everything committed before this op is applied here.
    m.linearizable().await?;
    match op {
        LeaderOp::Join(req) => join(m, req).await.map(OpResult::Joined),
        LeaderOp::Renew { node_id, role, csr_pem } => renew(m, node_id, role, &csr_pem).await.map(OpResult::Renewed),
        LeaderOp::Promote(id) => membership::promote(m, id).await.map(|()| OpResult::Done),
        LeaderOp::Demote(id) => membership::demote(m, id).await.map(|()| OpResult::Done),
        LeaderOp::Remove(id) => membership::remove(m, id).await.map(|()| OpResult::Done),
        LeaderOp::SetAvailability { node_id, availability } => {
            existing_node(m, node_id)?;
            let availability = match availability {
                Availability::Active => model::Availability::Active,
                Availability::Drain => model::Availability::Drain,
                Availability::Pause => model::Availability::Pause,
            };
            let cmd = Command::UpdateNode {
                id: node_id,
                status: None,
                availability: Some(availability),
                cert_serial: None,
                at: now_millis(),
            };
            m.propose(cmd).await.map(|_| OpResult::Done)
        }
        LeaderOp::RotateToken(role) => {
            let cluster = m.cluster()?;
            let digest = pki::cert_digest(&cluster.ca_cert_pem).map_err(|e| ApiError::internal("reading the CA", e))?;
            let token = JoinToken::generate(digest);
            m.propose(Command::SetJoinTokenHash { role: to_model_role(role), hash: token.hash() }).await?;
            tracing::info!(?role, "join token rotated");
            Ok(OpResult::Token(JoinTokenResponse { role, token: token.reveal().to_string() }))
        }
    }
}

pub(crate) fn existing_node(m: &Manager, id: u64) -> Result<NodeRecord, ApiError> {
    match m.reader.node(id)? {
        Some(n) if !n.removed => Ok(n),
        Some(_) => Err(ApiError::not_found(format!("node {id} was removed"))),
        None => Err(ApiError::not_found(format!("no node {id}"))),
    }
}

/// Checks a join token against `cluster`: the role's current hash, in constant time.
pub(crate) fn check_join_token(cluster: &model::ClusterRecord, req: &JoinRequest) -> Result<(), ApiError> {
    let token: JoinToken = req.token.parse().map_err(|e| ApiError::unauthenticated(format!("join token: {e}")))?;
    let digest = pki::cert_digest(&cluster.ca_cert_pem).map_err(|e| ApiError::internal("reading the CA", e))?;
    if token.ca_digest() != digest {
        return Err(ApiError::unauthenticated("the join token belongs to another cluster"));
    }
    let (wanted, other) = match req.role {
        WireRole::Manager => (&cluster.manager_token_hash, &cluster.worker_token_hash),
        WireRole::Worker => (&cluster.worker_token_hash, &cluster.manager_token_hash),
    };
    if !token.matches(wanted) {
        if token.matches(other) {
            return Err(ApiError::forbidden(format!(
                "this join token admits {}s; joining as a {} needs the {} token",
                if req.role == WireRole::Manager { "worker" } else { "manager" },
                role_word(req.role),
                role_word(req.role)
            )));
        }
        return Err(ApiError::unauthenticated("invalid join token (it may have been rotated)"));
    }
    Ok(())
}

async fn join(m: &Arc<Manager>, req: JoinRequest) -> Result<JoinResponse, ApiError> {
    let cluster = m.cluster()?;
    check_join_token(&cluster, &req)?;
    let addr: std::net::SocketAddr = req
        .advertise_addr
        .parse()
        .map_err(|_| ApiError::invalid(format!("advertise address {:?} is not ip:port", req.advertise_addr)))?;
    // Managers are dialled at their advertised address; workers only dial out.
    if req.role == WireRole::Manager && (addr.ip().is_unspecified() || addr.port() == 0) {
        return Err(ApiError::invalid(format!("advertise address {addr} cannot be dialled")));
    }
    if req.hostname.is_empty() || req.hostname.len() > 253 {
        return Err(ApiError::invalid("hostname must be 1 to 253 characters"));
    }
    let taken: BTreeSet<u64> = m.reader.nodes()?.into_iter().map(|n| n.id).collect();
    let node_id = loop {
        let id = rand::thread_rng().gen_range(1..u64::MAX);
        if !taken.contains(&id) {
            break id;
        }
    };
    let role = match req.role {
        WireRole::Manager => Role::Manager,
        WireRole::Worker => Role::Worker,
    };
    let ca = cluster_ca(&cluster)?;
    let validity = Duration::from_secs(cluster.settings.node_cert_validity_secs);
    let sans = if role == Role::Manager { vec![addr.ip().to_string()] } else { Vec::new() };
    let issued = ca
        .sign_csr(&req.csr_pem, node_id, role, &cluster.id, &sans, validity)
        .map_err(|e| ApiError::invalid(format!("certificate signing request: {e}")))?;
    let now = now_millis();
    let record = NodeRecord {
        id: node_id,
        role: to_model_role(req.role),
        hostname: req.hostname.clone(),
        addr: req.advertise_addr.clone(),
        availability: model::Availability::Active,
        status: NodeStatus::Ready,
        labels: Default::default(),
        cert_serial: issued.serial_hex.clone(),
        grant_public_key: None,
        removed: false,
        joined_at: now,
        updated_at: now,
    };
    m.propose(Command::PutNode(record)).await?;
    if req.role == WireRole::Manager {
        tokio::spawn(membership::add_manager(m.clone(), node_id, req.advertise_addr.clone()));
    }
    tracing::info!(node_id, role = role_word(req.role), addr = %req.advertise_addr, "node joined");
    Ok(JoinResponse {
        node_id,
        cluster_id: cluster.id.clone(),
        cert_pem: issued.cert_pem,
        ca_pem: cluster.ca_cert_pem.clone(),
    })
}

fn role_word(r: WireRole) -> &'static str {
    match r {
        WireRole::Manager => "manager",
        WireRole::Worker => "worker",
    }
}

async fn renew(m: &Arc<Manager>, node_id: u64, role: Role, csr_pem: &str) -> Result<RenewResponse, ApiError> {
    let rec = existing_node(m, node_id)?;
    let cluster = m.cluster()?;
    let ca = cluster_ca(&cluster)?;
    let host =
        rec.addr.parse::<std::net::SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_else(|_| rec.hostname.clone());
    let validity = Duration::from_secs(cluster.settings.node_cert_validity_secs);
    let sans = if role == Role::Manager { vec![host] } else { Vec::new() };
    let issued = ca
        .sign_csr(csr_pem, node_id, role, &cluster.id, &sans, validity)
        .map_err(|e| ApiError::invalid(format!("certificate signing request: {e}")))?;
    let cmd = Command::UpdateNode {
        id: rec.id,
        status: None,
        availability: None,
        cert_serial: Some(issued.serial_hex.clone()),
        at: now_millis(),
    };
    m.propose(cmd).await?;
    tracing::info!(node_id, serial = %issued.serial_hex, "certificate renewed");
    Ok(RenewResponse { cert_pem: issued.cert_pem })
}
