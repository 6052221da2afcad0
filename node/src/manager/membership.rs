//! Raft membership changes, made by the leader: a joined manager becomes a learner, catches
//! up (by snapshot if the log it needs was purged), then a voter; `promote`, `demote` and
//! `remove` change voters. The last voting manager can be neither demoted nor removed.
//!
//! openraft allows one membership change at a time (`InProgress` otherwise): changes made
//! here take the manager's membership lock and retry while another is in flight.

use coffer_api::error::CodedError;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_raft_store::model::{Command, NodeRole};
use coffer_raft_store::{ManagerNode, NodeId, TypeConfig};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use crate::local::ids::NodeHex;
use crate::manager::error::OpError;
use crate::manager::raft_net::{post_postcard, PeerError};
use crate::manager::Manager;
use coffer_api::time::now_millis;

const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

type ChangeResult =
    Result<openraft::raft::ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>>;

/// Applies a membership change, retrying while another change is in flight.
async fn change<F, Fut>(m: &Manager, what: &str, f: F) -> Result<(), OpError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ChangeResult>,
{
    let deadline = Instant::now() + CHANGE_DEADLINE;
    let mut delay = Duration::from_millis(50);
    loop {
        let r = {
            let _guard = m.membership_lock.lock().await;
            f().await
        };
        match r {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                return Err(OpError::precondition(format!("{what}: {e}")))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return Err(OpError::unavailable(format!("{what}: leadership changed; retry")))
            }
            Err(e) => return Err(OpError::unavailable(format!("{what}: {e}"))),
        }
    }
}

fn voters(m: &Manager) -> BTreeSet<NodeId> {
    m.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
}

fn members(m: &Manager) -> BTreeSet<NodeId> {
    m.raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect()
}

/// How long a joined manager has to catch up before it stays a learner.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Waits (without holding the membership lock) until learner `id` has replicated the
/// leader's log, up to `within`. openraft's own `add_learner(.., blocking)` cannot be
/// trusted for this: it counts a learner that never answered as merely lagging, and
/// returns at once on a young log.
async fn caught_up(m: &Manager, id: NodeId, within: Duration) -> bool {
    m.raft
        .wait(Some(within))
        .metrics(
            |x| {
                let matched = x.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index);
                matches!((matched, x.last_log_index), (Some(m), Some(last)) if m >= last)
            },
            "learner caught up",
        )
        .await
        .is_ok()
}

/// Adds a joined manager: learner first, then voter once it has caught up (by snapshot if
/// needed). Runs in the background after the join is answered, since the joiner starts
/// serving only once it has its certificate. A joiner that never comes up stays a
/// learner, which costs the quorum nothing; `coffer node rm` clears it.
pub async fn add_manager(m: Arc<Manager>, id: NodeId, addr: String) {
    let node = ManagerNode { addr };
    let r = change(&m, "add learner", || m.raft.add_learner(id, node.clone(), false)).await;
    if let Err(e) = r {
        tracing::warn!(node_id = %NodeHex(id), error = %e, "joined manager was not added as a learner; `coffer node promote` retries");
        return;
    }
    if !caught_up(&m, id, CATCH_UP).await {
        tracing::warn!(
            node_id = %NodeHex(id),
            "joined manager did not catch up; it stays a learner (`coffer node promote` retries)"
        );
        return;
    }
    if let Err(e) = promote(&m, id).await {
        tracing::warn!(node_id = %NodeHex(id), error = %e, "joined manager stays a learner; `coffer node promote` retries");
    }
}

pub async fn promote(m: &Arc<Manager>, id: NodeId) -> Result<(), OpError> {
    let rec = m.existing_node(id)?;
    if rec.role != NodeRole::Manager {
        return Err(OpError::precondition(format!(
            "node {id} is a worker; a worker becomes a manager by joining with the manager token"
        )));
    }
    if voters(m).contains(&id) {
        return Ok(());
    }
    if !members(m).contains(&id) {
        let node = ManagerNode { addr: rec.addr.clone() };
        change(m, "add learner", || m.raft.add_learner(id, node.clone(), false)).await?;
    }
    // A voter that cannot answer would cost the quorum a member: promote only a learner
    // that has caught up.
    if !caught_up(m, id, Duration::from_secs(10)).await {
        return Err(OpError::precondition(format!(
            "manager {id} has not caught up with the leader; is it running and reachable at {}?",
            rec.addr
        )));
    }
    change(m, "promote", || m.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)).await?;
    tracing::info!(node_id = %NodeHex(id), "manager promoted to voter");
    Ok(())
}

pub async fn demote(m: &Arc<Manager>, id: NodeId) -> Result<(), OpError> {
    let rec = m.existing_node(id)?;
    if rec.role != NodeRole::Manager {
        return Err(OpError::precondition(format!("node {id} is a worker; only managers vote")));
    }
    let v = voters(m);
    if !v.contains(&id) {
        return Ok(());
    }
    if v.len() == 1 {
        return Err(OpError::precondition("the last voting manager cannot be demoted"));
    }
    change(m, "demote", || m.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)).await?;
    tracing::info!(node_id = %NodeHex(id), "manager demoted to learner");
    Ok(())
}

/// Removes a node. A manager that votes is removed only with `force` (Docker's rule: demote
/// it first, or force it for a manager that is dead and will not come back); the change
/// needs a quorum of the remaining voters, like any other.
pub async fn remove(m: &Arc<Manager>, id: NodeId, force: bool) -> Result<(), OpError> {
    let rec = m.existing_node(id)?;
    if rec.role == NodeRole::Manager {
        let v = voters(m);
        if v.contains(&id) && v.len() == 1 {
            return Err(OpError::precondition("the last voting manager cannot be removed"));
        }
        if id == m.id {
            return Err(OpError::precondition(format!(
                "manager {} leads the cluster: stop it (another manager takes over), then remove it from another",
                NodeHex(id)
            )));
        }
        if v.contains(&id) && !force {
            return Err(OpError::precondition(format!(
                "manager {} votes: demote it first (`coffer node demote`), or, if it is dead and will not come \
                 back, remove it with `coffer node rm --force`",
                NodeHex(id)
            )));
        }
        if v.contains(&id) {
            change(m, "remove voter", || {
                m.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            })
            .await?;
        }
        if members(m).contains(&id) {
            change(m, "remove learner", || {
                m.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            })
            .await?;
        }
    }
    // Record the removal: from now on every endpoint refuses the node's certificate.
    m.propose(Command::RemoveNode { id, at: now_millis() }).await?;
    wait_applied_everywhere(m).await;
    tracing::info!(node_id = %NodeHex(id), "node removed");
    Ok(())
}

/// Waits (boundedly) until every reachable manager has applied what this one has, so that
/// when a revocation (`node rm`, a revoked API token) returns, every manager already
/// refuses the credential. A manager that cannot be reached is not waited for: it refuses
/// the credential as soon as it has caught up, before it can be part of a quorum again.
pub async fn wait_applied_everywhere(m: &Manager) {
    // A follower that forwarded the write first catches up with it itself.
    let _ = m.linearizable().await;
    let index = m.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let peers: Vec<(NodeId, String)> = {
        let metrics = m.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != m.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    };
    for (id, addr) in peers {
        let url = format!("https://{addr}/raft/applied");
        loop {
            let applied = post_postcard::<_, Option<u64>>(&m.peers, &url, Some(id), &(), Duration::from_secs(1)).await;
            match applied {
                Ok(Some(a)) if a >= index => break,
                Err(PeerError::Unreachable(_)) => break,
                _ if Instant::now() >= deadline => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
