//! The leader's scheduler: a loop that runs a pass when the applied state moves (and at
//! least every 250 ms, for heartbeat deadlines), each pass a pure [`plan::plan`] of the
//! committed state whose commands this leader then commits. Every decision is a committed
//! command; a new leader simply carries on from the committed state.
//!
//! Must never: forward a decision to another leader (a pass decided on a deposed leader's
//! view must not be carried out by the new one), or decide before everything committed by
//! earlier terms is applied here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::time::now_millis;
use coffer_raft_store::model::{Applied, ApplyError, Command};
use coffer_raft_store::{NodeId, StoreError};
use tracing::Instrument;

use crate::local::ids::NodeHex;
use crate::manager::error::OpError;
use crate::manager::group_commit::{commit_all, Committed};
use crate::manager::Manager;

mod liveness;
pub(crate) mod plan;

pub(crate) use liveness::Liveness;

/// Why a pass stopped; the next pass starts over from the committed state.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("no longer leading: {0}")]
    NotLeading(String),
    #[error("the state machine refused a decision: {0}")]
    Refused(#[from] ApplyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Op(#[from] OpError),
}

/// Runs until shutdown; acts only while this manager leads. A pass runs when the applied
/// state has moved (a rotation is scheduled within one pass of its commit) and at least
/// every 250 ms (heartbeat deadlines), not on every metrics tick.
pub(crate) async fn run(m: Arc<Manager>) {
    let mut rx = m.raft.metrics();
    let mut seen = None;
    let mut last_pass = Instant::now();
    // What the last pass that went through decided on.
    let mut settled: Option<Inputs> = None;
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
        let term = m.raft.metrics().borrow().current_term;
        // A plan is a pure function of the committed state and of which workers are
        // alive: when neither moved since a pass that went through, this one would decide
        // nothing. (At rest with 1 000 workers, a pass read 1 000 nodes and 2 000 tasks
        // four times a second to find that out.)
        let inputs = match m.reader.cluster() {
            Ok(Some(c)) => Some(Inputs { term, applied: seen, alive: m.liveness.alive_now(window_of(&c)) }),
            _ => None,
        };
        if inputs.is_some() && inputs == settled {
            continue;
        }
        settled = None;
        let pass = tracing::debug_span!("scheduling_pass", node_id = %NodeHex(m.id), term);
        // A pass waits on commits, which never come without a quorum: shutdown must not
        // wait for it.
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = m.shutdown.cancelled() => return,
            r = reconcile(&m).instrument(pass) => r,
        };
        m.metrics.scheduler_pass.observe(started.elapsed().as_secs_f64());
        if outcome.is_ok() {
            settled = inputs;
        }
        if let Err(e) = outcome {
            match &e {
                ScheduleError::Store(_) => tracing::error!(error = %e, "scheduling pass stopped; the next one retries"),
                _ => tracing::debug!(error = %e, "scheduling pass stopped; the next one retries"),
            }
            tokio::select! {
                _ = m.shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// What a pass decides on: the term, the applied state, and who is alive.
#[derive(Debug, PartialEq, Eq)]
struct Inputs {
    term: u64,
    applied: Option<openraft::LogId<NodeId>>,
    alive: liveness::Alive,
}

/// How long a worker may go without a heartbeat before it is marked down.
fn window_of(cluster: &coffer_raft_store::model::ClusterRecord) -> Duration {
    Duration::from_millis(
        cluster.settings.worker_heartbeat_ms.saturating_mul(u64::from(cluster.settings.worker_missed_heartbeats)),
    )
}

const TICK: Duration = Duration::from_millis(250);
const SPACING: Duration = Duration::from_millis(50);

/// Decisions per log entry: a pass that places a thousand tasks commits a few entries, not
/// a thousand one after the other.
const DECISIONS_PER_ENTRY: usize = 256;

/// Commits decisions on this manager, as leader, in order, as one entry; each has its own
/// outcome. Never forwarded.
async fn decide(m: &Manager, cmds: &[Command]) -> Result<Vec<Result<Applied, ApplyError>>, ScheduleError> {
    commit_all(&m.raft, cmds.to_vec())
        .await
        .into_iter()
        .map(|c| match c {
            Committed::Applied(r) => Ok(r),
            Committed::NotLeader(f) => Err(ScheduleError::NotLeading(f.to_string())),
            Committed::Failed(e) => Err(ScheduleError::NotLeading(e)),
        })
        .collect()
}

/// One pass: read the state, plan, commit the plan in order.
pub(crate) async fn reconcile(m: &Manager) -> Result<(), ScheduleError> {
    let term = m.raft.metrics().borrow().current_term;
    // Everything committed before this term, including the old leader's last decisions,
    // must be applied here before we decide anything on top of it: once per term (within
    // a term, this leader's own decisions are applied before `client_write` returns).
    if m.liveness.leading_term() != Some(term) {
        m.raft.ensure_linearizable().await.map_err(|e| ScheduleError::NotLeading(e.to_string()))?;
    }
    m.liveness.lead(term);
    // Commit this term's grant authority now: it voids the old leader's grants at once.
    crate::manager::grants::key_for_term(m).await?;
    let Some(cluster) = m.reader.cluster()? else { return Ok(()) };
    let window = window_of(&cluster);
    let planning = Instant::now();
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
    let state = plan::PlanState { nodes: m.reader.nodes()?, services, tasks: m.reader.tasks()?, latest };
    let alive = |node| m.liveness.alive(node, window);
    let commands = plan::plan(&state, &alive, now_millis(), &mut crate::local::ids::new_id);
    m.metrics.scheduler_plan.observe(planning.elapsed().as_secs_f64());
    let placed_before: HashMap<&str, Option<NodeId>> = state.tasks.iter().map(|t| (t.id.as_str(), t.node_id)).collect();
    let mut refused = None;
    for chunk in commands.chunks(DECISIONS_PER_ENTRY) {
        for cmd in chunk {
            match cmd {
                Command::PutTask(t) if placed_before.get(t.id.as_str()) != Some(&t.node_id) => {
                    tracing::info!(task = %t.id, service = %t.service_id, slot = t.slot, node = ?t.node_id.map(NodeHex), "task placed")
                }
                Command::PutTask(t) => tracing::debug!(task = %t.id, slot = t.slot, "task updated"),
                Command::RemoveTask { id } => tracing::info!(task = %id, "task removed"),
                _ => {}
            }
        }
        // Each decision is checked by the state machine on its own: one refused (a service
        // removed meanwhile) changes nothing and holds back none of the others, and the
        // next pass plans again from what was committed.
        for (cmd, outcome) in chunk.iter().zip(decide(m, chunk).await?) {
            match (cmd, outcome) {
                (Command::UpdateNode { id, status, .. }, Ok(_)) => {
                    tracing::info!(node_id = %NodeHex(*id), ?status, "worker status changed")
                }
                // Removed meanwhile: nothing to mark. A task the plan put on it is refused
                // too, and the next pass places it elsewhere.
                (Command::UpdateNode { id, .. }, Err(e)) => {
                    tracing::debug!(node_id = %NodeHex(*id), error = %e, "status not changed")
                }
                (_, Err(e)) => refused = Some(e),
                (_, Ok(_)) => {}
            }
        }
    }
    match refused {
        Some(e) => Err(ScheduleError::Refused(e)),
        None => Ok(()),
    }
}
