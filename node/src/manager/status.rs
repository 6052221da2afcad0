//! This manager's view of the cluster: members, leader, term, indexes and health
//! (`cluster status`, `/readyz`, `/metrics`).

use std::collections::{BTreeMap, BTreeSet};

use coffer_api::cluster::{ClusterStatus, MemberStatus};
use coffer_raft_store::NodeId;
use openraft::ServerState;

use crate::manager::error::OpError;
use crate::manager::Manager;

/// Committed-but-not-applied entries a healthy (ready) manager may have.
const HEALTHY_APPLY_LAG: u64 = 100;

impl Manager {
    /// This manager's view of the cluster.
    pub fn status(&self) -> Result<ClusterStatus, OpError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let generations = self.reader.unlock_generations()?;
        let cluster = self.reader.cluster()?;
        let autolock = cluster.as_ref().is_some_and(|c| c.autolock);
        let unlock_generation = match &cluster {
            Some(c) => crate::manager::autolock::current(c)?.map(|(g, _)| g).unwrap_or(0),
            None => 0,
        };
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.get(id).copied().flatten(),
                reachable: if m.state == ServerState::Leader && *id != self.id {
                    Some(matched.get(id).copied().flatten().is_some())
                } else {
                    None
                },
                locked: None,
                unlock_generation: generations.get(id).copied(),
            })
            .collect();
        let committed = self.reader.committed()?.map(|l| l.index);
        let applied = m.last_applied.map(|l| l.index);
        Ok(ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            node_id: self.id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: committed,
            applied_index: applied,
            members,
            autolock,
            unlock_generation,
            // Applying trails committing by a few entries under load; a manager is
            // unhealthy when it has no leader or has fallen behind, not for that.
            healthy: m.current_leader.is_some()
                && m.running_state.is_ok()
                && committed.unwrap_or(0).saturating_sub(applied.unwrap_or(0)) <= HEALTHY_APPLY_LAG,
        })
    }
}
