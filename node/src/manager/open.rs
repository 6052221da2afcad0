//! Opening a manager from its data dir: key file, credentials, store, Raft and its network,
//! the audit log, in that order. Serving it is [`crate::start`]'s job.

use std::sync::Arc;

use anyhow::Context;
use coffer_raft_store::seal::KeyEncryptionKey;
use coffer_raft_store::StoreOptions;
use openraft::Raft;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::local::config::ManagerConfig;
use crate::local::data_dir::{DataDir, NodeIdentity};
use crate::local::key_file;
use crate::manager::raft_net::{PeerNetwork, Peers};
use crate::manager::read_index::ReadIndexBatch;
use crate::manager::{audit, backup, metrics, recovery, scheduler, Manager};
use crate::trust::credentials::load_credentials;
use crate::trust::tls::{self, NodeCert};

/// An opened manager, and the TLS configuration its listener serves with.
#[derive(Debug)]
pub struct Opened {
    pub manager: Arc<Manager>,
    pub server_tls: Arc<rustls::ServerConfig>,
}

impl Manager {
    /// Opens the manager whose data dir is `config.data_dir`. Nothing is served and no
    /// background task runs yet.
    ///
    /// # Errors
    /// A data dir that cannot be read or opened (wrong key, tampered store), or an invalid
    /// configuration.
    pub async fn open(config: ManagerConfig, shutdown: CancellationToken) -> anyhow::Result<Opened> {
        tls::install_provider();
        config.validate()?;
        let data_dir = DataDir::new(&config.data_dir);
        let identity = NodeIdentity::load(&data_dir)?;
        let kek: Arc<dyn KeyEncryptionKey> = Arc::new(key_file::load(&data_dir.key_file())?);
        let creds = load_credentials(&data_dir, kek.as_ref())?;
        let cert = NodeCert::new(tls::certified_key(&creds.cert_pem, creds.key_pem.expose())?);
        let peers = Peers::new(tls::http_client(tls::client_config(&creds.ca_pem, Some(cert.clone()))?)?);
        let server_tls = tls::server_config(&creds.ca_pem, cert.clone())?;

        let mut store = coffer_raft_store::open(&data_dir.store(), kek.as_ref(), StoreOptions::default())
            .context("open the manager's store")?;
        if let Some(f) = config.force_new_cluster {
            recovery::force_new_cluster(&mut store, identity.node_id, &identity.advertise, &peers, f).await?;
        }
        let raft_config = Arc::new(config.openraft_config()?);
        let raft =
            Raft::new(identity.node_id, raft_config, PeerNetwork::new(peers.clone()), store.log, store.state_machine)
                .await
                .context("start raft")?;

        let audit = audit::AuditLog::start(data_dir.root().join("audit.log")).context("start the audit log")?;
        let manager = Arc::new(Manager {
            raft,
            reader: store.reader,
            inbox: store.snapshots,
            id: identity.node_id,
            cluster_id: identity.cluster_id.clone(),
            advertise: identity.advertise.clone(),
            cert,
            peers,
            ca_pem: creds.ca_pem.clone(),
            config,
            data_dir,
            kek,
            membership_lock: tokio::sync::Mutex::new(()),
            join_lock: tokio::sync::Mutex::new(()),
            grant_key: tokio::sync::Mutex::new(None),
            read_batch: ReadIndexBatch::default(),
            metrics: metrics::Metrics::default(),
            value_sealer: std::sync::OnceLock::new(),
            audit,
            liveness: scheduler::Liveness::default(),
            renewals: Default::default(),
            shutdown,
            tasks: TaskTracker::new(),
        });
        Ok(Opened { manager, server_tls })
    }

    /// Starts the manager's own background work (scheduler, certificate renewal), owned
    /// by its task tracker.
    pub fn spawn_background(self: &Arc<Self>) {
        self.tasks.spawn(crate::manager::renew::keep_renewed(self.clone()));
        self.tasks.spawn(scheduler::run(self.clone()));
        if let Some(s) = self.config.snapshots.clone() {
            self.tasks.spawn(backup::scheduled(self.clone(), s));
        }
    }

    /// Once shutdown is signalled and the listener has stopped: stops Raft (which fails any
    /// commit still waiting, e.g. for a quorum that is gone), then waits for every
    /// background task to end.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}
