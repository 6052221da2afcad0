//! Creating a node's data dir: `manager init` (a new cluster) and `manager join` /
//! `worker join` (a node admitted by a join token), and loading it back on restart.
//!
//! Invariant: the node's private key is made here and never leaves the node; on disk it is
//! sealed with the KEK. A joiner checks the CA certificate it downloads against the digest
//! in its token before it sends anything secret (the token, the CSR).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use coffer_api::cluster::{JoinRequest, JoinResponse, NodeRole as WireRole};
use coffer_raft_store::model::{
    Availability, ClusterRecord, ClusterSettings, Command, NodeRecord, NodeRole, NodeStatus, SealedBytes, SecretBytes,
};
use coffer_raft_store::seal::{Aad, KeyBytes, KeyEncryptionKey, Sealer};
use coffer_raft_store::ManagerNode;
use rand::Rng;
use zeroize::Zeroizing;

use crate::api_error::ApiError;
use crate::config::ManagerConfig;
use crate::data_dir::{write_atomic, DataDir, NodeIdentity};
use crate::join_token::JoinToken;
use crate::key_file;
use crate::manager::Manager;
use crate::pki::{self, ClusterCa, NodeKey, PrivateKeyPem, Role};
use crate::tls;

const NODE_KEY_WHAT: &str = "node-key";
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The commands that create the cluster, proposed once Raft runs.
#[derive(Debug)]
pub struct Bootstrap {
    cluster: ClusterRecord,
    node: NodeRecord,
}

/// What `manager init` shows the operator once.
pub struct InitSummary {
    pub cluster_id: String,
    pub node_id: u64,
    pub addr: String,
    pub worker_token: Zeroizing<String>,
    pub manager_token: Zeroizing<String>,
    pub client_dir: std::path::PathBuf,
}

impl std::fmt::Debug for InitSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitSummary").field("cluster_id", &self.cluster_id).field("addr", &self.addr).finish()
    }
}

/// A node's TLS material, loaded from its data dir.
#[derive(Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: PrivateKeyPem,
}

fn advertise_of(config: &ManagerConfig, bound: SocketAddr) -> anyhow::Result<SocketAddr> {
    let adv = match &config.advertise {
        Some(a) => a.parse().with_context(|| format!("advertise address {a:?} is not ip:port"))?,
        None => bound,
    };
    if adv.ip().is_unspecified() {
        bail!("listening on {bound}: give --advertise with an address other nodes can dial");
    }
    Ok(adv)
}

fn refuse_existing(dir: &DataDir) -> anyhow::Result<()> {
    if dir.node_file().exists() {
        bail!(
            "{} already holds a node; restart it with `coffer manager run --data-dir {}`",
            dir.root().display(),
            dir.root().display()
        );
    }
    Ok(())
}

fn save_node_tls(
    dir: &DataDir,
    kek: &dyn KeyEncryptionKey,
    ca_pem: &str,
    cert_pem: &str,
    key: &PrivateKeyPem,
) -> anyhow::Result<()> {
    write_atomic(&dir.ca_cert(), ca_pem.as_bytes(), 0o644)?;
    save_node_cert(dir, kek, cert_pem, key)
}

/// Writes a (new or renewed) certificate and its key as one sealed file, replaced in one
/// rename: a crash mid-renewal leaves the old pair or the new one, never a mismatch.
/// `node.pem` is a copy of the certificate for operators; the node loads the sealed file.
pub fn save_node_cert(
    dir: &DataDir,
    kek: &dyn KeyEncryptionKey,
    cert_pem: &str,
    key: &PrivateKeyPem,
) -> anyhow::Result<()> {
    let bundle = Zeroizing::new(format!("{}\n{cert_pem}", key.expose().trim_end()));
    let sealed = kek.seal_file(NODE_KEY_WHAT, bundle.as_bytes()).context("seal the node key")?;
    write_atomic(&dir.node_key(), &sealed, 0o600)?;
    write_atomic(&dir.node_cert(), cert_pem.as_bytes(), 0o644)
}

/// Loads the CA, the node certificate and its (unsealed) key.
pub fn load_credentials(dir: &DataDir, kek: &dyn KeyEncryptionKey) -> anyhow::Result<Credentials> {
    let read = |p: std::path::PathBuf| std::fs::read(&p).with_context(|| format!("read {}", p.display()));
    let ca_pem = String::from_utf8(read(dir.ca_cert())?).context("ca.pem is not text")?;
    let sealed = read(dir.node_key())?;
    let bundle = kek.open_file(NODE_KEY_WHAT, &sealed).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot open the sealed node key ({e}): wrong key file, or the file was altered",
            dir.node_key().display()
        )
    })?;
    let bundle = Zeroizing::new(String::from_utf8(bundle.to_vec()).context("node key is not PEM")?);
    let at = bundle.find("-----BEGIN CERTIFICATE-----").context("the sealed node key holds no certificate")?;
    let cert_pem = bundle[at..].to_string();
    let key_pem = bundle[..at].to_string();
    Ok(Credentials { ca_pem, cert_pem, key_pem: PrivateKeyPem::from_pem(key_pem) })
}

fn value_sealer(cluster: &ClusterRecord) -> Result<Sealer, ApiError> {
    let key = KeyBytes::from_slice(&cluster.value_key.0)
        .ok_or_else(|| ApiError::internal("reading the cluster key", "wrong length"))?;
    Ok(Sealer::new(&key))
}

/// The cluster CA with its key, opened from the replicated cluster record.
pub fn cluster_ca(cluster: &ClusterRecord) -> Result<ClusterCa, ApiError> {
    let key = value_sealer(cluster)?
        .open(&Aad::new("ca-key", cluster.id.as_bytes()), &cluster.ca_key.0)
        .map_err(|e| ApiError::internal("opening the CA key", e))?;
    let key_pem = std::str::from_utf8(&key).map_err(|e| ApiError::internal("reading the CA key", e))?;
    ClusterCa::from_pem(&cluster.ca_cert_pem, key_pem).map_err(|e| ApiError::internal("loading the CA", e))
}

/// `manager init`: a new cluster in `config.data_dir`, for a listener bound at `bound`.
pub fn init_data_dir(config: &ManagerConfig, bound: SocketAddr) -> anyhow::Result<(Bootstrap, InitSummary)> {
    let dir = DataDir::new(&config.data_dir);
    refuse_existing(&dir)?;
    std::fs::create_dir_all(dir.root()).with_context(|| format!("create {}", dir.root().display()))?;
    let advertise = advertise_of(config, bound)?;
    let kek = key_file::create(&dir.key_file())?;

    let cluster_id = crate::ids::random_hex(8);
    let node_id: u64 = rand::thread_rng().gen_range(1..u64::MAX);
    let ca = ClusterCa::generate(&cluster_id)?;

    let node_key = NodeKey::generate()?;
    let csr = node_key.csr_pem(&[advertise.ip().to_string()])?;
    let issued = ca.sign_csr(
        &csr,
        node_id,
        Role::Manager,
        &cluster_id,
        &[advertise.ip().to_string()],
        config.node_cert_validity(),
    )?;
    save_node_tls(&dir, &kek, ca.cert_pem(), &issued.cert_pem, &node_key.key_pem())?;

    let digest = pki::cert_digest(ca.cert_pem())?;
    let worker_token = JoinToken::generate(digest);
    let manager_token = JoinToken::generate(digest);

    // The admin client bundle. Its key is the one private key Coffer writes in plaintext:
    // the CLI must read it, like a kubeconfig; it is mode 0600 in a 0700 directory.
    let client_dir = dir.client_dir();
    std::fs::create_dir_all(&client_dir)?;
    std::fs::set_permissions(&client_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let (admin_cert, admin_key) = ca.issue_admin("admin", &cluster_id, ADMIN_CERT_VALIDITY)?;
    write_atomic(&client_dir.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
    write_atomic(&client_dir.join("client.pem"), admin_cert.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&client_dir.join("client.key"), admin_key.expose().as_bytes(), 0o600)?;

    let value_key = KeyBytes::generate();
    let ca_key_sealed =
        Sealer::new(&value_key).seal(&Aad::new("ca-key", cluster_id.as_bytes()), ca.key_pem().expose().as_bytes())?;
    let now = now_millis();
    let settings = ClusterSettings {
        node_cert_validity_secs: config.node_cert_validity_secs,
        grant_ttl_secs: config.grant_ttl_secs,
        worker_heartbeat_ms: config.worker_heartbeat_ms,
        ..ClusterSettings::default()
    };
    let cluster = ClusterRecord {
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
    let node = NodeRecord {
        id: node_id,
        role: NodeRole::Manager,
        hostname: hostname(),
        addr: advertise.to_string(),
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: Default::default(),
        cert_serial: issued.serial_hex,
        grant_public_key: None,
        removed: false,
        joined_at: now,
        updated_at: now,
    };
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
    };
    Ok((Bootstrap { cluster, node }, summary))
}

/// Initializes the one-member Raft and commits the cluster's first records.
pub async fn bootstrap_cluster(m: &Manager, b: Bootstrap) -> anyhow::Result<()> {
    let members = std::collections::BTreeMap::from([(m.id, ManagerNode { addr: m.advertise.clone() })]);
    m.raft.initialize(members).await.context("initialize raft")?;
    m.propose(Command::InitCluster(b.cluster))
        .await
        .map_err(|e| anyhow::anyhow!("commit the cluster record: {}", e.message))?;
    m.propose(Command::PutNode(b.node)).await.map_err(|e| anyhow::anyhow!("commit this node: {}", e.message))?;
    Ok(())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Downloads the CA certificate of the manager at `join` and checks it against the digest
/// in `token`. Nothing secret is sent.
pub async fn fetch_trusted_ca(join: &str, token: &JoinToken) -> anyhow::Result<String> {
    tls::install_provider();
    let client = tls::http_client(tls::ca_fetch_config())?;
    let resp = client
        .get(format!("https://{join}/v1/ca"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("reach the manager at {join}"))?;
    if !resp.status().is_success() {
        bail!("the manager at {join} answered HTTP {} for its CA certificate", resp.status());
    }
    let ca_pem = resp.text().await?;
    // Exactly one certificate: the trust store is built from what the digest pinned, and
    // nothing else may ride along (an extra CA appended after the real one would
    // otherwise be trusted too).
    let certs = tls::certs_from_pem(&ca_pem).context("the CA certificate the manager sent is not valid")?;
    if certs.len() != 1 || pki::cert_digest(&ca_pem)? != token.ca_digest() {
        bail!("the manager at {join} presents a CA that does not match the join token: refusing to join (nothing was sent)");
    }
    Ok(ca_pem)
}

/// `manager join` / `worker join`: gets a certificate through the join flow and writes the
/// node's data dir. Returns the identity the node will run as.
pub async fn join_data_dir(
    data_dir: &DataDir,
    role: WireRole,
    token_text: &str,
    join: &str,
    listen: SocketAddr,
    advertise: SocketAddr,
) -> anyhow::Result<NodeIdentity> {
    refuse_existing(data_dir)?;
    let token: JoinToken = token_text.parse().map_err(|e| anyhow::anyhow!("join token: {e}"))?;
    let ca_pem = fetch_trusted_ca(join, &token).await?;

    let key = NodeKey::generate()?;
    let csr_pem = key.csr_pem(&[advertise.ip().to_string()])?;
    let client = tls::http_client(tls::client_config(&ca_pem, None)?)?;
    let req = JoinRequest {
        token: token.reveal().to_string(),
        role,
        csr_pem,
        advertise_addr: advertise.to_string(),
        hostname: hostname(),
    };
    let resp = client
        .post(format!("https://{join}/v1/join"))
        .json(&req)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("send the join request to {join}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: coffer_api::error::ErrorBody =
            resp.json().await.with_context(|| format!("join refused (HTTP {status})"))?;
        bail!("join refused: {} ({:?})", body.error.message, body.error.code);
    }
    let joined: JoinResponse = resp.json().await.context("read the join response")?;
    // The CA we keep is the one the token pinned, never the one the response names.
    if joined.ca_pem.trim() != ca_pem.trim() {
        bail!("the join response names another CA than the one the token pins");
    }

    std::fs::create_dir_all(data_dir.root())?;
    let kek = key_file::create(&data_dir.key_file())?;
    save_node_tls(data_dir, &kek, &ca_pem, &joined.cert_pem, &key.key_pem())?;
    let identity = NodeIdentity {
        node_id: joined.node_id,
        cluster_id: joined.cluster_id,
        role,
        listen: listen.to_string(),
        advertise: advertise.to_string(),
    };
    identity.save(data_dir)?;
    Ok(identity)
}
