//! A node's TLS material on disk: the cluster CA certificate, its certificate, and its
//! private key sealed with the node's KEK.
//!
//! Invariant: the private key is written only sealed (`tls/node.key.sealed`), together with
//! its certificate in one file replaced by one rename, so a crash mid-renewal leaves the old
//! pair or the new one, never a mismatch.

use anyhow::Context;
use coffer_raft_store::seal::KeyEncryptionKey;
use zeroize::Zeroizing;

use crate::local::data_dir::{write_atomic, DataDir};
use crate::trust::pki::PrivateKeyPem;

/// The `what` of the sealed key file (domain separation under the KEK).
const NODE_KEY_WHAT: &str = "node-key";

/// A node's TLS material, loaded from its data dir.
#[derive(Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: PrivateKeyPem,
}

/// Writes the CA certificate and the node's first certificate and key.
///
/// # Errors
/// On any I/O or sealing failure.
pub fn save_node_tls(
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
/// rename. `node.pem` is a copy of the certificate for operators; the node loads the
/// sealed file.
///
/// # Errors
/// On any I/O or sealing failure.
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
///
/// # Errors
/// A missing file, or a sealed key that does not open under `kek`.
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
