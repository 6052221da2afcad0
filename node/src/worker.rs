//! The worker agent: a session with any manager (long-polled assignments, heartbeats),
//! grants from the leader, redemption, and the secret files of its tasks on tmpfs.
//!
//! Files: `<secrets-dir>/<service>.<slot>/<target>`, written atomically (temporary file in
//! the same directory, mode and owner set, then rename), so a reader sees the old value
//! or the new one, never a torn one; a rotation replaces the file in place and running
//! services see it without a restart. A task's directory is removed when the task leaves
//! the node. While no manager answers, the files stay as they are.
//!
//! Must never: write a value anywhere but the secrets dir, or log one.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use coffer_api::worker::{AssignedTask, Assignment, GrantList, GrantRequest, RedeemRequest, Redeemed};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::data_dir::{write_atomic, DataDir, NodeIdentity};
use crate::tls::{self, NodeCert};
use crate::{bootstrap, key_file};

/// What `worker join` records for `worker run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSettings {
    pub secrets_dir: PathBuf,
    pub insecure_disk: bool,
    pub on_change: Option<String>,
    /// Managers to try, learned from assignments; the join address first.
    pub managers: Vec<String>,
}

fn settings_path(dir: &DataDir) -> PathBuf {
    dir.root().join("worker.json")
}

impl WorkerSettings {
    pub fn load(dir: &DataDir) -> anyhow::Result<Self> {
        let p = settings_path(dir);
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))
    }

    pub fn save(&self, dir: &DataDir) -> anyhow::Result<()> {
        write_atomic(&settings_path(dir), serde_json::to_string_pretty(self)?.as_bytes(), 0o644)
    }
}

/// Refuses a secrets dir that is not in memory (tmpfs or ramfs), unless told otherwise.
pub fn check_in_memory(dir: &Path, insecure_disk: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let canonical = dir.canonicalize()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount), Some(sep)) = (fields.get(4), fields.iter().position(|f| *f == "-")) else { continue };
        let Some(fstype) = fields.get(sep + 1) else { continue };
        let mount = mount.replace("\\040", " ");
        if canonical.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), fstype.to_string()));
        }
    }
    let fstype = best.map(|(_, t)| t).unwrap_or_default();
    if fstype == "tmpfs" || fstype == "ramfs" {
        return Ok(());
    }
    if insecure_disk {
        tracing::warn!(dir = %dir.display(), %fstype, "secrets dir is on disk (--insecure-disk): values will touch persistent storage");
        return Ok(());
    }
    bail!(
        "{} is on {fstype}, not in memory: mount a tmpfs there (mount -t tmpfs -o mode=0755 tmpfs {}) \
         or pass --insecure-disk",
        dir.display(),
        dir.display()
    )
}

/// `worker join`: a certificate through the join flow, then the worker's data dir.
pub async fn join(
    data_dir: &DataDir,
    token: &str,
    join: &str,
    settings: WorkerSettings,
) -> anyhow::Result<NodeIdentity> {
    check_in_memory(&settings.secrets_dir, settings.insecure_disk)?;
    let unspecified: std::net::SocketAddr = "0.0.0.0:0".parse()?;
    let id = bootstrap::join_data_dir(
        data_dir,
        coffer_api::cluster::NodeRole::Worker,
        token,
        join,
        unspecified,
        unspecified,
    )
    .await?;
    settings.save(data_dir)?;
    Ok(id)
}

/// What the worker has written, per task.
#[derive(Debug, Clone)]
struct Applied {
    task: AssignedTask,
    dir: PathBuf,
}

struct Agent {
    http: reqwest::Client,
    settings: WorkerSettings,
    managers: Arc<RwLock<Vec<String>>>,
    /// The manager of the session, shared with the heartbeat loop: when either finds it
    /// unreachable or leaderless, both move on.
    current: Arc<AtomicUsize>,
    leader: Option<String>,
    applied: BTreeMap<String, Applied>,
    /// Every task directory this worker may have written, this run or a previous one (its
    /// manifest): what is not wanted any more is removed, whatever this run managed.
    known: BTreeSet<PathBuf>,
}

type Api<T> = Result<T, (Option<coffer_api::error::ErrorCode>, String)>;

async fn call<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> Api<T> {
    let resp = req.send().await.map_err(|e| (None, e.to_string()))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| (None, e.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| (None, e.to_string()));
    }
    match serde_json::from_slice::<coffer_api::error::ErrorBody>(&bytes) {
        Ok(b) => Err((Some(b.error.code), b.error.message)),
        Err(_) => Err((None, format!("HTTP {status}"))),
    }
}

impl Agent {
    fn manager(&self) -> String {
        let list = self.managers.read().unwrap_or_else(|p| p.into_inner());
        list.get(self.current.load(Ordering::Relaxed) % list.len().max(1)).cloned().unwrap_or_default()
    }

    fn next_manager(&mut self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    fn learn(&mut self, a: &Assignment) {
        self.leader = a.leader_addr.clone();
        let mut list = self.managers.write().unwrap_or_else(|p| p.into_inner());
        for m in &a.managers {
            if !list.contains(m) {
                list.push(m.clone());
            }
        }
    }

    /// Grants for `tasks`, from the leader (trying every manager if the leader moved).
    async fn grants(&mut self, tasks: &[String]) -> anyhow::Result<GrantList> {
        let req = GrantRequest { task_ids: tasks.to_vec() };
        let mut candidates: Vec<String> = self.leader.iter().cloned().collect();
        candidates.extend(self.managers.read().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        let mut last = String::new();
        for addr in candidates {
            match call::<GrantList>(self.http.post(format!("https://{addr}/v1/worker/grants")).json(&req)).await {
                Ok(g) => {
                    self.leader = Some(addr);
                    return Ok(g);
                }
                Err((code, msg)) => last = format!("{addr}: {msg} ({code:?})"),
            }
        }
        bail!("no manager issued grants: {last}")
    }

    async fn reconcile(&mut self, a: &Assignment) -> anyhow::Result<()> {
        let wanted: BTreeMap<&str, &AssignedTask> = a.tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
        // Tasks that left this node: their files go.
        let gone: Vec<String> = self.applied.keys().filter(|k| !wanted.contains_key(k.as_str())).cloned().collect();
        for id in gone {
            if let Some(old) = self.applied.remove(&id) {
                remove_task_dir(&old.dir)?;
                tracing::info!(task = %id, service = %old.task.service_name, "task left this node; its secrets were removed");
                self.on_change(&old.dir, &old.task).await;
            }
        }
        let changed: Vec<&AssignedTask> =
            a.tasks.iter().filter(|t| self.applied.get(&t.task_id).is_none_or(|x| x.task != **t)).collect();
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
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn apply_task(&mut self, task: &AssignedTask, grant: coffer_api::worker::Grant) -> anyhow::Result<()> {
        let redeemed: Redeemed = self.redeem(RedeemRequest { grant }).await?;
        let dir = self.settings.secrets_dir.join(format!("{}.{}", task.service_name, task.slot));
        let old_targets: BTreeSet<String> = self
            .applied
            .get(&task.task_id)
            .map(|x| x.task.secrets.iter().map(|s| s.target.clone()).collect())
            .unwrap_or_default();
        write_task(&dir, task, &redeemed, &old_targets)?;
        tracing::info!(task = %task.task_id, service = %task.service_name, slot = task.slot, "secrets written");
        self.applied.insert(task.task_id.clone(), Applied { task: task.clone(), dir: dir.clone() });
        self.on_change(&dir, task).await;
        Ok(())
    }

    /// Removes every known task directory that the assignment does not want (tasks that
    /// left while this worker was away, or whose last update failed here), and records
    /// the directories the assignment does want as known.
    fn sweep(&mut self, a: &Assignment) {
        let wanted: BTreeSet<PathBuf> =
            a.tasks.iter().map(|t| self.settings.secrets_dir.join(format!("{}.{}", t.service_name, t.slot))).collect();
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

    async fn redeem(&mut self, req: RedeemRequest) -> anyhow::Result<Redeemed> {
        let n = self.managers.read().unwrap_or_else(|p| p.into_inner()).len().max(1);
        let mut last = String::new();
        for _ in 0..n {
            let addr = self.manager();
            match call::<Redeemed>(self.http.post(format!("https://{addr}/v1/worker/redeem")).json(&req)).await {
                Ok(r) => return Ok(r),
                Err((Some(code), msg)) => {
                    bail!("grant for task {} refused at {addr}: {msg} ({code:?})", req.grant.task_id)
                }
                Err((None, msg)) => {
                    last = format!("{addr}: {msg}");
                    self.next_manager();
                }
            }
        }
        bail!("no manager redeemed the grant: {last}")
    }

    async fn on_change(&self, dir: &Path, task: &AssignedTask) {
        let Some(cmd) = &self.settings.on_change else { return };
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("COFFER_TASK_DIR", dir)
            .env("COFFER_SERVICE", &task.service_name)
            .env("COFFER_TASK_ID", &task.task_id)
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

fn remove_task_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
    }
}

/// Removes a temporary file unless it was renamed into place: a failed write (chown as a
/// non-root user, a full tmpfs) must not leave a value lying in the secrets dir.
struct TmpFile(Option<PathBuf>);

impl Drop for TmpFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes every secret of `task` into `dir`, atomically per file. Files of references the
/// task no longer has are removed first (a target may become a directory of a new one).
fn write_task(
    dir: &Path,
    task: &AssignedTask,
    redeemed: &Redeemed,
    old_targets: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let now: BTreeSet<&str> = task.secrets.iter().map(|s| s.target.as_str()).collect();
    for t in old_targets.iter().filter(|t| !now.contains(t.as_str())) {
        let _ = std::fs::remove_file(dir.join(t));
    }
    // The task directory is ours alone: any other file in it (a target dropped while this
    // worker was away, a temporary file of a crash) goes too.
    remove_unlisted(dir, dir, &now);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    for s in &task.secrets {
        let value = redeemed
            .secrets
            .iter()
            .find(|r| r.secret_id == s.secret_id && r.version == s.version)
            .with_context(|| format!("the redeemed grant lacks secret {}", s.secret_name))?;
        let bytes = Zeroizing::new(b64.decode(&value.data).context("redeemed value is not base64")?);
        // Targets are validated by the manager; check again before touching the disk.
        if s.target.split('/').any(|p| p.is_empty() || p == "." || p == "..") || s.target.starts_with('/') {
            bail!("refusing target {:?}", s.target);
        }
        let path = dir.join(&s.target);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".coffer-{}", crate::ids::random_hex(6)));
        let mut guard = TmpFile(Some(tmp.clone()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
        }
        std::os::unix::fs::chown(&tmp, Some(s.uid), Some(s.gid)).with_context(|| {
            format!(
                "set owner {}:{} on {} (run the worker as root to own files as others)",
                s.uid,
                s.gid,
                path.display()
            )
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(s.mode))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename into {}", path.display()))?;
        guard.0 = None;
    }
    Ok(())
}

/// Removes the files under `dir` whose path relative to `root` is not in `keep`.
fn remove_unlisted(root: &Path, dir: &Path, keep: &BTreeSet<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            remove_unlisted(root, &path, keep);
            let _ = std::fs::remove_dir(&path); // only if now empty
        } else {
            let rel = path.strip_prefix(root).ok().and_then(|r| r.to_str()).unwrap_or_default();
            if !keep.contains(rel) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Task directories this worker has written, kept in its data dir so that a restarted
/// worker removes those whose tasks left it while it was away.
fn manifest_path(dir: &DataDir) -> PathBuf {
    dir.root().join("worker-tasks.json")
}

fn save_manifest(dir: &DataDir, dirs: &BTreeSet<PathBuf>) {
    if let Ok(text) = serde_json::to_string(dirs) {
        if let Err(e) = write_atomic(&manifest_path(dir), text.as_bytes(), 0o600) {
            tracing::warn!(error = %e, "cannot record this worker's task directories");
        }
    }
}

fn load_manifest(dir: &DataDir) -> BTreeSet<PathBuf> {
    std::fs::read_to_string(manifest_path(dir)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// `worker run`: runs the agent until shutdown.
pub async fn run(data_dir: DataDir, shutdown: CancellationToken) -> anyhow::Result<()> {
    tls::install_provider();
    let identity = NodeIdentity::load(&data_dir)?;
    let settings = WorkerSettings::load(&data_dir)?;
    check_in_memory(&settings.secrets_dir, settings.insecure_disk)?;
    let kek = key_file::load(&data_dir.key_file())?;
    let creds = bootstrap::load_credentials(&data_dir, &kek)?;
    let cert = NodeCert::new(tls::certified_key(&creds.cert_pem, creds.key_pem.expose())?);
    let http = tls::http_client(tls::client_config(&creds.ca_pem, Some(cert.clone()))?)?;
    let managers = Arc::new(RwLock::new(settings.managers.clone()));
    let current = Arc::new(AtomicUsize::new(0));
    let mut agent = Agent {
        http: http.clone(),
        settings: settings.clone(),
        managers: managers.clone(),
        current: current.clone(),
        leader: None,
        applied: BTreeMap::new(),
        known: load_manifest(&data_dir),
    };
    println!("coffer: worker {} running, secrets in {}", identity.node_id, settings.secrets_dir.display());

    let heartbeat_every = Arc::new(std::sync::atomic::AtomicU64::new(2000));
    tokio::spawn(heartbeats(
        http.clone(),
        managers.clone(),
        current.clone(),
        heartbeat_every.clone(),
        shutdown.clone(),
    ));
    {
        let (http, managers) = (http.clone(), managers.clone());
        tokio::spawn(crate::renewal::keep_renewed(
            data_dir.clone(),
            Arc::new(kek),
            cert,
            shutdown.clone(),
            move |csr| request_renewal(http.clone(), managers.clone(), csr),
        ));
    }

    let mut fingerprint: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry = Duration::from_millis(250);
    loop {
        let addr = agent.manager();
        let mut req = agent.http.get(format!("https://{addr}/v1/worker/assignments")).timeout(Duration::from_secs(40));
        if let Some(fp) = &fingerprint {
            req = req.query(&[("since", fp)]);
        }
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = call::<Assignment>(req) => r,
        };
        match polled {
            Ok(a) => {
                backoff = Duration::from_millis(100);
                agent.learn(&a);
                heartbeat_every.store(a.heartbeat_ms.max(100), std::sync::atomic::Ordering::Relaxed);
                agent.sweep(&a);
                let result = agent.reconcile(&a).await;
                save_manifest(&data_dir, &agent.known);
                match result {
                    Ok(()) => {
                        fingerprint = Some(a.fingerprint);
                        retry = Duration::from_millis(250);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?retry, "could not apply the whole assignment; retrying");
                        fingerprint = None;
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(retry) => {}
                        }
                        retry = (retry * 2).min(Duration::from_secs(30));
                    }
                }
            }
            Err((code, msg)) => {
                tracing::warn!(manager = %addr, ?code, error = %msg, "session lost; trying another manager (files are kept)");
                agent.next_manager();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn heartbeats(
    http: reqwest::Client,
    managers: Arc<RwLock<Vec<String>>>,
    current: Arc<AtomicUsize>,
    every_ms: Arc<std::sync::atomic::AtomicU64>,
    shutdown: CancellationToken,
) {
    loop {
        let wait = Duration::from_millis(every_ms.load(Ordering::Relaxed));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let i = current.load(Ordering::Relaxed);
        let addr = {
            let list = managers.read().unwrap_or_else(|p| p.into_inner());
            list.get(i % list.len().max(1)).cloned().unwrap_or_default()
        };
        let sent = http
            .post(format!("https://{addr}/v1/worker/heartbeat"))
            .timeout(wait.max(Duration::from_millis(500)))
            .send()
            .await;
        if !sent.is_ok_and(|r| r.status().is_success()) {
            // Move the session too (unless it already moved).
            let _ = current.compare_exchange(i, i.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// A worker's renewal: `/v1/renew` with its current certificate, at any manager it knows.
async fn request_renewal(
    http: reqwest::Client,
    managers: Arc<RwLock<Vec<String>>>,
    csr_pem: String,
) -> anyhow::Result<String> {
    let req = coffer_api::cluster::RenewRequest { csr_pem };
    let list = managers.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut last = String::new();
    for addr in list {
        match call::<coffer_api::cluster::RenewResponse>(http.post(format!("https://{addr}/v1/renew")).json(&req)).await
        {
            Ok(r) => return Ok(r.cert_pem),
            Err((_, msg)) => last = format!("{addr}: {msg}"),
        }
    }
    bail!("no manager renewed the certificate: {last}")
}

/// Creates the settings of a worker joining with `join` as its first manager.
pub fn settings(secrets_dir: PathBuf, insecure_disk: bool, on_change: Option<String>, join: &str) -> WorkerSettings {
    WorkerSettings { secrets_dir, insecure_disk, on_change, managers: vec![join.to_string()] }
}
