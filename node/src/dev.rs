//! `coffer dev`: a whole local cluster in one process, on free loopback ports, for trying
//! Coffer out. Every manager is a real one (own data dir, own key, mutual TLS between
//! them); only the process is shared. Stops cleanly on Ctrl-C; a temporary directory is
//! removed on exit, a given `--dir` is kept and restarted from next time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use coffer_api::client::Client;
use coffer_api::cluster::NodeRole;
use tokio_util::sync::CancellationToken;

use crate::local::config::ManagerConfig;
use crate::local::data_dir::DataDir;
use crate::start::{self, bind, RunningManager, RunningWorker};
use crate::worker::WorkerSettings;

/// A running local cluster.
#[derive(Debug)]
pub struct DevCluster {
    pub managers: Vec<RunningManager>,
    pub workers: Vec<RunningWorker>,
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
                let config = start::restart_config(&manager_dir(root, i))?;
                let listener = bind(&config.listen).await?;
                managers.push(start::restart_manager(config, listener, shutdown.clone()).await?);
            }
        } else {
            let config = ManagerConfig { hostname: Some("manager-1".into()), ..ManagerConfig::for_test(&first) };
            let listener = bind(&config.listen).await?;
            let (summary, m1) = start::init_manager(config, listener, shutdown.clone()).await?;
            let join_addr = m1.manager.advertise.clone();
            managers.push(m1);
            for i in 2..=n {
                let config = ManagerConfig {
                    hostname: Some(format!("manager-{i}")),
                    ..ManagerConfig::for_test(manager_dir(root, i))
                };
                let listener = bind(&config.listen).await?;
                let token = &summary.manager_token;
                managers.push(start::join_manager(config, listener, token, &join_addr, shutdown.clone()).await?);
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
            let worker = if dir.node_file().exists() {
                start::restart_worker(dir, self.shutdown.clone()).await?
            } else {
                let token = match &token {
                    Some(t) => zeroize::Zeroizing::clone(t),
                    None => {
                        // The init token was shown once; a dev cluster makes itself a fresh
                        // one, as an operator would, with the admin bundle.
                        let t = worker_token(&self.client_dir, &join).await?;
                        token = Some(t.clone());
                        t
                    }
                };
                let (secrets_dir, insecure) = secrets_dir_for(root, i);
                let settings = WorkerSettings {
                    hostname: Some(format!("worker-{i}")),
                    ..WorkerSettings::new(secrets_dir, insecure, None, &join)
                };
                start::join_worker(dir, &token, &join, settings, self.shutdown.clone()).await?
            };
            self.workers.push(worker);
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

    /// Each worker's secrets dir.
    pub fn secrets_dirs(&self) -> Vec<PathBuf> {
        self.workers.iter().map(|w| w.settings.secrets_dir.clone()).collect()
    }

    /// Stops every node and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for w in self.workers {
            if let Err(e) = w.wait().await {
                tracing::warn!(error = %e, "a dev worker stopped with an error");
            }
        }
        for m in self.managers {
            m.wait().await;
        }
    }
}

/// `coffer dev`: starts the cluster, says how to use it (as text, or with `json` as one
/// `ready` event line for scripts), and stops it on `shutdown`.
///
/// # Errors
/// When the cluster cannot be started.
pub async fn run(
    managers: usize,
    workers: usize,
    dir: Option<PathBuf>,
    json: bool,
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
    if json {
        let workers: Vec<serde_json::Value> = cluster
            .workers
            .iter()
            .map(|w| serde_json::json!({"node_id": w.identity.node_id, "secrets_dir": w.settings.secrets_dir}))
            .collect();
        let ready = serde_json::json!({
            "event": "ready",
            "dir": root,
            "managers": cluster.addrs(),
            "client_dir": cluster.client_dir,
            "workers": workers,
        });
        println!("{ready}");
    } else {
        print_instructions(&cluster, &root);
    }
    shutdown.cancelled().await;
    eprintln!("stopping...");
    let secrets = cluster.secrets_dirs();
    cluster.stop().await;
    // The workers' secrets go with them, also when the cluster's dir is kept: nothing
    // would remove them from /dev/shm, and a restarted worker fetches them again.
    for s in secrets {
        let shm_dir =
            s.parent().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("coffer-dev-")));
        let _ = std::fs::remove_dir_all(shm_dir.unwrap_or(&s));
    }
    Ok(())
}

fn print_instructions(cluster: &DevCluster, root: &Path) {
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
    for (i, secrets) in cluster.secrets_dirs().iter().enumerate() {
        println!("  worker-{}   secrets in {}", i + 1, secrets.display());
    }
    println!();
    println!("Point the CLI at it (any manager will do):");
    if let Ok(exe) = std::env::current_exe() {
        println!("  alias coffer={}", exe.display());
    }
    println!("  export COFFER_ADDR={} COFFER_CLIENT_DIR={}", addrs[0], cluster.client_dir.display());
    println!("  coffer cluster status");
    println!("  coffer node ls");
    println!();
    println!("  printf hunter2 | coffer secret create db_password -");
    println!("  coffer service create api --replicas 2 --secret source=db_password,mode=0400");
    println!("  coffer service ps api");
    println!();
    println!("Ctrl-C stops the cluster.");
}

/// A fresh worker join token (rotating it), for the dev cluster's own workers: the one
/// `init` printed was shown once and not kept.
async fn worker_token(client_dir: &Path, addr: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let admin = Client::from_dir(client_dir, addr)?;
    let t = admin.rotate_token(NodeRole::Worker).await.context("rotate the worker join token")?;
    Ok(zeroize::Zeroizing::new(t.token))
}

/// Where worker `i` keeps its secrets: tmpfs under /dev/shm when there is one.
fn secrets_dir_for(root: &Path, i: usize) -> (PathBuf, bool) {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let tag = crate::local::ids::random_hex(4);
        let dir = shm.join(format!("coffer-dev-{tag}")).join(format!("worker-{i}"));
        if crate::worker::check_in_memory(&dir, false).is_ok() {
            return (dir, false);
        }
    }
    tracing::warn!("no tmpfs at /dev/shm: the dev workers write secrets to disk (--insecure-disk)");
    (root.join(format!("worker-{i}")).join("secrets"), true)
}
