//! The join flow, as the joining node runs it (`manager join`, `worker join`): download the
//! CA certificate and check it against the digest in the token, make a key and a CSR
//! locally, send the join request, and write the node's data dir.
//!
//! Invariant: nothing secret (the token, the CSR) is sent before the CA the manager presents
//! matches the token; the CA kept is the one the token pinned, never the one the response
//! names. The node's private key never leaves it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use coffer_api::client::Client;
use coffer_api::cluster::{JoinRequest, JoinResponse, NodeRole};

use crate::local::data_dir::{DataDir, NodeIdentity};
use crate::local::key_file;
use crate::trust::credentials::save_node_tls;
use crate::trust::join_token::JoinToken;
use crate::trust::pki::{self, NodeKey};
use crate::trust::tls;

const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// This machine's hostname, as the node reports it when it joins.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Downloads the CA certificate of the manager at `join` and checks it against the digest
/// in `token`. Nothing secret is sent.
///
/// # Errors
/// The manager cannot be reached, or presents a CA the token does not pin.
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

/// Who is joining: as what, where it listens and is dialled (managers; a worker's are
/// unspecified), and the hostname it reports (the machine's if `None`).
#[derive(Debug, Clone, Copy)]
pub struct Joiner<'a> {
    pub role: NodeRole,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub hostname: Option<&'a str>,
}

/// Gets a certificate through the join flow and writes the node's data dir. Returns the
/// identity the node will run as.
///
/// # Errors
/// A data dir that already holds a node, a malformed or refused token, a CA that does not
/// match the token, or an unreachable manager.
pub async fn join_data_dir(
    data_dir: &DataDir,
    token_text: &str,
    join: &str,
    joiner: Joiner<'_>,
) -> anyhow::Result<NodeIdentity> {
    let Joiner { role, listen, advertise, hostname: hostname_override } = joiner;
    data_dir.refuse_existing()?;
    let token: JoinToken = token_text.parse().map_err(|e| anyhow::anyhow!("join token: {e}"))?;
    let ca_pem = fetch_trusted_ca(join, &token).await?;

    let key = NodeKey::generate()?;
    let sans = if role == NodeRole::Manager { vec![advertise.ip().to_string()] } else { Vec::new() };
    let req = JoinRequest {
        token: token.reveal().to_string(),
        role,
        csr_pem: key.csr_pem(&sans)?,
        advertise_addr: advertise.to_string(),
        hostname: hostname_override.map(str::to_string).unwrap_or_else(hostname),
    };
    let client = Client::with_tls(&ca_pem, None, join)?.with_timeout(JOIN_TIMEOUT);
    let joined: JoinResponse = client.post("/v1/join", &req).await.map_err(|e| match e.code() {
        Some(code) => anyhow::anyhow!("join refused: {e} ({code:?})"),
        None => anyhow::anyhow!("send the join request to {join}: {e}"),
    })?;
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
