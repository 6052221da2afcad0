//! Operations only the leader performs: admitting a joining node, renewing a certificate,
//! membership changes, token rotation. A follower forwards them to the leader over
//! `/raft/op` after it has authenticated the original caller (`Manager::leader_op`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use coffer_api::cluster::{
    JoinRequest, JoinResponse, JoinTokenResponse, NodeRole as WireRole, RenewResponse, UnlockKeyIssued,
};
use coffer_raft_store::model::{self, Command, NodeRecord, NodeStatus};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::local::ids::NodeHex;
use crate::manager::error::OpError;
use coffer_api::error::CodedError;
use coffer_api::time::now_millis;

use crate::manager::values::cluster_ca;
use crate::manager::Manager;
use crate::manager::{autolock, membership};
use crate::trust::join_token::JoinToken;
use crate::trust::pki::{self, Role};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    Join(JoinRequest),
    Renew {
        node_id: u64,
        role: Role,
        csr_pem: String,
    },
    Promote(u64),
    Demote(u64),
    Remove(u64),
    RotateToken(WireRole),
    /// `node rm --force`: also a manager that still votes (dead, never coming back).
    RemoveForced(u64),
    /// `cluster update --autolock=BOOL`.
    Autolock {
        enabled: bool,
    },
    /// `cluster unlock-key --rotate`.
    RotateUnlockKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OpResult {
    Joined(JoinResponse),
    Renewed(RenewResponse),
    Token(JoinTokenResponse),
    Done,
    UnlockKey(UnlockKeyIssued),
}

pub(crate) fn to_model_role(r: WireRole) -> model::NodeRole {
    match r {
        WireRole::Manager => model::NodeRole::Manager,
        WireRole::Worker => model::NodeRole::Worker,
    }
}

/// Runs `op` on this manager, which must be the leader.
pub async fn execute(m: &Arc<Manager>, op: LeaderOp) -> Result<OpResult, OpError> {
    if !m.is_leader() {
        return Err(OpError::unavailable("leadership changed; retry"));
    }
    // Decide on current state: everything committed before this op is applied here.
    m.linearizable().await?;
    match op {
        LeaderOp::Join(req) => join(m, req).await.map(OpResult::Joined),
        LeaderOp::Renew { node_id, role, csr_pem } => renew(m, node_id, role, &csr_pem).await.map(OpResult::Renewed),
        LeaderOp::Promote(id) => membership::promote(m, id).await.map(|()| OpResult::Done),
        LeaderOp::Demote(id) => membership::demote(m, id).await.map(|()| OpResult::Done),
        LeaderOp::Remove(id) => membership::remove(m, id, false).await.map(|()| OpResult::Done),
        LeaderOp::RemoveForced(id) => membership::remove(m, id, true).await.map(|()| OpResult::Done),
        LeaderOp::Autolock { enabled } => autolock::change(m, enabled, false).await.map(OpResult::UnlockKey),
        LeaderOp::RotateUnlockKey => autolock::change(m, true, true).await.map(OpResult::UnlockKey),
        LeaderOp::RotateToken(role) => {
            let cluster = m.cluster()?;
            let digest = pki::cert_digest(&cluster.ca_cert_pem).map_err(|e| OpError::internal("reading the CA", e))?;
            let token = JoinToken::generate(digest);
            m.propose(Command::SetJoinTokenHash { role: to_model_role(role), hash: token.hash() }).await?;
            tracing::info!(?role, "join token rotated");
            Ok(OpResult::Token(JoinTokenResponse { role, token: token.reveal().to_string() }))
        }
    }
}

/// Checks a join token against `cluster`: the role's current hash, in constant time.
pub(crate) fn check_join_token(cluster: &model::ClusterRecord, req: &JoinRequest) -> Result<(), OpError> {
    let token: JoinToken = req.token.parse().map_err(|e| OpError::unauthenticated(format!("join token: {e}")))?;
    let digest = pki::cert_digest(&cluster.ca_cert_pem).map_err(|e| OpError::internal("reading the CA", e))?;
    if token.ca_digest() != digest {
        return Err(OpError::unauthenticated("the join token belongs to another cluster"));
    }
    let (wanted, other) = match req.role {
        WireRole::Manager => (&cluster.manager_token_hash, &cluster.worker_token_hash),
        WireRole::Worker => (&cluster.worker_token_hash, &cluster.manager_token_hash),
    };
    if !token.matches(wanted) {
        if token.matches(other) {
            return Err(OpError::forbidden(format!(
                "this join token admits {}s; joining as a {} needs the {} token",
                if req.role == WireRole::Manager { "worker" } else { "manager" },
                role_word(req.role),
                role_word(req.role)
            )));
        }
        return Err(OpError::unauthenticated("invalid join token (it may have been rotated)"));
    }
    Ok(())
}

async fn join(m: &Arc<Manager>, req: JoinRequest) -> Result<JoinResponse, OpError> {
    let cluster = m.cluster()?;
    check_join_token(&cluster, &req)?;
    // Managers are dialled at their advertised address, which goes into their certificate.
    // Workers only dial out: theirs is the address their join came from, for operators.
    let sans = match req.role {
        WireRole::Manager => {
            let addr: std::net::SocketAddr = req
                .advertise_addr
                .parse()
                .map_err(|_| OpError::invalid(format!("advertise address {:?} is not ip:port", req.advertise_addr)))?;
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(OpError::invalid(format!("advertise address {addr} cannot be dialled")));
            }
            vec![addr.ip().to_string()]
        }
        WireRole::Worker => Vec::new(),
    };
    // A worker's address is for operators only: the IP its join came from (an older
    // follower forwards what the worker sent, `0.0.0.0:0`).
    let addr = match req.role {
        WireRole::Manager => req.advertise_addr.clone(),
        WireRole::Worker => worker_ip(&req.advertise_addr).ok_or_else(|| {
            OpError::invalid(format!("a worker's address {:?} is not an IP address", req.advertise_addr))
        })?,
    };
    coffer_api::rules::hostname(&req.hostname)?;
    // Hostnames are what the node says it is: unique among the nodes of the cluster (down
    // ones too), so that a joiner cannot pass for one (placement that matters uses
    // operator-set labels). Joins are serialised here, so two cannot take one name.
    let _one_join_at_a_time = m.join_lock.lock().await;
    m.linearizable().await?;
    if let Some(live) = m.reader.nodes()?.into_iter().find(|n| !n.removed && same_host(&n.hostname, &req.hostname)) {
        return Err(OpError::with_code(
            coffer_api::error::ErrorCode::AlreadyExists,
            format!(
                "hostname {:?} is taken by node {}: join with another (--hostname), or remove that node first",
                req.hostname,
                NodeHex(live.id)
            ),
        ));
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
    let issued = ca
        .sign_csr(&req.csr_pem, node_id, role, &cluster.id, &sans, validity)
        .map_err(|e| OpError::invalid(format!("certificate signing request: {e}")))?;
    let now = now_millis();
    let record = NodeRecord {
        id: node_id,
        role: to_model_role(req.role),
        hostname: req.hostname.clone(),
        addr,
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
        let (add, shutdown) =
            (membership::add_manager(m.clone(), node_id, req.advertise_addr.clone()), m.shutdown.clone());
        m.tasks.spawn(async move {
            tokio::select! {
                () = add => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
    tracing::info!(node_id = %NodeHex(node_id), role = role_word(req.role), addr = %req.advertise_addr, "node joined");
    Ok(JoinResponse {
        node_id,
        cluster_id: cluster.id.clone(),
        cert_pem: issued.cert_pem,
        ca_pem: cluster.ca_cert_pem.clone(),
    })
}

/// Whether two hostnames name the same host (DNS names are case-insensitive, and a final
/// dot changes nothing).
fn same_host(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The IP of `text` (an IP, or an ip:port), in its canonical form (an IPv4 peer of an IPv6
/// listener is an IPv4 address).
fn worker_ip(text: &str) -> Option<String> {
    let ip =
        text.parse::<std::net::IpAddr>().ok().or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical().to_string())
}

/// The longest a replaced certificate stays accepted after a renewal.
const RETIRE_AFTER: Duration = Duration::from_secs(600);

fn role_word(r: WireRole) -> &'static str {
    match r {
        WireRole::Manager => "manager",
        WireRole::Worker => "worker",
    }
}

async fn renew(m: &Arc<Manager>, node_id: u64, role: Role, csr_pem: &str) -> Result<RenewResponse, OpError> {
    let rec = m.existing_node(node_id)?;
    let cluster = m.cluster()?;
    let spacing = Duration::from_secs(cluster.settings.node_cert_validity_secs / 4);
    m.renewals.check(node_id, spacing)?;
    let ca = cluster_ca(&cluster)?;
    let host =
        rec.addr.parse::<std::net::SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_else(|_| rec.hostname.clone());
    let validity = Duration::from_secs(cluster.settings.node_cert_validity_secs);
    let sans = if role == Role::Manager { vec![host] } else { Vec::new() };
    let issued = ca
        .sign_csr(csr_pem, node_id, role, &cluster.id, &sans, validity)
        .map_err(|e| OpError::invalid(format!("certificate signing request: {e}")))?;
    // The certificate it replaces is accepted a little longer, while the node's pooled
    // connections move to the new one: ten minutes, or a quarter of a certificate's life.
    let now = now_millis();
    let grace = Duration::from_secs(cluster.settings.node_cert_validity_secs / 4).min(RETIRE_AFTER);
    let previous_until = now.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
    m.propose(Command::RenewNodeCert { id: rec.id, serial: issued.serial_hex.clone(), previous_until, at: now })
        .await?;
    m.renewals.record(node_id);
    tracing::info!(node_id = %NodeHex(node_id), serial = %issued.serial_hex, "certificate renewed");
    Ok(RenewResponse { cert_pem: issued.cert_pem })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_api::error::ErrorCode;
    use coffer_raft_store::model::{ClusterSettings, SealedBytes, SecretBytes};

    fn cluster(ca_pem: &str, worker: &JoinToken, manager: &JoinToken) -> model::ClusterRecord {
        model::ClusterRecord {
            id: "c1".into(),
            created_at: 0,
            ca_cert_pem: ca_pem.into(),
            ca_key: SealedBytes(Vec::new()),
            value_key: SecretBytes(Vec::new()),
            worker_token_hash: worker.hash(),
            manager_token_hash: manager.hash(),
            settings: ClusterSettings::default(),
            autolock: false,
            wrapped_unlock: None,
        }
    }

    fn request(token: &str, role: WireRole) -> JoinRequest {
        JoinRequest {
            token: token.into(),
            role,
            csr_pem: String::new(),
            advertise_addr: "127.0.0.1:7370".into(),
            hostname: "h".into(),
        }
    }

    #[test]
    fn join_tokens_admit_their_role_only_and_nothing_else() {
        let ca = pki::ClusterCa::generate("c1").expect("ca");
        let digest = pki::cert_digest(ca.cert_pem()).expect("digest");
        let (worker, manager) = (JoinToken::generate(digest), JoinToken::generate(digest));
        let c = cluster(ca.cert_pem(), &worker, &manager);
        let code = |token: &str, role| check_join_token(&c, &request(token, role)).map_err(|e| e.code);

        assert_eq!(code(&worker.reveal(), WireRole::Worker), Ok(()));
        assert_eq!(code(&manager.reveal(), WireRole::Manager), Ok(()));
        // The other role's token is refused, and the message says which token is needed.
        let e = check_join_token(&c, &request(&worker.reveal(), WireRole::Manager)).expect_err("worker token");
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message.contains("manager token"), "{}", e.message);
        assert_eq!(code(&manager.reveal(), WireRole::Worker), Err(ErrorCode::PermissionDenied));
        // A rotated (unknown) secret, another cluster's CA, and garbage: unauthenticated.
        assert_eq!(code(&JoinToken::generate(digest).reveal(), WireRole::Worker), Err(ErrorCode::Unauthenticated));
        let other = pki::ClusterCa::generate("c2").expect("other ca");
        let foreign = JoinToken::generate(pki::cert_digest(other.cert_pem()).expect("digest"));
        let e = check_join_token(&c, &request(&foreign.reveal(), WireRole::Worker)).expect_err("foreign");
        assert!(e.message.contains("another cluster"), "{}", e.message);
        for junk in ["", "COFFER-1-", "not a token", &format!("{}x", worker.reveal().as_str())] {
            assert_eq!(code(junk, WireRole::Worker), Err(ErrorCode::Unauthenticated), "{junk:?}");
        }
        // No refusal echoes the token it was given.
        let e = check_join_token(&c, &request(&worker.reveal(), WireRole::Manager)).expect_err("refused");
        assert!(!e.message.contains(worker.reveal().as_str()));
    }
}
