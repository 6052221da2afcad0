//! `--runtime docker`: one container per task whose service names an image, on the local
//! engine, through its socket (bollard).
//!
//! - A container is created only once its task's files are in place, with the task's
//!   secrets directory (tmpfs) bind-mounted read-only at the service's secrets mount: a
//!   rotation replaces the file inside the running container, with no restart. A service
//!   may ask for a signal or a restart on a change instead.
//! - Containers carry labels (worker, service, slot, task, and a digest of what they run):
//!   the supervisor finds its own again after a restart of the worker and adopts them, and
//!   replaces a container whose service now runs something else.
//! - A container that exits is started again after a backoff (1 s, doubling to 30 s; back
//!   to 1 s once it ran 10 s). One that cannot be created (an image the engine lacks) is
//!   `failed` with the engine's message and tried again with the same backoff.
//! - A container whose task left the node is stopped (10 s grace) and removed. Until the
//!   first assignment after a start, nothing is removed.
//!
//! Images are not pulled: they must be on the worker's engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use bollard::models::{ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RestartContainerOptions, StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;
use coffer_api::rules::{self, SecretChangeAction};
use coffer_api::services::RunInfo;
use coffer_api::worker::TaskRunState;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::worker::runtime::{Placed, Shared};

pub(crate) const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
const LABEL_WORKER: &str = "coffer.worker";
const LABEL_TASK: &str = "coffer.task";
const LABEL_SERVICE: &str = "coffer.service";
const LABEL_SLOT: &str = "coffer.slot";
const LABEL_SPEC: &str = "coffer.spec";
/// How often the supervisor looks at its containers when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before it exited starts again after the shortest backoff.
const RAN_LONG: Duration = Duration::from_secs(10);
const STOP_GRACE_SECS: i32 = 10;
/// Failed passes in a row (about a second apart) before tasks are reported failed.
const ENGINE_PATIENCE: u32 = 3;

/// Connects to the engine at `socket` and checks that it answers, at the newest API
/// version both sides speak.
///
/// # Errors
/// A socket that is missing or refused (permissions), or an engine that does not answer.
pub(crate) async fn connect(socket: Option<&str>) -> anyhow::Result<Docker> {
    let path = socket.unwrap_or(DEFAULT_SOCKET);
    let hint = "--runtime docker needs the Docker engine's socket (--docker-socket PATH), \
                readable and writable by the worker's user";
    let docker = Docker::connect_with_unix(path, 60, bollard::API_DEFAULT_VERSION)
        .map_err(|e| anyhow!("cannot use the Docker engine at {path}: {e}; {hint}"))?;
    let negotiated = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version()).await;
    let docker = match negotiated {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Err(anyhow!("the Docker engine at {path} does not answer: {e}; {hint}")),
        Err(_) => return Err(anyhow!("the Docker engine at {path} did not answer within 10 s; {hint}")),
    };
    docker.ping().await.map_err(|e| anyhow!("the Docker engine at {path} does not answer: {e}; {hint}"))?;
    Ok(docker)
}

/// The engine's own words for a failed call.
fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// What the supervisor knows of one task's container between passes.
#[derive(Debug)]
struct Track {
    /// The secret versions its running container has seen.
    versions: Vec<(String, u32)>,
    /// When the container was last started by this supervisor.
    started: Option<Instant>,
    /// Not before this may it be started (again) after an exit or a failure.
    next_start: Option<Instant>,
    backoff: Duration,
}

impl Default for Track {
    fn default() -> Self {
        Self { versions: Vec::new(), started: None, next_start: None, backoff: BACKOFF_MIN }
    }
}

impl Track {
    fn may_start(&self, now: Instant) -> bool {
        self.next_start.is_none_or(|t| now >= t)
    }

    /// Whether the container this supervisor last started has been up for [`RAN_LONG`].
    fn ran_long(&self, now: Instant) -> bool {
        self.started.is_some_and(|s| now.duration_since(s) >= RAN_LONG)
    }

    /// After an exit or a failed start: the next start waits for the backoff, which
    /// doubles, unless the container had run long (then it starts from the shortest).
    fn hold_off(&mut self, now: Instant, ran_long: bool) {
        if ran_long {
            self.backoff = BACKOFF_MIN;
        }
        self.started = None;
        self.next_start = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn started_now(&mut self, now: Instant, versions: Vec<(String, u32)>) {
        self.started = Some(now);
        self.next_start = None;
        self.versions = versions;
    }
}

/// The container supervisor of one worker.
pub(crate) struct Supervisor {
    docker: Docker,
    shared: Arc<Shared>,
    /// This worker's node id, as its containers' `coffer.worker` label.
    worker: String,
    tracks: BTreeMap<String, Track>,
    /// Containers being stopped and removed (in their own tasks: a stop may take its grace
    /// period, and must hold back no other task's container).
    removing: Arc<Mutex<BTreeSet<String>>>,
}

fn versions_of(p: &Placed) -> Vec<(String, u32)> {
    p.task.secrets.iter().map(|s| (s.secret_id.clone(), s.version)).collect()
}

/// A digest of what a task's container runs and mounts: a container whose digest differs
/// is replaced.
fn spec_digest(run: &RunInfo, p: &Placed) -> String {
    let dir = p.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
    // The directory's inode too: one removed and made again (the task left and came back)
    // is not what an older container has mounted.
    let text = serde_json::to_vec(&(run, dir, p.dir_ino, &p.task.service_id)).unwrap_or_default();
    data_encoding::HEXLOWER.encode(&Sha256::digest(text)[..12])
}

fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

impl Supervisor {
    pub(crate) fn new(docker: Docker, shared: Arc<Shared>, worker: String) -> Self {
        Self { docker, shared, worker, tracks: BTreeMap::new(), removing: Arc::default() }
    }

    /// Runs until shutdown; containers keep running when the worker stops, and are adopted
    /// when it starts again.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut failed_passes = 0u32;
        loop {
            match self.pass().await {
                Ok(()) => failed_passes = 0,
                Err(e) => {
                    failed_passes += 1;
                    if failed_passes == 1 {
                        tracing::warn!(error = %format!("{e:#}"), "cannot manage this worker's containers; trying again");
                    }
                    // A few seconds without the engine: nobody can say the containers run.
                    if failed_passes == ENGINE_PATIENCE {
                        self.engine_lost(&e);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.shared.wake_runtime.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Every task that should have a container is `failed`, with why, until the engine
    /// answers again.
    fn engine_lost(&mut self, why: &anyhow::Error) {
        let assigned = self.shared.board().assigned.clone().unwrap_or_default();
        let message = format!("the Docker engine does not answer: {why:#}");
        for (id, _) in assigned.iter().filter(|(_, p)| p.task.run.is_some() && p.dir.is_some()) {
            self.shared.set_state(id, TaskRunState::Failed { message: message.clone() });
            // Whatever ran, ran unwatched: it is adopted afresh when the engine is back.
            self.tracks.remove(id);
        }
    }

    async fn mine(&self) -> anyhow::Result<Vec<ContainerSummary>> {
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec![format!("{LABEL_WORKER}={}", self.worker)])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        self.docker.list_containers(Some(opts)).await.context("list this worker's containers")
    }

    /// One look at the containers: remove what is not wanted, start what is missing or has
    /// exited (after its backoff), pass secret changes on, and report each task's state.
    async fn pass(&mut self) -> anyhow::Result<()> {
        let assigned = self.shared.board().assigned.clone();
        let mut by_task: BTreeMap<String, Vec<ContainerSummary>> = BTreeMap::new();
        for c in self.mine().await? {
            let task = label(&c, LABEL_TASK).unwrap_or_default().to_string();
            by_task.entry(task).or_default().push(c);
        }
        let Some(assigned) = assigned else { return Ok(()) };
        self.tracks.retain(|id, _| assigned.get(id).is_some_and(|p| p.task.run.is_some()));
        for (task, containers) in &by_task {
            if assigned.get(task).is_none_or(|p| p.task.run.is_none()) {
                for c in containers {
                    self.remove(c, "its task left this node");
                }
            }
        }
        let now = Instant::now();
        for (id, placed) in &assigned {
            let Some(run) = &placed.task.run else { continue };
            // Started only once the task's files are in place.
            if placed.dir.is_none() {
                continue;
            }
            let digest = spec_digest(run, placed);
            let mut current = None;
            let mut stopping = false;
            for c in by_task.remove(id).unwrap_or_default() {
                let dead = c.state == Some(ContainerSummaryStateEnum::DEAD);
                if c.id.as_ref().is_some_and(|cid| self.is_removing(cid)) {
                    // Its stop is under way: a new container waits for it to go.
                    stopping = true;
                } else if current.is_none() && !dead && label(&c, LABEL_SPEC) == Some(digest.as_str()) {
                    current = Some(c);
                } else {
                    self.remove(&c, if dead { "it is dead" } else { "what its service runs changed" });
                    stopping = true;
                }
            }
            if stopping && current.is_none() {
                continue;
            }
            self.tend(id, placed, run, &digest, current, now).await;
        }
        Ok(())
    }

    /// Brings one task's container to running.
    async fn tend(
        &mut self,
        id: &str,
        placed: &Placed,
        run: &RunInfo,
        digest: &str,
        current: Option<ContainerSummary>,
        now: Instant,
    ) {
        let versions = versions_of(placed);
        let adopted = !self.tracks.contains_key(id);
        let track = self.tracks.entry(id.to_string()).or_default();
        let Some(c) = current else {
            if !track.may_start(now) {
                return;
            }
            self.shared.set_state(id, TaskRunState::Starting);
            let state = match create_and_start(&self.docker, &self.worker, placed, run, digest).await {
                Ok(cid) => {
                    tracing::info!(task = %id, service = %placed.task.service_name, container = %short(&cid), "container started");
                    track.started_now(now, versions);
                    TaskRunState::Running
                }
                Err(message) => {
                    tracing::warn!(task = %id, service = %placed.task.service_name, error = %message, "container not started");
                    track.hold_off(now, false);
                    TaskRunState::Failed { message }
                }
            };
            self.shared.set_state(id, state);
            return;
        };
        let cid = c.id.clone().unwrap_or_default();
        match c.state {
            Some(ContainerSummaryStateEnum::RUNNING) => {
                if adopted {
                    // A container from before this worker's restart: it read the files
                    // that are there now.
                    tracing::info!(task = %id, container = %short(&cid), "adopted a running container");
                    track.started_now(now, versions.clone());
                }
                if track.versions != versions {
                    let action =
                        rules::parse_on_secret_change(&run.on_secret_change).unwrap_or(SecretChangeAction::Nothing);
                    on_secret_change(&self.docker, &cid, id, &action).await;
                    track.versions = versions;
                }
                self.shared.set_state(id, TaskRunState::Running);
            }
            Some(ContainerSummaryStateEnum::CREATED | ContainerSummaryStateEnum::EXITED) => {
                let created = c.state == Some(ContainerSummaryStateEnum::CREATED);
                if !created && track.next_start.is_none() {
                    // Just seen to exit: say so, and wait for the backoff.
                    let code = exit_code(&self.docker, &cid).await;
                    tracing::info!(task = %id, container = %short(&cid), code, "container exited");
                    self.shared.set_state(id, TaskRunState::Exited { code });
                    let ran_long = track.ran_long(now);
                    track.hold_off(now, ran_long);
                    return;
                }
                if !track.may_start(now) {
                    return;
                }
                match self.docker.start_container(&cid, None::<StartContainerOptions>).await {
                    Ok(()) => {
                        tracing::info!(task = %id, container = %short(&cid), "container started again");
                        track.started_now(now, versions);
                        self.shared.set_state(id, TaskRunState::Running);
                    }
                    Err(e) => {
                        track.hold_off(now, false);
                        self.shared.set_state(id, TaskRunState::Failed { message: engine_message(&e) });
                    }
                }
            }
            // Paused, restarting, being removed: the engine or an operator is at it.
            _ => {}
        }
    }

    fn is_removing(&self, cid: &str) -> bool {
        self.removing.lock().unwrap_or_else(|p| p.into_inner()).contains(cid)
    }

    /// Stops (with a grace period) and removes a container, in a task of its own.
    fn remove(&self, c: &ContainerSummary, why: &'static str) {
        let Some(cid) = c.id.clone() else { return };
        if !self.removing.lock().unwrap_or_else(|p| p.into_inner()).insert(cid.clone()) {
            return;
        }
        let (docker, removing) = (self.docker.clone(), self.removing.clone());
        let task = label(c, LABEL_TASK).unwrap_or_default().to_string();
        let work = async move {
            let stop = StopContainerOptionsBuilder::new().t(STOP_GRACE_SECS).build();
            if let Err(e) = docker.stop_container(&cid, Some(stop)).await {
                tracing::debug!(container = %short(&cid), error = %engine_message(&e), "stop before removal");
            }
            let rm = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            match docker.remove_container(&cid, Some(rm)).await {
                Ok(()) => tracing::info!(container = %short(&cid), %task, %why, "container removed"),
                Err(e) => {
                    tracing::warn!(container = %short(&cid), error = %engine_message(&e), "cannot remove a container")
                }
            }
            removing.lock().unwrap_or_else(|p| p.into_inner()).remove(&cid);
        };
        tokio::spawn(work.in_current_span());
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

async fn exit_code(docker: &Docker, cid: &str) -> i64 {
    match docker.inspect_container(cid, None::<InspectContainerOptions>).await {
        Ok(i) => i.state.and_then(|s| s.exit_code).unwrap_or(-1),
        Err(_) => -1,
    }
}

async fn on_secret_change(docker: &Docker, cid: &str, task: &str, action: &SecretChangeAction) {
    let done = match action {
        SecretChangeAction::Nothing => return,
        SecretChangeAction::Signal(sig) => {
            docker.kill_container(cid, Some(KillContainerOptionsBuilder::new().signal(sig).build())).await
        }
        SecretChangeAction::Restart => docker.restart_container(cid, None::<RestartContainerOptions>).await,
    };
    match done {
        Ok(()) => tracing::info!(%task, container = %short(cid), %action, "told the container its secrets changed"),
        Err(e) => {
            tracing::warn!(%task, container = %short(cid), %action, error = %engine_message(&e), "could not tell the container its secrets changed")
        }
    }
}

/// Creates and starts a task's container; the engine's message on failure.
async fn create_and_start(
    docker: &Docker,
    worker: &str,
    placed: &Placed,
    run: &RunInfo,
    digest: &str,
) -> Result<String, String> {
    let t = &placed.task;
    let dir = placed.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
    let labels = HashMap::from([
        (LABEL_WORKER.to_string(), worker.to_string()),
        (LABEL_TASK.to_string(), t.task_id.clone()),
        (LABEL_SERVICE.to_string(), t.service_name.clone()),
        (LABEL_SLOT.to_string(), t.slot.to_string()),
        (LABEL_SPEC.to_string(), digest.to_string()),
    ]);
    let mount = Mount {
        target: Some(run.secrets_mount.clone()),
        source: Some(dir),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(run.image.clone()),
        entrypoint: (!run.command.is_empty()).then(|| run.command.clone()),
        cmd: (!run.args.is_empty()).then(|| run.args.clone()),
        env: Some(run.env.clone()),
        labels: Some(labels),
        host_config: Some(HostConfig { mounts: Some(vec![mount]), ..Default::default() }),
        ..Default::default()
    };
    let name = format!("coffer-{}.{}.{}", t.service_name, t.slot, short(&t.task_id));
    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = docker.create_container(Some(opts), body).await.map_err(|e| engine_message(&e))?;
    if let Err(e) = docker.start_container(&created.id, None::<StartContainerOptions>).await {
        // Left for the next pass, which starts it again after the backoff.
        return Err(engine_message(&e));
    }
    Ok(created.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_and_resets_after_a_long_run() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Track::default();
        assert!(t.may_start(t0));
        // Failed creates, one after the other (a missing image): 1, 2, 4 s ... up to 30 s.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            t.hold_off(now, false);
            let next = t.next_start.expect("held off");
            assert!(!t.may_start(next - Duration::from_millis(1)) && t.may_start(next));
            waits.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        // A container that then ran 10 s before it exited starts again after 1 s.
        t.started_now(now, Vec::new());
        assert!(t.next_start.is_none());
        assert!(t.ran_long(now + RAN_LONG) && !t.ran_long(now + RAN_LONG - s));
        t.hold_off(now + RAN_LONG, t.ran_long(now + RAN_LONG));
        assert_eq!(t.next_start, Some(now + RAN_LONG + BACKOFF_MIN));
        // One that exits at once keeps doubling.
        let later = now + RAN_LONG + BACKOFF_MIN;
        t.started_now(later, Vec::new());
        t.hold_off(later, t.ran_long(later));
        assert_eq!(t.next_start, Some(later + 2 * BACKOFF_MIN));
    }
}
