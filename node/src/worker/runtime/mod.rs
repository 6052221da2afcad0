//! What runs a worker's tasks, and what the worker tells the managers of them.
//!
//! The agent (`session`) says which tasks the node has ([`Runtime::assigned`]) and when a
//! task's files are in place ([`Runtime::written`]) or could not be ([`Runtime::failed`]).
//! With `--runtime none` that is all: a task is `ready` once its files are written. With
//! `--runtime docker`, a supervisor ([`docker`]) runs one container per task whose service
//! names an image, started only once its files are in place, and reports `starting`,
//! `running`, `exited N` or `failed: message`. Every state change is sent to the managers
//! by the reporter ([`report`]).
//!
//! Must never: log or report a secret value or a service's environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use coffer_api::worker::{AssignedTask, TaskRunState};
use tokio::sync::Notify;

pub(crate) mod docker;
pub(crate) mod report;

/// A task of the node's assignment, and its files once they are in place.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) task: AssignedTask,
    /// The task's secrets directory, once its files were written.
    pub(crate) dir: Option<PathBuf>,
    /// That directory's inode: a directory made again is another mount.
    pub(crate) dir_ino: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Board {
    /// The tasks of the last assignment; `None` until the first one arrives (a restarted
    /// worker must not stop containers before it knows what it still runs).
    pub(crate) assigned: Option<BTreeMap<String, Placed>>,
    /// What is reported of each assigned task.
    pub(crate) states: BTreeMap<String, TaskRunState>,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    board: Mutex<Board>,
    /// Wakes the container supervisor: the assignment or some files changed.
    pub(crate) wake_runtime: Notify,
    /// Wakes the reporter: a state changed.
    pub(crate) wake_report: Notify,
}

impl Shared {
    pub(crate) fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the reported state of `task`, if it is still assigned.
    pub(crate) fn set_state(&self, task: &str, state: TaskRunState) {
        let mut b = self.board();
        let assigned = b.assigned.as_ref().is_some_and(|a| a.contains_key(task));
        if assigned && b.states.get(task) != Some(&state) {
            b.states.insert(task.to_string(), state);
            drop(b);
            self.wake_report.notify_one();
        }
    }
}

/// The agent's handle on the runtime.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    pub(crate) shared: Arc<Shared>,
    /// Whether tasks with an image get a container (`--runtime docker`).
    containers: bool,
}

impl Runtime {
    pub(crate) fn new(containers: bool) -> Self {
        Self { shared: Arc::new(Shared::default()), containers }
    }

    /// Whether `task` gets a container here.
    fn runs(&self, task: &AssignedTask) -> bool {
        self.containers && task.run.is_some()
    }

    /// The node's tasks, from an assignment: new ones are `pending`, those that left are
    /// forgotten (and their containers stopped).
    pub(crate) fn assigned(&self, tasks: &[AssignedTask]) {
        let mut b = self.shared.board();
        let old = b.assigned.take().unwrap_or_default();
        let mut now = BTreeMap::new();
        for t in tasks {
            // A task whose files are in place keeps what they were written for (versions,
            // what it runs) until they are written again: a container is told of a
            // change, or replaced, only once the new files are there.
            let placed = match old.get(&t.task_id) {
                Some(p) if p.dir.is_some() => p.clone(),
                _ => Placed { task: t.clone(), dir: None, dir_ino: 0 },
            };
            now.insert(t.task_id.clone(), placed);
        }
        b.states.retain(|id, _| now.contains_key(id));
        for id in now.keys() {
            b.states.entry(id.clone()).or_insert(TaskRunState::Pending);
        }
        b.assigned = Some(now);
        drop(b);
        self.shared.wake_runtime.notify_one();
        self.shared.wake_report.notify_one();
    }

    /// `task`'s files are in place in `dir` (first written, or rewritten after a change).
    pub(crate) fn written(&self, task: &AssignedTask, dir: &Path) {
        let mut b = self.shared.board();
        if let Some(p) = b.assigned.as_mut().and_then(|a| a.get_mut(&task.task_id)) {
            p.task = task.clone();
            p.dir = Some(dir.to_path_buf());
            p.dir_ino = std::fs::metadata(dir).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
        }
        drop(b);
        if self.runs(task) {
            // The supervisor says `starting` and `running`; a running container stays so.
            let state = self.shared.board().states.get(&task.task_id).cloned();
            if matches!(state, None | Some(TaskRunState::Pending | TaskRunState::Ready | TaskRunState::Failed { .. })) {
                self.shared.set_state(&task.task_id, TaskRunState::Starting);
            }
            self.shared.wake_runtime.notify_one();
        } else {
            self.shared.set_state(&task.task_id, TaskRunState::Ready);
        }
    }

    /// `task`'s files could not be put in place.
    pub(crate) fn failed(&self, task: &str, why: &anyhow::Error) {
        self.shared.set_state(task, TaskRunState::Failed { message: format!("secrets not written: {why:#}") });
    }
}
