//! Grants: the leader's signed permission for one node to fetch the secret versions of
//! one task, valid for one leader term and a short time.
//!
//! The leader makes an Ed25519 key for its term and commits the public half as the grant
//! authority of that term before it signs anything. Any manager redeems a grant after
//! checking, against its applied state: the signature, that the signer is the authority
//! of the grant's term and that no later term has one, the expiry, that the caller is the
//! grant's node and not removed, and that the task is still that node's with those
//! versions. Only then does it write an audit record and return the values. The checks
//! run on a linearizable view (a read index from the leader): "applied state" that lags
//! a committed change of leader, placement or version would honour a grant the cluster
//! has already voided.
//!
//! Must never: sign with a key whose authority is not committed, or let a grant outlive
//! a change of leader, of task placement or of secret versions.

use std::sync::Arc;

use base64::Engine;
use coffer_api::worker::Grant;
use coffer_raft_store::model::{Command, GrantAuthority, TaskRecord};
use coffer_raft_store::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::api_error::ApiError;
use crate::bootstrap::now_millis;
use crate::manager::{apply_error, Manager};

/// What a grant says. Signed as its postcard encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBody {
    pub node_id: NodeId,
    pub task_id: String,
    pub versions: Vec<(String, u32)>,
    pub term: u64,
    pub issuer: NodeId,
    pub expires_at_ms: u64,
}

/// The leader's signing key for its current term.
pub struct GrantKey {
    term: u64,
    key: SigningKey,
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantKey").field("term", &self.term).field("key", &"[redacted]").finish()
    }
}

/// The secret versions of `task` that its service still references. A reference just
/// removed from the service is gone from here at once, before the scheduler updates the
/// task: no grant covers, and no redemption returns, a secret the service dropped.
pub fn current_versions(m: &Manager, task: &TaskRecord) -> Result<Vec<(String, u32)>, ApiError> {
    let Some(svc) = m.reader.service(&task.service_id)? else { return Ok(Vec::new()) };
    Ok(task
        .secret_versions
        .iter()
        .filter(|(id, _)| svc.spec.secrets.iter().any(|r| &r.secret_id == id))
        .cloned()
        .collect())
}

/// The grant key of this manager's current term, committing its authority first. The
/// scheduler calls it as soon as this manager leads, so that a new term's authority voids
/// the old leader's grants without waiting for a worker to ask for one.
pub async fn key_for_term(m: &Manager) -> Result<Arc<GrantKey>, ApiError> {
    let term = m.raft.metrics().borrow().current_term;
    let mut slot = m.grant_key.lock().await;
    if let Some(k) = slot.as_ref().filter(|k| k.term == term) {
        return Ok(k.clone());
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let key = SigningKey::from_bytes(&seed);
    let auth = GrantAuthority { term, node_id: m.id, public_key: key.verifying_key().to_bytes().to_vec() };
    // Committed here, never forwarded: only the leader of `term` may name its authority.
    let r =
        m.raft.client_write(Command::SetGrantAuthority(auth)).await.map_err(|e| {
            ApiError::new(coffer_api::error::ErrorCode::NotLeader, format!("not leading term {term}: {e}"))
        })?;
    r.data.0.map_err(apply_error)?;
    // If leadership moved on while the authority committed, the new leader's authority
    // (a later term) makes ours useless; refuse rather than sign with it.
    if !m.is_leader() || m.raft.metrics().borrow().current_term != term {
        return Err(ApiError::new(coffer_api::error::ErrorCode::NotLeader, "leadership changed; ask the new leader"));
    }
    tracing::info!(term, "grant authority committed");
    let k = Arc::new(GrantKey { term, key });
    *slot = Some(k.clone());
    Ok(k)
}

/// Issues grants for `task_ids`, which must be tasks assigned to `node_id`. Leader only.
pub async fn issue(m: &Manager, node_id: NodeId, task_ids: &[String]) -> Result<Vec<Grant>, ApiError> {
    if !m.is_leader() {
        let leader = m.leader().map(|(_, a)| a).unwrap_or_else(|| "unknown".into());
        return Err(ApiError::new(
            coffer_api::error::ErrorCode::NotLeader,
            format!("only the leader issues grants; the leader is at {leader}"),
        ));
    }
    let key = key_for_term(m).await?;
    let ttl_ms = m.cluster()?.settings.grant_ttl_secs.saturating_mul(1000);
    let mut out = Vec::new();
    for id in task_ids {
        let task = m.reader.task(id)?.ok_or_else(|| ApiError::not_found(format!("no task {id}")))?;
        if task.node_id != Some(node_id) || task.desired != coffer_raft_store::model::TaskState::Running {
            return Err(ApiError::forbidden(format!("task {id} is not assigned to this node")));
        }
        let body = GrantBody {
            node_id,
            task_id: id.clone(),
            versions: current_versions(m, &task)?,
            term: key.term,
            issuer: m.id,
            expires_at_ms: now_millis().saturating_add(ttl_ms),
        };
        out.push(sign(&key.key, &body)?);
    }
    m.metrics.grants_issued.inc_by(out.len() as u64);
    Ok(out)
}

pub fn sign(key: &SigningKey, body: &GrantBody) -> Result<Grant, ApiError> {
    let bytes = postcard::to_allocvec(body).map_err(|e| ApiError::internal("encoding a grant", e))?;
    let sig = key.sign(&bytes);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Grant { task_id: body.task_id.clone(), body: b64.encode(&bytes), signature: b64.encode(sig.to_bytes()) })
}

fn refused(why: &str) -> ApiError {
    ApiError::forbidden(format!("grant refused: {why}"))
}

/// Checks a grant presented by node `caller`; returns its body and the task.
pub fn verify(m: &Manager, caller: NodeId, grant: &Grant) -> Result<(GrantBody, TaskRecord), ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = b64.decode(&grant.body).map_err(|_| refused("malformed"))?;
    let sig = b64.decode(&grant.signature).map_err(|_| refused("malformed"))?;
    let sig = Signature::from_slice(&sig).map_err(|_| refused("malformed signature"))?;
    let body: GrantBody = postcard::from_bytes(&bytes).map_err(|_| refused("malformed"))?;
    let authority = m.reader.grant_authority(body.term)?.ok_or_else(|| refused("no authority for its term"))?;
    if authority.node_id != body.issuer {
        return Err(refused("its issuer is not the authority of its term"));
    }
    let latest = m.reader.latest_grant_authority()?.map(|a| a.term).unwrap_or(0);
    if latest > body.term {
        return Err(refused("a newer leader term has an authority"));
    }
    let pk: [u8; 32] = authority.public_key.as_slice().try_into().map_err(|_| refused("bad authority key"))?;
    let vk = VerifyingKey::from_bytes(&pk).map_err(|_| refused("bad authority key"))?;
    vk.verify(&bytes, &sig).map_err(|_| refused("bad signature"))?;
    if now_millis() > body.expires_at_ms {
        return Err(refused("expired"));
    }
    if body.node_id != caller {
        return Err(refused("issued to another node"));
    }
    // The caller's certificate was checked against this manager's state before the
    // linearizable read; check removal again on the current view.
    if m.reader.node(caller)?.is_none_or(|n| n.removed) {
        return Err(ApiError::forbidden(format!("node {caller} was removed from the cluster")));
    }
    if body.task_id != grant.task_id {
        return Err(refused("malformed"));
    }
    let task = m.reader.task(&body.task_id)?.ok_or_else(|| refused("the task no longer exists"))?;
    if task.node_id != Some(caller) || task.desired != coffer_raft_store::model::TaskState::Running {
        return Err(refused("the task has moved to another node"));
    }
    if current_versions(m, &task)? != body.versions {
        return Err(refused("the task's secret versions changed"));
    }
    Ok((body, task))
}

/// One redemption, as the audit log records it. Never a value.
#[derive(Debug, Serialize)]
struct AuditRecord<'a> {
    at_ms: u64,
    manager: NodeId,
    node: NodeId,
    task: &'a str,
    term: u64,
    secrets: &'a [(String, u32)],
}

/// Appends an audit record and syncs it, before any value is returned.
pub async fn audit(m: &Manager, body: &GrantBody) -> Result<(), ApiError> {
    let rec = AuditRecord {
        at_ms: now_millis(),
        manager: m.id,
        node: body.node_id,
        task: &body.task_id,
        term: body.term,
        secrets: &body.versions,
    };
    let mut line = serde_json::to_vec(&rec).map_err(|e| ApiError::internal("encoding an audit record", e))?;
    line.push(b'\n');
    m.audit.append(line).await.map_err(|e| ApiError::internal("writing the audit log", e))
}
