//! A manager's own TLS keys on disk, kept in step with its store's key.
//!
//! Invariant: the manager's private key (`tls/node.key.sealed`) is sealed under the same KEK
//! as its store. Without autolock that is the key file; under autolock, the KEK derived from
//! the unlock key, so that a copy of the data dir yields no manager certificate (one would
//! let its holder act as a manager towards the cluster: propose entries, ask the leader for
//! a new unlock key). A locked manager must still answer over TLS before it has that key:
//! it serves with a separate certificate of role [`Role::Locked`], sealed under the key
//! file, which rustls refuses as a client certificate and no endpoint accepts.
//!
//! Re-sealing follows re-wrapping the store (see `autolock`); a crash between the two leaves
//! the key under the previous KEK, which [`load_or_issue`] tries next, and if none opens it,
//! the manager issues itself a new certificate with the CA its store holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coffer_raft_store::seal::KeyEncryptionKey;
use coffer_raft_store::StateReader;
use rustls::sign::CertifiedKey;

use crate::local::data_dir::{DataDir, NodeIdentity};
use crate::manager::values::cluster_ca;
use crate::manager::Manager;
use crate::trust::credentials::{
    load_credentials, load_locked_cert, remove_locked_cert, save_locked_cert, save_node_cert,
};
use crate::trust::pki::{self, NodeKey, PrivateKeyPem, Role};
use crate::trust::tls;

/// How long a locked manager's certificate is valid: a manager may stay locked for long,
/// and one that has expired cannot be unlocked over the network. Renewed at half-life.
const LOCKED_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How the node key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Sealed under the first KEK tried: nothing changed.
    AsIs,
    /// Sealed under another candidate; now re-sealed under the first.
    Resealed,
    /// Under none of them: a new certificate was issued and sealed under the first.
    Issued,
}

/// The manager's certificate and key, opened under the first of `keks` that opens it and
/// re-sealed under `keks[0]` if that was another; if none opens it, a new certificate
/// signed with the CA from `reader`'s cluster record, sealed under `keks[0]`.
///
/// # Errors
/// Files that cannot be written, or a store without a cluster record when one must issue.
pub(crate) fn load_or_issue(
    dir: &DataDir,
    identity: &NodeIdentity,
    keks: &[&dyn KeyEncryptionKey],
    reader: &StateReader,
    validity: Duration,
) -> anyhow::Result<(Arc<CertifiedKey>, Found)> {
    let target = *keks.first().context("no key to seal the node key with")?;
    for (i, kek) in keks.iter().enumerate() {
        let Ok(c) = load_credentials(dir, *kek) else { continue };
        let certified = tls::certified_key(&c.cert_pem, c.key_pem.expose())?;
        if i == 0 {
            return Ok((certified, Found::AsIs));
        }
        save_node_cert(dir, target, &c.cert_pem, &c.key_pem)?;
        tracing::info!(kind = target.kind(), "this manager's TLS key is re-sealed under its store's key");
        return Ok((certified, Found::Resealed));
    }
    let (cert_pem, key_pem) = issue(identity, Role::Manager, reader, validity)?;
    save_node_cert(dir, target, &cert_pem, &key_pem)?;
    tracing::warn!(
        "this manager's TLS key opened under none of its keys (it stopped between re-sealing its store and \
         its key); it issued itself a new certificate"
    );
    Ok((tls::certified_key(&cert_pem, key_pem.expose())?, Found::Issued))
}

/// A new certificate of `role` for this manager, signed with the cluster CA from its store.
fn issue(
    identity: &NodeIdentity,
    role: Role,
    reader: &StateReader,
    validity: Duration,
) -> anyhow::Result<(String, PrivateKeyPem)> {
    let cluster = reader.cluster()?.context("the store holds no cluster record")?;
    let ca = cluster_ca(&cluster).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let ip: SocketAddr = identity.advertise.parse().context("the advertised address")?;
    let sans = [ip.ip().to_string()];
    let key = NodeKey::generate()?;
    let issued = ca.sign_csr(&key.csr_pem(&sans)?, identity.node_id, role, &identity.cluster_id, &sans, validity)?;
    Ok((issued.cert_pem, key.key_pem()))
}

/// Seals a renewed certificate and key under the store's current KEK.
///
/// # Errors
/// On any I/O or sealing failure.
pub(crate) fn save_renewed(m: &Manager, cert_pem: &str, key: &PrivateKeyPem) -> anyhow::Result<()> {
    let _one = m.node_key_lock.lock().unwrap_or_else(|p| p.into_inner());
    let kek = m.store_key.lock().unwrap_or_else(|p| p.into_inner()).kek.clone();
    save_node_cert(&m.data_dir, kek.as_ref(), cert_pem, key)
}

/// Brings the TLS files in line with the store's current key: the node key sealed under it
/// (tried under `previous`, the KEK the store had before a re-wrap, and the key file); under
/// autolock, a locked certificate valid for at least half its life, and none otherwise.
///
/// # Errors
/// Files that cannot be read or written.
pub(crate) fn settle(m: &Manager, previous: Option<&dyn KeyEncryptionKey>) -> anyhow::Result<()> {
    let _one = m.node_key_lock.lock().unwrap_or_else(|p| p.into_inner());
    let have = m.store_key.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut keks: Vec<&dyn KeyEncryptionKey> = vec![have.kek.as_ref()];
    keks.extend(previous);
    keks.push(m.kek.as_ref());
    let identity = identity(m);
    let (certified, found) = load_or_issue(&m.data_dir, &identity, &keks, &m.reader, m.config.node_cert_validity())?;
    if found == Found::Issued {
        m.cert.replace(certified);
        m.refresh_peer_client();
    }
    if have.unlock.is_none() {
        return remove_locked_cert(&m.data_dir);
    }
    let fresh = match load_locked_cert(&m.data_dir, m.kek.as_ref()) {
        Ok(Some((cert_pem, _))) => half_life_left(&cert_pem),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "this manager's locked certificate does not open; making a new one");
            false
        }
    };
    if !fresh {
        let (cert_pem, key_pem) = issue(&identity, Role::Locked, &m.reader, LOCKED_CERT_VALIDITY)?;
        save_locked_cert(&m.data_dir, m.kek.as_ref(), &cert_pem, &key_pem)?;
        tracing::info!("this manager has a certificate to serve with while it is locked");
    }
    Ok(())
}

fn identity(m: &Manager) -> NodeIdentity {
    NodeIdentity {
        node_id: m.id,
        cluster_id: m.cluster_id.clone(),
        role: coffer_api::cluster::NodeRole::Manager,
        listen: String::new(),
        advertise: m.advertise.clone(),
    }
}

/// Whether the certificate has at least half of its validity ahead.
fn half_life_left(cert_pem: &str) -> bool {
    let Some(id) = tls::certs_from_pem(cert_pem).ok().and_then(|c| pki::parse_peer(&c[0]).ok()) else {
        return false;
    };
    let now = coffer_api::time::now_millis() as i64 / 1000;
    let start = pki::issued_at(id.not_before_unix).min(id.not_after_unix);
    now < start + (id.not_after_unix - start) / 2
}
