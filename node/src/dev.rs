//! `coffer dev`: a whole local cluster in one process, on free loopback ports, for trying
//! Coffer out. Every manager is a real one (own data dir, own key, mutual TLS between
//! them); only the process is shared. Stops cleanly on Ctrl-C; a temporary directory is
//! removed on exit, a given `--dir` is kept and restarted from next time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use coffer_api::cluster::NodeRole;
use tokio_util::sync::CancellationToken;

use crate::bootstrap;
use crate::config::ManagerConfig;
use crate::data_dir::{DataDir, NodeIdentity};
use crate::manager::{bind, Manager, RunningManager, Startup};

/// A running local cluster.
#[derive(Debug)]
pub struct DevCluster {
    pub managers: Vec<RunningManager>,
    /// Each worker's secrets dir, and the task running its agent.
    pub workers: Vec<(PathBuf, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    /// The admin client bundle of the cluster.
    pub client_dir: PathBuf,
    shutdown: CancellationToken,
}

fn manager_dir(root: &Path, i: usize) -> PathBuf {
    root.join(format!("manager-{i}"))
}

impl DevCluster {
    /// Starts `n` managers and `workers` workers under `root` (or restarts those already
    /// there). Workers' secrets go to tmpfs under /dev/shm when it is one, else to `root`
    /// with `--insecure-disk` (and a warning).
    ///
    /// # Errors
    /// When a node cannot be created or started, or the cluster does not form.
    pub async fn start(root: &Path, n: usize, workers: usize, shutdown: CancellationToken) -> anyhow::Result<Self> {
        anyhow::ensure!(n >= 1, "a cluster needs at least one manager");
        std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
        let first = manager_dir(root, 1);
        let mut managers = Vec::new();
        if first.join("node.json").exists() {
            for i in 1..=n {
                let dir = DataDir::new(manager_dir(root, i));
                let id = NodeIdentity::load(&dir)?;
                let config = ManagerConfig::new(dir.root(), &id.listen);
                let listener = bind(&id.listen).await?;
                managers.push(Manager::start(config, Startup { listener, bootstrap: None }, shutdown.clone()).await?);
            }
        } else {
            let config = ManagerConfig::for_test(&first);
            let listener = bind(&config.listen).await?;
            let (b, summary) = bootstrap::init_data_dir(&config, listener.local_addr()?)?;
            let m1 = Manager::start(config, Startup { listener, bootstrap: Some(b) }, shutdown.clone()).await?;
            let join_addr = m1.manager.advertise.clone();
            managers.push(m1);
            for i in 2..=n {
                let config = ManagerConfig::for_test(manager_dir(root, i));
                let listener = bind(&config.listen).await?;
                let bound = listener.local_addr()?;
                let dir = DataDir::new(&config.data_dir);
                bootstrap::join_data_dir(&dir, NodeRole::Manager, &summary.manager_token, &join_addr, bound, bound)
                    .await?;
                managers.push(Manager::start(config, Startup { listener, bootstrap: None }, shutdown.clone()).await?);
            }
        }
        let mut cluster = Self { managers, workers: Vec::new(), client_dir: first.join("client"), shutdown };
        cluster.wait_formed(n, Duration::from_secs(60)).await?;
        cluster.start_workers(root, workers).await?;
        Ok(cluster)
    }

    async fn start_workers(&mut self, root: &Path, count: usize) -> anyhow::Result<()> {
        if count == 0 {
            return Ok(());
        }
        let join = self.managers[0].manager.advertise.clone();
        let mut token = None;
        for i in 1..=count {
            let dir = DataDir::new(root.join(format!("worker-{i}")));
            if !dir.node_file().exists() {
                let token = match &token {
                    Some(t) => zeroize::Zeroizing::clone(t),
                    None => {
                        // The init token was shown once; a dev cluster makes itself a fresh one.
                        let t = worker_token(&self.managers[0].manager).await?;
                        token = Some(t.clone());
                        t
                    }
                };
                let (secrets_dir, insecure) = secrets_dir_for(root, i);
                let settings = crate::worker::settings(secrets_dir, insecure, None, &join);
                crate::worker::join(&dir, &token, &join, settings).await?;
            }
            let secrets = crate::worker::WorkerSettings::load(&dir)?.secrets_dir;
            let task = tokio::spawn(crate::worker::run(dir, self.shutdown.clone()));
            self.workers.push((secrets, task));
        }
        Ok(())
    }

    /// Waits until some manager leads a membership of `n` voters.
    async fn wait_formed(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let m = &self.managers[0].manager;
        m.raft
            .wait(Some(within))
            .metrics(
                |x| x.current_leader.is_some() && x.membership_config.membership().voter_ids().count() == n,
                "all managers vote",
            )
            .await
            .context("the cluster did not form")?;
        Ok(())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.managers.iter().map(|m| m.manager.advertise.clone()).collect()
    }

    /// Stops every node and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for (_, w) in self.workers {
            let _ = w.await;
        }
        for m in self.managers {
            let _ = m.serving.await;
        }
    }
}

/// `coffer dev`.
///
/// # Errors
/// When the cluster cannot be started.
pub async fn run(
    managers: usize,
    workers: usize,
    dir: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tmp;
    let root = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("coffer-dev-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let cluster = DevCluster::start(&root, managers, workers, shutdown.clone()).await?;
    let addrs = cluster.addrs();
    println!(
        "Coffer dev cluster: {} managers and {} workers under {}",
        addrs.len(),
        cluster.workers.len(),
        root.display()
    );
    for (i, a) in addrs.iter().enumerate() {
        println!("  manager-{}  https://{a}", i + 1);
    }
    for (i, (secrets, _)) in cluster.workers.iter().enumerate() {
        println!("  worker-{}   secrets in {}", i + 1, secrets.display());
    }
    println!();
    println!("Point the CLI at it (any manager will do):");
    println!("  export COFFER_ADDR={} COFFER_CLIENT_DIR={}", addrs[0], cluster.client_dir.display());
    println!("  coffer cluster status");
    println!("  coffer node ls");
    println!();
    println!("  printf hunter2 | coffer secret create db_password -");
    println!("  coffer service create api --replicas 2 --secret source=db_password,mode=0400");
    println!("  coffer service ps api");
    println!();
    println!("Ctrl-C stops the cluster.");
    shutdown.cancelled().await;
    println!("stopping...");
    let secrets: Vec<PathBuf> = cluster.workers.iter().map(|(s, _)| s.clone()).collect();
    let temporary = tmp_root_is_temporary(&root);
    cluster.stop().await;
    if temporary {
        // The temporary cluster goes, and the tmpfs secrets of its workers with it.
        for s in secrets {
            let _ = std::fs::remove_dir_all(s.parent().unwrap_or(&s));
        }
    }
    Ok(())
}

fn tmp_root_is_temporary(root: &Path) -> bool {
    root.file_name().is_some_and(|n| n.to_string_lossy().starts_with("coffer-dev-"))
}

/// A fresh worker join token (rotating it), for the dev cluster's own workers: the one
/// `init` printed was shown once and not kept.
async fn worker_token(m: &std::sync::Arc<Manager>) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use crate::leader_ops::{LeaderOp, OpResult};
    match m.leader_op(LeaderOp::RotateToken(NodeRole::Worker)).await {
        Ok(OpResult::Token(t)) => Ok(zeroize::Zeroizing::new(t.token)),
        Ok(_) => anyhow::bail!("unexpected reply to a token rotation"),
        Err(e) => anyhow::bail!("rotate the worker token: {}", e.message),
    }
}

/// Where worker `i` keeps its secrets: tmpfs under /dev/shm when there is one.
fn secrets_dir_for(root: &Path, i: usize) -> (PathBuf, bool) {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let tag = crate::ids::random_hex(4);
        let dir = shm.join(format!("coffer-dev-{tag}")).join(format!("worker-{i}"));
        if crate::worker::check_in_memory(&dir, false).is_ok() {
            return (dir, false);
        }
    }
    tracing::warn!("no tmpfs at /dev/shm: the dev workers write secrets to disk (--insecure-disk)");
    (root.join(format!("worker-{i}")).join("secrets"), true)
}
