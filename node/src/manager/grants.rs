//! Grants: the leader's signed permission for one node to fetch the secrets of one task,
//! valid for one leader term and a short time.
//!
//! The leader makes an Ed25519 key for its term and commits the public half as the grant
//! authority of that term before it signs anything. Any manager redeems a grant after
//! checking, against its applied state: the signature, that the signer is the authority
//! of the grant's term and that no later term has one, the expiry, that the caller is the
//! grant's node and not removed, and that the task is still that node's. Only then does
//! it write an audit record and return the values of the versions the task record holds
//! *at that moment* (the scheduler's latest committed decision, for references the
//! service still has), which may be newer than the ones the grant names (a rotation
//! committed in between): a redemption is never older than the cluster's view when it is
//! redeemed, and rotations faster than a grant's round trip cannot starve delivery. The checks run on a
//! linearizable view (a read index from the leader): "applied state" that lags a
//! committed change of leader, placement or version would honour a grant the cluster has
//! already voided, or serve a version it has already replaced.
//!
//! Must never: sign with a key whose authority is not committed, let a grant outlive a
//! change of leader or of task placement, or return a version the task no longer
//! references.

use std::sync::Arc;

use base64::Engine;
use coffer_api::error::{CodedError, ErrorCode};
use coffer_api::worker::Grant;
use coffer_raft_store::model::{Command, GrantAuthority, TaskRecord, TaskState};
use coffer_raft_store::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::manager::error::OpError;
use crate::manager::Manager;
use coffer_api::time::now_millis;

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
pub(crate) fn current_versions(m: &Manager, task: &TaskRecord) -> Result<Vec<(String, u32)>, OpError> {
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
pub(crate) async fn key_for_term(m: &Manager) -> Result<Arc<GrantKey>, OpError> {
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
    let r = m
        .raft
        .client_write(Command::SetGrantAuthority(auth))
        .await
        .map_err(|e| OpError::new(ErrorCode::NotLeader, format!("not leading term {term}: {e}")))?;
    r.data.0?;
    // If leadership moved on while the authority committed, the new leader's authority
    // (a later term) makes ours useless; refuse rather than sign with it.
    if !m.is_leader() || m.raft.metrics().borrow().current_term != term {
        return Err(OpError::new(ErrorCode::NotLeader, "leadership changed; ask the new leader"));
    }
    tracing::info!(term, "grant authority committed");
    let k = Arc::new(GrantKey { term, key });
    *slot = Some(k.clone());
    Ok(k)
}

/// Issues grants for `task_ids`, which must be tasks assigned to `node_id`. Leader only.
pub(crate) async fn issue(m: &Manager, node_id: NodeId, task_ids: &[String]) -> Result<Vec<Grant>, OpError> {
    if !m.is_leader() {
        let leader = m.leader().map(|(_, a)| a).unwrap_or_else(|| "unknown".into());
        return Err(OpError::new(
            ErrorCode::NotLeader,
            format!("only the leader issues grants; the leader is at {leader}"),
        ));
    }
    let key = key_for_term(m).await?;
    let ttl_ms = m.cluster()?.settings.grant_ttl_secs.saturating_mul(1000);
    let mut out = Vec::new();
    for id in task_ids {
        let task = m.reader.task(id)?.ok_or_else(|| OpError::not_found(format!("no task {id}")))?;
        if task.node_id != Some(node_id) || task.desired != TaskState::Running {
            return Err(OpError::forbidden(format!("task {id} is not assigned to this node")));
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

pub fn sign(key: &SigningKey, body: &GrantBody) -> Result<Grant, OpError> {
    let bytes = postcard::to_allocvec(body).map_err(|e| OpError::internal("encoding a grant", e))?;
    let sig = key.sign(&bytes);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Grant { task_id: body.task_id.clone(), body: b64.encode(&bytes), signature: b64.encode(sig.to_bytes()) })
}

/// Why a grant is refused. The reason reaches the worker (it is no secret: the worker holds
/// the grant) and the metrics; never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed")]
    Malformed,
    #[error("no authority for its term")]
    NoAuthority,
    #[error("its issuer is not the authority of its term")]
    NotTheAuthority,
    #[error("a newer leader term has an authority")]
    Superseded,
    #[error("bad authority key")]
    BadAuthorityKey,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("issued to another node")]
    OtherNode,
    #[error("the node was removed from the cluster")]
    NodeRemoved,
    #[error("the task no longer exists")]
    TaskGone,
    #[error("the task has moved to another node")]
    TaskMoved,
}

impl From<Refusal> for OpError {
    fn from(r: Refusal) -> Self {
        OpError::forbidden(format!("grant refused: {r}"))
    }
}

/// A grant whose encoding has been read: its body, the signed bytes and the signature.
#[derive(Debug)]
pub(crate) struct Presented {
    pub body: GrantBody,
    bytes: Vec<u8>,
    signature: Signature,
}

/// Decodes a grant as a worker presented it. Checks nothing but its shape.
pub(crate) fn decode(grant: &Grant) -> Result<Presented, Refusal> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = b64.decode(&grant.body).map_err(|_| Refusal::Malformed)?;
    let sig = b64.decode(&grant.signature).map_err(|_| Refusal::Malformed)?;
    let signature = Signature::from_slice(&sig).map_err(|_| Refusal::Malformed)?;
    let body: GrantBody = postcard::from_bytes(&bytes).map_err(|_| Refusal::Malformed)?;
    if body.task_id != grant.task_id {
        return Err(Refusal::Malformed);
    }
    Ok(Presented { body, bytes, signature })
}

/// What the cluster's state says about a presented grant, read on a linearizable view.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// The committed authority of the grant's term.
    pub authority: Option<GrantAuthority>,
    /// The newest term that has an authority.
    pub newest_term: u64,
    /// Whether the caller is a node of the cluster that has not been removed.
    pub caller_present: bool,
    /// The grant's task as it is now.
    pub task: Option<TaskRecord>,
    /// The secret versions of that task that its service still references.
    pub current_versions: Vec<(String, u32)>,
}

impl Facts {
    pub(crate) fn read(m: &Manager, caller: NodeId, body: &GrantBody) -> Result<Self, OpError> {
        let task = m.reader.task(&body.task_id)?;
        let current_versions = match &task {
            Some(t) => current_versions(m, t)?,
            None => Vec::new(),
        };
        Ok(Facts {
            authority: m.reader.grant_authority(body.term)?,
            newest_term: m.reader.latest_grant_authority()?.map(|a| a.term).unwrap_or(0),
            caller_present: m.reader.node(caller)?.is_some_and(|n| !n.removed),
            task,
            current_versions,
        })
    }
}

/// Checks a decoded grant presented by node `caller` at `now_ms` against `facts`, and
/// returns the secret versions its redemption returns: those the task references now,
/// whatever versions the grant names. Pure: the whole decision, every refusal, is here.
pub(crate) fn check(
    grant: &Presented,
    facts: &Facts,
    caller: NodeId,
    now_ms: u64,
) -> Result<Vec<(String, u32)>, Refusal> {
    let body = &grant.body;
    let authority = facts.authority.as_ref().filter(|a| a.term == body.term).ok_or(Refusal::NoAuthority)?;
    if authority.node_id != body.issuer {
        return Err(Refusal::NotTheAuthority);
    }
    if facts.newest_term > body.term {
        return Err(Refusal::Superseded);
    }
    let pk: [u8; 32] = authority.public_key.as_slice().try_into().map_err(|_| Refusal::BadAuthorityKey)?;
    let vk = VerifyingKey::from_bytes(&pk).map_err(|_| Refusal::BadAuthorityKey)?;
    vk.verify(&grant.bytes, &grant.signature).map_err(|_| Refusal::BadSignature)?;
    if now_ms > body.expires_at_ms {
        return Err(Refusal::Expired);
    }
    if body.node_id != caller {
        return Err(Refusal::OtherNode);
    }
    // The caller's certificate was checked against this manager's state before the
    // linearizable read; check removal again on the current view.
    if !facts.caller_present {
        return Err(Refusal::NodeRemoved);
    }
    let task = facts.task.as_ref().ok_or(Refusal::TaskGone)?;
    if task.node_id != Some(caller) || task.desired != TaskState::Running {
        return Err(Refusal::TaskMoved);
    }
    Ok(facts.current_versions.clone())
}

/// A grant that passed every check, and what its redemption returns.
#[derive(Debug)]
pub(crate) struct Redeemable {
    pub body: GrantBody,
    /// The secret versions the task references now, on the linearizable view the checks
    /// ran on: never a version rotated away or a reference dropped since the grant was
    /// issued.
    pub versions: Vec<(String, u32)>,
}

/// Checks a grant presented by node `caller` on this manager's (linearizable) state.
pub(crate) fn verify(m: &Manager, caller: NodeId, grant: &Grant) -> Result<Redeemable, OpError> {
    let presented = decode(grant)?;
    let facts = Facts::read(m, caller, &presented.body)?;
    let versions = check(&presented, &facts, caller, now_millis())?;
    Ok(Redeemable { body: presented.body, versions })
}

/// One redemption, or one refused, as the audit log records it. Never a value.
#[derive(Debug, Serialize)]
struct AuditRecord<'a> {
    at_ms: u64,
    manager: NodeId,
    /// The node that presented the grant (for a refusal: the caller, whatever the grant says).
    node: NodeId,
    task: &'a str,
    term: Option<u64>,
    secrets: &'a [(String, u32)],
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn append(m: &Manager, rec: &AuditRecord<'_>) -> Result<(), OpError> {
    let mut line = serde_json::to_vec(rec).map_err(|e| OpError::internal("encoding an audit record", e))?;
    line.push(b'\n');
    m.audit.append(line).await.map_err(|e| OpError::internal("writing the audit log", e))
}

/// Appends an audit record of the versions a redemption returns and syncs it, before any
/// value is returned.
pub(crate) async fn audit(m: &Manager, r: &Redeemable) -> Result<(), OpError> {
    let body = &r.body;
    let rec = AuditRecord {
        at_ms: now_millis(),
        manager: m.id,
        node: body.node_id,
        task: &body.task_id,
        term: Some(body.term),
        secrets: &r.versions,
        outcome: "redeemed",
        reason: None,
    };
    append(m, &rec).await
}

/// Records a refused redemption: who asked, for which task, and why (a forged grant's
/// claims are not believed: only the caller and the task id it named are recorded).
pub(crate) async fn audit_refusal(m: &Manager, caller: NodeId, grant: &Grant, why: &OpError) {
    let rec = AuditRecord {
        at_ms: now_millis(),
        manager: m.id,
        node: caller,
        task: &grant.task_id.chars().take(128).collect::<String>(),
        term: None,
        secrets: &[],
        outcome: "refused",
        reason: Some(why.message.clone()),
    };
    if let Err(e) = append(m, &rec).await {
        tracing::warn!(error = %e.message, "a refused redemption could not be audited");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: NodeId = 7;
    const LEADER: NodeId = 1;
    const NOW: u64 = 1_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9u8; 32])
    }

    fn body() -> GrantBody {
        GrantBody {
            node_id: NODE,
            task_id: "task-1".into(),
            versions: vec![("s1".into(), 2)],
            term: 5,
            issuer: LEADER,
            expires_at_ms: NOW + 30_000,
        }
    }

    fn facts() -> Facts {
        Facts {
            authority: Some(GrantAuthority {
                term: 5,
                node_id: LEADER,
                public_key: key().verifying_key().to_bytes().to_vec(),
            }),
            newest_term: 5,
            caller_present: true,
            task: Some(TaskRecord {
                id: "task-1".into(),
                service_id: "svc".into(),
                slot: 0,
                node_id: Some(NODE),
                desired: TaskState::Running,
                secret_versions: vec![("s1".into(), 2)],
                spec_version: 1,
                updated_at: 0,
            }),
            current_versions: vec![("s1".into(), 2)],
        }
    }

    fn present(body: &GrantBody) -> Presented {
        decode(&sign(&key(), body).expect("sign")).expect("decode")
    }

    #[test]
    fn a_grant_as_issued_is_honoured() {
        assert_eq!(check(&present(&body()), &facts(), NODE, NOW), Ok(vec![("s1".into(), 2)]));
    }

    #[test]
    fn a_redemption_returns_the_versions_referenced_now_never_superseded_ones() {
        // Rotated after the grant was issued: the new version, not the granted one.
        let rotated = Facts { current_versions: vec![("s1".into(), 3)], ..facts() };
        assert_eq!(check(&present(&body()), &rotated, NODE, NOW), Ok(vec![("s1".into(), 3)]));
        // The reference was dropped: nothing of it.
        let dropped = Facts { current_versions: vec![], ..facts() };
        assert_eq!(check(&present(&body()), &dropped, NODE, NOW), Ok(vec![]));
        // The versions never buy a grant anything the other checks refuse.
        let moved = Facts { task: facts().task.map(|t| TaskRecord { node_id: Some(9), ..t }), ..rotated };
        assert_eq!(check(&present(&body()), &moved, NODE, NOW), Err(Refusal::TaskMoved));
    }

    #[test]
    fn every_way_a_grant_can_fail_is_refused_with_its_reason() {
        let good = present(&body());
        let cases: Vec<(&str, Facts, Presented, NodeId, u64, Refusal)> = vec![
            ("no authority", Facts { authority: None, ..facts() }, present(&body()), NODE, NOW, Refusal::NoAuthority),
            (
                "authority of another term",
                Facts { authority: facts().authority.map(|a| GrantAuthority { term: 4, ..a }), ..facts() },
                present(&body()),
                NODE,
                NOW,
                Refusal::NoAuthority,
            ),
            (
                "signed by a manager that is not the authority",
                facts(),
                present(&GrantBody { issuer: 2, ..body() }),
                NODE,
                NOW,
                Refusal::NotTheAuthority,
            ),
            ("a newer term", Facts { newest_term: 6, ..facts() }, present(&body()), NODE, NOW, Refusal::Superseded),
            (
                "a broken authority key",
                Facts {
                    authority: facts().authority.map(|a| GrantAuthority { public_key: vec![1, 2], ..a }),
                    ..facts()
                },
                present(&body()),
                NODE,
                NOW,
                Refusal::BadAuthorityKey,
            ),
            ("expired", facts(), present(&body()), NODE, NOW + 30_001, Refusal::Expired),
            ("presented by another node", facts(), present(&body()), 8, NOW, Refusal::OtherNode),
            (
                "a removed node",
                Facts { caller_present: false, ..facts() },
                present(&body()),
                NODE,
                NOW,
                Refusal::NodeRemoved,
            ),
            ("the task is gone", Facts { task: None, ..facts() }, present(&body()), NODE, NOW, Refusal::TaskGone),
            (
                "the task moved",
                Facts { task: facts().task.map(|t| TaskRecord { node_id: Some(9), ..t }), ..facts() },
                present(&body()),
                NODE,
                NOW,
                Refusal::TaskMoved,
            ),
            (
                "the task is shutting down",
                Facts { task: facts().task.map(|t| TaskRecord { desired: TaskState::Shutdown, ..t }), ..facts() },
                present(&body()),
                NODE,
                NOW,
                Refusal::TaskMoved,
            ),
        ];
        for (what, facts, presented, caller, now, want) in cases {
            assert_eq!(check(&presented, &facts, caller, now), Err(want), "{what}");
        }
        // A signature by another key fails, even with everything else right.
        let forged = decode(&sign(&SigningKey::from_bytes(&[3u8; 32]), &body()).expect("sign")).expect("decode");
        assert_eq!(check(&forged, &facts(), NODE, NOW), Err(Refusal::BadSignature));
        // A body altered after signing fails too.
        let mut tampered = good;
        tampered.body.versions = vec![("s1".into(), 9)];
        let tampered = Presented { bytes: postcard::to_allocvec(&tampered.body).expect("encode"), ..tampered };
        assert_eq!(
            check(&tampered, &Facts { current_versions: vec![("s1".into(), 9)], ..facts() }, NODE, NOW),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn malformed_grants_are_refused_before_any_lookup() {
        let g = sign(&key(), &body()).expect("sign");
        for bad in [
            Grant { body: "not base64!".into(), ..g.clone() },
            Grant { signature: "AAAA".into(), ..g.clone() },
            Grant { body: base64::engine::general_purpose::STANDARD.encode(b"junk"), ..g.clone() },
            Grant { task_id: "another-task".into(), ..g.clone() },
        ] {
            assert_eq!(decode(&bad).map(|_| ()), Err(Refusal::Malformed), "{bad:?}");
        }
    }
}
