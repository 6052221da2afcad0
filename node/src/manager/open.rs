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
use crate::local::unlock_key::UnlockKey;
use crate::manager::autolock::{self, StoreKey};
use crate::manager::link::Links;
use crate::manager::raft_net::{PeerNetwork, Peers};
use crate::manager::read_index::ReadIndexBatch;
use crate::manager::{audit, backup, metrics, recovery, scheduler, tls_keys, Manager};
use crate::trust::credentials::{load_ca, load_credentials, load_locked_cert};
use crate::trust::tls::{self, NodeCert};

/// An opened manager, and the TLS configuration its listener serves with.
#[derive(Debug)]
pub struct Opened {
    pub manager: Arc<Manager>,
    pub server_tls: Arc<rustls::ServerConfig>,
}

/// What a manager has before its store is open: identity, key file, the CA; and, while it is
/// locked (autolock), the powerless certificate it serves with until it gets its key.
pub struct Local {
    pub identity: NodeIdentity,
    pub data_dir: DataDir,
    /// The key file's KEK: seals the store's data key and the node's TLS key unless
    /// autolock is on, and the locked certificate's key if it is.
    pub kek: Arc<dyn KeyEncryptionKey>,
    pub ca_pem: String,
    /// Whether the store is sealed under the unlock key (autolock): it opens only with it.
    pub locked: bool,
    /// While locked: the certificate the listener serves with, replaced by the manager's own
    /// once the store is open, and the listener's configuration.
    pub early: Option<(Arc<NodeCert>, Arc<rustls::ServerConfig>)>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("node_id", &self.identity.node_id).field("locked", &self.locked).finish()
    }
}

impl Local {
    /// Reads the data dir of `config`: identity, key file, CA; whether the store is locked,
    /// and if it is, the certificate to serve with meanwhile.
    ///
    /// # Errors
    /// A data dir that cannot be read, or an invalid configuration.
    pub fn load(config: &ManagerConfig) -> anyhow::Result<Self> {
        tls::install_provider();
        config.validate()?;
        let data_dir = DataDir::new(&config.data_dir);
        let identity = NodeIdentity::load(&data_dir)?;
        let kek: Arc<dyn KeyEncryptionKey> = Arc::new(key_file::load(&data_dir.key_file())?);
        let ca_pem = load_ca(&data_dir)?;
        let kind = coffer_raft_store::kek_kind(&data_dir.store()).context("read the store's key kind")?;
        let locked = kind.as_deref() == Some(crate::local::unlock_key::KIND);
        let early = if locked {
            let (cert_pem, key_pem) = match load_locked_cert(&data_dir, kek.as_ref())? {
                Some(pair) => pair,
                // Locked before it made its locked certificate (it stopped right after
                // autolock was turned on): its own key is still under the key file.
                None => {
                    let c = load_credentials(&data_dir, kek.as_ref())
                        .context("this manager has no certificate to serve with while it is locked")?;
                    tracing::warn!("no locked certificate yet: serving with this manager's own until it is unlocked");
                    (c.cert_pem, c.key_pem)
                }
            };
            let cert = NodeCert::new(tls::certified_key(&cert_pem, key_pem.expose())?);
            let server_tls = tls::server_config(&ca_pem, cert.clone())?;
            Some((cert, server_tls))
        } else {
            None
        };
        Ok(Self { identity, data_dir, kek, ca_pem, locked, early })
    }

    /// The KEK that opens this manager's store: the key file's, or the one derived from
    /// `unlock` under autolock.
    pub fn store_key(&self, unlock: Option<&UnlockKey>) -> StoreKey {
        match unlock {
            Some(u) => StoreKey {
                kek: Arc::new(u.kek_for(&self.identity.cluster_id, self.identity.node_id)),
                unlock: Some(u.clone()),
            },
            None => StoreKey { kek: self.kek.clone(), unlock: None },
        }
    }
}

impl Manager {
    /// Opens the manager of `local`'s data dir, its store under `store_key`. Nothing is
    /// served and no background task runs yet.
    ///
    /// # Errors
    /// A store that cannot be opened (wrong key, tampered), or an invalid configuration.
    pub async fn open(
        config: ManagerConfig,
        local: &Local,
        store_key: StoreKey,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Opened> {
        let (identity, data_dir) = (local.identity.clone(), local.data_dir.clone());
        let metrics = metrics::Metrics::default();
        let options = StoreOptions {
            observer: Some(Arc::new(metrics.stages.clone())),
            node_id: Some(identity.node_id),
            ..Default::default()
        };
        let mut store = coffer_raft_store::open(&data_dir.store(), store_key.kek.as_ref(), options)
            .context("open the manager's store")?;
        let keks = [store_key.kek.as_ref(), local.kek.as_ref()];
        let (certified, _) =
            tls_keys::load_or_issue(&data_dir, &identity, &keks, &store.reader, config.node_cert_validity())?;
        let (cert, server_tls) = match &local.early {
            Some((cert, server_tls)) => {
                cert.replace(certified);
                (cert.clone(), server_tls.clone())
            }
            None => {
                let cert = NodeCert::new(certified);
                (cert.clone(), tls::server_config(&local.ca_pem, cert)?)
            }
        };
        let peers = Peers::new(
            tls::http_client(tls::peer_client_config(&local.ca_pem, cert.clone())?)?,
            tls::http_client(tls::client_config(&local.ca_pem, None)?)?,
            Links::new(tls::link_client_config(&local.ca_pem, cert.clone())?, metrics.peer_calls.clone()),
        );
        if let Some(f) = config.force_new_cluster {
            recovery::force_new_cluster(&mut store, identity.node_id, &identity.advertise, &peers, f).await?;
        }
        let raft_config = Arc::new(config.openraft_config()?);
        let raft = Raft::new(
            identity.node_id,
            raft_config,
            PeerNetwork::new(peers.clone(), metrics.stages.clone(), store.durable.clone()),
            store.log,
            store.state_machine,
        )
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
            ca_pem: local.ca_pem.clone(),
            config,
            data_dir,
            kek: local.kek.clone(),
            store_key: std::sync::Mutex::new(store_key),
            node_key_lock: std::sync::Mutex::new(()),
            membership_lock: tokio::sync::Mutex::new(()),
            join_lock: tokio::sync::Mutex::new(()),
            autolock_lock: tokio::sync::Mutex::new(()),
            grant_key: tokio::sync::Mutex::new(None),
            read_batch: ReadIndexBatch::default(),
            served_batch: ReadIndexBatch::default(),
            group: Default::default(),
            forwarder: Default::default(),
            metrics,
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
        self.tasks.spawn(autolock::follow(self.clone()));
        self.tasks.spawn(crate::manager::compaction::run(self.clone()));
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
