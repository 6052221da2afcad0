//! One scheduling pass as a pure function: from the committed state, which workers are
//! alive, and the time, the commands that bring node statuses and tasks in line. No I/O, no
//! clock, no randomness (ids come from the caller), so every rule is tested on tables.
//!
//! The rules: a worker is `ready` while it heartbeats and `down` once it misses the window.
//! Each replica of each service runs on an active, ready worker that meets the service's
//! constraints; a replica stays where it is while its node still qualifies, else it moves to
//! the qualifying worker with the fewest replicas of the service, then the fewest tasks,
//! then the lowest id. Each task carries the secret versions its service references (the
//! pinned one, or the newest). Slots beyond the replicas, and any second task of a slot, go.

use std::collections::{BTreeMap, HashMap, HashSet};

use coffer_api::rules::Constraint;
use coffer_raft_store::model::{
    Availability, Command, NodeRecord, NodeRole, NodeStatus, ServiceRecord, TaskRecord, TaskState,
};
use coffer_raft_store::NodeId;

use crate::manager::constraints::matches;

/// The committed state a pass decides on.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanState {
    pub nodes: Vec<NodeRecord>,
    pub services: Vec<ServiceRecord>,
    pub tasks: Vec<TaskRecord>,
    /// The newest version of each secret a service references.
    pub latest: HashMap<String, u32>,
}

fn eligible(n: &NodeRecord) -> bool {
    n.role == NodeRole::Worker && !n.removed && n.availability == Availability::Active && n.status == NodeStatus::Ready
}

/// The commands of one pass, in the order they must be committed (status changes first:
/// placement decides on the statuses they set).
pub(crate) fn plan(
    state: &PlanState,
    alive: &dyn Fn(NodeId) -> bool,
    now: u64,
    new_id: &mut dyn FnMut() -> String,
) -> Vec<Command> {
    let mut out = Vec::new();
    let mut nodes: BTreeMap<NodeId, NodeRecord> = state.nodes.iter().map(|n| (n.id, n.clone())).collect();
    for n in nodes.values_mut() {
        if n.role != NodeRole::Worker || n.removed {
            continue;
        }
        let status = if alive(n.id) { NodeStatus::Ready } else { NodeStatus::Down };
        if n.status != status {
            out.push(Command::UpdateNode {
                id: n.id,
                status: Some(status),
                availability: None,
                cert_serial: None,
                at: now,
            });
            n.status = status;
        }
    }
    let mut load: HashMap<NodeId, usize> = HashMap::new();
    for t in &state.tasks {
        if let Some(n) = t.node_id.filter(|n| nodes.get(n).is_some_and(eligible)) {
            *load.entry(n).or_default() += 1;
        }
    }
    for svc in &state.services {
        let pass = Pass { tasks: &state.tasks, nodes: &nodes, latest: &state.latest, now };
        plan_service(svc, &pass, &mut load, new_id, &mut out);
    }
    out
}

/// Chooses a node for a replica: eligible, meeting the constraints, with the fewest
/// replicas of this service, then the fewest tasks, then the lowest id.
fn pick(
    nodes: &BTreeMap<NodeId, NodeRecord>,
    constraints: &[Constraint],
    per_service: &HashMap<NodeId, usize>,
    load: &HashMap<NodeId, usize>,
) -> Option<NodeId> {
    nodes
        .values()
        .filter(|n| eligible(n) && constraints.iter().all(|c| matches(c, n)))
        .min_by_key(|n| (per_service.get(&n.id).copied().unwrap_or(0), load.get(&n.id).copied().unwrap_or(0), n.id))
        .map(|n| n.id)
}

/// What every service of one pass is planned against.
struct Pass<'a> {
    tasks: &'a [TaskRecord],
    /// Nodes with the statuses this pass sets.
    nodes: &'a BTreeMap<NodeId, NodeRecord>,
    latest: &'a HashMap<String, u32>,
    now: u64,
}

fn plan_service(
    svc: &ServiceRecord,
    pass: &Pass<'_>,
    load: &mut HashMap<NodeId, usize>,
    new_id: &mut dyn FnMut() -> String,
    out: &mut Vec<Command>,
) {
    let Pass { tasks, nodes, latest, now } = *pass;
    // Constraints were checked when the service was written; one that no longer parses
    // (a rule tightened since) constrains nothing rather than stopping every pass.
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
            .filter(|n| nodes.get(n).is_some_and(|r| eligible(r) && constraints.iter().all(|c| matches(c, r))));
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
        out.push(Command::PutTask(task));
    }
    let mut kept = HashSet::new();
    for t in &mine {
        let first_of_slot = kept.insert(t.slot) && mine.iter().find(|x| x.slot == t.slot).map(|x| &x.id) == Some(&t.id);
        if t.slot >= svc.spec.replicas || !first_of_slot {
            out.push(Command::RemoveTask { id: t.id.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_raft_store::model::{SecretRef, ServiceSpec};

    fn worker(id: NodeId) -> NodeRecord {
        NodeRecord {
            id,
            role: NodeRole::Worker,
            hostname: format!("w{id}"),
            addr: "10.0.0.1".into(),
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: Default::default(),
            cert_serial: String::new(),
            grant_public_key: None,
            removed: false,
            joined_at: 0,
            updated_at: 0,
        }
    }

    fn service(id: &str, replicas: u32, constraints: &[&str], secrets: &[(&str, Option<u32>)]) -> ServiceRecord {
        ServiceRecord {
            id: id.into(),
            name: id.into(),
            spec: ServiceSpec {
                replicas,
                constraints: constraints.iter().map(|c| c.to_string()).collect(),
                secrets: secrets
                    .iter()
                    .map(|(s, pin)| SecretRef {
                        secret_id: s.to_string(),
                        target: s.to_string(),
                        uid: 0,
                        gid: 0,
                        mode: 0o400,
                        pinned_version: *pin,
                    })
                    .collect(),
                labels: Default::default(),
            },
            spec_version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn task(id: &str, svc: &str, slot: u32, node: Option<NodeId>, versions: &[(&str, u32)]) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service_id: svc.into(),
            slot,
            node_id: node,
            desired: TaskState::Running,
            secret_versions: versions.iter().map(|(s, v)| (s.to_string(), *v)).collect(),
            spec_version: 1,
            updated_at: 0,
        }
    }

    /// Runs a pass with every worker in `alive` alive; ids are `t1`, `t2`, ...
    fn run(state: &PlanState, alive: &[NodeId]) -> Vec<Command> {
        let mut n = 0;
        let mut ids = || {
            n += 1;
            format!("t{n}")
        };
        plan(state, &|id| alive.contains(&id), 1000, &mut ids)
    }

    /// Where each slot's task goes, from the `PutTask`s of a plan.
    fn placements(cmds: &[Command]) -> Vec<(u32, Option<NodeId>)> {
        let mut out: Vec<(u32, Option<NodeId>)> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::PutTask(t) => Some((t.slot, t.node_id)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn replicas_spread_over_workers_then_fill_the_least_loaded() {
        let state = PlanState {
            nodes: vec![worker(1), worker(2), worker(3)],
            services: vec![service("api", 4, &[], &[])],
            ..Default::default()
        };
        let placed = placements(&run(&state, &[1, 2, 3]));
        assert_eq!(placed.len(), 4);
        let mut per_node: HashMap<NodeId, usize> = HashMap::new();
        for (_, n) in &placed {
            *per_node.entry(n.expect("placed")).or_default() += 1;
        }
        assert_eq!(per_node.len(), 3, "every worker gets a replica before any gets two: {placed:?}");
        assert!(per_node.values().all(|&c| (1..=2).contains(&c)));
    }

    #[test]
    fn constraints_choose_among_workers_and_leave_a_replica_pending_when_none_fits() {
        let mut eu = worker(2);
        eu.labels.insert("zone".into(), "eu".into());
        let state = PlanState {
            nodes: vec![worker(1), eu, worker(3)],
            services: vec![
                service("eu-only", 2, &["node.labels.zone==eu"], &[]),
                service("not-3", 2, &["node.id!=3"], &[]),
                service("nowhere", 1, &["node.labels.zone==mars"], &[]),
            ],
            ..Default::default()
        };
        let cmds = run(&state, &[1, 2, 3]);
        let of = |svc: &str| -> Vec<Option<NodeId>> {
            cmds.iter()
                .filter_map(|c| match c {
                    Command::PutTask(t) if t.service_id == svc => Some(t.node_id),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(of("eu-only"), vec![Some(2), Some(2)]);
        assert!(of("not-3").iter().all(|n| matches!(n, Some(1) | Some(2))), "{:?}", of("not-3"));
        assert_eq!(of("nowhere"), vec![None], "a replica no worker fits stays pending");
    }

    #[test]
    fn drained_paused_removed_and_manager_nodes_get_no_tasks() {
        let mut drained = worker(1);
        drained.availability = Availability::Drain;
        let mut paused = worker(2);
        paused.availability = Availability::Pause;
        let mut removed = worker(3);
        removed.removed = true;
        let mut manager = worker(4);
        manager.role = NodeRole::Manager;
        let state = PlanState {
            nodes: vec![drained, paused, removed, manager, worker(5)],
            services: vec![service("api", 2, &[], &[])],
            tasks: vec![task("old", "api", 0, Some(1), &[])],
            ..Default::default()
        };
        let placed = placements(&run(&state, &[1, 2, 3, 5]));
        assert_eq!(placed, vec![(0, Some(5)), (1, Some(5))], "the drained worker's task moves");
    }

    #[test]
    fn a_worker_that_stops_heartbeating_is_marked_down_and_its_tasks_move() {
        let state = PlanState {
            nodes: vec![worker(1), worker(2)],
            services: vec![service("api", 1, &[], &[])],
            tasks: vec![task("a", "api", 0, Some(1), &[])],
            ..Default::default()
        };
        let cmds = run(&state, &[2]);
        assert!(
            matches!(cmds.first(), Some(Command::UpdateNode { id: 1, status: Some(NodeStatus::Down), .. })),
            "status changes come first: {cmds:?}"
        );
        assert_eq!(placements(&cmds), vec![(0, Some(2))]);
        match &cmds[1] {
            Command::PutTask(t) => assert_eq!(t.id, "a", "the task keeps its id when it moves"),
            other => panic!("expected the task to move, got {other:?}"),
        }
        // And back: a down worker that heartbeats again is ready, and nothing moves back.
        let mut down = worker(1);
        down.status = NodeStatus::Down;
        let state = PlanState {
            nodes: vec![down, worker(2)],
            services: vec![service("api", 1, &[], &[])],
            tasks: vec![task("a", "api", 0, Some(2), &[])],
            ..Default::default()
        };
        let cmds = run(&state, &[1, 2]);
        assert!(
            matches!(cmds.as_slice(), [Command::UpdateNode { id: 1, status: Some(NodeStatus::Ready), .. }]),
            "{cmds:?}"
        );
    }

    #[test]
    fn tasks_follow_the_newest_version_unless_pinned() {
        let state = PlanState {
            nodes: vec![worker(1)],
            services: vec![service("api", 1, &[], &[("s1", None), ("s2", Some(1))])],
            tasks: vec![task("a", "api", 0, Some(1), &[("s1", 1), ("s2", 1)])],
            latest: HashMap::from([("s1".to_string(), 3), ("s2".to_string(), 5)]),
        };
        let cmds = run(&state, &[1]);
        match cmds.as_slice() {
            [Command::PutTask(t)] => {
                assert_eq!(t.secret_versions, vec![("s1".to_string(), 3), ("s2".to_string(), 1)]);
                assert_eq!(t.node_id, Some(1), "a rotation does not move the task");
            }
            other => panic!("expected one task update, got {other:?}"),
        }
        // Nothing to do when the task is current: a pass over a settled state is empty.
        let settled = PlanState { tasks: vec![task("a", "api", 0, Some(1), &[("s1", 3), ("s2", 1)])], ..state };
        assert!(run(&settled, &[1]).is_empty());
    }

    #[test]
    fn scaling_down_and_duplicate_slots_remove_tasks() {
        let state = PlanState {
            nodes: vec![worker(1), worker(2)],
            services: vec![service("api", 1, &[], &[])],
            tasks: vec![
                task("a", "api", 0, Some(1), &[]),
                task("dup", "api", 0, Some(2), &[]),
                task("extra", "api", 1, Some(2), &[]),
            ],
            ..Default::default()
        };
        let removed: Vec<String> = run(&state, &[1, 2])
            .into_iter()
            .filter_map(|c| match c {
                Command::RemoveTask { id } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(removed, vec!["dup".to_string(), "extra".to_string()]);
    }
}
