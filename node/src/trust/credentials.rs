//! A node's TLS material on disk: the cluster CA certificate, its certificate, and its
//! private key sealed with the node's KEK; and, for a manager under autolock, the powerless
//! certificate it serves with while locked.
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
/// The `what` of a locked manager's sealed key file.
const LOCKED_WHAT: &str = "locked-key";

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
/// rename. `node.pem` is a copy of the certificate for operators (and for reading its
/// validity without the key); the node loads the sealed file.
///
/// # Errors
/// On any I/O or sealing failure.
pub fn save_node_cert(
    dir: &DataDir,
    kek: &dyn KeyEncryptionKey,
    cert_pem: &str,
    key: &PrivateKeyPem,
) -> anyhow::Result<()> {
    seal_pair(&dir.node_key(), NODE_KEY_WHAT, kek, cert_pem, key)?;
    write_atomic(&dir.node_cert(), cert_pem.as_bytes(), 0o644)
}

/// Loads the CA, the node certificate and its (unsealed) key.
///
/// # Errors
/// A missing file, or a sealed key that does not open under `kek`.
pub fn load_credentials(dir: &DataDir, kek: &dyn KeyEncryptionKey) -> anyhow::Result<Credentials> {
    let ca_pem = load_ca(dir)?;
    let (cert_pem, key_pem) = open_pair(&dir.node_key(), NODE_KEY_WHAT, kek)?;
    Ok(Credentials { ca_pem, cert_pem, key_pem })
}

/// The cluster CA certificate this node trusts.
///
/// # Errors
/// A missing or unreadable file.
pub fn load_ca(dir: &DataDir) -> anyhow::Result<String> {
    let path = dir.ca_cert();
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    String::from_utf8(bytes).context("ca.pem is not text")
}

/// The node's certificate (not its key), from the copy kept beside the sealed file.
///
/// # Errors
/// A missing or unreadable file.
pub fn node_cert_pem(dir: &DataDir) -> anyhow::Result<String> {
    let path = dir.node_cert();
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    String::from_utf8(bytes).context("node.pem is not text")
}

/// Writes a locked manager's certificate and key (autolock), sealed under `kek`, the key
/// file's: a locked manager must be able to serve with it before it has any other key.
///
/// # Errors
/// On any I/O or sealing failure.
pub fn save_locked_cert(
    dir: &DataDir,
    kek: &dyn KeyEncryptionKey,
    cert_pem: &str,
    key: &PrivateKeyPem,
) -> anyhow::Result<()> {
    seal_pair(&dir.locked_cert(), LOCKED_WHAT, kek, cert_pem, key)
}

/// The locked manager's certificate and key, if this data dir has one.
///
/// # Errors
/// A file that cannot be read or does not open under `kek`.
pub fn load_locked_cert(dir: &DataDir, kek: &dyn KeyEncryptionKey) -> anyhow::Result<Option<(String, PrivateKeyPem)>> {
    if !dir.locked_cert().exists() {
        return Ok(None);
    }
    open_pair(&dir.locked_cert(), LOCKED_WHAT, kek).map(Some)
}

/// Removes the locked manager's certificate (autolock was turned off).
///
/// # Errors
/// On an I/O failure other than the file being absent already.
pub fn remove_locked_cert(dir: &DataDir) -> anyhow::Result<()> {
    match std::fs::remove_file(dir.locked_cert()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("remove {}", dir.locked_cert().display())))
        }
        _ => Ok(()),
    }
}

/// A key and its certificate, sealed as one file (mode 0600), replaced in one rename.
fn seal_pair(
    path: &std::path::Path,
    what: &str,
    kek: &dyn KeyEncryptionKey,
    cert_pem: &str,
    key: &PrivateKeyPem,
) -> anyhow::Result<()> {
    let bundle = Zeroizing::new(format!("{}\n{cert_pem}", key.expose().trim_end()));
    let sealed = kek.seal_file(what, bundle.as_bytes()).context("seal a TLS key")?;
    write_atomic(path, &sealed, 0o600)
}

fn open_pair(
    path: &std::path::Path,
    what: &str,
    kek: &dyn KeyEncryptionKey,
) -> anyhow::Result<(String, PrivateKeyPem)> {
    let sealed = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let bundle = kek.open_file(what, &sealed).map_err(|e| {
        anyhow::anyhow!("{}: cannot open the sealed key ({e}): wrong key, or the file was altered", path.display())
    })?;
    let bundle = Zeroizing::new(String::from_utf8(bundle.to_vec()).context("the sealed key is not PEM")?);
    let at = bundle.find("-----BEGIN CERTIFICATE-----").context("the sealed key holds no certificate")?;
    Ok((bundle[at..].to_string(), PrivateKeyPem::from_pem(bundle[..at].to_string())))
}
