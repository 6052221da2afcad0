//! The worker's session with the cluster: which manager it talks to (any will do, and it
//! moves on when one fails or loses the leader), grants from the leader, redemption, and
//! reconciling its files with the assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::bail;
use coffer_api::client::{Client, ClientError};
use coffer_api::worker::{AssignedTask, Assignment, Grant, GrantList, Redeemed};

use crate::worker::files::{remove_task_dir, write_task};
use crate::worker::runtime::Runtime;
use crate::worker::settings::WorkerSettings;

/// How long one call to a manager may take (a long poll waits up to 20 s on the manager).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const POLL_TIMEOUT: Duration = Duration::from_secs(40);

/// A failure of this host (the disk, an owner that cannot be set), not of the cluster:
/// asking the cluster again soon changes nothing, so it is retried slowly. Anything else
/// (no leader yet, a manager cut off, an assignment that was stale) heals on its own and
/// is retried soon.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub(crate) struct Local(pub anyhow::Error);

/// The worker's client (credentials and connection pool), replaced when its certificate is
/// renewed: pooled connections keep presenting the certificate they were opened with.
#[derive(Debug, Clone)]
pub(crate) struct SharedClient(Arc<RwLock<Client>>);

impl SharedClient {
    pub(crate) fn new(client: Client) -> Self {
        Self(Arc::new(RwLock::new(client)))
    }

    /// The current client, pointed at the manager at `addr`.
    pub(crate) fn at(&self, addr: &str) -> Client {
        self.0.read().unwrap_or_else(|p| p.into_inner()).at(addr)
    }

    pub(crate) fn replace(&self, client: Client) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = client;
    }
}

/// The managers a worker knows and the one its session is with, shared with the heartbeat
/// loop: when either finds the current one unreachable or leaderless, both move on.
#[derive(Debug, Clone)]
pub(crate) struct Managers {
    list: Arc<RwLock<Vec<String>>>,
    current: Arc<AtomicUsize>,
}

impl Managers {
    pub(crate) fn new(list: Vec<String>) -> Self {
        Self { list: Arc::new(RwLock::new(list)), current: Arc::new(AtomicUsize::new(0)) }
    }

    /// The manager of the session, and the turn it was chosen at (see [`Self::move_on`]).
    pub(crate) fn current(&self) -> (usize, String) {
        let i = self.current.load(Ordering::Relaxed);
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        (i, list.get(i % list.len().max(1)).cloned().unwrap_or_default())
    }

    /// Moves to the next manager, unless someone already moved on from turn `seen`.
    pub(crate) fn move_on(&self, seen: usize) {
        let _ = self.current.compare_exchange(seen, seen.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn all(&self) -> Vec<String> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn learn(&self, addrs: &[String]) {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        for m in addrs {
            if !list.contains(m) {
                list.push(m.clone());
            }
        }
    }
}

/// What the worker has written, per task.
#[derive(Debug, Clone)]
struct Written {
    task: AssignedTask,
    dir: PathBuf,
}

/// The worker agent's state between assignments.
#[derive(Debug)]
pub(crate) struct Agent {
    /// The worker's credentials and connection pool; pointed at a manager per call.
    pub(crate) client: SharedClient,
    pub(crate) settings: WorkerSettings,
    pub(crate) managers: Managers,
    leader: Option<String>,
    written: BTreeMap<String, Written>,
    /// Every task directory this worker may have written, this run or a previous one (its
    /// manifest): what is not wanted any more is removed, whatever this run managed.
    pub(crate) known: BTreeSet<PathBuf>,
    /// Told when a task's files are in place, or could not be.
    runtime: Runtime,
}

impl Agent {
    pub(crate) fn new(
        client: SharedClient,
        settings: WorkerSettings,
        known: BTreeSet<PathBuf>,
        runtime: Runtime,
    ) -> Self {
        let managers = Managers::new(settings.managers.clone());
        Self { client, settings, managers, leader: None, written: BTreeMap::new(), known, runtime }
    }

    /// The assignment of this worker, from the manager of the session.
    pub(crate) async fn poll(&self, since: Option<&str>) -> (usize, String, Result<Assignment, ClientError>) {
        let (turn, addr) = self.managers.current();
        let r = self.client.at(&addr).with_timeout(POLL_TIMEOUT).assignments(since).await;
        (turn, addr, r)
    }

    pub(crate) fn learn(&mut self, a: &Assignment) {
        self.leader = a.leader_addr.clone();
        self.managers.learn(&a.managers);
    }

    fn task_dir(&self, t: &AssignedTask) -> PathBuf {
        self.settings.secrets_dir.join(format!("{}.{}", t.service_name, t.slot))
    }

    /// Grants for `tasks`, issued by the leader. Asked of the manager of the session first,
    /// which asks the leader on this worker's behalf over its own link: a thousand workers
    /// whose value was rotated open no connection to the leader. Then of the leader
    /// directly (a manager of an earlier release answers that only the leader issues
    /// grants), then of every manager, in case the leader moved.
    async fn grants(&mut self, tasks: &[String]) -> anyhow::Result<GrantList> {
        let mut candidates = vec![self.managers.current().1];
        candidates.extend(self.leader.iter().cloned());
        candidates.extend(self.managers.all());
        let mut tried: Vec<String> = Vec::new();
        let mut errors = Vec::new();
        for addr in candidates {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            match self.client.at(&addr).with_timeout(CALL_TIMEOUT).grants(tasks).await {
                Ok(g) => return Ok(g),
                // The leader's refusal (a task not placed here, or gone) is final: asking
                // again elsewhere would only ask the leader again.
                Err(e @ ClientError::Api { status, .. }) if (400..500).contains(&status) && status != 421 => {
                    bail!("grants refused at {addr}: {e}")
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        bail!("no manager issued grants: {}", errors.join("; "))
    }

    /// Redeems `grant` at the manager of the session, moving on past managers that cannot
    /// be reached; a refusal is final (the next assignment brings a new grant).
    async fn redeem(&mut self, grant: Grant) -> anyhow::Result<Redeemed> {
        let task = grant.task_id.clone();
        let mut last = String::new();
        for _ in 0..self.managers.all().len().max(1) {
            let (turn, addr) = self.managers.current();
            match self.client.at(&addr).with_timeout(CALL_TIMEOUT).redeem(grant.clone()).await {
                Ok(r) => return Ok(r),
                // A refusal is the cluster's answer; a manager that failed (5xx: no leader,
                // an internal error, a proxy in between) is not, and another may answer.
                Err(e @ ClientError::Api { status, .. }) if status < 500 => {
                    bail!("grant for task {task} refused at {addr}: {e}")
                }
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.managers.move_on(turn);
                }
            }
        }
        bail!("no manager redeemed the grant: {last}")
    }

    /// Brings the files in line with `a`: tasks that left lose their directory, changed or
    /// new tasks get grants and their files.
    pub(crate) async fn reconcile(&mut self, a: &Assignment) -> anyhow::Result<()> {
        let wanted: BTreeMap<&str, &AssignedTask> = a.tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
        let gone: Vec<String> = self.written.keys().filter(|k| !wanted.contains_key(k.as_str())).cloned().collect();
        for id in gone {
            if let Some(old) = self.written.remove(&id) {
                remove_task_dir(&old.dir).map_err(Local)?;
                tracing::info!(task = %id, service = %old.task.service_name, "task left this node; its secrets were removed");
                self.on_change(&old.dir, &old.task).await;
            }
        }
        let changed: Vec<&AssignedTask> =
            a.tasks.iter().filter(|t| self.written.get(&t.task_id).is_none_or(|x| x.task != **t)).collect();
        if changed.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = changed.iter().map(|t| t.task_id.clone()).collect();
        let grants = self.grants(&ids).await?;
        // One task's failure (a refused grant, an owner that cannot be set) must not hold
        // back the others: each is tried, and the first error is reported.
        let mut failed = None;
        for grant in grants.grants {
            let Some(task) = changed.iter().find(|t| t.task_id == grant.task_id) else { continue };
            if let Err(e) = self.apply_task(task, grant).await {
                tracing::warn!(task = %task.task_id, service = %task.service_name, error = %e, "task's secrets not written");
                self.runtime.failed(&task.task_id, &e);
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn apply_task(&mut self, task: &AssignedTask, grant: Grant) -> anyhow::Result<()> {
        let redeemed = self.redeem(grant).await?;
        // A secret the redemption lacks was dropped since this assignment: the cluster's
        // next assignment says so; not this host's trouble.
        if let Some(s) = task.secrets.iter().find(|s| !redeemed.secrets.iter().any(|r| r.secret_id == s.secret_id)) {
            bail!("the redemption lacks secret {}: its reference was dropped since this assignment", s.secret_name);
        }
        let dir = self.task_dir(task);
        let old_targets: BTreeSet<String> = self
            .written
            .get(&task.task_id)
            .map(|x| x.task.secrets.iter().map(|s| s.target.clone()).collect())
            .unwrap_or_default();
        let written = write_task(&dir, task, &redeemed, &old_targets).map_err(Local)?;
        tracing::info!(task = %task.task_id, service = %task.service_name, slot = task.slot, "secrets written");
        // The runtime is told the versions written (the redemption may have brought newer
        // ones than the assignment): the next assignment then changes nothing for it, and a
        // container is told of a change once.
        self.runtime.written(&written, &dir);
        self.written.insert(task.task_id.clone(), Written { task: written, dir: dir.clone() });
        self.on_change(&dir, task).await;
        Ok(())
    }

    /// Removes every known task directory that the assignment does not want (tasks that
    /// left while this worker was away, or whose last update failed here), and records the
    /// directories the assignment does want as known.
    pub(crate) fn sweep(&mut self, a: &Assignment) {
        let wanted: BTreeSet<PathBuf> = a.tasks.iter().map(|t| self.task_dir(t)).collect();
        let gone: Vec<PathBuf> = self.known.difference(&wanted).cloned().collect();
        for d in gone {
            if !d.starts_with(&self.settings.secrets_dir) {
                self.known.remove(&d);
                continue;
            }
            match remove_task_dir(&d) {
                Ok(()) => {
                    self.known.remove(&d);
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove a task directory that is no longer wanted"),
            }
        }
        self.known.extend(wanted);
    }

    async fn on_change(&self, dir: &Path, task: &AssignedTask) {
        let Some(cmd) = &self.settings.on_change else { return };
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("COFFER_TASK_DIR", dir)
            .env("COFFER_SERVICE", &task.service_name)
            .env("COFFER_TASK_ID", &task.task_id)
            .env_remove("COFFER_JOIN_TOKEN")
            .stdin(std::process::Stdio::null())
            .status();
        match tokio::time::timeout(Duration::from_secs(30), run).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => tracing::warn!(status = %s, "--on-change command failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "--on-change command could not run"),
            Err(_) => tracing::warn!("--on-change command took over 30 s; left running"),
        }
    }
}
