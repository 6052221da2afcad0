//! Raft membership changes, made by the leader: a joined manager becomes a learner, catches
//! up (by snapshot if the log it needs was purged), then a voter; `promote`, `demote` and
//! `remove` change voters. The last voting manager can be neither demoted nor removed.
//!
//! openraft allows one membership change at a time (`InProgress` otherwise): changes made
//! here take the manager's membership lock and retry while another is in flight.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_raft_store::model::{Command, NodeRole};
use coffer_raft_store::{ManagerNode, NodeId, TypeConfig};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use crate::api_error::ApiError;
use crate::bootstrap::now_millis;
use crate::leader_ops::existing_node;
use crate::manager::Manager;

const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

type ChangeResult =
    Result<openraft::raft::ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>>;

/// Applies a membership change, retrying while another change is in flight.
async fn change<F, Fut>(m: &Manager, what: &str, f: F) -> Result<(), ApiError>
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
                return Err(ApiError::precondition(format!("{what}: {e}")))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return Err(ApiError::unavailable(format!("{what}: leadership changed; retry")))
            }
            Err(e) => return Err(ApiError::unavailable(format!("{what}: {e}"))),
        }
    }
}

fn voters(m: &Manager) -> BTreeSet<NodeId> {
    m.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
}

fn members(m: &Manager) -> BTreeSet<NodeId> {
    m.raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect()
}

/// Adds a joined manager: learner first (waiting until it has caught up), then voter.
/// Runs in the background after the join is answered, since the joiner starts serving
/// only once it has its certificate.
pub async fn add_manager(m: Arc<Manager>, id: NodeId, addr: String) {
    let node = ManagerNode { addr };
    let r = change(&m, "add learner", || m.raft.add_learner(id, node.clone(), true)).await;
    if let Err(e) = r {
        tracing::warn!(node_id = id, error = %e, "joined manager was not added as a learner; `coffer node promote` retries");
        return;
    }
    if let Err(e) = promote(&m, id).await {
        tracing::warn!(node_id = id, error = %e, "joined manager stays a learner; `coffer node promote` retries");
    }
}

pub async fn promote(m: &Arc<Manager>, id: NodeId) -> Result<(), ApiError> {
    let rec = existing_node(m, id)?;
    if rec.role != NodeRole::Manager {
        return Err(ApiError::precondition(format!(
            "node {id} is a worker; a worker becomes a manager by joining with the manager token"
        )));
    }
    if voters(m).contains(&id) {
        return Ok(());
    }
    if !members(m).contains(&id) {
        let node = ManagerNode { addr: rec.addr.clone() };
        change(m, "add learner", || m.raft.add_learner(id, node.clone(), true)).await?;
    }
    change(m, "promote", || m.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)).await?;
    tracing::info!(node_id = id, "manager promoted to voter");
    Ok(())
}

pub async fn demote(m: &Arc<Manager>, id: NodeId) -> Result<(), ApiError> {
    let rec = existing_node(m, id)?;
    if rec.role != NodeRole::Manager {
        return Err(ApiError::precondition(format!("node {id} is a worker; only managers vote")));
    }
    let v = voters(m);
    if !v.contains(&id) {
        return Ok(());
    }
    if v.len() == 1 {
        return Err(ApiError::precondition("the last voting manager cannot be demoted"));
    }
    change(m, "demote", || m.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)).await?;
    tracing::info!(node_id = id, "manager demoted to learner");
    Ok(())
}

pub async fn remove(m: &Arc<Manager>, id: NodeId) -> Result<(), ApiError> {
    let rec = existing_node(m, id)?;
    if rec.role == NodeRole::Manager {
        let v = voters(m);
        if v.contains(&id) && v.len() == 1 {
            return Err(ApiError::precondition("the last voting manager cannot be removed"));
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
    let index = m.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
    wait_applied_everywhere(m, index).await;
    tracing::info!(node_id = id, "node removed");
    Ok(())
}

/// Waits (boundedly) until every reachable manager has applied `index`, so that when an
/// operator's `node rm` returns, every manager already refuses the removed certificate.
/// A manager that cannot be reached is not waited for: it refuses the certificate as soon
/// as it has caught up, before it can be part of a quorum again.
async fn wait_applied_everywhere(m: &Manager, index: u64) {
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
            let applied =
                crate::raft_net::post_postcard::<_, Option<u64>>(&m.peers, &url, Some(id), &(), Duration::from_secs(1))
                    .await;
            match applied {
                Ok(Some(a)) if a >= index => break,
                Err(crate::raft_net::PeerError::Unreachable(_)) => break,
                _ if Instant::now() >= deadline => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
