//! `manager init`: a new cluster in a new data dir (its id, root CA, this manager's key and
//! certificate, join tokens, the admin client bundle, the cluster value key), then the
//! first records committed once Raft runs. And the cluster CA, opened from the replicated
//! cluster record when a leader signs.
//!
//! Invariant: the CA key exists in plaintext only in memory: on disk it is in the cluster
//! record, sealed with the cluster value key (and at rest with each manager's data key).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use coffer_api::cluster::NodeRole as WireRole;
use coffer_api::time::now_millis;
use coffer_raft_store::model::{
    AdminCredentialRecord, Availability, ClusterRecord, ClusterSettings, Command, NodeRecord, NodeRole, NodeStatus,
    SealedBytes, SecretBytes,
};
use coffer_raft_store::seal::{Aad, KeyBytes, Sealer};
use coffer_raft_store::ManagerNode;
use rand::Rng;
use zeroize::Zeroizing;

use crate::local::config::ManagerConfig;
use crate::local::data_dir::{write_atomic, DataDir, NodeIdentity};
use crate::local::key_file;
use crate::manager::Manager;
use crate::trust::credentials::save_node_tls;
use crate::trust::join::hostname;
use crate::trust::join_token::JoinToken;
use crate::trust::pki::{self, ClusterCa, NodeKey, Role};
use coffer_raft_store::seal::KeyEncryptionKey;
/// The name of the admin credential `manager init` writes to `client/`.
const FIRST_ADMIN: &str = "admin";
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The commands that create the cluster, proposed once Raft runs.
#[derive(Debug)]
pub struct Bootstrap {
    cluster: ClusterRecord,
    node: NodeRecord,
    /// The admin bundle written to `client/`: the first admin credential.
    admin: AdminCredentialRecord,
}

/// What `manager init` shows the operator once.
pub struct InitSummary {
    pub cluster_id: String,
    pub node_id: u64,
    pub addr: String,
    pub worker_token: Zeroizing<String>,
    pub manager_token: Zeroizing<String>,
    pub client_dir: std::path::PathBuf,
    /// `manager init --autolock`: the unlock key, shown this once.
    pub unlock_key: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for InitSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitSummary").field("cluster_id", &self.cluster_id).field("addr", &self.addr).finish()
    }
}

/// `manager init`: a new cluster in `config.data_dir`, for a listener bound at `bound`.
pub fn init_data_dir(config: &ManagerConfig, bound: SocketAddr) -> anyhow::Result<(Bootstrap, InitSummary)> {
    let dir = DataDir::new(&config.data_dir);
    dir.refuse_existing()?;
    std::fs::create_dir_all(dir.root()).with_context(|| format!("create {}", dir.root().display()))?;
    let advertise = config.advertise_addr(bound)?;
    let kek = key_file::create(&dir.key_file())?;

    let cluster_id = crate::local::ids::random_hex(8);
    let node_id: u64 = rand::thread_rng().gen_range(1..u64::MAX);
    let ca = ClusterCa::generate(&cluster_id)?;

    let serial = certify_manager(&dir, &kek, (&ca, &cluster_id), node_id, advertise, config)?;

    let digest = pki::cert_digest(ca.cert_pem())?;
    let worker_token = JoinToken::generate(digest);
    let manager_token = JoinToken::generate(digest);
    let now = now_millis();
    let admin = write_admin_bundle(&dir, (&ca, &cluster_id), FIRST_ADMIN, now)?;
    let client_dir = dir.client_dir();

    let value_key = KeyBytes::generate();
    let ca_key_sealed =
        Sealer::new(&value_key).seal(&Aad::new("ca-key", cluster_id.as_bytes()), ca.key_pem().expose().as_bytes())?;
    let settings = ClusterSettings {
        node_cert_validity_secs: config.node_cert_validity_secs,
        grant_ttl_secs: config.grant_ttl_secs,
        worker_heartbeat_ms: config.worker_heartbeat_ms,
        ..ClusterSettings::default()
    };
    let mut cluster = ClusterRecord {
        id: cluster_id.clone(),
        created_at: now,
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key: SealedBytes(ca_key_sealed),
        value_key: SecretBytes(value_key.expose().to_vec()),
        worker_token_hash: worker_token.hash(),
        manager_token_hash: manager_token.hash(),
        settings,
        autolock: false,
        wrapped_unlock: None,
    };
    let unlock_key = if config.autolock {
        let key = crate::local::unlock_key::UnlockKey::generate();
        cluster.wrapped_unlock =
            Some(crate::manager::autolock::seal(&cluster, 1, &key).map_err(|e| anyhow::anyhow!("{}", e.message))?);
        cluster.autolock = true;
        Some(key.reveal())
    } else {
        None
    };
    let node = manager_record(config, node_id, advertise, serial, now);
    NodeIdentity {
        node_id,
        cluster_id: cluster_id.clone(),
        role: WireRole::Manager,
        listen: bound.to_string(),
        advertise: advertise.to_string(),
    }
    .save(&dir)?;
    let summary = InitSummary {
        cluster_id,
        node_id,
        addr: advertise.to_string(),
        worker_token: worker_token.reveal(),
        manager_token: manager_token.reveal(),
        client_dir,
        unlock_key,
    };
    Ok((Bootstrap { cluster, node, admin }, summary))
}

/// A new key and certificate for manager `node_id` at `advertise`, signed by `ca` and saved
/// (the key sealed) in `dir`. Returns the certificate's serial.
pub(crate) fn certify_manager(
    dir: &DataDir,
    kek: &dyn KeyEncryptionKey,
    (ca, cluster_id): (&ClusterCa, &str),
    node_id: u64,
    advertise: SocketAddr,
    config: &ManagerConfig,
) -> anyhow::Result<String> {
    let node_key = NodeKey::generate()?;
    let ip = [advertise.ip().to_string()];
    let csr = node_key.csr_pem(&ip)?;
    let issued = ca.sign_csr(&csr, node_id, Role::Manager, cluster_id, &ip, config.node_cert_validity())?;
    save_node_tls(dir, kek, ca.cert_pem(), &issued.cert_pem, &node_key.key_pem())?;
    Ok(issued.serial_hex)
}

/// Writes an admin client bundle named `name` to `dir/client/` (0700; the key 0600) and
/// returns the credential record that makes the cluster accept it. The key is the one
/// private key Coffer writes in plaintext: the CLI must read it, like a kubeconfig.
pub(crate) fn write_admin_bundle(
    dir: &DataDir,
    (ca, cluster_id): (&ClusterCa, &str),
    name: &str,
    now: u64,
) -> anyhow::Result<AdminCredentialRecord> {
    let client_dir = dir.client_dir();
    std::fs::create_dir_all(&client_dir)?;
    std::fs::set_permissions(&client_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let (cert, key) = ca.issue_admin(name, cluster_id, ADMIN_CERT_VALIDITY)?;
    write_atomic(&client_dir.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
    write_atomic(&client_dir.join("client.pem"), cert.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&client_dir.join("client.key"), key.expose().as_bytes(), 0o600)?;
    Ok(AdminCredentialRecord {
        name: name.into(),
        serial_hex: cert.serial_hex,
        created_at: now,
        expires_at: u64::try_from(cert.not_after_unix).unwrap_or(0).saturating_mul(1000),
        revoked: false,
    })
}

/// The record of a manager that starts a cluster (init, restore).
pub(crate) fn manager_record(
    config: &ManagerConfig,
    node_id: u64,
    advertise: SocketAddr,
    cert_serial: String,
    now: u64,
) -> NodeRecord {
    NodeRecord {
        id: node_id,
        role: NodeRole::Manager,
        hostname: config.hostname.clone().unwrap_or_else(hostname),
        addr: advertise.to_string(),
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: Default::default(),
        cert_serial,
        grant_public_key: None,
        removed: false,
        joined_at: now,
        updated_at: now,
    }
}

/// Initializes the one-member Raft and commits the cluster's first records.
pub(crate) async fn bootstrap_cluster(m: &Manager, b: Bootstrap) -> anyhow::Result<()> {
    let members = std::collections::BTreeMap::from([(m.id, ManagerNode { addr: m.advertise.clone() })]);
    m.raft.initialize(members).await.context("initialize raft")?;
    m.propose(Command::InitCluster(b.cluster))
        .await
        .map_err(|e| anyhow::anyhow!("commit the cluster record: {}", e.message))?;
    m.propose(Command::PutNode(b.node)).await.map_err(|e| anyhow::anyhow!("commit this node: {}", e.message))?;
    m.propose(Command::PutAdminCredential(b.admin))
        .await
        .map_err(|e| anyhow::anyhow!("commit the first admin credential: {}", e.message))?;
    Ok(())
}
