//! The worker agent: a session with any manager (long-polled assignments, heartbeats),
//! grants from the leader, redemption, and the secret files of its tasks on tmpfs.
//!
//! A task's directory is removed when the task leaves the node. While no manager answers,
//! the files stay as they are.
//!
//! Must never: write a value anywhere but the secrets dir, or log one.
//! Boundary: imports `trust` and `local`; a worker knows managers only through the API
//! (`coffer_api::client`), never the `manager` room.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use coffer_api::client::Client;
use coffer_raft_store::seal::KeyEncryptionKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::local::data_dir::{DataDir, NodeIdentity};
use crate::local::ids::NodeHex;
use crate::local::key_file;
use crate::trust::credentials::load_credentials;
use crate::trust::join::Joiner;
use crate::trust::tls::{self, NodeCert};
use crate::worker::session::{Agent, Local, Managers, SharedClient, CALL_TIMEOUT};

pub(crate) mod files;
mod heartbeat;
mod manifest;
mod runtime;
mod session;
pub(crate) mod settings;

pub use files::check_in_memory;
pub use settings::{RuntimeKind, WorkerSettings};

/// How long a worker keeps an idle connection. Its session's connection is never idle (a
/// long poll is always in flight); one it opens elsewhere (to the leader for grants, when
/// the manager of its session could not ask for it) is let go: a leader of 1 000 workers
/// held 1 000 idle TLS connections (about 35 KiB each) before.
const POOL_IDLE: Duration = Duration::from_secs(10);

/// `worker join`: a certificate through the join flow, then the worker's data dir.
///
/// # Errors
/// A secrets dir that is not in memory (without `--insecure-disk`), or a failed join.
pub async fn join(
    data_dir: &DataDir,
    token: &str,
    join: &str,
    settings: WorkerSettings,
) -> anyhow::Result<NodeIdentity> {
    check_in_memory(&settings.secrets_dir, settings.insecure_disk)?;
    // A worker that cannot run what it would be given must not join.
    if settings.runtime == RuntimeKind::Docker {
        runtime::docker::connect(settings.docker_socket.as_deref()).await?;
    }
    let unspecified: std::net::SocketAddr = "0.0.0.0:0".parse()?;
    let role = coffer_api::cluster::NodeRole::Worker;
    let host = settings.hostname.as_deref();
    let joiner = Joiner { role, listen: unspecified, advertise: unspecified, hostname: host };
    let id = crate::trust::join::join_data_dir(data_dir, token, join, joiner).await?;
    settings.save(data_dir)?;
    Ok(id)
}

/// A worker ready to run: its identity, settings and credentials loaded.
#[derive(Debug)]
pub struct Worker {
    pub identity: NodeIdentity,
    pub settings: WorkerSettings,
    data_dir: DataDir,
    ca_pem: String,
    client: SharedClient,
    cert: Arc<NodeCert>,
    kek: Arc<dyn KeyEncryptionKey>,
    /// The engine, with `--runtime docker` (connected by [`Worker::connect_runtime`]).
    docker: Option<bollard::Docker>,
}

impl Worker {
    /// Loads the worker of `data_dir`.
    ///
    /// # Errors
    /// A data dir that is not a worker's, a key that does not open its credentials, or a
    /// secrets dir that is not in memory.
    pub fn open(data_dir: DataDir) -> anyhow::Result<Self> {
        tls::install_provider();
        let identity = NodeIdentity::load(&data_dir)?;
        let settings = WorkerSettings::load(&data_dir)?;
        check_in_memory(&settings.secrets_dir, settings.insecure_disk)?;
        let kek = key_file::load(&data_dir.key_file())?;
        let creds = load_credentials(&data_dir, &kek)?;
        let cert = NodeCert::new(tls::certified_key(&creds.cert_pem, creds.key_pem.expose())?);
        let first = settings.managers.first().cloned().unwrap_or_default();
        let client = SharedClient::new(Client::with_tls_idle(&creds.ca_pem, Some(cert.clone()), &first, POOL_IDLE)?);
        Ok(Self { identity, settings, data_dir, ca_pem: creds.ca_pem, client, cert, kek: Arc::new(kek), docker: None })
    }

    /// Connects to what runs the tasks (`--runtime docker`: the engine), so that a worker
    /// that cannot reach it fails at start with a clear error, not on its first task.
    ///
    /// # Errors
    /// An engine socket that is missing or refused, or an engine that does not answer.
    pub async fn connect_runtime(&mut self) -> anyhow::Result<()> {
        if self.settings.runtime == RuntimeKind::Docker {
            self.docker = Some(runtime::docker::connect(self.settings.docker_socket.as_deref()).await?);
        }
        Ok(())
    }

    /// Runs the agent until `shutdown`; its heartbeat and renewal loops stop with it.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let span = tracing::info_span!("worker_session", node_id = %NodeHex(self.identity.node_id));
        let tasks = TaskTracker::new();
        let result = self.agent_loop(&tasks, shutdown.clone()).instrument(span).await;
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        result
    }

    async fn agent_loop(self, tasks: &TaskTracker, shutdown: CancellationToken) -> anyhow::Result<()> {
        let rt = runtime::Runtime::new(self.docker.is_some());
        let mut agent =
            Agent::new(self.client.clone(), self.settings.clone(), manifest::load(&self.data_dir), rt.clone());
        let report =
            runtime::report::reporter(rt.shared.clone(), self.client.clone(), agent.managers.clone(), shutdown.clone());
        tasks.spawn(report.in_current_span());
        if let Some(docker) = self.docker.clone() {
            let worker = NodeHex(self.identity.node_id).to_string();
            let supervisor = runtime::docker::Supervisor::new(docker, rt.shared.clone(), worker);
            tasks.spawn(supervisor.run(shutdown.clone()).in_current_span());
        }
        let heartbeat_every = Arc::new(AtomicU64::new(2000));
        let beats = heartbeat::heartbeats(
            self.client.clone(),
            agent.managers.clone(),
            heartbeat_every.clone(),
            shutdown.clone(),
        );
        tasks.spawn(beats.in_current_span());
        let (client, managers) = (self.client.clone(), agent.managers.clone());
        let (fresh, ca_pem, cert) = (self.client.clone(), self.ca_pem.clone(), self.cert.clone());
        let renewed = move || match Client::with_tls_idle(&ca_pem, Some(cert.clone()), "", POOL_IDLE) {
            Ok(c) => fresh.replace(c),
            Err(e) => tracing::warn!(error = %e, "cannot make a new client after a renewal"),
        };
        let (dir, kek) = (self.data_dir.clone(), self.kek.clone());
        let renew = crate::trust::renewal::keep_renewed(
            self.data_dir.clone(),
            self.cert.clone(),
            shutdown.clone(),
            move |csr| request_renewal(client.clone(), managers.clone(), csr),
            move |cert_pem: &str, key: &_| crate::trust::credentials::save_node_cert(&dir, kek.as_ref(), cert_pem, key),
            renewed,
        );
        tasks.spawn(renew.in_current_span());

        let mut fingerprint: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        let mut retry = Duration::from_millis(250);
        loop {
            let (turn, addr, polled) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = agent.poll(fingerprint.as_deref()) => r,
            };
            match polled {
                Ok(a) => {
                    backoff = Duration::from_millis(100);
                    agent.learn(&a);
                    heartbeat_every.store(a.heartbeat_ms.max(100), std::sync::atomic::Ordering::Relaxed);
                    agent.sweep(&a);
                    rt.assigned(&a.tasks);
                    let result = agent.reconcile(&a).await;
                    manifest::save(&self.data_dir, &agent.known);
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
                            // The cluster's troubles (no leader for a while, a manager cut
                            // off) heal on their own: ask again within 2 s of it. This
                            // host's (a disk, an owner it cannot set) do not: back off.
                            let cap = if e.downcast_ref::<Local>().is_some() { 30 } else { 2 };
                            retry = (retry * 2).min(Duration::from_secs(cap));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(manager = %addr, error = %e, "session lost; trying another manager (files are kept)");
                    agent.managers.move_on(turn);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// A worker's renewal: `/v1/renew` with its current certificate, at any manager it knows.
async fn request_renewal(client: SharedClient, managers: Managers, csr_pem: String) -> anyhow::Result<String> {
    let mut last = String::new();
    for addr in managers.all() {
        match client.at(&addr).with_timeout(CALL_TIMEOUT).renew(csr_pem.clone()).await {
            Ok(r) => return Ok(r.cert_pem),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    bail!("no manager renewed the certificate: {last}")
}
