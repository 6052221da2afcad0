//! Secret values under the cluster's value key: sealed by the manager that takes the
//! request, before the command is proposed, so the Raft log, every snapshot and every
//! follower's store hold only ciphertext (then sealed again at rest with each manager's
//! own data key). Opened only to answer a redeemed grant.
//!
//! The associated data binds a value to its secret id, so a value cannot be moved to
//! another secret.

use coffer_raft_store::model::{ClusterRecord, SealedBytes};
use coffer_raft_store::seal::{Aad, KeyBytes, Sealer};
use zeroize::Zeroizing;

use crate::manager::error::OpError;
use crate::trust::pki::ClusterCa;

/// Why a value could not be sealed or opened. Never holds the value.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("the cluster value key has the wrong length")]
    BadKey,
    #[error("sealing a value: {0}")]
    Seal(String),
    #[error("opening a value: {0}")]
    Open(String),
}

impl From<ValueError> for OpError {
    fn from(e: ValueError) -> Self {
        OpError::internal("sealing or opening a secret value", e)
    }
}

pub struct ValueSealer(Sealer);

impl std::fmt::Debug for ValueSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueSealer([redacted])")
    }
}

impl ValueSealer {
    pub fn for_cluster(cluster: &ClusterRecord) -> Result<Self, ValueError> {
        let key = KeyBytes::from_slice(&cluster.value_key.0).ok_or(ValueError::BadKey)?;
        Ok(Self(Sealer::new(&key)))
    }

    fn aad(secret_id: &str) -> Aad {
        Aad::new("secret-value", secret_id.as_bytes())
    }

    pub fn seal(&self, secret_id: &str, value: &[u8]) -> Result<SealedBytes, ValueError> {
        self.0.seal(&Self::aad(secret_id), value).map(SealedBytes).map_err(|e| ValueError::Seal(e.to_string()))
    }

    pub fn open(&self, secret_id: &str, sealed: &SealedBytes) -> Result<Zeroizing<Vec<u8>>, ValueError> {
        self.0.open(&Self::aad(secret_id), &sealed.0).map_err(|e| ValueError::Open(e.to_string()))
    }
}

/// The cluster CA with its key, opened from the replicated cluster record.
pub fn cluster_ca(cluster: &ClusterRecord) -> Result<ClusterCa, OpError> {
    let key = KeyBytes::from_slice(&cluster.value_key.0)
        .ok_or_else(|| OpError::internal("reading the cluster key", "wrong length"))?;
    let key = Sealer::new(&key)
        .open(&Aad::new("ca-key", cluster.id.as_bytes()), &cluster.ca_key.0)
        .map_err(|e| OpError::internal("opening the CA key", e))?;
    let key_pem = std::str::from_utf8(&key).map_err(|e| OpError::internal("reading the CA key", e))?;
    ClusterCa::from_pem(&cluster.ca_cert_pem, key_pem).map_err(|e| OpError::internal("loading the CA", e))
}
