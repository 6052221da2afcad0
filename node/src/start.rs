//! Starting nodes: `init`, `join` and `restart` of a manager, `join` and `restart` of a
//! worker, each given a configuration (or data dir), a bound listener where one serves, and
//! a shutdown signal. The one library entry the CLI, `coffer dev` and the benchmarks call
//! (and the test harness, through the CLI's processes).
//!
//! A manager is assembled here, above both `manager` and `http`: open it (storage, Raft,
//! network), serve its router on the listener, commit the first records of a new cluster,
//! then start its background work. Everything a started node spawns stops with the
//! shutdown signal and is awaited by [`RunningManager::wait`] / [`RunningWorker::wait`].

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use coffer_api::cluster::NodeRole;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http;
use crate::http::locked::Unlocker;
use crate::local::config::ManagerConfig;
use crate::local::data_dir::{DataDir, NodeIdentity};
use crate::local::ids::NodeHex;
use crate::manager::init::{self, Bootstrap};
use crate::manager::open::{Local, Opened};
use crate::manager::Manager;
use crate::trust::join::Joiner;
use crate::worker::Worker;

pub use crate::manager::init::InitSummary;
pub use crate::worker::{RuntimeKind, WorkerSettings};

/// Binds `addr` (port 0 picks one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))
}

/// A started manager, serving until its shutdown signal.
#[derive(Debug)]
pub struct RunningManager {
    pub manager: Arc<Manager>,
    done: JoinHandle<()>,
}

impl RunningManager {
    /// Waits until the manager has stopped: listener closed, background tasks ended, Raft
    /// shut down.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// `manager init`: a new cluster in `config.data_dir` (which must hold no node yet),
/// served on `listener`. Returns what the operator is shown once.
///
/// # Errors
/// An invalid configuration, a data dir in use, or a cluster that cannot be bootstrapped.
pub async fn init_manager(
    config: ManagerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<(InitSummary, RunningManager)> {
    config.validate()?;
    let (bootstrap, summary) = init::init_data_dir(&config, listener.local_addr()?)?;
    let running = serve_manager(config, listener, Some(bootstrap), shutdown).await?;
    Ok((summary, running))
}

/// `snapshot restore`: a new one-manager cluster from the backup at `backup` (sealed under
/// `key`) in `config.data_dir`, which must be empty, served on `listener`.
///
/// # Errors
/// A data dir that is not empty, a backup that is not intact or not opened by `key`.
pub async fn restore_manager(
    config: ManagerConfig,
    listener: TcpListener,
    backup: &std::path::Path,
    key: &coffer_raft_store::backup::BackupKey,
    shutdown: CancellationToken,
) -> anyhow::Result<(InitSummary, RunningManager)> {
    config.validate()?;
    let summary = crate::manager::recovery::restore_data_dir(&config, listener.local_addr()?, backup, key)?;
    let running = serve_manager(config, listener, None, shutdown).await?;
    Ok((summary, running))
}

/// `worker run --join H:P`: the managers a worker tries first from now on (after a restore,
/// the new cluster's); those it knew stay behind them.
///
/// # Errors
/// A data dir that is not a worker's.
pub fn point_worker_at(data_dir: &DataDir, managers: &[String]) -> anyhow::Result<()> {
    let mut settings = WorkerSettings::load(data_dir)?;
    let mut known: Vec<String> = managers.to_vec();
    known.extend(settings.managers.iter().filter(|m| !managers.contains(m)).cloned());
    settings.managers = known;
    settings.save(data_dir)
}

/// `manager join`: joins the cluster of the manager at `join` with a manager join token,
/// then serves on `listener`.
///
/// # Errors
/// An invalid configuration, a data dir in use, or a refused join.
pub async fn join_manager(
    config: ManagerConfig,
    listener: TcpListener,
    token: &str,
    join: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningManager> {
    config.validate()?;
    let bound = listener.local_addr()?;
    let advertise = config.advertise_addr(bound)?;
    let dir = DataDir::new(&config.data_dir);
    let host = config.hostname.as_deref();
    let joiner = Joiner { role: NodeRole::Manager, listen: bound, advertise, hostname: host };
    crate::trust::join::join_data_dir(&dir, token, join, joiner).await?;
    serve_manager(config, listener, None, shutdown).await
}

/// `manager run`: restarts the manager of `config.data_dir`.
///
/// # Errors
/// A data dir that cannot be opened.
pub async fn restart_manager(
    config: ManagerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningManager> {
    serve_manager(config, listener, None, shutdown).await
}

/// The configuration `manager run` starts from: the data dir's recorded addresses.
///
/// # Errors
/// A data dir that holds no node.
pub fn restart_config(data_dir: &std::path::Path) -> anyhow::Result<ManagerConfig> {
    let identity = NodeIdentity::load(&DataDir::new(data_dir))?;
    let mut config = ManagerConfig::new(data_dir, &identity.listen);
    config.advertise = Some(identity.advertise);
    Ok(config)
}

/// A locked manager was asked to stop before anyone unlocked it: a clean stop, not a
/// failure.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stopped while locked, before it was unlocked")]
pub struct StoppedLocked;

/// Whether the manager of `data_dir` will start locked (autolock): it then serves only
/// health, the CA and unlock until it gets its unlock key.
///
/// # Errors
/// A data dir that cannot be read.
pub fn starts_locked(data_dir: &std::path::Path) -> anyhow::Result<bool> {
    let kind = coffer_raft_store::kek_kind(&DataDir::new(data_dir).store())?;
    Ok(kind.as_deref() == Some(crate::local::unlock_key::KIND))
}

/// A router that can be swapped while the listener serves: a locked manager's, then the
/// full one once it is unlocked.
fn gate(initial: Router) -> (tokio::sync::watch::Sender<Router>, Router) {
    let (tx, rx) = tokio::sync::watch::channel(initial);
    let app = Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let current = rx.borrow().clone();
        async move { tower::ServiceExt::oneshot(current, req).await }
    }));
    (tx, app)
}

async fn serve_manager(
    config: ManagerConfig,
    listener: TcpListener,
    bootstrap: Option<Bootstrap>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningManager> {
    let local = Local::load(&config)?;
    let opened: Arc<std::sync::OnceLock<Arc<Manager>>> = Arc::default();
    let cell = opened.clone();
    let still_valid: http::server::StillValid = Arc::new(move |id| match cell.get() {
        Some(m) => http::auth::still_valid(m, id),
        // Locked: no state to check against; the locked router lets admins unlock only.
        None => true,
    });
    let (swap, app) = gate(Router::new());
    // The listener starts once there is a certificate to serve with: the locked one at
    // once, else the manager's own when its store is open.
    let locked_era = local.locked.then(CancellationToken::new);
    let mut serve = {
        let (limits, shutdown, era) = (config.limits.clone(), shutdown.clone(), locked_era.clone());
        Some(move |tls| {
            tokio::spawn(http::server::serve_checked(listener, tls, app, limits, still_valid, era, shutdown))
        })
    };
    let (unlock, serving) = if let (true, Some((_, early_tls))) = (local.locked, &local.early) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = swap
            .send_replace(http::locked::router(local.ca_pem.clone(), Unlocker::new(tx, &local.identity.cluster_id)));
        let serving = serve.take().map(|f| f(early_tls.clone()));
        match crate::manager::unlock::wait(&local, config.unlock.as_ref(), rx, &shutdown).await {
            Some(key) => (Some(key), serving),
            None => {
                if let Some(s) = serving {
                    let _ = s.await;
                }
                return Err(StoppedLocked.into());
            }
        }
    } else {
        (None, None)
    };
    let store_key = local.store_key(unlock.as_ref());
    let (manager, server_tls) = match Manager::open(config, &local, store_key, shutdown.clone()).await {
        Ok(Opened { manager, server_tls }) => (manager, server_tls),
        Err(e) => {
            shutdown.cancel();
            if let Some(s) = serving {
                let _ = s.await;
            }
            return Err(e);
        }
    };
    let _ = opened.set(manager.clone());
    let _ = swap.send_replace(http::router::router(manager.clone()));
    // Connections opened while locked show the locked certificate: close them once their
    // requests are answered.
    if let Some(era) = locked_era {
        era.cancel();
    }
    let Some(serving) = serving.or_else(|| serve.take().map(|f| f(server_tls))) else {
        anyhow::bail!("the listener is already served");
    };
    let m = manager.clone();
    let done = tokio::spawn(async move {
        let _ = serving.await;
        m.stopped().await;
    });
    if let Some(b) = bootstrap {
        if let Err(e) = init::bootstrap_cluster(&manager, b).await {
            shutdown.cancel();
            let _ = done.await;
            return Err(e);
        }
    }
    manager.spawn_background();
    tracing::info!(node_id = %NodeHex(manager.id), addr = %manager.advertise, "manager serving");
    Ok(RunningManager { manager, done })
}

/// A started worker, running until its shutdown signal.
#[derive(Debug)]
pub struct RunningWorker {
    pub identity: NodeIdentity,
    pub settings: WorkerSettings,
    done: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Waits until the worker has stopped, with the error that stopped it, if any.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("the worker task failed")?
    }

    /// Whether the worker has stopped (on its own, or on the shutdown signal).
    pub fn is_finished(&self) -> bool {
        self.done.is_finished()
    }
}

/// `worker join`: joins the cluster of the manager at `join` with a worker join token, then
/// runs.
///
/// # Errors
/// A secrets dir that is not in memory, a data dir in use, or a refused join.
pub async fn join_worker(
    data_dir: DataDir,
    token: &str,
    join: &str,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningWorker> {
    crate::worker::join(&data_dir, token, join, settings).await?;
    restart_worker(data_dir, shutdown).await
}

/// `worker run`: restarts the worker of `data_dir`.
///
/// # Errors
/// A data dir that is not a worker's, or whose credentials do not open.
pub async fn restart_worker(data_dir: DataDir, shutdown: CancellationToken) -> anyhow::Result<RunningWorker> {
    let mut worker = Worker::open(data_dir)?;
    worker.connect_runtime().await?;
    let (identity, settings) = (worker.identity.clone(), worker.settings.clone());
    let done = tokio::spawn(worker.run(shutdown));
    Ok(RunningWorker { identity, settings, done })
}
