//! The leader's scheduler: places each replica of each service on an active, ready worker
//! that meets the service's constraints, spreading replicas across workers; marks workers
//! that stop heartbeating down; moves the tasks of down, drained or removed workers; and
//! keeps each task's secret versions current (a rotation is a task change). Every decision
//! is a committed command; a new leader simply carries on from the committed state.
//!
//! Liveness (when each worker last sent a heartbeat) is kept in the leader's memory only:
//! a new leader gives every worker a full heartbeat window before it marks one down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_raft_store::model::{
    ApplyError, Availability, Command, NodeRecord, NodeRole, NodeStatus, ServiceRecord, TaskRecord, TaskState,
};
use coffer_raft_store::NodeId;

use crate::api_error::ApiError;
use crate::bootstrap::now_millis;
use crate::constraints::Constraint;
use crate::manager::{apply_error, Manager};
use crate::secrets_api::new_id;

/// Heartbeats seen by this manager while it leads.
#[derive(Debug, Default)]
pub struct Liveness {
    inner: Mutex<LivenessState>,
}

#[derive(Debug, Default)]
struct LivenessState {
    seen: HashMap<NodeId, Instant>,
    /// The term this manager leads and since when.
    leading: Option<(u64, Instant)>,
}

impl Liveness {
    pub fn seen(&self, node: NodeId) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).seen.insert(node, Instant::now());
    }

    /// Starts (or continues) leading `term`; a new term forgets what an older one saw.
    fn lead(&self, term: u64) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.leading.map(|(t, _)| t) != Some(term) {
            s.leading = Some((term, Instant::now()));
            s.seen.clear();
        }
    }

    fn leading_term(&self) -> Option<u64> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).leading.map(|(t, _)| t)
    }

    fn alive(&self, node: NodeId, window: Duration) -> bool {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let since = s.seen.get(&node).copied().or(s.leading.map(|(_, at)| at));
        since.is_some_and(|t| t.elapsed() <= window)
    }
}

/// Runs until shutdown; acts only while this manager leads. A pass runs when the applied
/// state has moved (a rotation is scheduled within one pass of its commit) and at least
/// every 250 ms (heartbeat deadlines), not on every metrics tick.
pub async fn run(m: Arc<Manager>) {
    let mut rx = m.raft.metrics();
    let mut seen = None;
    let mut last_pass = Instant::now();
    loop {
        tokio::select! {
            _ = m.shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
            changed = rx.changed() => if changed.is_err() { return },
        }
        if !m.is_leader() {
            continue;
        }
        let applied = rx.borrow().last_applied;
        if applied == seen && last_pass.elapsed() < TICK {
            continue;
        }
        // Under a burst of writes, passes are at least SPACING apart: one pass then covers
        // many changes, and the write path keeps the CPU.
        let since = last_pass.elapsed();
        if since < SPACING {
            tokio::select! {
                _ = m.shutdown.cancelled() => return,
                _ = tokio::time::sleep(SPACING - since) => {}
            }
        }
        seen = rx.borrow().last_applied;
        last_pass = Instant::now();
        if let Err(e) = reconcile(&m).await {
            tracing::debug!(error = %e.message, "scheduling pass stopped; the next one retries");
            tokio::select! {
                _ = m.shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

const TICK: Duration = Duration::from_millis(250);
const SPACING: Duration = Duration::from_millis(50);

/// Commits one scheduling decision on this manager, as leader. Never forwarded: a pass
/// decided on a deposed leader's view must not be carried out by the new leader.
async fn decide(m: &Manager, cmd: Command) -> Result<Result<(), ApplyError>, ApiError> {
    match m.raft.client_write(cmd).await {
        Ok(r) => Ok(r.data.0.map(|_| ())),
        Err(e) => Err(ApiError::unavailable(format!("no longer leading: {e}"))),
    }
}

fn eligible(n: &NodeRecord) -> bool {
    n.role == NodeRole::Worker && !n.removed && n.availability == Availability::Active && n.status == NodeStatus::Ready
}

/// Chooses a node for a replica of `svc`: eligible, meeting the constraints, with the
/// fewest replicas of this service, then the fewest tasks.
fn pick(
    nodes: &BTreeMap<NodeId, NodeRecord>,
    constraints: &[Constraint],
    per_service: &HashMap<NodeId, usize>,
    load: &HashMap<NodeId, usize>,
) -> Option<NodeId> {
    nodes
        .values()
        .filter(|n| eligible(n) && constraints.iter().all(|c| c.matches(n)))
        .min_by_key(|n| (per_service.get(&n.id).copied().unwrap_or(0), load.get(&n.id).copied().unwrap_or(0), n.id))
        .map(|n| n.id)
}

/// One pass: bring node statuses and tasks in line with the state and the heartbeats.
pub async fn reconcile(m: &Manager) -> Result<(), ApiError> {
    let term = m.raft.metrics().borrow().current_term;
    // Everything committed before this term, including the old leader's last decisions,
    // must be applied here before we decide anything on top of it: once per term (within
    // a term, this leader's own decisions are applied before `client_write` returns).
    if m.liveness.leading_term() != Some(term) {
        m.raft.ensure_linearizable().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    m.liveness.lead(term);
    // Commit this term's grant authority now: it voids the old leader's grants at once.
    crate::grants::key_for_term(m).await?;
    let Some(cluster) = m.reader.cluster()? else { return Ok(()) };
    let window = Duration::from_millis(
        cluster.settings.worker_heartbeat_ms.saturating_mul(u64::from(cluster.settings.worker_missed_heartbeats)),
    );
    let now = now_millis();

    let mut nodes: BTreeMap<NodeId, NodeRecord> = m.reader.nodes()?.into_iter().map(|n| (n.id, n)).collect();
    for n in nodes.values_mut() {
        if n.role != NodeRole::Worker || n.removed {
            continue;
        }
        let status = if m.liveness.alive(n.id, window) { NodeStatus::Ready } else { NodeStatus::Down };
        if n.status != status {
            let cmd =
                Command::UpdateNode { id: n.id, status: Some(status), availability: None, cert_serial: None, at: now };
            match decide(m, cmd).await? {
                Ok(()) => {
                    tracing::info!(node_id = n.id, ?status, "worker status changed");
                    n.status = status;
                }
                // Removed meanwhile: nothing to mark, and nothing to schedule on it.
                Err(_) => n.removed = true,
            }
        }
    }

    let services = m.reader.services()?;
    // The newest version of each secret a service references (not of every secret: a
    // pass must not cost more with 10 000 secrets than with 10).
    let mut latest: HashMap<String, u32> = HashMap::new();
    for r in services.iter().flat_map(|s| &s.spec.secrets) {
        if !latest.contains_key(&r.secret_id) {
            if let Some(v) = m.reader.secret(&r.secret_id)?.and_then(|x| x.latest_version()) {
                latest.insert(r.secret_id.clone(), v);
            }
        }
    }
    let tasks = m.reader.tasks()?;
    let mut load: HashMap<NodeId, usize> = HashMap::new();
    for t in &tasks {
        if let Some(n) = t.node_id.filter(|n| nodes.get(n).is_some_and(eligible)) {
            *load.entry(n).or_default() += 1;
        }
    }
    for svc in &services {
        schedule_service(m, svc, &tasks, &nodes, &latest, &mut load, now).await?;
    }
    Ok(())
}

async fn schedule_service(
    m: &Manager,
    svc: &ServiceRecord,
    tasks: &[TaskRecord],
    nodes: &BTreeMap<NodeId, NodeRecord>,
    latest: &HashMap<String, u32>,
    load: &mut HashMap<NodeId, usize>,
    now: u64,
) -> Result<(), ApiError> {
    let constraints: Vec<Constraint> = svc.spec.constraints.iter().filter_map(|c| Constraint::parse(c).ok()).collect();
    let versions: Vec<(String, u32)> = svc
        .spec
        .secrets
        .iter()
        .filter_map(|r| {
            r.pinned_version.or_else(|| latest.get(&r.secret_id).copied()).map(|v| (r.secret_id.clone(), v))
        })
        .collect();
    let mine: Vec<&TaskRecord> = tasks.iter().filter(|t| t.service_id == svc.id).collect();
    let mut per_service: HashMap<NodeId, usize> = HashMap::new();
    for t in &mine {
        if let Some(n) = t.node_id {
            *per_service.entry(n).or_default() += 1;
        }
    }
    for slot in 0..svc.spec.replicas {
        let existing = mine.iter().find(|t| t.slot == slot);
        let keep = existing
            .and_then(|t| t.node_id)
            .filter(|n| nodes.get(n).is_some_and(|r| eligible(r) && constraints.iter().all(|c| c.matches(r))));
        let node = match keep {
            Some(n) => Some(n),
            None => {
                if let Some(old) = existing.and_then(|t| t.node_id) {
                    if let Some(c) = per_service.get_mut(&old) {
                        *c = c.saturating_sub(1);
                    }
                }
                let chosen = pick(nodes, &constraints, &per_service, load);
                if let Some(n) = chosen {
                    *per_service.entry(n).or_default() += 1;
                    *load.entry(n).or_default() += 1;
                }
                chosen
            }
        };
        let task = match existing {
            Some(t) if t.node_id == node && t.secret_versions == versions && t.spec_version == svc.spec_version => {
                continue
            }
            Some(t) => TaskRecord {
                node_id: node,
                secret_versions: versions.clone(),
                spec_version: svc.spec_version,
                updated_at: now,
                ..(*t).clone()
            },
            None => TaskRecord {
                id: new_id(),
                service_id: svc.id.clone(),
                slot,
                node_id: node,
                desired: TaskState::Running,
                secret_versions: versions.clone(),
                spec_version: svc.spec_version,
                updated_at: now,
            },
        };
        if existing.and_then(|t| t.node_id) != node {
            tracing::info!(service = %svc.name, slot, node = ?node, "task placed");
        }
        decide(m, Command::PutTask(task)).await?.map_err(apply_error)?;
    }
    // Slots beyond the replicas, and any second task of a slot, go.
    let mut kept = std::collections::HashSet::new();
    for t in &mine {
        let first_of_slot = kept.insert(t.slot) && mine.iter().find(|x| x.slot == t.slot).map(|x| &x.id) == Some(&t.id);
        if t.slot >= svc.spec.replicas || !first_of_slot {
            decide(m, Command::RemoveTask { id: t.id.clone() }).await?.map_err(apply_error)?;
        }
    }
    Ok(())
}
