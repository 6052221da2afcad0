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
    /// The admin client bundle of the cluster.
    pub client_dir: PathBuf,
    shutdown: CancellationToken,
}

fn manager_dir(root: &Path, i: usize) -> PathBuf {
    root.join(format!("manager-{i}"))
}

impl DevCluster {
    /// Starts `n` managers under `root` (or restarts those already there).
    ///
    /// # Errors
    /// When a manager cannot be created or started, or the cluster does not form.
    pub async fn start(root: &Path, n: usize, shutdown: CancellationToken) -> anyhow::Result<Self> {
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
        let cluster = Self { managers, client_dir: first.join("client"), shutdown };
        cluster.wait_formed(n, Duration::from_secs(60)).await?;
        Ok(cluster)
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

    /// Stops every manager and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for m in self.managers {
            let _ = m.serving.await;
        }
    }
}

/// `coffer dev`.
///
/// # Errors
/// When the cluster cannot be started.
pub async fn run(managers: usize, dir: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tmp;
    let root = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("coffer-dev-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let cluster = DevCluster::start(&root, managers, shutdown.clone()).await?;
    let addrs = cluster.addrs();
    println!("Coffer dev cluster: {} managers under {}", addrs.len(), root.display());
    for (i, a) in addrs.iter().enumerate() {
        println!("  manager-{}  https://{a}", i + 1);
    }
    println!();
    println!("Point the CLI at it (any manager will do):");
    println!("  export COFFER_ADDR={} COFFER_CLIENT_DIR={}", addrs[0], cluster.client_dir.display());
    println!("  coffer cluster status");
    println!("  coffer node ls");
    println!();
    println!("Ctrl-C stops the cluster.");
    shutdown.cancelled().await;
    println!("stopping...");
    cluster.stop().await;
    Ok(())
}
